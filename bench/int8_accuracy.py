"""int8 inference against fp32, per task family, on real data: the metric of each, the change in
points, how far the raw outputs move, and the speed-up, in one run.

Each case is a model and a labelled file (`--case MODEL DATA`, repeated). The model is loaded
through bertkit's own prediction layer, `predict.load_finetuned(..., precision="fp32")` and
`(..., precision="int8")`, and both run the task's own featurizer, `outputs`, post-processing and
metrics — the code path of `bertkit evaluate`, so the numbers are the ones `evaluate --precision
int8` prints. The family comes from the model: a fine-tuned classify/tag/qa/choice model is scored
on its task (accuracy, entity F1, SQuAD F1, accuracy), a sentence encoder (a plain BERT or
sentence-transformers folder, or `finetune --task embed` output) on retrieval (anchor/positive rows:
recall@1, MRR@10, nDCG@10).

What moves, per case:
  * vectors (embed): the cosine of each text's int8 vector to its fp32 vector, smallest and mean;
  * logits (classify, tag, choice, qa): the largest |int8 - fp32| over real positions, and how often
    the predicted label agrees (a label per sequence; per real token for tag; start and end
    positions for qa).
`--embedder` (default: the built-in all-MiniLM-L6-v2) is also loaded through
`Embedder.from_pretrained(..., precision=...)` and embeds the texts of the non-embedding cases
(reviews, tweets, ...) in both precisions: the smallest cosine over texts of other kinds than the
retrieval set.

`--variant LAYERS[@ALPHA]` adds int8 models built with `quantize.quantize_int8(model, tokenizer,
layers=..., alpha=...)` on an fp32 load (which layers run in int8: qkv, out, up, down; SmoothQuant's
alpha): the measurements for choosing them. `--compiled` adds "int8 compiled": the int8 model with
compiled layers (`--precision int8 --compile`; compiled before any timing).

Timing: every model sees the same batches (length-sorted, --batch-size), one batch at a time, the
running order rotating; seconds are summed per model, the speed-up is fp32 / int8 (also the median
of the per-batch ratios, in the JSON). The load average is recorded with the numbers.

    python bench/int8_accuracy.py --case runs/senti dev.csv --case runs/wnut dev.conll \
        --case MINILM test.tsv --embed-max-length 128 --json out.json
    python bench/int8_accuracy.py --variant qkv,out,up,down --variant qkv,out --case ...
    python bench/int8_accuracy.py --quick ...    # the first 32 examples of each case, 16 texts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# the metric the issue asks for per family; its change is reported in points (0-100 scale)
HEADLINE = {"classify": "accuracy", "tag": "f1", "qa": "f1", "choice": "accuracy", "embed": "recall@1"}
PERCENT_ALREADY = {"qa"}  # SQuAD EM/F1 come in percent; the others are fractions
PRECISIONS = ("fp32", "int8")
COMPILED = "int8 compiled"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", nargs=2, action="append", metavar=("MODEL", "DATA"), default=[],
                   help="a model directory (or name) and a labelled file to score it on; repeat per case")
    p.add_argument("--variant", action="append", default=[], metavar="LAYERS[@ALPHA]",
                   help="also score quantize.quantize_int8(layers=LAYERS, alpha=ALPHA) applied to the fp32 "
                        "model, e.g. qkv,out,up,down or qkv,out,up@0.8; repeat for more")
    p.add_argument("--embedder", default=None,
                   help="sentence encoder for the cross-text cosine check (default: the built-in MiniLM; "
                        "'none' skips it)")
    p.add_argument("--embed-max-length", type=int, default=None,
                   help="tokens per text for embedding cases and the embedder (default: the model's own)")
    p.add_argument("--cosine-texts", type=int, default=1000,
                   help="at most this many texts per non-embedding case for the embedder check")
    p.add_argument("--compiled", action="store_true",
                   help="also score int8 with compiled layers (--precision int8 --compile)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="score only the first N examples of each file (0: all)")
    p.add_argument("--quick", action="store_true", help="smoke run: --limit 32, --cosine-texts 16")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if not args.case:
        p.error("give at least one --case MODEL DATA")
    if args.quick:
        args.limit, args.cosine_texts = args.limit or 32, min(args.cosine_texts, 16)
    for name in ("batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        args.variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as e:
        p.error(f"--variant: {e}")
    return args


def parse_variant(spec: str) -> tuple[str, dict]:
    """'qkv,out,up,down@0.8' -> ('int8[qkv,out,up,down@0.8]', {'layers': (...), 'alpha': 0.8})."""
    layers, _, alpha = spec.partition("@")
    chosen = tuple(x.strip() for x in layers.split(",") if x.strip())
    if not chosen or set(chosen) - {"qkv", "out", "up", "down"}:
        raise ValueError(f"layers must be among qkv, out, up, down, got {spec!r}")
    options: dict = {"layers": chosen}
    if alpha:
        options["alpha"] = float(alpha)
    return f"int8[{spec}]", options


# ---- one case: every precision over the same batches -----------------------------------------------


@dataclass
class CaseResult:
    model: str
    data: str
    task: str
    examples: int
    features: int
    headline: str
    metrics: dict[str, dict[str, float]]  # variant (fp32, int8, int8[...]) -> metric -> value
    delta_points: dict[str, dict[str, float]]  # variant -> metric -> (variant - fp32) in points
    drift: dict[str, dict[str, float]]  # variant -> min/mean cosine (vectors) or max |diff|, agreement (logits)
    seconds: dict[str, float]  # variant -> model seconds over all batches
    speedup: dict[str, float]  # variant -> fp32 seconds / its seconds
    speedup_median_batch: dict[str, float]


def load_variants(model: str, args: argparse.Namespace) -> dict:
    """The checkpoint at fp32 and at int8 through bertkit's prediction layer (load_finetuned's
    precision), plus each --variant: quantize_int8 with other layers or smoothing on an fp32 copy.
    An embedding model reads --embed-max-length tokens when given."""
    from bertkit.compiled import compile_layers
    from bertkit.predict import load_finetuned
    from bertkit.quantize import quantize_int8

    overrides: dict = {}
    fp32 = load_finetuned(model, overrides, device="cpu", precision="fp32")
    if fp32.task.name == "embed" and args.embed_max_length:
        overrides = {"max_length": args.embed_max_length}
        fp32 = load_finetuned(model, overrides, device="cpu", precision="fp32")
    loaded = {"fp32": fp32, "int8": load_finetuned(model, overrides, device="cpu", precision="int8")}
    if args.compiled:
        loaded[COMPILED] = load_finetuned(model, overrides, device="cpu", precision="int8")
        compile_layers(loaded[COMPILED].model)
    for name, options in args.variants.items():
        copy = load_finetuned(model, overrides, device="cpu", precision="fp32")
        quantize_int8(copy.model, copy.tokenizer, **options)
        loaded[name] = copy
    return loaded


def run_case(model: str, data: Path, args: argparse.Namespace) -> tuple[CaseResult, list[str]]:
    """Score one model on one file in every variant; also returns the texts read (for the embedder
    check)."""
    from bertkit.tasks.base import BadInput

    loaded = load_variants(model, args)
    fp32 = loaded["fp32"]
    task, tokenizer = fp32.task, fp32.tokenizer
    bad = BadInput(task.options.skip_bad_lines)
    examples = task.read(data, bad)
    if args.limit:
        examples = examples[:args.limit]
    features = task.featurize(examples, tokenizer, fp32.config, bad).features
    outputs, seconds = interleaved_outputs(task, {k: v.model for k, v in loaded.items()}, features,
                                           tokenizer.pad_token_id, args.batch_size)
    metrics = {}
    for name, variant in loaded.items():
        predictions = task.postprocess(examples, features, outputs[name], variant.config)
        metrics[name] = {k: float(v) for k, v in task.metrics(examples, predictions, variant.config).items()}
    scale = 1.0 if task.name in PERCENT_ALREADY else 100.0
    others = [n for n in loaded if n != "fp32"]
    delta = {n: {k: (metrics[n][k] - v) * scale for k, v in metrics["fp32"].items() if k in metrics[n]}
             for n in others}
    if task.name == "embed":
        drift = {n: vector_drift(outputs["fp32"], outputs[n]) for n in others}
    else:
        drift = {n: logit_drift(task.name, features, outputs["fp32"], outputs[n]) for n in others}
    total = {n: float(sum(s)) for n, s in seconds.items()}
    result = CaseResult(
        model=str(model), data=str(data), task=task.name, examples=len(examples), features=len(features),
        headline=HEADLINE.get(task.name, task.metric), metrics=metrics, delta_points=delta, drift=drift,
        seconds=total, speedup={n: total["fp32"] / max(total[n], 1e-12) for n in others},
        speedup_median_batch={n: median_ratio(seconds["fp32"], seconds[n]) for n in others})
    return result, texts_of(task.name, examples)


def median_ratio(base: list[float], other: list[float]) -> float:
    ratios = [a / b for a, b in zip(base, other) if b > 0]
    return statistics.median(ratios) if ratios else float("nan")


def interleaved_outputs(task, models: dict, features: list, pad_id: int, batch_size: int):
    """Every model's outputs per feature (as `tasks.base.model_outputs` returns them) and its seconds
    per batch: the same length-sorted batches, each run by every model, the order rotating."""
    from bertkit.devices import inference_autocast
    from bertkit.tasks.base import collate

    lengths = [_longest(f["input_ids"]) for f in features]
    order = sorted(range(len(features)), key=lambda i: -lengths[i])
    names = list(models)
    outputs = {n: [None] * len(features) for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():  # as bertkit predicts: compiled layers keep their warm-up graphs
        for b, start in enumerate(range(0, len(order), batch_size)):
            chosen = order[start:start + batch_size]
            batch = collate([features[i] for i in chosen], pad_id)
            for name in rotated(names, b):
                model = models[name]
                t0 = time.perf_counter()
                with inference_autocast(model):
                    out = {k: v.float().cpu().numpy() for k, v in task.outputs(model, batch).items()}
                seconds[name].append(time.perf_counter() - t0)
                for row, i in enumerate(chosen):
                    outputs[name][i] = {k: v[row] for k, v in out.items()}
    return outputs, seconds


def rotated(names: list[str], b: int) -> list[str]:
    """Batch b's running order: each model goes first, last and in between equally often."""
    k = b % len(names)
    return names[k:] + names[:k]


def _longest(ids: list) -> int:
    return max(len(row) for row in ids) if ids and isinstance(ids[0], list) else len(ids)


# ---- how far the outputs move ------------------------------------------------------------------------


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, D) arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(axis=1) / norms


def vector_drift(base: list, other: list) -> dict[str, float]:
    c = cosines(np.stack([o["vector"] for o in base]), np.stack([o["vector"] for o in other]))
    return {"min_cosine": float(c.min()), "mean_cosine": float(c.mean()), "texts": int(len(c))}


def logit_drift(task: str, features: list, base: list, other: list) -> dict[str, float]:
    """Largest |int8 - fp32| over the real (unpadded) positions, and the share of predicted labels
    (argmax) that agree: per sequence; per real token (tag); start and end positions (qa)."""
    worst, agree, total = 0.0, 0, 0
    for f, a, b in zip(features, base, other):
        n = _longest(f["input_ids"])
        for key in a:
            x, y = real_positions(task, key, a[key], n), real_positions(task, key, b[key], n)
            worst = max(worst, float(np.abs(x - y).max()))
            same = x.argmax(-1) == y.argmax(-1)
            agree, total = agree + int(np.sum(same)), total + int(np.size(same))
    return {"max_abs_diff": worst, "label_agreement": agree / max(total, 1), "labels": total}


def real_positions(task: str, key: str, value: np.ndarray, length: int) -> np.ndarray:
    """The part of one feature's output that belongs to real tokens: a per-token output (tag logits
    (T, L), qa start/end logits (T,)) cut at the sequence length; per-sequence logits as they are."""
    if task == "tag" or (task == "qa" and key in ("start_logits", "end_logits")):
        return value[:length]
    return value


def texts_of(task: str, examples: list) -> list[str]:
    """The raw texts of a case's examples, for the embedder check (embedding cases are checked on
    their own vectors, so none)."""
    if task == "tag":
        return [" ".join(e.words) for e in examples]
    if task == "classify":
        return [e.text if e.text_pair is None else f"{e.text} {e.text_pair}" for e in examples]
    if task == "qa":
        return [e.question for e in examples] + sorted({e.context for e in examples})
    return []


# ---- the embedder check: Embedder.from_pretrained at both precisions ----------------------------------


def embedder_check(model: str | None, texts: dict[str, list[str]], args: argparse.Namespace) -> dict:
    """Per source file and variant: smallest and mean cosine of the int8 vectors to the fp32 ones,
    and the interleaved time, through the public Embedder API."""
    from bertkit.compiled import compile_layers
    from bertkit.embedding import Embedder
    from bertkit.quantize import quantize_int8

    embedders = {p: Embedder.from_pretrained(model, device="cpu", precision=p) for p in PRECISIONS}
    if args.compiled:
        embedders[COMPILED] = Embedder.from_pretrained(model, device="cpu", precision="int8")
        compile_layers(embedders[COMPILED].model)
    for name, options in args.variants.items():
        embedders[name] = Embedder.from_pretrained(model, device="cpu", precision="fp32")
        quantize_int8(embedders[name].model, embedders[name].tokenizer, **options)
    out = {}
    for source, items in texts.items():
        items = [t for t in items if t.strip()][:args.cosine_texts]
        if not items:
            continue
        vectors, seconds = interleaved_embeddings(embedders, items, args)
        out[source] = {}
        for name in list(embedders)[1:]:
            c = cosines(vectors["fp32"], vectors[name])
            out[source][name] = {"texts": len(items), "min_cosine": float(c.min()), "mean_cosine": float(c.mean()),
                                 "seconds": seconds[name], "fp32_seconds": seconds["fp32"],
                                 "speedup": seconds["fp32"] / max(seconds[name], 1e-12)}
    return out


def interleaved_embeddings(embedders: dict, texts: list[str], args: argparse.Namespace):
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    vectors = {p: np.zeros((len(texts), embedders[p].dim), dtype=np.float32) for p in embedders}
    seconds = dict.fromkeys(embedders, 0.0)
    for b, start in enumerate(range(0, len(order), args.batch_size)):
        chosen = order[start:start + args.batch_size]
        for name in rotated(list(embedders), b):
            t0 = time.perf_counter()
            vectors[name][chosen] = embedders[name]([texts[i] for i in chosen], batch_size=args.batch_size,
                                                    max_length=args.embed_max_length)
            seconds[name] += time.perf_counter() - t0
    return vectors, seconds


# ---- report ------------------------------------------------------------------------------------------


def markdown(results: list[CaseResult], embedder: dict, load: dict) -> str:
    lines = ["| task | model | data | n | variant | metric | fp32 | int8 | Δ points | smallest cos / max abs Δlogit "
             "| mean cos / label agreement | fp32 s | int8 s | speed-up |",
             "|---|---|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        m = r.headline
        for name, drift in r.drift.items():
            if r.task == "embed":
                moved = f"{drift['min_cosine']:.4f} | {drift['mean_cosine']:.5f}"
            else:
                moved = f"{drift['max_abs_diff']:.3f} | {drift['label_agreement']:.4f}"
            lines.append(f"| {r.task} | {_short(r.model)} | {_short(r.data)} | {r.examples:,} | {name} | {m} "
                         f"| {r.metrics['fp32'][m]:.4f} | {r.metrics[name][m]:.4f} | {r.delta_points[name][m]:+.2f} "
                         f"| {moved} | {r.seconds['fp32']:.1f} | {r.seconds[name]:.1f} | {r.speedup[name]:.2f}× |")
    if embedder:
        lines += ["", "Embedder.from_pretrained(precision=...) on the texts of the other cases:", "",
                  "| texts of | n | variant | smallest cos | mean cos | speed-up |", "|---|--:|---|--:|--:|--:|"]
        lines += [f"| {_short(source)} | {v['texts']:,} | {name} | {v['min_cosine']:.4f} | {v['mean_cosine']:.5f} "
                  f"| {v['speedup']:.2f}× |" for source, variants in embedder.items() for name, v in variants.items()]
    lines += ["", f"load average {load['before']} before, {load['after']} after; {load['threads']} threads"]
    return "\n".join(lines)


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results, texts = [], {}
    for model, data in args.case:
        result, case_texts = run_case(model, Path(data), args)
        results.append(result)
        if case_texts:
            texts[data] = case_texts
        print(f"{result.task}: {model} on {data} done", file=sys.stderr)
    embedder = {}
    if args.embedder != "none" and texts:
        embedder = embedder_check(args.embedder, texts, args)
    load = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()], "threads": args.threads}
    print(markdown(results, embedder, load))
    if args.json:
        report = {"cases": [asdict(r) for r in results], "embedder": embedder, "load": load,
                  "variants": {k: {"layers": list(v["layers"]), **({"alpha": v["alpha"]} if "alpha" in v else {})}
                               for k, v in args.variants.items()},
                  "batch_size": args.batch_size, "torch": torch.__version__, "machine": platform.processor()}
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
