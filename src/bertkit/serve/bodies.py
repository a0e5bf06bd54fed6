"""Request bodies: read with a size cap, decoded as UTF-8 JSON, and their fields checked one by one.

Each check raises an ApiError whose message names the field and what was wrong with it, in JSON's
own words ("inputs must be a string or a list of strings, got a number"). Pure functions of the
parsed body, apart from `read_json`, which reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from bertkit.serve.errors import ApiError, bad_request, too_large

_SURROGATE = re.compile("[\ud800-\udfff]")


async def read_json(request: Any, limit: int) -> dict[str, Any]:
    """The body of a Starlette request as a JSON object; over `limit` bytes it is refused unread (413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise body_too_large(None, limit)
    return parse_json(bytes(body))


def body_too_large(size: int | None, limit: int) -> ApiError:
    what = f" of {size:,} bytes" if size is not None else ""
    return too_large(f"request body{what} is over this server's limit of {limit:,} bytes; "
                     "send fewer or shorter inputs per request")


def parse_json(body: bytes) -> dict[str, Any]:
    """Bytes -> a JSON object, or a 400 that says what is wrong with them."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"request body is not valid UTF-8 (byte {e.start}); JSON must be sent as UTF-8") from None
    if not text.strip():
        raise bad_request("empty request body; send a JSON object")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad_request(f"request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise bad_request("request body is not usable JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise bad_request(f"request body must be a JSON object, got {kind(value)}")
    check_unicode(value)
    return value


def check_unicode(value: Any) -> None:
    """Strings that cannot be text: a \\ud800-style escape of half a character (a lone surrogate)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise bad_request("request body holds a string with a lone surrogate escape (\\ud800-\\udfff), "
                                  "which is not text")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def kind(value: Any) -> str:
    """A JSON value's type as a message says it: 'a string', 'a number', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


# ---- fields ----------------------------------------------------------------------------------------


def texts(body: dict[str, Any], name: str, max_inputs: int) -> tuple[list[str], bool]:
    """A string or a non-empty list of strings, each with some text: (the texts, whether one string was sent)."""
    if name not in body:
        raise bad_request(f"missing {name!r}: send a string or a list of strings")
    value = body[name]
    single = isinstance(value, str)
    items = [value] if single else value
    if not isinstance(items, list):
        raise bad_request(f"{name} must be a string or a list of strings, got {kind(value)}")
    count(items, name, max_inputs)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise bad_request(f"{name}[{i}] must be a string, got {kind(text)}")
        if not text.strip():
            raise bad_request(f"{name}[{i}] is empty" if not single else f"{name} is empty")
    return items, single


def inputs(body: dict[str, Any], name: str, max_inputs: int) -> tuple[list[Any], bool]:
    """One input of any JSON shape, or a list of them: (the inputs, whether a single one was sent).
    A JSON list is always a list of inputs, so one text pair is sent as [[text, pair]]."""
    if name not in body:
        raise bad_request(f"missing {name!r}: send an input or a list of inputs")
    value = body[name]
    single = not isinstance(value, list)
    items = [value] if single else value
    count(items, name, max_inputs)
    for i, item in enumerate(items):
        if item is None or (isinstance(item, str) and not item.strip()):
            raise bad_request(f"{name} is empty" if single else f"{name}[{i}] is empty")
    return items, single


def count(items: Sequence[Any], name: str, max_inputs: int) -> None:
    if not items:
        raise bad_request(f"{name} is an empty list; send at least one input")
    if len(items) > max_inputs:
        raise ApiError(413, "too_many_inputs", f"{name} holds {len(items):,} inputs, more than this server's "
                       f"max_client_batch_size of {max_inputs:,}; split them over several requests")


def boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {kind(value)}")
    return value


def integer(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, got {kind(value)}")
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low:,} and {high:,}, got {value:,}")
    return value


def choice(body: dict[str, Any], name: str, default: str, values: Sequence[str]) -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if value not in values:
        shown = json.dumps(value) if isinstance(value, str) else kind(value)
        raise bad_request(f"{name} must be one of {', '.join(values)}; got {shown[:40]}")
    return value


def string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{name} must be a string, got {kind(value)}")
    return value
