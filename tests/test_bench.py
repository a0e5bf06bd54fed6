"""bench/finetune.py on a tiny model: both sides run, and they agree (the script's whole point)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "finetune.py"


def load_bench(path: Path, name: str):
    """A bench/ script by path, as module `name` (registered: dataclasses look their module up there;
    by path because bench/datasets.py shares its name with Hugging Face's package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
    return load_bench(DATASETS, "bench_datasets")


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
    return load_bench(MFU_BENCH, "bench_mfu")


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


# ---- bench/int8_accuracy.py ------------------------------------------------------------------------

INT8_BENCH = BENCH.with_name("int8_accuracy.py")


@pytest.fixture(scope="module")
def bench_int8():
    return load_bench(INT8_BENCH, "bench_int8_accuracy")


def test_int8_bench_cosines_and_logit_drift_by_hand(bench_int8):
    import numpy as np

    a = np.array([[1.0, 0.0], [3.0, 4.0]])
    b = np.array([[1.0, 1.0], [3.0, 4.0]])
    assert bench_int8.cosines(a, b) == pytest.approx([2 ** -0.5, 1.0])
    # tag: per real token only — the padded third position (a huge diff, a different argmax) is ignored
    features = [{"input_ids": [5, 6]}]
    fp32 = [{"logits": np.array([[1.0, 0.0], [0.0, 1.0], [9.0, 0.0]])}]
    int8 = [{"logits": np.array([[0.75, 0.5], [0.5, 0.25], [0.0, 9.0]])}]
    drift = bench_int8.logit_drift("tag", features, fp32, int8)
    assert drift == {"max_abs_diff": 0.75, "label_agreement": 0.5, "labels": 2}
    # classify: one label per sequence, all of its logits compared
    drift = bench_int8.logit_drift("classify", [{"input_ids": [5]}], [{"logits": np.array([2.0, 1.0])}],
                                   [{"logits": np.array([2.5, 1.0])}])
    assert drift == {"max_abs_diff": 0.5, "label_agreement": 1.0, "labels": 1}


@pytest.mark.slow  # two tiny fine-tunings, then every case at three precisions (~15 s quiet, ~70 s loaded)
def test_int8_bench_quick_on_tiny_models(tmp_path, tiny_model_dir, bench_int8, capsys):
    """Three families on tiny models: the fp32 column is exactly what `evaluate` reports, the deltas
    are int8 - fp32 in points, and int8 really ran (outputs moved, but not far)."""
    pytest.importorskip("bertkit.quantize")
    from bertkit.cli import main
    from bertkit.predict import run_evaluate

    words = ["good", "bad", "fine", "awful", "great", "poor"]
    cls_data = tmp_path / "cls.csv"
    cls_data.write_text("text,label\n" + "".join(f"{words[i % 6]} item {i},{'pn'[i % 2]}\n" for i in range(12)))
    tag_data = tmp_path / "tag.conll"
    tag_data.write_text("".join(f"John\tB-person\nSmith\tI-person\nlikes\tO\n{w}\tO\n\n" for w in words))
    emb_data = tmp_path / "pairs.tsv"
    emb_data.write_text("anchor\tpositive\n" + "".join(f"what is {w}\t{w} means something {i}\n"
                                                      for i, w in enumerate(words)))
    cases = []
    for task, data in (("classify", cls_data), ("tag", tag_data)):
        out = tmp_path / task
        assert main(["finetune", "--task", task, "--model", str(tiny_model_dir), "--train", str(data),
                     "--out", str(out), "--epochs", "1", "--max-length", "32", "--precision", "fp32",
                     "--no-progress"]) == 0
        cases += ["--case", str(out), str(data)]
    cases += ["--case", str(tiny_model_dir), str(emb_data)]
    report = tmp_path / "int8.json"
    capsys.readouterr()
    assert bench_int8.main(cases + ["--quick", "--threads", "1", "--embedder", str(tiny_model_dir),
                                    "--embed-max-length", "32", "--variant", "qkv,out,up,down@0.7",
                                    "--json", str(report)]) == 0
    assert "| classify |" in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert [c["task"] for c in result["cases"]] == ["classify", "tag", "embed"]
    variants = ["int8", "int8[qkv,out,up,down@0.7]"]
    for case in result["cases"]:
        assert list(case["drift"]) == list(case["speedup"]) == variants
        for variant in variants:
            for name, value in case["metrics"]["fp32"].items():
                delta = (case["metrics"][variant][name] - value) * 100
                assert case["delta_points"][variant][name] == pytest.approx(delta)
            assert case["seconds"]["fp32"] > 0 and case["seconds"][variant] > 0
    classify, tag, embed = result["cases"]
    assert classify["metrics"]["fp32"] == pytest.approx(run_evaluate(str(tmp_path / "classify"), cls_data, {}))
    for variant in variants:
        assert 0 < classify["drift"][variant]["max_abs_diff"] < 1 and 0 < tag["drift"][variant]["max_abs_diff"] < 1
        assert tag["drift"][variant]["labels"] > len(words)  # one per real token
        assert 0.9 < embed["drift"][variant]["min_cosine"] < 1 and embed["drift"][variant]["texts"] == 2 * len(words)
    assert set(result["embedder"]) == {str(cls_data), str(tag_data)}
    assert list(result["embedder"][str(cls_data)]) == variants


# ---- bench/engines.py: bertkit against the other engines ------------------------------------------

ENGINES_BENCH = BENCH.with_name("engines.py")


@pytest.fixture(scope="module")
def bench_engines():
    return load_bench(ENGINES_BENCH, "bench_engines")


def test_engines_pooling_batches_and_agreement_by_hand(bench_engines):
    import numpy as np

    hidden = np.array([[[3.0, 0.0], [1.0, 0.0], [9.0, 9.0]], [[0.0, 2.0], [0.0, 4.0], [0.0, 6.0]]])  # (2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    assert bench_engines.unit_mean(hidden, mask) == pytest.approx(np.array([[1.0, 0.0], [0.0, 1.0]]))
    batches = bench_engines.make_batches([3, 9, 1, 5, 7], 2)
    assert batches == {"sorted": [[1, 4], [3, 0], [2]], "given": [[0, 1], [2, 3], [4]]}
    agree = bench_engines.Agreement()
    agree.update(np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([[1.0, 0.0], [0.8, 0.6]]))
    assert agree.min_cos == pytest.approx(0.96) and agree.max_abs_diff == pytest.approx(0.2)


def test_engines_refuses_an_unknown_engine(bench_engines):
    with pytest.raises(SystemExit):
        bench_engines.parse_args(["--engines", "bertkit,tensorrt"])


@pytest.mark.slow
def test_engines_bench_quick_run_agrees_with_transformers(bench_engines, tmp_path, capsys):
    out = tmp_path / "engines.json"
    bench_engines.main(["--engines", "bertkit,transformers", "--texts", "8", "--quick", "--threads", "1",
                        "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| bertkit | fp32 |" in printed and "| transformers | fp32 |" in printed
    report = json.loads(out.read_text())
    assert report["texts"]["kinds"] == {"tweet": 2, "sentence": 2, "passage": 2, "docstring": 2}
    assert report["texts"]["tokenizer_mismatches"] == {"bertkit": 0, "transformers": 0}
    assert list(report["results"]) == ["sorted"]  # --quick: no given-order setting
    rows = report["results"]["sorted"]
    assert set(rows) == {"bertkit", "transformers"}
    for row in rows.values():
        assert row["e2e"]["tokens_per_s"] > 0 and row["model"]["tokens_per_s"] > 0
        assert len(row["e2e"]["seconds"]) == 1
        ours = row["agreement"]["bertkit"]
        assert ours["min_cos"] > 1 - 1e-5 and ours["max_abs_diff"] < 1e-5
    assert rows["bertkit"]["e2e"]["vs_bertkit"] == pytest.approx(1.0)


def test_engines_isolated_report_takes_medians_and_ratios_by_hand(bench_engines):
    report = {"rounds": 3, "skipped": {"st-onnx": "needs optimum"}, "load": {"loadavg_before": [1.0], "loadavg_after": [2.0]},
              "speeds": {"bertkit": {"sorted e2e": [100.0, 300.0, 200.0]},
                         "bertkit int8": {"sorted e2e": [400.0, 400.0, 500.0]},
                         "transformers": {"sorted e2e": [100.0, 100.0, 90.0]},
                         "ctranslate2": {"sorted e2e": [160.0, 150.0, 140.0]},
                         "ctranslate2 int8": {"sorted e2e": [900.0, 900.0, 900.0]}}}
    lines = bench_engines.isolated_report(report)
    assert "| bertkit int8 | 400 | 2.00× | – | – | – | – |" in lines
    assert "sorted e2e: bertkit is 1.33× the fastest fp32 peer (ctranslate2)" in lines  # 200 / 150; int8 is no fp32 peer
    assert "sorted e2e: bertkit int8 is 4.00× transformers" in lines
    assert "skipped st-onnx: needs optimum" in lines


PRETRAIN_LEARNING = Path(__file__).resolve().parent.parent / "bench" / "pretrain_learning.py"


@pytest.fixture(scope="module")
def bench_learning():
    return load_bench(PRETRAIN_LEARNING, "bench_pretrain_learning")


def test_pretrain_learning_sides_alternate_and_the_same_recipe_gives_the_same_curve(bench_learning):
    """Two sides with the same weights and batches: trained in turn (the first one alternating), scored
    by the same function at the same steps, so their curves are identical and only time may differ."""
    from types import SimpleNamespace

    import torch

    args = SimpleNamespace(lr=1e-2, warmup=0.1, steps=6, eval_every=3)
    mask_id, calls = 4, []
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 8, (2, 5), generator=g), "attention_mask": torch.ones(2, 5)}
               for _ in range(args.steps)]
    for b in batches:
        b["labels"] = torch.where(b["input_ids"] == mask_id, torch.randint(5, 8, (2, 5), generator=g), -100)
    held_out = batches[:2]

    def side(name):
        torch.manual_seed(0)
        model = torch.nn.Embedding(8, 8)

        def step(batch):
            calls.append(name)
            return model(batch["input_ids"]).logsumexp(-1).mean()

        return bench_learning.Side(name, model, step, lambda batch, where: model(batch["input_ids"])[where],
                                   batches, args)

    sides = [side("a"), side("b")]
    bench_learning.run_sides(sides, args.steps, held_out, args, mask_id)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]
    a, b = (s.curve for s in sides)
    assert [r["step"] for r in a] == [0, 3, 6] and [r["step"] for r in b] == [0, 3, 6]
    assert [r["masked_accuracy"] for r in a] == [r["masked_accuracy"] for r in b]
    assert a[-1]["tokens"] == b[-1]["tokens"] == 60
    text = bench_learning.report(sides, baseline=0.05)
    assert "| 6 | 60 |" in text and "+0.0000 |" in text and "median step time, b / a" in text


def test_pretrain_curves_draws_a_panel_per_sweep(tmp_path, capsys):
    module = load_bench(BENCH.with_name("pretrain_curves.py"), "bench_curves")
    for sweep in ("a", "b"):
        for run in ("p15", "r40"):
            (tmp_path / sweep / run).mkdir(parents=True)
            rows = [{"step": s, "split": split, "masked_accuracy": 0.05 + s / 1000, "masked_baseline": 0.05}
                    for s in (100, 200) for split in ("train", "valid")]
            (tmp_path / sweep / run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [r["step"] for r in module.curve(tmp_path / "a" / "p15")] == [100, 200]
    module.main([str(tmp_path / "c.png"), f"A=B={tmp_path / 'a'}@2048", f"B={tmp_path / 'b'}@4096"])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and "wrote" in capsys.readouterr().out
    assert module.parse_panel("A=B=/x@64") == ("A=B", Path("/x"), 64)
    with pytest.raises(SystemExit, match="TITLE=DIR@SLOTS"):
        module.parse_panel("no-slots=/x")


@pytest.mark.slow
def test_inference_bench_classify_heads_agree(tiny_model_dir, tmp_path):
    """bench/inference.py --head classify: both sides' classifiers from one saved head, logits equal."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(BENCH.with_name("inference.py")), "--texts", "40", "--repeats", "1", "--batch-size", "8",
           "--max-length", "32", "--threads", "1", "--head", "classify", "--model", str(tiny_model_dir), "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["unsorted", "length-bucketed"]  # no end-to-end row for a head
    assert all(r["max_abs_diff"] < 1e-5 and r["ratio"] > 0 for r in rows)
