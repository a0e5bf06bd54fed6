"""predict.py: settings stored with the model, prediction inputs, evaluation shared between processes."""

from __future__ import annotations

import io

import pytest

import bertkit
from bertkit import BertConfig
from bertkit.cli import main
from bertkit.errors import InputError
from bertkit.predict import options_for, read_inputs, with_settings
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


def test_evaluate_needs_a_finetuned_model(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "dev.csv"
    data.write_text("text,label\nx,a\n")
    pretrained = tmp_path / "mlm"
    bertkit.BertForMaskedLM.from_pretrained(tiny_model_dir).save_pretrained(pretrained)
    assert main(["evaluate", "--model", str(pretrained), "--data", str(data)]) == 2
    assert "has no fine-tuning task head" in capsys.readouterr().err
    # a plain encoder is scored as an embedding model (zero-shot retrieval): a classification file is refused
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data)]) == 2
    assert "cannot tell which field holds the text" in capsys.readouterr().err


def test_evaluation_work_is_shared_between_processes_and_outputs_come_back_in_order(monkeypatch):
    from bertkit import distributed, predict
    from bertkit.distributed import World

    features, runs = list(range(7)), []

    def run(part):
        runs.append(list(part))
        return [f * 10 for f in part]

    # what all_gather_objects returns on rank 1 of 3: every rank's outputs on its own share
    monkeypatch.setattr(distributed, "all_gather_objects",
                        lambda mine, world: [mine if r == world.rank else run(features[r::3]) for r in range(3)])
    assert predict.shared_outputs(run, features, World(rank=1, world_size=3)) == [f * 10 for f in features]
    assert sorted(map(tuple, runs)) == [(0, 3, 6), (1, 4), (2, 5)]  # each feature run once, by one rank
    assert predict.shared_outputs(run, features, World()) == [f * 10 for f in features]
