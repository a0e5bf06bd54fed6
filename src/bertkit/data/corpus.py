"""Raw text -> documents, streamed line by line from plain, JSONL and compressed files.

Formats (chosen per file):

* plain text in the original BERT corpus format: one sentence (or paragraph) per line, a blank
  line between documents; the end of a file also ends a document;
* JSON lines (``.jsonl`` / ``.ndjson``, also under a compression suffix): one object per line
  whose text field (``"text"`` unless told otherwise) is one document, split into sentences at
  its newlines, blank ones ignored;
* either of these compressed with gzip, bzip2 or xz, recognised by the magic bytes at the start
  of the file, so ``corpus.txt`` that is really gzip data is read as well.

A directory stands for every regular file under it, in sorted order, recursively.

Bad input never stops the run: undecodable lines, over-long lines, malformed JSON, binary and
empty files are skipped with a one-line warning naming FILE:LINE, and counted in a
``CorpusStats``. Only a path that does not exist is an error (``InputError``), raised before any
file is read. Warnings of one kind are capped (the first ``max_warnings``, then a count at the
end), so that a broken gigabyte file cannot flood the terminal.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Union

from bertkit.errors import InputError

__all__ = ["CorpusStats", "Document", "HeldWarnings", "describe_paths", "iter_documents", "released_on_first",
           "resolve_files"]

log = logging.getLogger("bertkit")

PathLike = Union[str, "os.PathLike[str]"]
WarnFn = Callable[[str], None]

SNIFF_BYTES = 8192  # how much of a file decides "binary" (NUL bytes), as git and grep do
JSONL_SUFFIXES = (".jsonl", ".ndjson")
COMPRESSION_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz")
JSON_LINE_FACTOR = 100  # a JSONL line holds a whole document, so it may be this many "lines" long
PROGRESS_EVERY = 1024  # lines between updates of bytes_read for compressed files

# Magic bytes -> opener for the decompressed stream. zstd is recognised only to say so clearly.
_COMPRESSED: dict[bytes, tuple[str, Callable[[IO[bytes]], IO[bytes]] | None]] = {
    b"\x1f\x8b": ("gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    b"BZh": ("bzip2", lambda raw: bz2.BZ2File(raw, mode="rb")),
    b"\xfd7zXZ\x00": ("xz", lambda raw: lzma.LZMAFile(raw, mode="rb")),
    b"\x28\xb5\x2f\xfd": ("zstd", None),
}

# What decompressors raise for damaged or truncated data (OSError also covers read errors).
_DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)

# Reasons, as counted in CorpusStats and named in warnings.
REASONS = {
    "not_utf8": "not valid UTF-8",
    "too_long": "line too long",
    "bad_json": "not valid JSON",
    "no_text": "no text field",
    "binary": "binary file",
    "empty": "empty file",
    "unreadable": "unreadable file",
    "corrupt": "corrupt compressed data",
    "unsupported": "unsupported compression",
}


@dataclass
class Document:
    """One document: its sentences, with the file and line each came from (for messages)."""

    path: str
    lines: list[int] = field(default_factory=list)  # 1-based line of each sentence
    sentences: list[str] = field(default_factory=list)
    index: int = 0  # position among the documents of this read, counting from 0

    def __len__(self) -> int:
        return len(self.sentences)

    def source(self, i: int = 0) -> str:
        """``FILE:LINE`` of sentence ``i``."""
        return f"{self.path}:{self.lines[i]}"

    def add(self, line: int, text: str) -> None:
        self.lines.append(line)
        self.sentences.append(text)


@dataclass
class CorpusStats:
    """What was read and what was skipped, by reason (keys of ``REASONS``)."""

    files: int = 0  # files given or found under directories
    files_read: int = 0
    bytes_total: int = 0  # on-disk size of all files, for progress bars
    bytes_read: int = 0  # on-disk bytes consumed so far
    lines: int = 0
    documents: int = 0
    sentences: int = 0
    lines_skipped: Counter = field(default_factory=Counter)
    files_skipped: Counter = field(default_factory=Counter)

    def summary(self) -> list[str]:
        """Human-readable lines about what was skipped (empty when nothing was)."""
        out = []
        if self.files_skipped:
            out.append(f"files skipped: {_reasons(self.files_skipped)}")
        if self.lines_skipped:
            out.append(f"lines skipped: {_reasons(self.lines_skipped)}")
        return out


def _reasons(counts: Counter) -> str:
    return ", ".join(f"{n} {REASONS.get(k, k)}" for k, n in sorted(counts.items()))


# ---------------------------------------------------------------------------------- warnings


class _Warner:
    """Sends warnings to ``warn``, at most ``cap`` per reason; ``finish`` reports the rest."""

    def __init__(self, warn: WarnFn | None, cap: int) -> None:
        self.warn = warn if warn is not None else log.warning
        self.cap = cap
        self.seen: Counter = Counter()

    def __call__(self, reason: str, where: str, message: str) -> None:
        self.seen[reason] += 1
        if self.seen[reason] <= self.cap:
            self.warn(f"{where}: {message}")

    def finish(self) -> None:
        for reason, n in sorted(self.seen.items()):
            if n > self.cap:
                self.warn(f"... {n - self.cap} more '{REASONS[reason]}' warnings not shown ({n} in all)")


class HeldWarnings:
    """A ``warn`` function that holds the warnings back until ``release()``.

    A run that finds no text at all then ends with one error line that sums the skipped input up
    (``CorpusStats.summary``), rather than a warning per file followed by the error."""

    def __init__(self, warn: WarnFn | None = None) -> None:
        self.warn = warn if warn is not None else log.warning
        self.held: list[str] | None = []

    def __call__(self, message: str) -> None:
        if self.held is None:
            self.warn(message)
        else:
            self.held.append(message)

    def release(self) -> None:
        """Send the held warnings on, and from now on every warning as it comes."""
        held, self.held = self.held or [], None
        for message in held:
            self.warn(message)


def released_on_first(items: Iterator, warnings: HeldWarnings) -> Iterator:
    """``items`` unchanged; ``warnings`` are released as soon as the first item arrives."""
    for item in items:
        warnings.release()
        yield item
        break
    yield from items


def describe_paths(paths: PathLike | Iterable[PathLike]) -> str:
    """The input named in a message: 'a.txt', or 'a.txt and 3 more'."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        return "the input"
    return f"{items[0]}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")


# ------------------------------------------------------------------------------------ paths


def resolve_files(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """The files that ``paths`` stand for (directories expanded, sorted, recursively).

    Raises ``InputError`` for a path that does not exist, so that a typo fails before hours of
    work rather than after."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise InputError("no input files given")
    files: list[Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise InputError(f"input path {item!r} is {type(item).__name__}, expected a path")
        path = Path(item)
        if path.is_dir():
            found = _files_under(path)
            if not found:
                raise InputError(f"{path}: directory contains no files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise InputError(f"{path}: not a regular file or directory")
        else:
            raise InputError(f"{path}: no such file or directory")
    return files


def _files_under(directory: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()  # os.walk visits in this order; sorting keeps runs reproducible
        found.extend(Path(root) / name for name in names if (Path(root) / name).is_file())
    return sorted(found, key=lambda p: p.relative_to(directory).parts)


# ---------------------------------------------------------------------------------- reading


def iter_documents(
    paths: PathLike | Iterable[PathLike],
    *,
    warn: WarnFn | None = None,
    max_line_chars: int = 100_000,
    text_field: str = "text",
    stats: CorpusStats | None = None,
    max_warnings: int = 20,
) -> Iterator[Document]:
    """Stream the documents of ``paths`` (files or directories), skipping bad input.

    ``warn`` receives one-line warnings (default: the ``bertkit`` logger); ``stats``, when
    given, is filled in as reading goes. Missing paths raise ``InputError`` right away."""
    if not isinstance(max_line_chars, int) or max_line_chars < 1:
        raise InputError(f"max_line_chars must be a positive int, got {max_line_chars!r}")
    if not isinstance(text_field, str) or not text_field:
        raise InputError(f"text_field must be a non-empty string, got {text_field!r}")
    files = resolve_files(paths)  # here, not in the generator: errors must come before any work
    stats = stats if stats is not None else CorpusStats()
    stats.files += len(files)
    stats.bytes_total += sum(_size(p) for p in files)
    reader = _Reader(stats, _Warner(warn, max_warnings), max_line_chars, text_field)
    return reader.documents(files)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Reader:
    """The state of one read: counters, warnings, limits and the running document index."""

    def __init__(self, stats: CorpusStats, warner: _Warner, max_line_chars: int, text_field: str):
        self.stats = stats
        self.warner = warner
        self.max_chars = max_line_chars
        self.text_field = text_field
        self.next_index = 0

    def documents(self, files: list[Path]) -> Iterator[Document]:
        try:
            for path in files:
                base = self.stats.bytes_read
                yield from self._file(path, base)
                self.stats.bytes_read = base + _size(path)
        finally:  # also when the caller stops early: the suppressed-warning counts still matter
            self.warner.finish()

    def _emit(self, doc: Document) -> Document:
        doc.index = self.next_index
        self.next_index += 1
        self.stats.documents += 1
        self.stats.sentences += len(doc)
        return doc

    def skip_file(self, reason: str, path: Path, message: str) -> None:
        self.stats.files_skipped[reason] += 1
        self.warner(reason, str(path), message)

    def skip_line(self, reason: str, where: str, message: str) -> None:
        self.stats.lines_skipped[reason] += 1
        self.warner(reason, where, message)

    def _file(self, path: Path, base: int) -> Iterator[Document]:
        try:
            raw = open(path, "rb", buffering=1 << 20)
        except OSError as e:
            self.skip_file("unreadable", path, f"cannot read ({e.strerror or e}), skipped")
            return
        with raw:
            stream = self._open_stream(path, raw)
            if stream is None:
                return
            self.stats.files_read += 1
            jsonl = _is_jsonl(path)
            lines = _Lines(stream, raw, self, str(path), base, JSON_LINE_FACTOR if jsonl else 1)
            parse = self._jsonl_documents if jsonl else self._plain_documents
            try:
                yield from parse(lines)
            except _DECOMPRESSION_ERRORS as e:  # truncated or damaged compressed data
                self.stats.files_skipped["corrupt"] += 1
                self.warner("corrupt", f"{path}:{lines.lineno + 1}",
                            f"corrupt compressed data ({e}), rest of file skipped")

    def _open_stream(self, path: Path, raw: IO[bytes]) -> IO[bytes] | None:
        """The decompressed byte stream, or None (with a warning) when the file is skipped."""
        kind = "plain"
        try:
            head = raw.read(SNIFF_BYTES)
            raw.seek(0)
            kind, opener = next(((k, o) for magic, (k, o) in _COMPRESSED.items() if head.startswith(magic)),
                                ("plain", None))
            if kind != "plain" and opener is None:
                self.skip_file("unsupported", path, f"{kind}-compressed; decompress it first, skipped")
                return None
            stream = opener(raw) if opener else raw
            if opener:
                head = stream.read(SNIFF_BYTES)
                stream.seek(0)  # cheap: rewinds the decompressor, which has read only this much
        except _DECOMPRESSION_ERRORS as e:
            self.skip_file("corrupt", path, f"corrupt {kind} data ({e}), skipped")
            return None
        if not head:
            self.skip_file("empty", path, "empty file, skipped")
            return None
        if b"\0" in head:
            self.skip_file("binary", path, "binary file (NUL bytes; UTF-16 text must be converted to "
                           "UTF-8), skipped")
            return None
        return stream

    def _plain_documents(self, lines: _Lines) -> Iterator[Document]:
        doc = Document(lines.name)
        for lineno, text in lines:
            if text is None:
                continue
            if text:
                doc.add(lineno, text)
            elif doc.sentences:  # a blank line ends a document; runs of them are one break
                yield self._emit(doc)
                doc = Document(lines.name)
        if doc.sentences:
            yield self._emit(doc)

    def _jsonl_documents(self, lines: _Lines) -> Iterator[Document]:
        for lineno, text in lines:
            if not text:
                continue  # skipped (already warned) or blank
            where = f"{lines.name}:{lineno}"
            body = self._json_text(text, where)
            if body is None:
                continue
            doc = Document(lines.name)
            for sentence in body.split("\n"):
                sentence = sentence.strip()
                if len(sentence) > self.max_chars:
                    self.skip_line("too_long", where, f"sentence of {len(sentence)} characters "
                                   f"(limit {self.max_chars}), skipped")
                elif sentence:
                    doc.add(lineno, sentence)
            if doc.sentences:
                yield self._emit(doc)

    def _json_text(self, line: str, where: str) -> str | None:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            self.skip_line("bad_json", where, f"not valid JSON ({e.msg} at column {e.colno}), skipped")
            return None
        body = record.get(self.text_field) if isinstance(record, dict) else None
        if not isinstance(body, str):
            what = "no" if body is None else f"a non-string ({type(body).__name__})"
            self.skip_line("no_text", where, f"{what} '{self.text_field}' field, skipped")
            return None
        return body


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.endswith(JSONL_SUFFIXES)


class _Lines:
    """The stripped text lines of a byte stream, as (line number, text or None when skipped).

    Reads with a byte limit per line, so that a file with no newlines at all (or one huge line)
    costs bounded memory: a line longer than the limit is skipped without ever being held."""

    def __init__(self, stream: IO[bytes], raw: IO[bytes], reader: _Reader, name: str, base: int,
                 factor: int) -> None:
        self.stream, self.raw, self.reader, self.name = stream, raw, reader, name
        self.base = base  # bytes_read before this file
        self.compressed = stream is not raw
        self.max_chars = reader.max_chars * factor
        self.max_bytes = 4 * self.max_chars + 8  # UTF-8 needs at most 4 bytes a character; +\r\n, BOM
        self.lineno = 0

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        stats = self.reader.stats
        while True:
            line = self.stream.readline(self.max_bytes)
            if not line:
                return
            self.lineno += 1
            stats.lines += 1
            self._advance(len(line))
            if len(line) >= self.max_bytes and not line.endswith(b"\n"):
                self._skip_rest()
                self._too_long(f"over {self.max_chars} characters")
                yield self.lineno, None
                continue
            yield self.lineno, self._decode(line)

    def _advance(self, n: int) -> None:
        stats = self.reader.stats
        if not self.compressed:
            stats.bytes_read += n
        elif self.lineno % PROGRESS_EVERY == 0:  # the raw position is the compressed bytes read
            stats.bytes_read = self.base + self.raw.tell()

    def _skip_rest(self) -> None:
        while True:
            chunk = self.stream.readline(1 << 20)
            self._advance(len(chunk))
            if not chunk or chunk.endswith(b"\n"):
                return

    def _decode(self, line: bytes) -> str | None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            self.reader.skip_line("not_utf8", f"{self.name}:{self.lineno}",
                                  f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}), "
                                  "skipped")
            return None
        if self.lineno == 1:
            text = text.removeprefix("\ufeff")  # a byte order mark is not text
        text = text.strip()
        if len(text) > self.max_chars:
            self._too_long(f"{len(text)} characters")
            return None
        return text

    def _too_long(self, size: str) -> None:
        self.reader.skip_line("too_long", f"{self.name}:{self.lineno}",
                              f"line too long ({size}, limit {self.max_chars}), skipped")
