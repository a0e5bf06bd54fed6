"""What a run reports: metrics.jsonl (and TensorBoard), the loss plot, and lines on the terminal.

Each row of metrics.jsonl is one JSON object: {"step", "split": "train" | "valid", metric: value, ...};
a resumed run rewrites the rows logged after its checkpoint, so the file matches an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

from bertkit.distributed import World


class MetricsLog:
    """metrics.jsonl (always), TensorBoard (when installed); main process only."""

    def __init__(self, out: Path, world: World, *, resume_step: int | None):
        self.enabled = world.is_main
        self.path = out / "metrics.jsonl"
        self.tb = None
        self.window_start = time.perf_counter()
        if not self.enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        with contextlib.suppress(Exception):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the rows the interrupted run logged after its last checkpoint."""
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        keep = [line for line in rows if json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def lap(self) -> float:
        """Seconds since the last call (or since the log was opened): the time a train row covers."""
        now = time.perf_counter()
        seconds, self.window_start = now - self.window_start, now
        return seconds

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{row.get('split', 'train')}/{k}", v, row["step"])

    def close(self, *, plot: Path | None = None) -> None:
        """Close TensorBoard; with `plot`, also draw the loss curves there (main process)."""
        if self.tb is not None:
            self.tb.close()
        if plot is not None and self.enabled:
            plot_metrics(self.path, plot)


def iter_rows(path: Path) -> Iterator[dict]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)


def plot_metrics(path: Path, out_png: Path) -> Path | None:
    """A PNG of the training and validation loss curves (needs matplotlib); for pretraining also the
    held-out accuracy at [MASK] positions next to the commonest-token baseline."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = list(iter_rows(path))
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train" and "loss" in r]
    valid = [(r["step"], r["loss"]) for r in rows if r.get("split") == "valid" and "loss" in r]
    masked = [r for r in rows if r.get("split") == "valid" and "masked_accuracy" in r]
    fig, axes = plt.subplots(1, 2 if masked else 1, figsize=(12 if masked else 7, 4), squeeze=False)
    ax = axes[0][0]
    for points, label, style in ((train, "train", "-"), (valid, "valid", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if masked:
        ax = axes[0][1]
        ax.plot([r["step"] for r in masked], [r["masked_accuracy"] for r in masked], "o-",
                label="held-out accuracy at [MASK]")
        if "masked_baseline" in masked[-1]:
            ax.axhline(masked[-1]["masked_baseline"], linestyle="--", color="gray", label="commonest token")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def progress_bar(total: int | None, start: int, *, enabled: bool):
    """A tqdm bar of optimiser steps (no total under a time budget); a disabled one (every call does
    nothing) when not `enabled`."""
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, disable=not enabled)


def say(line: str, bar=None) -> None:
    """A line of its own, above the progress bar when one is shown (a plain print glues onto it)."""
    if bar is not None and not bar.disable:
        bar.write(line)
    else:
        print(line, flush=True)
