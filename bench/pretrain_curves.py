"""docs/pretrain_curves.png: held-out accuracy at [MASK] against tokens seen, one panel per sweep.

Each PANEL is TITLE=DIR@SLOTS: a `bench/pretrain_sweep.py --out DIR` folder (one run per subfolder,
each with its metrics.jsonl) and the token slots of one step (batch size x max length). Every run
of the folder is a line; the dashed line is the commonest-token baseline at [MASK].

    python bench/pretrain_curves.py docs/pretrain_curves.png \\
        "Penn Treebank, tiny=/tmp/sweeps/ptb@2048" "Penn Treebank, mini=/tmp/sweeps/mini@4096" \\
        "People's Daily, tiny=/tmp/sweeps/pd@2048"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {"p15": "15% (the paper's)", "r40": "40% (default for tiny/mini)"}


def curve(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == "valid"]


def parse_panel(spec: str) -> tuple[str, Path, int]:
    title, _, rest = spec.rpartition("=")
    folder, _, slots = rest.rpartition("@")
    if not title or not folder or not slots.isdigit():
        raise SystemExit(f"a panel is TITLE=DIR@SLOTS, got {spec!r}")
    return title, Path(folder), int(slots)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the image to write (.png)")
    p.add_argument("panels", nargs="+", help="TITLE=DIR@SLOTS")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [parse_panel(s) for s in args.panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.4), dpi=100, sharey=True, squeeze=False)
    for ax, (title, folder, slots) in zip(axes[0], panels):
        base = None
        for run in sorted(d for d in folder.iterdir() if (d / "metrics.jsonl").exists()):
            valid = curve(run)
            if valid:
                ax.plot([r["step"] * slots / 1e6 for r in valid], [r["masked_accuracy"] for r in valid],
                        marker="o", ms=2.5, label=LABELS.get(run.name, run.name))
                base = valid[-1]["masked_baseline"]
        if base is not None:
            ax.axhline(base, color="grey", ls="--", lw=1, label=f"commonest token ({base:.3f})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("tokens seen (millions)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("held-out accuracy at [MASK]")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
