"""Contrastive fine-tuning on a real retrieval task: zero-shot all-MiniLM-L6-v2, bertkit's
`finetune --task embed`, and sentence-transformers' own MultipleNegativesRankingLoss, in one run.

The task is `bench/datasets.py docstrings`: the one-line summary of a public function or class of
the standard library, numpy, scipy, scikit-learn, torch, networkx, sympy or matplotlib is the query,
the prose that follows it in the docstring (name masked, parameters and examples left out) is the
passage to find. Train/dev/test are disjoint; a split's corpus is all its positives, so each test
query has one right answer among 1,000 passages.

Both fine-tunings start from the same checkpoint (--model, default: the built-in MiniLM) and use
the same rows, batch size, epochs (so steps), learning rate, linear schedule and warm-up steps,
AdamW settings (weight decay off for biases and LayerNorm, epsilon, gradient clipping at 1.0),
seed, max length and scale 20, and batches that never hold a text twice (sentence-transformers'
NoDuplicatesBatchSampler; bertkit's own batching). Neither evaluates during training. The
sentence-transformers side is the loop its SentenceTransformerTrainer runs (its data collator,
sampler and loss; AdamW and transformers' linear warm-up schedule), written out: the Trainer
itself needs the `datasets` and `accelerate` packages, which this offline environment does not
have. bertkit runs as its CLI, in a subprocess.

All three are scored by ONE evaluator, sentence-transformers' InformationRetrievalEvaluator on the
test split (cosine; recall@1/@10, MRR@10, nDCG@10), each model loaded with
`SentenceTransformer(DIR)` — which also proves bertkit's output loads there. Everything runs on
--threads CPU threads (2 by default; OMP_NUM_THREADS for the bertkit subprocess). "seconds" is the
fine-tuning's wall time, from loading the model to the saved result (for bertkit: the whole
command, interpreter start included).

    python bench/embed_finetune.py                      # builds /tmp/bertkit-docstrings once; ~12 min on 2 cores
    python bench/embed_finetune.py --quick              # a tiny smoke run (numpy's docstrings, 2 steps)
    python bench/embed_finetune.py --runs zero-shot,sentence-transformers --lr 5e-5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = ("zero-shot", "sentence-transformers", "bertkit")
METRICS = ("recall@1", "recall@10", "mrr@10", "ndcg@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="folder with train.tsv/dev.tsv/test.tsv, built there when missing "
                        "(default: /tmp/bertkit-docstrings, --quick: /tmp/bertkit-docstrings-quick)")
    p.add_argument("--model", default=None, help="checkpoint both fine-tunings start from (default: the built-in MiniLM)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    p.add_argument("--train-size", type=int, default=2000, help="train on the first N pairs of train.tsv (0: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps (rounded up to whole steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eps", type=float, default=1e-6, help="AdamW epsilon")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text, in training and evaluation")
    p.add_argument("--scale", type=float, default=20.0, help="cosine similarities x scale before the softmax")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split", choices=["dev", "test"], default="test", help="the split to score on")
    p.add_argument("--keep", type=Path, default=None, help="keep the fine-tuned models here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="smoke run: a small dataset from numpy's docstrings, "
                   "64 training pairs, batch 8, 100 test queries")
    args = p.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not args.runs or set(args.runs) - set(RUNS):
        p.error(f"--runs: choose from {', '.join(RUNS)}, got {args.runs}")
    if args.quick:
        args.train_size, args.batch_size = 64, 8
    if args.data is None:
        args.data = Path(tempfile.gettempdir()) / ("bertkit-docstrings-quick" if args.quick else "bertkit-docstrings")
    if args.model is None:
        from bertkit.models import default_model_dir

        args.model = str(default_model_dir())
    return args


# ---- data -----------------------------------------------------------------------------------------

def ensure_data(args: argparse.Namespace) -> dict[str, Path]:
    """The three splits in args.data, built with bench/datasets.py when any is missing (every
    training pair: --train-size takes the first N of them, already in a seeded random order)."""
    paths = {name: args.data / f"{name}.tsv" for name in ("train", "dev", "test")}
    if not all(p.exists() for p in paths.values()):
        docstrings = _bench_datasets().docstrings
        if args.quick:
            docstrings(args.data, train=args.train_size, dev=50, test=100, packages=("numpy",))
        else:
            docstrings(args.data, train=0)
    return paths


def _bench_datasets():
    """bench/datasets.py, loaded by path under another name: `datasets` is also Hugging Face's package."""
    spec = importlib.util.spec_from_file_location("bench_datasets", Path(__file__).with_name("datasets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """anchor<TAB>positive rows after the header line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "anchor\tpositive":
        raise SystemExit(f"{path}: expected the header 'anchor<TAB>positive'")
    pairs = [tuple(line.split("\t")) for line in lines[1:]]
    bad = next((i for i, p in enumerate(pairs) if len(p) != 2), None)
    if bad is not None:
        raise SystemExit(f"{path}:{bad + 2}: expected 2 tab-separated fields")
    return pairs  # type: ignore[return-value]


def make_evaluator(pairs: list[tuple[str, str]], name: str):
    """Query i's one relevant passage is passage i; the corpus is every positive of the split."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries={f"q{i}": a for i, (a, _) in enumerate(pairs)},
        corpus={f"d{i}": p for i, (_, p) in enumerate(pairs)},
        relevant_docs={f"q{i}": {f"d{i}"} for i in range(len(pairs))},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10], map_at_k=[10],
        batch_size=64, name=name, write_csv=False)


def evaluate(model_dir: str, evaluator, max_length: int) -> dict[str, float]:
    """One model, loaded the way a sentence-transformers user would, at the benchmark's max length."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = max_length
    scores = evaluator(model)
    return {m: scores[f"{evaluator.name}_cosine_{m}"] for m in METRICS}


# ---- the two fine-tunings ---------------------------------------------------------------------------

class Rows:
    """The two columns as the minimal `datasets.Dataset` that ST's NoDuplicatesBatchSampler reads."""

    column_names = ["anchor", "positive"]

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, str]:
        anchor, positive = self.pairs[index]
        return {"anchor": anchor, "positive": positive}


def schedule(args: argparse.Namespace, rows: int) -> tuple[int, int]:
    """(total steps, warm-up steps): one step per batch, ceil(rows / batch) batches an epoch."""
    steps = math.ceil(rows / args.batch_size) * args.epochs
    return steps, math.ceil(args.warmup * steps)


def train_sentence_transformers(args: argparse.Namespace, pairs: list[tuple[str, str]], out: Path) -> dict:
    """SentenceTransformerTrainer's loop with MultipleNegativesRankingLoss and NO_DUPLICATES batches."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import get_linear_schedule_with_warmup

    start = time.perf_counter()
    torch.manual_seed(args.seed)  # dropout, as the Trainer's set_seed
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = args.max_length
    loss_fn = MultipleNegativesRankingLoss(model, scale=args.scale)
    rows = Rows(pairs)
    sampler = NoDuplicatesBatchSampler(rows, batch_size=args.batch_size, drop_last=False,
                                       generator=torch.Generator(), seed=args.seed)
    collate = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
    decay = [p for p in model.parameters() if p.ndim >= 2]  # no decay on biases and LayerNorm, as the Trainer
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, eps=args.eps)
    total, warmup = schedule(args, len(rows))
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
    model.train()
    steps, losses = 0, []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for indices in sampler:
            batch = collate([rows[i] for i in indices])
            features = [{k[len(c) + 1:]: v for k, v in batch.items() if k.startswith(c + "_")} for c in Rows.column_names]
            loss = loss_fn(features, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            losses.append(loss.item())
    model.save(str(out))
    return {"seconds": time.perf_counter() - start, "steps": steps, "warmup": warmup,
            "first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:])}


def bertkit_command(args: argparse.Namespace, train: Path, out: Path, warmup: int) -> list[str]:
    bertkit = Path(sys.executable).with_name("bertkit")
    return [str(bertkit) if bertkit.exists() else "bertkit", "finetune", "--task", "embed", "--model", args.model,
            "--train", str(train), "--out", str(out), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup", str(warmup),
            "--schedule", "linear", "--weight-decay", str(args.weight_decay), "--eps", str(args.eps),
            "--max-grad-norm", "1.0", "--max-length", str(args.max_length), "--scale", str(args.scale),
            "--loss", "mnrl", "--seed", str(args.seed), "--precision", "fp32", "--no-progress", "--overwrite"]


def train_bertkit(args: argparse.Namespace, train: Path, rows: int, out: Path) -> dict:
    """`bertkit finetune --task embed` as a user runs it, then the folder SentenceTransformer loads."""
    _, warmup = schedule(args, rows)
    command = bertkit_command(args, train, out, warmup)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bertkit finetune failed ({result.returncode}):\n{' '.join(command)}\n{result.stderr[-3000:]}")
    return {"seconds": seconds, "steps": last_step(out), "warmup": warmup, "model_dir": str(st_folder(out)),
            "command": " ".join(command)}


def st_folder(out: Path) -> Path:
    """Where bertkit's output has the sentence-transformers layout (modules.json): the folder itself,
    else the shallowest folder inside it that has one."""
    if (out / "modules.json").exists():
        return out
    found = sorted(out.rglob("modules.json"), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise SystemExit(f"{out}: bertkit wrote no modules.json (the sentence-transformers layout)")
    return found[0].parent


def last_step(out: Path) -> int | None:
    """The training loop's last logged step (metrics.jsonl), to check both sides took the same number."""
    log = out / "metrics.jsonl"
    if not log.exists():
        return None
    steps = [json.loads(line).get("step") for line in log.read_text().splitlines() if line.strip()]
    return max((s for s in steps if isinstance(s, int)), default=None)


# ---- the run --------------------------------------------------------------------------------------

def run(args: argparse.Namespace, work: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    paths = ensure_data(args)
    train = read_pairs(paths["train"])[:args.train_size or None]
    train_file = work / "train.tsv"  # the same rows for bertkit
    train_file.write_text("anchor\tpositive\n" + "".join(f"{a}\t{p}\n" for a, p in train), encoding="utf-8")
    evaluator = make_evaluator(read_pairs(paths[args.split]), args.split)
    results: dict[str, dict] = {}
    if "zero-shot" in args.runs:
        results["zero-shot"] = {"seconds": 0.0, **evaluate(args.model, evaluator, args.max_length)}
        report("zero-shot", results["zero-shot"])
    if "sentence-transformers" in args.runs:
        out = work / "sentence-transformers"
        info = train_sentence_transformers(args, train, out)
        results["sentence-transformers"] = {**info, **evaluate(str(out), evaluator, args.max_length)}
        report("sentence-transformers", results["sentence-transformers"])
    if "bertkit" in args.runs:
        info = train_bertkit(args, train_file, len(train), work / "bertkit")
        results["bertkit"] = {**info, **evaluate(info["model_dir"], evaluator, args.max_length)}
        report("bertkit", results["bertkit"])
    return {"data": str(args.data), "split": args.split, "train_pairs": len(train),
            f"{args.split}_queries": len(evaluator.queries), "model": args.model,
            "settings": {k: str(v) for k, v in vars(args).items()},
            "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
                       f"load average {os.getloadavg()[0]:.1f} at the end",
            "runs": results}


def report(name: str, r: dict) -> None:
    print(f"{name}: " + ", ".join(f"{m} {r[m]:.4f}" for m in METRICS) + f", {r['seconds']:.1f} s", flush=True)


def table(results: dict) -> str:
    """The README table: one row per run."""
    lines = ["| model | recall@1 | recall@10 | MRR@10 | nDCG@10 | steps | fine-tuning s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["runs"].items():
        steps = r.get("steps")
        lines.append(f"| {name} | {r['recall@1']:.4f} | {r['recall@10']:.4f} | {r['mrr@10']:.4f} | {r['ndcg@10']:.4f} "
                     f"| {'' if steps is None else steps} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = run(args, args.keep)
    else:
        work = Path(tempfile.mkdtemp(prefix="bertkit-embed-bench-"))
        try:
            results = run(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{results['train_pairs']} training pairs, {results[args.split + '_queries']} {args.split} queries "
          f"(corpus: their {results[args.split + '_queries']} passages); {args.epochs} epoch(s), batch {args.batch_size}, "
          f"lr {args.lr:g}, warm-up {args.warmup:g}, max length {args.max_length}, scale {args.scale:g}, "
          f"seed {args.seed}; {results['machine']}")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    from bertkit.errors import run_script

    run_script(main, "bench/embed_finetune.py")
