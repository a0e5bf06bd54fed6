"""bench/finetune.py against transformers' Trainer: whole runs (--against trainer) and training steps
taking turns (--interleave), and the baton that makes the two loops alternate."""

import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "finetune.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_finetune", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_baton_makes_two_loops_take_turns_step_by_step():
    baton = _bench_module().Baton(("a", "b"))
    order: list[str] = []

    def loop(side, steps):
        try:
            for _ in range(steps):
                baton.boundary(side)
                order.append(side)
        finally:
            baton.finish(side)

    other = threading.Thread(target=loop, args=("a", 4))
    other.start()
    loop("b", 6)  # the longer side carries on alone once the other has finished
    other.join(timeout=10)
    assert order == ["a", "b"] * 4 + ["b", "b"]
    assert len(baton.times["a"]) == 3 and len(baton.times["b"]) == 5  # a step is timed when the next begins


def _data(tmp_path):
    data = tmp_path / "train.csv"
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    data.write_text("text,label\n" + "".join(f"{words[i % 6]} {words[i % 6]},{'pn'[i % 2]}\n" for i in range(40)))
    return data


def _bench(tmp_path, model_dir, *options: str) -> dict:
    """bench/finetune.py on the tiny classify data with `options`; its JSON result."""
    data, out = _data(tmp_path), tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH), "--task", "classify", "--model", str(model_dir), "--train", str(data),
           "--dev", str(data), "--batch-size", "4", "--max-length", "32", "--threads", "1", *options,
           "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_interleaved_steps_against_the_trainer(tmp_path, tiny_model_dir):
    pytest.importorskip("accelerate")  # transformers' Trainer needs it
    sides = _bench(tmp_path, tiny_model_dir, "--interleave", "6", "--warmup-steps", "1")["interleaved"]
    assert sides["bertkit"]["steps"] == sides["trainer"]["steps"] == 4  # steps 2..5 of 6
    assert sides["bertkit"]["tokens"] == sides["trainer"]["tokens"] > 0  # the same batches
    assert sides["bertkit"]["median_s"] > 0 and sides["trainer"]["median_s"] > 0


@pytest.mark.slow
def test_whole_runs_against_the_trainer(tmp_path, tiny_model_dir):
    pytest.importorskip("accelerate")
    ours, other = _bench(tmp_path, tiny_model_dir, "--epochs", "2", "--against", "trainer")["runs"]
    assert other["name"] == "transformers Trainer"
    assert [e["step"] for e in ours["epochs"]] == [e["step"] for e in other["epochs"]] == [10, 20]


# ---- bench/pretrain.py: the multiply work each side does -------------------------------------------------


def test_pretrain_bench_counts_the_same_work_when_every_token_is_read():
    """With no padding and every token selected, bertkit's picked last layer and decoder do all the
    work transformers' do; selecting fewer and padding some leaves that much out, by hand."""
    import torch

    spec = importlib.util.spec_from_file_location("bench_pretrain", BENCH.with_name("pretrain.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from bertkit import BertConfig

    config = BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=2, num_attention_heads=1,
                        intermediate_size=8, max_position_embeddings=8)
    full = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
            "labels": torch.ones(2, 3, dtype=torch.long)}
    ours, theirs = bench.multiply_work(config, full)
    assert ours == theirs
    # by hand: a layer's linears 6 * (4*16 + 2*32) = 768 FLOPs a token, attention 12 * 4 a query and key,
    # the head 6 * (16 + 40) = 336 a selected token
    part = dict(full, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), labels=torch.tensor([[-100, 5, -100],
                                                                                             [-100, -100, -100]]))
    ours, theirs = bench.multiply_work(config, part)
    assert theirs == 6 * (2 * 768 + 336) + 2 * 2 * 12 * 4 * 9
    first = 5 * 768 + 12 * 4 * 2 * 3 * 3  # layer 1: 5 real tokens; attention on 2 rows laid out to 3
    last = 5 * 6 * 2 * 16 + 3 * 6 * (2 * 16 + 2 * 32) + 12 * 4 * 2 * 2 * 3  # keys, values; 3 picked, 2 a row at most
    assert ours == first + last + 336
