"""fileio.py: atomic writes and one-line errors naming the path and the cause.

We run as root, where chmod cannot make a folder read-only: permission errors come from sysfs
(where even root may not create files) when it behaves so, else from a monkeypatched mkdir/open.
A full disk is real: the temporary file is opened on /dev/full, whose writes fail with ENOSPC."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from bertkit import fileio
from bertkit.errors import InputError
from bertkit.fileio import (
    TMP_PREFIX,
    atomic_write,
    check_input_file,
    check_output_dir,
    check_output_file,
    ensure_parent,
    iter_lines,
    npy_rows,
    prepare_output_dir,
    read_lines,
    write_text_atomically,
)


def sysfs_refuses_files() -> bool:
    try:
        Path(f"/sys/{TMP_PREFIX}bertkit-probe").mkdir()
    except OSError as e:
        return e.errno in (errno.EACCES, errno.EPERM)
    Path(f"/sys/{TMP_PREFIX}bertkit-probe").rmdir()
    return False


def full_disk(monkeypatch) -> None:
    """Every atomic write goes to /dev/full: the kernel answers ENOSPC when the data is flushed."""
    monkeypatch.setattr(fileio, "_open_new", lambda path, mode: open("/dev/full", mode))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_check_input_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert check_input_file(tmp_path / "a.txt") == tmp_path / "a.txt"
    with pytest.raises(InputError, match=f"^{tmp_path}: is a directory, not a file$"):
        check_input_file(tmp_path)
    with pytest.raises(InputError, match="missing.txt: no such file$"):
        check_input_file(tmp_path / "missing.txt")


def test_read_lines(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\n\nthree\n")
    assert read_lines(path) == ["\ufeffone", "two", "", "three"]  # no empty line after the last newline
    assert read_lines(path, strip_bom=True) == ["one", "two", "", "three"]
    path.write_bytes(b"fine\ncaf\xe9\nend")
    with pytest.raises(InputError, match=f"^{path}:2: not valid UTF-8 \\(byte 3\\)$"):
        read_lines(path)
    reported = []
    assert read_lines(path, lambda where, problem: reported.append((where, problem))) == ["fine", None, "end"]
    assert reported == [(f"{path}:2", "not valid UTF-8 (byte 3)")]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a\n\xff\n")))
    with pytest.raises(InputError, match="^<stdin>:2: not valid UTF-8"):
        read_lines("-")
    with pytest.raises(InputError, match="missing.txt: no such file$"):
        read_lines(tmp_path / "missing.txt")


def test_iter_lines_reads_as_it_goes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\ntwo\n\xff\nfour")
    lines = iter_lines(path)
    assert next(lines) == "one" and next(lines) == "two"  # the bad third line is not read yet
    with pytest.raises(InputError, match=f"^{path}:3: not valid UTF-8"):
        next(lines)
    assert list(iter_lines(path, lambda *_: None)) == read_lines(path, lambda *_: None) == ["one", "two", None, "four"]


@pytest.mark.parametrize("dtype", ["float32", "int8", "uint8"])
def test_npy_rows_writes_what_numpy_reads(tmp_path, dtype):
    import numpy as np

    rows = (np.random.default_rng(0).normal(size=(1001, 5)) * 50).astype(dtype)
    with npy_rows(tmp_path / "v.npy") as out:
        for start in range(0, 1001, 300):
            out.append(rows[start:start + 300])
        with pytest.raises(ValueError, match="do not continue"):
            out.append(rows[:2, :4])
    assert out.rows == 1001 and leftovers(tmp_path) == ["v.npy"]
    loaded = np.load(tmp_path / "v.npy")
    assert loaded.dtype == rows.dtype and np.array_equal(loaded, rows)
    assert np.load(tmp_path / "v.npy", mmap_mode="r").shape == (1001, 5)


def test_npy_rows_leaves_nothing_when_the_block_fails(tmp_path):
    import numpy as np

    (tmp_path / "v.npy").write_text("old")
    with pytest.raises(RuntimeError), npy_rows(tmp_path / "v.npy") as out:
        out.append(np.zeros((3, 2), dtype=np.float32))
        raise RuntimeError("stopped")
    assert (tmp_path / "v.npy").read_text() == "old" and leftovers(tmp_path) == ["v.npy"]


def test_check_output_dir_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_output_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert check_output_dir(tmp_path) == tmp_path
    assert leftovers(tmp_path) == ["file"]
    with pytest.raises(InputError, match=f"^{tmp_path}/file: is a file, not a directory$"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(InputError, match=f"^{tmp_path}/file/sub: {tmp_path}/file is a file, not a directory$"):
        check_output_dir(tmp_path / "file" / "sub")
    with pytest.raises(InputError, match="is a directory, not a file"):
        check_output_file(tmp_path)
    with pytest.raises(InputError, match="file is a file, not a directory"):
        check_output_file(tmp_path / "file" / "out.jsonl")


def test_permission_denied_is_one_line(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(InputError, match=f"^{tmp_path}/out: permission denied \\(in {tmp_path}\\)$"):
        check_output_dir(tmp_path / "out")
    with pytest.raises(InputError, match=f"^{tmp_path}: permission denied$"):
        prepare_output_dir(tmp_path)


@pytest.mark.skipif(not sysfs_refuses_files(), reason="sysfs lets this user create files")
def test_real_permission_denied_on_sysfs():
    with pytest.raises(InputError, match="^/sys/out: (permission denied|operation not permitted) \\(in /sys\\)$"):
        check_output_dir("/sys/out")
    with pytest.raises(InputError, match="^/sys/vectors.npy: permission denied$"):
        with atomic_write("/sys/vectors.npy", "wb") as f:
            f.write(b"x")


def test_prepare_output_dir_and_ensure_parent_create_folders(tmp_path):
    assert prepare_output_dir(tmp_path / "a" / "b").is_dir()
    assert ensure_parent(tmp_path / "c" / "d" / "v.npy") == tmp_path / "c" / "d" / "v.npy"
    assert (tmp_path / "c" / "d").is_dir()
    assert leftovers(tmp_path / "a" / "b") == []  # the write probe is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="file is a file, not a directory"):
        prepare_output_dir(tmp_path / "file" / "sub")


def test_atomic_write_replaces_at_the_end_and_creates_parents(tmp_path):
    target = tmp_path / "new" / "out.jsonl"
    with atomic_write(target) as f:
        f.write("one\n")
        assert not target.exists()  # nothing at the final name until the block ends
    assert target.read_text() == "one\n"
    assert write_text_atomically(target, "two\n") == target and target.read_text() == "two\n"
    with atomic_write(tmp_path / "v.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "v.bin").read_bytes() == b"\x00\x01"
    assert leftovers(target.parent) == ["out.jsonl"]


def test_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    full_disk(monkeypatch)
    with pytest.raises(InputError, match=f"^{target}: no space left on device$"):
        with atomic_write(target) as f:
            f.write("new\n" * 10_000)
    assert target.read_text() == "old\n" and leftovers(tmp_path) == ["out.jsonl"]


def test_an_error_inside_the_block_leaves_no_trace(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(KeyError):
        with atomic_write(target, "wb") as f:
            f.write(b"partial")
            raise KeyError("boom")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "read-only file system"), (errno.ENOSPC, "no space left on device"),
                                         (errno.EISDIR, "is a directory"), (errno.ENOTDIR, "not a directory")])
def test_write_errors_name_the_path_not_the_temporary_file(tmp_path, monkeypatch, code, cause):
    def fail(path, mode):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(fileio, "_open_new", fail)
    with pytest.raises(InputError) as e:
        write_text_atomically(tmp_path / "config.json", "{}")
    assert str(e.value) == f"{tmp_path / 'config.json'}: {cause}"
