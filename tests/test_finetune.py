"""finetune.py: settings stored with the model, prediction inputs, the from-scratch baseline."""

from __future__ import annotations

import io
import json

import pytest
import torch

from bertkit import BertConfig, BertForSequenceClassification, BertModel
from bertkit.cli import main
from bertkit.errors import InputError
from bertkit.finetune import options_for, read_inputs, with_settings
from bertkit.tasks import BadInput, DataOptions, make_task


def test_options_stored_in_config_json_and_overridden_only_when_given(tmp_path):
    task = make_task("classify", DataOptions(max_length=48, label_separator="|", text_column="body"))
    config = with_settings(BertConfig.preset("tiny"), task)
    config.save(tmp_path)
    loaded = BertConfig.load(tmp_path)
    assert loaded.extra["bertkit"]["task"] == "classify"
    options = options_for(loaded, {"max_length": None, "text_column": "title", "unknown": 1})
    assert (options.max_length, options.label_separator, options.text_column) == (48, "|", "title")


def test_read_inputs_plain_lines_and_json_lines(tmp_path, monkeypatch):
    task = make_task("classify")
    path = tmp_path / "in.txt"
    path.write_text('first text\n\n{"text": "a", "text_pair": "b"}\nsecond text\n')
    examples = read_inputs(task, str(path), BadInput())
    assert [(e.text, e.text_pair) for e in examples] == [("first text", None), ("a", "b"), ("second text", None)]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from stdin\n")))
    assert [e.text for e in read_inputs(task, "-", BadInput())] == ["from stdin"]
    path.write_text('{"text": broken\n')
    with pytest.raises(InputError, match=r"in.txt:1: not valid JSON"):
        read_inputs(task, str(path), BadInput())
    with pytest.raises(InputError, match="no such file"):
        read_inputs(task, str(tmp_path / "missing.txt"), BadInput())


def test_random_init_keeps_only_the_architecture(tmp_path, tiny_model_dir):
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(8)))
    original = BertModel.from_pretrained(tiny_model_dir).embeddings.word.weight
    for random_init, expect_same in ((False, True), (True, False)):
        out = tmp_path / f"run-{random_init}"
        args = ["finetune", "--task", "classify", "--model", str(tiny_model_dir), "--train", str(data),
                "--out", str(out), "--epochs", "1", "--lr", "1e-9", "--no-progress"]
        assert main(args + (["--random-init"] if random_init else [])) == 0
        trained = BertForSequenceClassification.from_pretrained(out).bert.embeddings.word.weight
        assert torch.allclose(trained, original, atol=1e-6) == expect_same
        assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "a", "1": "b"}


def test_max_length_beyond_the_model_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.csv"
    data.write_text("text,label\nx,a\ny,b\n")
    assert main(["finetune", "--task", "classify", "--model", str(tiny_model_dir), "--train", str(data),
                 "--out", str(tmp_path / "o"), "--max-length", "4096"]) == 2
    assert "exceeds the model's max_position_embeddings=128" in capsys.readouterr().err


def test_evaluate_needs_a_finetuned_model(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "dev.csv"
    data.write_text("text,label\nx,a\n")
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data)]) == 2
    assert "has no fine-tuning task head" in capsys.readouterr().err
