"""Reading and writing files: atomic writes that never leave a half-written file in place, and
one-line errors (InputError) that name the path and the cause when the file system says no.

    check_input_file(path)      a file to read: "PATH: no such file" / "PATH: is a directory, not a file"
    read_lines(source, bad)     the lines of a UTF-8 file or of stdin ('-'); "FILE:LINE" names a bad one
    iter_lines(source, bad)     the same, one at a time (a file of any size in flat memory)
    check_output_file(path)     before any work: can PATH be written (its folder created)?
    check_output_dir(path)      before any work: can PATH be a folder to write into?
    prepare_output_dir(path)    create the folder (and its parents) now
    atomic_write(path)          a file object writing into a temporary sibling, renamed over PATH at the end
    write_text_atomically(path, text)
    npy_rows(path)              a .npy file written a block of rows at a time, atomically
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
    return list(iter_lines(source, bad, strip_bom=strip_bom))


def iter_lines(source: PathLike, bad: Callable[[str, str], None] | None = None, *,
               strip_bom: bool = False) -> Iterator[str | None]:
    """`read_lines`, one line at a time: a file of any size is read without holding it."""
    if source == "-":
        yield from _decoded(sys.stdin.buffer, "<stdin>", bad, strip_bom)
        return
    path = check_input_file(source)
    try:
        with open(path, "rb") as f:
            yield from _decoded(f, str(source), bad, strip_bom)
    except OSError as e:
        raise InputError(os_error_message(e, path)) from None


def _decoded(raw_lines: IO[bytes], name: str, bad: Callable[[str, str], None] | None,
             strip_bom: bool) -> Iterator[str | None]:
    for number, raw in enumerate(raw_lines, start=1):
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        try:
            yield raw.decode("utf-8-sig" if strip_bom and number == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            where, problem = f"{name}:{number}", f"not valid UTF-8 (byte {e.start})"
            if bad is None:
                raise InputError(f"{where}: {problem}") from None
            bad(where, problem)
            yield None


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


NPY_HEADER_BYTES = 128  # magic, version, length and the header text, padded: room for any row count


class NpyRows:
    """Rows appended to a .npy file as they come (`append(rows)`, each (n, D) of one dtype), so that
    a million vectors never sit in memory together; the header, rewritten with the final row count
    when the block ends, has a fixed size. Written atomically, as `atomic_write` does."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.rows, self.dtype, self.width = file, 0, None, None
        file.write(b"\0" * NPY_HEADER_BYTES)  # the header's place

    def append(self, rows: Any) -> None:
        import numpy as np

        rows = np.ascontiguousarray(rows)
        if rows.ndim != 2:
            raise ValueError(f"rows must be (n, D), got shape {rows.shape}")
        if self.dtype is None:
            self.dtype, self.width = rows.dtype, rows.shape[1]
        if rows.ndim != 2 or rows.dtype != self.dtype or rows.shape[1] != self.width:
            raise ValueError(f"rows {rows.dtype}{rows.shape} do not continue {self.dtype}(*, {self.width})")
        self.file.write(rows.tobytes())
        self.rows += rows.shape[0]

    def header(self) -> bytes:
        """.npy format 1.0: magic, version 1.0, the text's length (uint16, little-endian), the text."""
        text = f"{{'descr': '{self.dtype.str}', 'fortran_order': False, 'shape': ({self.rows}, {self.width}), }}"
        room = NPY_HEADER_BYTES - 10
        return b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + text.ljust(room - 1).encode("latin-1") + b"\n"


@contextlib.contextmanager
def npy_rows(path: PathLike) -> Iterator[NpyRows]:
    """`with npy_rows(path) as out: out.append(rows)...`: a .npy file written row block by row block."""
    with atomic_write(path, "wb") as f:
        out = NpyRows(f)
        yield out
        if out.dtype is None:
            raise ValueError("no rows were written")
        f.seek(0)
        f.write(out.header())


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
