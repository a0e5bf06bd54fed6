"""Peak memory and wall time of `bertkit embed` and `bertkit predict` on one huge input line.

Writes a single-line text file of --mb megabytes (English-like words with punctuation, or with
--text cjk Chinese characters) to a temporary directory, then runs, each in its own subprocess:

  embed     bertkit embed -i FILE -o out.npy [--model BASE]
  predict   bertkit predict --model CLASSIFIER -i FILE -o out.jsonl --long-text truncate|window

for each base model asked for: `tiny` (a random 2-layer, hidden-32 BERT with MiniLM's vocabulary,
the shape the tests use) and `minilm` (the built-in all-MiniLM-L6-v2). The classifier is made on
the spot with `bertkit finetune --task classify --epochs 1` on a 24-line CSV (seconds).

Peak RSS is `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` read by a small wrapper process that
runs just the one command, so that each row is that command's own peak, not the largest so far.

    python bench/huge_input.py                       # 50 MB, tiny and minilm
    python bench/huge_input.py --mb 5 --models tiny --json result.json
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the quick brown fox jumps over a lazy dog while reviewers praise the remarkably "
         "well-made product , but shipping was slow and support didn't answer . great value !").split()
CJK = "质量很好物流也快但是客服不回答价格便宜包装精美非常满意的一次购物体验"
TRAIN = [("great product that works well", "pos"), ("awful and broke after a day", "neg"),
         ("really good value", "pos"), ("terrible support", "neg")] * 6


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=50.0, help="size of the input line in megabytes (default: 50)")
    p.add_argument("--models", default="tiny,minilm", help="comma-separated: tiny, minilm (default: both)")
    p.add_argument("--text", choices=["words", "cjk"], default="words", help="what the line is made of")
    p.add_argument("--long-text", choices=["truncate", "window"], default="truncate",
                   help="predict's --long-text: window predicts on windows over the whole line")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a command is stopped")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--measure", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p.parse_args()


def measure(cmd: list[str], timeout: float) -> None:
    """Wrapper mode: run one command, print {rc, seconds, peak_mb, stderr} as JSON on stdout."""
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
        rc, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        rc, stderr = -1, f"stopped after {timeout:g} s"
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"rc": rc, "seconds": seconds, "peak_mb": peak_kb / 1024, "stderr": stderr[-2000:]}))


def run_measured(cmd: list[str], timeout: float) -> dict:
    """`cmd` in a fresh wrapper process, so that RUSAGE_CHILDREN holds this command alone."""
    wrapper = [sys.executable, __file__, "--timeout", str(timeout), "--measure", *cmd]
    done = subprocess.run(wrapper, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def bertkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertkit", *args]


def write_line(path: Path, mb: float, kind: str) -> None:
    """One line of about `mb` megabytes (UTF-8), no newline inside, the same for a given size."""
    rng = random.Random(0)
    target = int(mb * 1_000_000)
    if kind == "cjk":
        unit = "".join(rng.choice(CJK) for _ in range(3000)) + "。"
    else:
        unit = " ".join(rng.choice(WORDS) for _ in range(2000)) + " "
    data = unit.encode("utf-8")
    repeats = target // len(data) + 1
    path.write_bytes((data * repeats)[:target].decode("utf-8", "ignore").encode("utf-8") + b"\n")


def tiny_model(directory: Path) -> Path:
    """A random 2-layer BERT with MiniLM's vocabulary, as tests/conftest.py's tiny_model_dir."""
    import torch

    from bertkit import BertConfig, BertModel, Tokenizer
    from bertkit.embedding import default_model_dir

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128, type_vocab_size=2)
    BertModel(config).save_pretrained(directory, tokenizer=Tokenizer.from_pretrained(default_model_dir()))
    return directory


def classifier(base: Path, work: Path, name: str) -> Path:
    train = work / "small.csv"
    train.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in TRAIN))
    out = work / f"classify-{name}"
    cmd = bertkit("finetune", "--task", "classify", "--model", str(base), "--train", str(train),
                  "--out", str(out), "--epochs", "1", "--batch-size", "8", "--max-length", "64")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"finetune failed:\n{done.stderr[-2000:]}")
    return out


def main() -> None:
    args = parse_args()
    if args.measure is not None:
        return measure(args.measure, args.timeout)
    from bertkit.embedding import default_model_dir

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        line = work / "huge.txt"
        write_line(line, args.mb, args.text)
        size = line.stat().st_size / 1e6
        print(f"input: one line of {size:.1f} MB ({args.text}), predict --long-text {args.long_text}", flush=True)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name not in ("tiny", "minilm"):
                sys.exit(f"unknown model {name!r}: use tiny or minilm")
            base = tiny_model(work / "tiny") if name == "tiny" else default_model_dir()
            model = classifier(base, work, name)
            commands = {
                "embed": bertkit("embed", "--model", str(base), "-i", str(line), "-o", str(work / "out.npy")),
                "predict": bertkit("predict", "--model", str(model), "-i", str(line),
                                   "-o", str(work / "out.jsonl"), "--long-text", args.long_text),
            }
            for what, cmd in commands.items():
                result = run_measured(cmd, args.timeout)
                row = {"model": name, "command": what, "mb": round(size, 1), **result}
                rows.append(row)
                failed = f"FAILED rc={result['rc']}: {result['stderr'].strip()[-300:]}"
                status = "ok" if result["rc"] == 0 else failed
                print(f"{name:<7} {what:<8} peak {result['peak_mb']:>9,.0f} MB   {result['seconds']:>7.1f} s   "
                      f"{status}", flush=True)
    if args.json:
        settings = {"mb": args.mb, "text": args.text, "long_text": args.long_text}
        args.json.write_text(json.dumps({**settings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
