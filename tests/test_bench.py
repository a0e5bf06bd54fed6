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


# ---- bench/datasets.py docstrings and bench/embed_finetune.py ---------------------------------------

DATASETS = BENCH.with_name("datasets.py")
EMBED_BENCH = BENCH.with_name("embed_finetune.py")


@pytest.fixture(scope="module")
def bench_datasets():
    """bench/datasets.py by path (`datasets` is also the name of Hugging Face's package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_datasets", DATASETS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NUMPYDOC = '''Compute the weighted average along the specified axis.

The result is the sum of each element times its weight, divided by the sum of the weights;
``weighted_average`` is faster than :func:`numpy.sum` for this.

    literal = "an indented block is code, not prose"

Parameters
----------
a : array_like
    The values.

Examples
--------
>>> weighted_average([1, 2])
1.5
'''


def test_split_docstring_keeps_the_prose_and_drops_name_sections_and_code(bench_datasets):
    query, positive = bench_datasets.split_docstring(NUMPYDOC, "weighted_average")
    assert query == "Compute the weighted average along the specified axis."
    assert positive == ("The result is the sum of each element times its weight, divided by the sum of the weights; "
                        "this function is faster than numpy.sum for this.")


def test_split_docstring_google_style_and_truncation(bench_datasets):
    doc = ("Load a tokenizer from a folder on disk.\n\n" + "It reads the vocabulary file. " * 40
           + "\n\nArgs:\n    path: the folder.\n")
    query, positive = bench_datasets.split_docstring(doc, "load", max_chars=100)
    assert query == "Load a tokenizer from a folder on disk."
    assert positive == "It reads the vocabulary file. It reads the vocabulary file. It reads the vocabulary file."
    assert "Args" not in bench_datasets.split_docstring(doc, "load")[1]


@pytest.mark.parametrize("doc", [
    "sort(a, axis=-1) -> ndarray\n\nReturn a sorted copy of an array, smallest value first, along the axis given.",
    "Alias for the weighted average of the values.\n\nSee the other function for what it does and how.",
    "Compute the thing that matters most.\n\nToo short.",
    "Compute the thing that matters most.\n\nParameters\n----------\nx : int\n    The input value of the thing.",
    "Return one value without a description.",
])
def test_split_docstring_refuses_pairs_that_are_no_fair_query(bench_datasets, doc):
    assert bench_datasets.split_docstring(doc, "f") is None


def test_docstrings_dataset_is_deterministic_disjoint_tsv(bench_datasets, tmp_path):
    paths = bench_datasets.docstrings(tmp_path / "a", train=100, dev=30, test=40, packages=("json", "email", "numpy"))
    again = bench_datasets.docstrings(tmp_path / "b", train=100, dev=30, test=40, packages=("json", "email", "numpy"))
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    splits = []
    for path, n in zip(paths, (100, 30, 40)):
        lines = path.read_text(encoding="utf-8").split("\n")
        assert lines[0] == "anchor\tpositive" and lines[-1] == ""
        rows = [line.split("\t") for line in lines[1:-1]]
        assert len(rows) == n and all(len(r) == 2 and r[0].strip() and len(r[1]) >= 80 for r in rows)
        splits.append(rows)
    texts = [{t for row in rows for t in row} for rows in splits]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


@pytest.mark.slow
def test_embed_finetune_bench_quick(tmp_path, minilm_dir):
    """The smoke run: zero-shot and sentence-transformers' fine-tuning (and bertkit's, once
    `finetune --task embed` exists), scored by one evaluator."""
    import importlib.util

    runs = "zero-shot,sentence-transformers" + (",bertkit" if importlib.util.find_spec("bertkit.tasks.embed") else "")
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(EMBED_BENCH), "--quick", "--data", str(tmp_path / "data"), "--model", str(minilm_dir),
           "--runs", runs, "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert list(report["runs"]) == runs.split(",")
    for run in report["runs"].values():
        assert all(0 <= run[m] <= 1 for m in ("recall@1", "recall@10", "mrr@10", "ndcg@10"))
    assert report["runs"]["sentence-transformers"]["steps"] == 8  # 64 pairs, batch 8, one epoch
    if "bertkit" in report["runs"]:
        assert report["runs"]["bertkit"]["steps"] in (8, None)


# ---- bench/mfu.py: the FLOPs formula by hand, and a smoke run --------------------------------------------

MFU_BENCH = BENCH.with_name("mfu.py")


@pytest.fixture(scope="module")
def bench_mfu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_mfu", MFU_BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mfu_model_flops_by_hand(bench_mfu):
    from types import SimpleNamespace

    # C=4, F=8, one layer, V=10: N = 4*16 + 2*4*8 = 128 matmul weights
    config = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=1, vocab_size=10, num_labels=2)
    assert bench_mfu.encoder_matmul_params(config) == 128
    # one row of 3 tokens: 6*128*3 + 12*1*4*3*3 = 2304 + 432; MLM on 1 token 6*(16 + 40); NSP 6*(16 + 8)
    assert bench_mfu.training_flops(config, [3], masked=1, head="pretraining") == 2304 + 432 + 336 + 144
    assert bench_mfu.training_flops(config, [3], masked=0, head="classify") == 2304 + 432 + 144
    assert bench_mfu.inference_flops(config, [3, 1]) == (2 * 128 * 3 + 4 * 4 * 9) + (2 * 128 + 4 * 4)
    assert bench_mfu.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert bench_mfu.peak_tflops("NVIDIA H200", "bf16") == bench_mfu.peak_tflops("NVIDIA H100 80GB HBM3", "bf16")
    assert bench_mfu.peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert bench_mfu.peak_tflops("cpu", "fp32") is None


@pytest.mark.slow
def test_mfu_bench_quick(tmp_path):
    out = tmp_path / "mfu.json"
    result = subprocess.run([sys.executable, str(MFU_BENCH), "--quick", "--device", "cpu", "--threads", "1",
                             "--peak-tflops", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["precision"] == "fp32" and report["device"] == "cpu" and report["peak_tflops"] == 1
    assert [r["what"].split()[0] for r in report["runs"]] == ["pretraining", "fine-tuning"]
    for run in report["runs"]:
        ours, ref = run["bertkit"], run["transformers"]
        assert ours["tokens_per_s"] > 0 and ref["tokens_per_s"] > 0
        assert ours["mfu"] == pytest.approx(ours["tflops"])  # peak 1 TFLOP/s
        assert ours["ratio"] == pytest.approx(ref["seconds"] / ours["seconds"])
    assert "| pretraining seq 32 | bertkit |" in result.stdout
