"""bench/finetune.py on a tiny model: both sides run, and they agree (the script's whole point)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "finetune.py"


@pytest.mark.slow
@pytest.mark.parametrize("against", ["transformers", "random"])
def test_finetune_bench_runs_both_sides(tmp_path, tiny_model_dir, against):
    data = tmp_path / "train.csv"
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    data.write_text("text,label\n" + "".join(f"{words[i % 6]} {words[i % 6]},{'pn'[i % 2]}\n" for i in range(40)))
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH), "--task", "classify", "--model", str(tiny_model_dir), "--train", str(data),
           "--dev", str(data), "--epochs", "5", "--batch-size", "4", "--lr", "1e-3", "--max-length", "32",
           "--threads", "1", "--against", against, "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ours, other = json.loads(out.read_text())["runs"]
    assert [e["step"] for e in ours["epochs"]] == [e["step"] for e in other["epochs"]] == [10, 20, 30, 40, 50]
    assert ours["seconds"] > 0 and other["seconds"] > 0
    if against == "transformers":  # same start, batches, dropout and optimiser: the same scores
        for a, b in zip(ours["epochs"], other["epochs"]):
            assert a["accuracy"] == pytest.approx(b["accuracy"]) and a["f1"] == pytest.approx(b["f1"])
