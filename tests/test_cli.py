"""The bertkit command: each subcommand once, and one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bertkit.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_similarity_demo(capsys):
    code, out, _ = run(capsys, "similarity")
    assert code == 0 and "cosine similarity" in out and "A man is playing a guitar." in out


def test_embed_to_npy_and_jsonl(capsys, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("hello world\n\nsecond line\n", encoding="utf-8")
    code, _, err = run(capsys, "embed", "-i", str(src), "-o", str(tmp_path / "v.npy"))
    assert code == 0 and "wrote 2 vectors" in err
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (2, 384)
    code, _, _ = run(capsys, "embed", "-i", str(src), "-o", str(tmp_path / "v.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["hello world", "second line"]
    np.testing.assert_allclose(np.array(rows[0]["embedding"]), vectors[0], atol=1e-6)


def test_tokenize_and_info(capsys, minilm_dir):
    code, out, _ = run(capsys, "tokenize", "tokenization")
    assert code == 0 and json.loads(out)["tokens"] == ["[CLS]", "token", "##ization", "[SEP]"]
    code, out, _ = run(capsys, "info", "--model", str(minilm_dir))
    assert code == 0 and "layers 6, hidden 384" in out and "22,713,216" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "-i", "/no/such/file.txt"], "/no/such/file.txt: no such file"),
        (["similarity", "--model", "/no/such/dir", "a"], "/no/such/dir: no such file or directory"),
        (["embed", "-i", "{bad}", "-o", "out.csv"], "output must end in .npy or .jsonl"),
        (["info", "--model", "{empty}"], "needs a config.json"),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, argv, message):
    (tmp_path / "bad.txt").write_bytes(b"fine\n")
    (tmp_path / "empty").mkdir()
    argv = [a.format(bad=tmp_path / "bad.txt", empty=tmp_path / "empty") for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_undecodable_input_names_file_and_line(capsys, tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes(b"fine\ncaf\xe9\n")
    code, _, err = run(capsys, "embed", "-i", str(src))
    assert code == 2 and f"{src}:2: not valid UTF-8" in err


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "bertkit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "embed" in result.stdout and "similarity" in result.stdout


def test_config_dataclass_becomes_options():
    import argparse

    from bertkit.cli import add_config_options, config_from_args, field_docs
    from bertkit.train import TrainConfig

    docs = field_docs(TrainConfig)
    assert docs["grad_accum"] == "Micro-batches accumulated into one optimiser step."
    parser = argparse.ArgumentParser()
    add_config_options(parser, TrainConfig)
    args = parser.parse_args(["--out", "runs/x", "--steps", "5", "--no-progress", "--betas", "0.9", "0.98"])
    config = config_from_args(TrainConfig, args)
    assert config.steps == 5 and config.progress is False and config.betas == (0.9, 0.98)
    assert str(config.out) == "runs/x" and config.lr == 1e-4
    assert "Micro-batches accumulated" in parser.format_help()
