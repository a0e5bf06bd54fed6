"""Writing files so that a crash never leaves a half-written one in place."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"  # temporary files and directories start with this; readers ignore them


def temporary_name(path: Path) -> Path:
    """A unique sibling of `path` to write into before renaming it into place."""
    return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary sibling, flush it to disk, then rename it over `path`."""
    path = Path(path)
    tmp = temporary_name(path)
    try:  # open(..., "x") rather than mkstemp, so the file gets the usual (umask) permissions
        with open(tmp, "x", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
