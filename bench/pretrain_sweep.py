"""Pretraining sweep: the same `bertkit pretrain` with a few settings changed, one run at a time,
and the held-out curves side by side (masked_accuracy at [MASK] against tokens seen).

Every run shares --data, --config, --steps, --batch-size, --max-length, --eval-every, --eval-batches
and --seed; each RUN is NAME=EXTRA-ARGS, the extra `bertkit pretrain` flags of that run. Runs whose
metrics.jsonl already ends at the last step are not run again (so a sweep can be extended).
Tokens seen = step x batch size x max length (sequence slots, padding included; the same for
every run, since every run reads the same examples in the same order).

Give each run its --mask-rate: without one, `bertkit pretrain` picks it by --config (0.4 for tiny
and mini, 0.15 for larger models).

    python bench/pretrain_sweep.py --data runs/demo/data --out /tmp/sweep --steps 600 \\
        "p15=--lr 2e-3 --warmup 0.05 --mask-rate 0.15" "r40=--lr 2e-3 --warmup 0.05 --mask-rate 0.4" \\
        "mask-only=--lr 2e-3 --warmup 0.05 --mask-rate 0.15 --mask-split mask-only"
    python bench/pretrain_sweep.py --out /tmp/sweep --table-only     # the tables of the runs there
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def valid_rows(run: Path) -> list[dict]:
    return [r for r in rows(run) if r.get("split") == "valid"]


def finished(run: Path, steps: int) -> bool:
    return any(r["step"] >= steps for r in valid_rows(run))


def first_step_past(curve: list[dict], metric: str, baseline: str, margin: float) -> int | None:
    """The first evaluation at which metric exceeds its baseline by margin (and stays above it)."""
    for i, r in enumerate(curve):
        if all(later[metric] > later[baseline] + margin for later in curve[i:]):
            return r["step"]
    return None


def table(out: Path, names: list[str], slots: int, margin: float) -> str:
    curves = {n: valid_rows(out / n) for n in names}
    curves = {n: c for n, c in curves.items() if c}
    if not curves:
        return "(no runs with held-out rows)"
    steps = sorted({r["step"] for c in curves.values() for r in c})
    head = "| run | " + " | ".join(f"{s * slots / 1e6:.2f}M" for s in steps) + " |"
    lines = ["masked_accuracy at [MASK] positions against tokens seen (step x batch x length):", "",
             head, "|---|" + "--:|" * len(steps)]
    for n, c in curves.items():
        at = {r["step"]: r for r in c}
        lines.append(f"| {n} | " + " | ".join(f"{at[s]['masked_accuracy']:.4f}" if s in at else "" for s in steps)
                     + " |")
    lines += ["", f"final numbers; 'past' = first step from which the metric stays more than {margin:g} above its "
              "baseline:", "",
              "| run | masked_accuracy | masked_baseline | past (step) | selected_accuracy | selected_baseline "
              "| past (step) | perplexity | nsp_accuracy |",
              "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for n, c in curves.items():
        last = c[-1]
        m_past = first_step_past(c, "masked_accuracy", "masked_baseline", margin)
        s_past = first_step_past(c, "selected_accuracy", "selected_baseline", margin)
        lines.append(f"| {n} | {last['masked_accuracy']:.4f} | {last['masked_baseline']:.4f} | {m_past or '-'} | "
                     f"{last['selected_accuracy']:.4f} | {last['selected_baseline']:.4f} | {s_past or '-'} | "
                     f"{last['perplexity']:.1f} | {last.get('nsp_accuracy', float('nan')):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="NAME=EXTRA-ARGS (extra `bertkit pretrain` flags of that run)")
    p.add_argument("--data", type=Path, default=Path("runs/demo/data"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=0.01, help="how far above its baseline counts as 'past'")
    p.add_argument("--table-only", action="store_true", help="print the tables of the runs under --out")
    args = p.parse_args()
    runs = dict(r.split("=", 1) for r in args.runs)
    names = list(runs) or sorted(d.name for d in args.out.iterdir() if (d / "metrics.jsonl").exists())
    slots = args.batch_size * args.max_length
    for name, extra in ({} if args.table_only else runs).items():
        run = args.out / name
        if finished(run, args.steps):
            print(f"{name}: done already", flush=True)
            continue
        cmd = ["bertkit", "pretrain", "--data", str(args.data), "--config", args.config, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--eval-every", str(args.eval_every), "--eval-batches", str(args.eval_batches),
               "--seed", str(args.seed), "--precision", "fp32", "--no-progress", "--overwrite",
               "--out", str(run), *shlex.split(extra)]
        print("$", shlex.join(cmd), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
                       stdout=sys.stdout, stderr=sys.stderr)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(table(args.out, names, slots, args.margin))


if __name__ == "__main__":
    main()
