"""The server's errors: an HTTP status, a type a client can switch on, and a one-line message.

Every error response is the JSON object {"error": MESSAGE, "type": TYPE}. An InputError raised by
the prediction layer (a malformed input it cannot read) is a 400 "invalid_input".
"""

from __future__ import annotations

from bertkit.errors import InputError


class ApiError(InputError):
    """A request the server refuses: `status` and `type` go into the response with the message."""

    def __init__(self, status: int, type: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(" ".join(message.split()))  # one line, whatever went into it
        self.status = status
        self.type = type
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


def input_too_long(index: int, tokens: int | None, limit: int) -> ApiError:
    """413 for an input over the model's length, naming it and its length."""
    size = f"has {tokens:,} tokens" if tokens is not None else "has too many tokens"
    return ApiError(413, "input_too_long", f"input {index} {size}, more than the model's maximum of {limit:,} "
                    f"([CLS] and [SEP] included); send \"truncate\": true to cut it to that length")


def not_supported(message: str) -> ApiError:
    return ApiError(404, "not_supported", message)
