"""finetune.py: the from-scratch baseline, checks before any work, two processes = one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bertkit import BertForSequenceClassification, BertModel
from bertkit.cli import main
from tests.conftest import free_port


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


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on Linux")
def test_two_processes_match_one_process_with_double_batch(tmp_path, minilm_dir):
    from bertkit import Tokenizer
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    start = tmp_path / "start"  # no dropout, so the two runs see the same computation
    BertModel(tiny_config(vocab_size=30522, max_position_embeddings=128, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)).save_pretrained(
        start, tokenizer=Tokenizer.from_pretrained(minilm_dir))
    data = tmp_path / "train.csv"
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    data.write_text("text,label\n" + "".join(f"{words[i % 6]} item {i} {'very ' * (i % 5)},{'pn'[i % 2]}\n"
                                             for i in range(24)))

    def args(out, batch):
        return ["finetune", "--task", "classify", "--model", str(start), "--train", str(data), "--dev", str(data),
                "--out", str(out), "--epochs", "2", "--batch-size", str(batch), "--lr", "1e-3", "--log-every", "1",
                "--precision", "fp32", "--no-progress"]

    assert main(args(tmp_path / "one", 8)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "bertkit", *args(tmp_path / "two", 4)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

    def rows(out, split):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["split"] == split]

    a, b = rows(tmp_path / "one", "train"), rows(tmp_path / "two", "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) == 6
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-4)
    assert rows(tmp_path / "one", "valid")[-1]["accuracy"] == rows(tmp_path / "two", "valid")[-1]["accuracy"]
