"""Reading and writing files: atomic writes that never leave a half-written file in place, and
one-line errors (InputError) that name the path and the cause when the file system says no.

    check_input_file(path)      a file to read: "PATH: no such file" / "PATH: is a directory, not a file"
    read_lines(source, bad)     the lines of a UTF-8 file or of stdin ('-'); "FILE:LINE" names a bad one
    check_output_file(path)     before any work: can PATH be written (its folder created)?
    check_output_dir(path)      before any work: can PATH be a folder to write into?
    prepare_output_dir(path)    create the folder (and its parents) now
    atomic_write(path)          a file object writing into a temporary sibling, renamed over PATH at the end
    write_text_atomically(path, text)
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from bertkit.errors import InputError

TMP_PREFIX = ".tmp-"  # temporary files and directories start with this; readers ignore them

PathLike = str | os.PathLike

# the OS errors a user fixes (free space, permissions, a wrong path), as one-line causes
CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.EEXIST: "already exists",
}
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
"""Errors that are never a bug of the caller's: the CLI reports them in one line wherever they happen."""


def cause(e: OSError) -> str:
    """'no space left on device': the OS error in a few lower-case words."""
    if e.errno in CAUSES:
        return CAUSES[e.errno]
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]


def os_error_message(e: OSError, path: PathLike | None = None) -> str:
    """'PATH: cause' for an OSError, naming `path` (else the error's own file name)."""
    where = path if path is not None else e.filename
    return f"{where}: {cause(e)}" if where is not None else cause(e)


def write_error(path: PathLike, e: OSError) -> InputError:
    """The InputError to raise for an OSError while writing `path`."""
    failed = e.filename
    if failed is not None and Path(failed) != Path(path) and not Path(failed).name.startswith(TMP_PREFIX):
        return InputError(f"{path}: {cause(e)} ({failed})")
    return InputError(f"{path}: {cause(e)}")


# ---- inputs ---------------------------------------------------------------------------------------------


def check_input_file(path: PathLike) -> Path:
    """`path` as a Path when it is a file that can be read; else one line saying why not."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    return path


def read_lines(source: PathLike, bad: Callable[[str, str], None] | None = None, *,
               strip_bom: bool = False) -> list[str | None]:
    """The lines of a UTF-8 file, or of standard input when `source` is the string '-': split at "\\n",
    a CRLF's "\\r" removed, no empty line after the last newline. A line that is not UTF-8 is None,
    after `bad("FILE:LINE", "not valid UTF-8 (byte N)")`, or raises InputError("FILE:LINE: ...")
    when there is no `bad`. strip_bom=True drops a byte order mark that starts the file."""
    if source == "-":
        data, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        data, name = check_input_file(source).read_bytes(), str(source)
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    lines: list[str | None] = []
    for number, raw in enumerate(pieces, start=1):
        try:
            lines.append(raw.decode("utf-8-sig" if strip_bom and number == 1 else "utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            where, problem = f"{name}:{number}", f"not valid UTF-8 (byte {e.start})"
            if bad is None:
                raise InputError(f"{where}: {problem}") from None
            bad(where, problem)
            lines.append(None)
    return lines


# ---- outputs --------------------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (the current directory at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _probe(directory: Path, target: Path) -> None:
    """Create and remove a temporary folder in `directory`: proves that `target` can be written there."""
    probe = directory / f"{TMP_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError as e:
        where = "" if directory == target else f" (in {directory})"
        raise InputError(f"{target}: {cause(e)}{where}") from None
    probe.rmdir()


def check_output_dir(path: PathLike) -> Path:
    """Before any work, without creating anything: can `path` be (or become) a folder we write into?
    Raises 'PATH: is a file, not a directory', 'PATH: permission denied (in /parent)', ..."""
    path = Path(path)
    _check_writable(path, path)
    return path


def check_output_file(path: PathLike) -> Path:
    """Before any work: can `path` be written (its missing folders created)? Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    _check_writable(path.parent, path)
    return path


def _check_writable(directory: Path, target: Path) -> None:
    """Can `directory` be created (if missing) and written into? Errors name `target`."""
    existing = _nearest_existing(directory)
    if existing == target and not existing.is_dir():
        raise InputError(f"{target}: is a file, not a directory")
    if not existing.is_dir():
        raise InputError(f"{target}: {existing} is a file, not a directory")
    _probe(existing, target)


def prepare_output_dir(path: PathLike) -> Path:
    """Create the folder `path` and its parents (if missing) now, and check it can be written into;
    one line if not ('OUT: is a file, not a directory', 'OUT: permission denied', ...)."""
    path = Path(path)
    make_dirs(path)
    _probe(path, path)
    return path


def make_dirs(path: PathLike) -> Path:
    """`mkdir -p path`, with the one-line errors of check_output_dir."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        check_output_dir(path)  # names the culprit: a file in the way, a folder we may not write
        raise write_error(path, e) from None
    return path


def ensure_parent(path: PathLike) -> Path:
    """Create the missing folders above the file `path`; returns `path`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    if not path.parent.is_dir():
        make_dirs(path.parent)
    return path


def temporary_name(path: Path) -> Path:
    """A unique sibling of `path` to write into before renaming it into place."""
    return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _open_new(path: Path, mode: str) -> IO[Any]:
    # open(..., "x") rather than mkstemp, so the file gets the usual (umask) permissions
    return open(path, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}))


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """A file object ("w" text, "wb" bytes) writing a temporary sibling of `path`, which is flushed
    to disk and renamed over `path` when the block ends. Missing parent folders are created.

    An OSError (full disk, permissions, a read-only file system) becomes an InputError naming
    `path` and the cause; on any error the temporary file is removed and `path` is left as it was."""
    path = ensure_parent(path)
    tmp = temporary_name(path)
    try:
        with _open_new(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomically(path: PathLike, text: str) -> Path:
    """Write `text` to a temporary sibling, flush it to disk, then rename it over `path`.
    Raises InputError ('PATH: no space left on device') if the file system refuses."""
    path = Path(path)
    with atomic_write(path) as f:
        f.write(text)
    return path


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
