"""Pretraining: the MLM (+ NSP or SOP) objective for the training loop, and `bertkit pretrain`.

The MLM decoder (a V-wide projection, the largest matrix in a small BERT) runs only at the masked
positions, about 15% of tokens, rather than at every token.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bertkit.config import BertConfig
from bertkit.errors import BertkitError, InputError
from bertkit.heads import BertForMaskedLM, BertForPreTraining
from bertkit.labels import IGNORE
from bertkit.objective import LossSum, Mean, Objective, Step, correct, cross_entropy_loss, labelled
from bertkit.packing import PackedBatches, padding_report
from bertkit.settings import OBJECTIVES, PretrainArgs  # torch-free there, for the command line

# What the model saw at a selected position: [MASK], another (random) token, or the token itself.
POSITION_KINDS = ("masked", "random", "kept")


def pretraining_step(model: BertForPreTraining | BertForMaskedLM, batch: dict[str, Tensor], *,
                     mask_token_id: int | None = None) -> Step:
    """Masked LM cross-entropy summed over the selected tokens, decoded at those alone (and the
    sentence task's, when the model has its head), and how many of each are right — also apart by
    what the model saw there (position_sums), when the [MASK] id is known."""
    labels = batch["labels"]
    selected = labels != IGNORE  # (B, T)
    out = model.bert.forward_at(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], selected)
    hidden = out.last_hidden_state  # (M, C): only the selected positions (the last layer ran only there)
    logits = model.mlm(hidden, model.bert.embeddings.word.weight).float()  # (M, V)
    targets = labels[selected]  # (M,)
    token_losses = F.cross_entropy(logits, targets, reduction="none")  # (M,)
    losses = {"mlm": LossSum(token_losses.sum(), labelled(labels))}
    right = logits.detach().argmax(-1) == targets  # (M,); every target is a label here
    metrics = {"mlm_correct": right.sum()}
    if mask_token_id is not None:
        seen = batch["input_ids"][selected]  # (M,): what the model was given at those positions
        metrics.update(position_sums(token_losses.detach(), right, seen, targets, mask_token_id))
    if isinstance(model, BertForPreTraining):
        nsp_logits = model.nsp(out.pooler_output).float()  # (B, 2)
        nsp_labels = batch["next_sentence_label"]  # (B,)
        losses["nsp"] = cross_entropy_loss(nsp_logits, nsp_labels)
        metrics["nsp_correct"] = correct(nsp_logits, nsp_labels)
    return Step(losses, metrics)


def position_kinds(seen: Tensor, targets: Tensor, mask_token_id: int) -> dict[str, Tensor]:
    """Boolean masks (M,) of the selected positions by what the model saw: [MASK], a token other
    than the original (a random replacement), or the original itself (kept — a random draw that
    happens to be the original counts here, since nothing tells it apart)."""
    masked = seen == mask_token_id
    kept = ~masked & (seen == targets)
    return {"masked": masked, "random": ~masked & ~kept, "kept": kept}


def position_sums(token_losses: Tensor, right: Tensor, seen: Tensor, targets: Tensor,
                  mask_token_id: int) -> dict[str, Tensor]:
    """Per kind of position: the summed loss, the right guesses and the count (n_<kind>).

    Only the accuracy at [MASK] positions says what the model learned from context: at a kept
    position copying the input is always right, so the accuracy over all selected positions of a
    model that copies and otherwise guesses the commonest token is already ~0.1 + 0.8 × unigram."""
    sums = {}
    for kind, where in position_kinds(seen, targets, mask_token_id).items():
        sums[f"{kind}_loss"] = token_losses[where].sum()
        sums[f"{kind}_correct"] = right[where].sum()
        sums[f"n_{kind}"] = where.sum()
    return sums


def perplexity(mlm_loss: float) -> float:
    return float(torch.tensor(mlm_loss).clamp(max=50).exp())  # capped: an untrained model's stays finite


class PretrainingObjective(Objective):
    """Loss sums of masked LM (and of the sentence task, when the model has its head) for train.fit.

    Reported: mlm_loss (the training loss, over all selected positions) and selected_accuracy; with
    the [MASK] id, the honest numbers — masked_accuracy and masked_loss at [MASK] positions (the
    headline; perplexity is exp(masked_loss)), random_accuracy and kept_accuracy."""

    def __init__(self, model: BertForPreTraining | BertForMaskedLM, *, mask_token_id: int | None = None):
        counts = {"mlm": lambda batch: labelled(batch["labels"])}
        report = {"mlm_loss": Mean("loss_mlm", over="mlm")}
        if mask_token_id is not None:
            report["masked_accuracy"] = Mean("masked_correct", over="masked")
            report["masked_loss"] = Mean("masked_loss", over="masked")
            report["perplexity"] = Mean("masked_loss", over="masked", then=perplexity)
            for kind in ("random", "kept"):
                report[f"{kind}_accuracy"] = Mean(f"{kind}_correct", over=kind)
        else:
            report["perplexity"] = Mean("loss_mlm", over="mlm", then=perplexity)
        report["selected_accuracy"] = Mean("mlm_correct", over="mlm")
        if isinstance(model, BertForPreTraining):
            counts["nsp"] = lambda batch: labelled(batch["next_sentence_label"])
            report["nsp_loss"] = Mean("loss_nsp", over="nsp")
            report["nsp_accuracy"] = Mean("nsp_correct", over="nsp")
        super().__init__(model, partial(pretraining_step, mask_token_id=mask_token_id), counts, report)


def model_config(spec: str, vocab_size: int, max_length: int) -> BertConfig:
    """A preset name (tiny/mini/small/medium/base/large) or a config.json path, sized to the vocabulary."""
    from bertkit.config import PRESETS

    if spec in PRESETS:
        config = BertConfig.preset(spec, vocab_size=vocab_size)
    else:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"--config {spec}: neither a preset ({', '.join(PRESETS)}) nor an existing config.json")
        config = BertConfig.load(path).replace(vocab_size=vocab_size)
    if max_length > config.max_position_embeddings:
        raise InputError(
            f"--max-length {max_length} exceeds the model's max_position_embeddings={config.max_position_embeddings}"
        )
    return config


def build_model(objective: str, config: BertConfig, init_from: str | None) -> BertForPreTraining | BertForMaskedLM:
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    cls = BertForMaskedLM if objective == "mlm" else BertForPreTraining
    if init_from is None:
        return cls(config)
    vocab_size = BertConfig.load(init_from).vocab_size  # checked before loading (and logging about) weights
    if vocab_size != config.vocab_size:
        raise InputError(
            f"--init-from {init_from}: its vocabulary has {vocab_size} tokens but the prepared data "
            f"was tokenized with {config.vocab_size}; prepare the data with that checkpoint's tokenizer"
        )
    return cls.from_pretrained(init_from)


def guard_not_empty(num_batches: int, what: str) -> None:
    if num_batches == 0:
        raise BertkitError(f"{what} yields no batch: too little text for the batch size")


class CappedSource:
    """At most `limit` batches of a source (0: all), for quick periodic evaluation."""

    def __init__(self, source, limit: int):
        self.source, self.limit = source, limit

    def num_batches(self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> int:
        n = self.source.num_batches(epoch, batch_size, rank=rank, world_size=world_size)
        return min(n, self.limit) if self.limit else n

    def batch(self, epoch: int, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1):
        return self.source.batch(epoch, index, batch_size, rank=rank, world_size=world_size)


def most_frequent_token(train) -> int:
    """The training corpus's commonest token id (from a sample of documents: plenty to find the mode)."""
    import numpy as np

    counts = np.zeros(1, dtype=np.int64)
    for i in range(min(len(train), 20_000)):
        for sentence in train.document(i):
            c = np.bincount(sentence)
            if len(c) > len(counts):
                counts = np.pad(counts, (0, len(c) - len(counts)))
            counts[: len(c)] += c
    return int(counts.argmax())


def mlm_baselines(train, eval_source, batch_size: int, mask_token_id: int) -> dict[str, float]:
    """What a model that learned nothing from context scores on the evaluation batches:
    masked_baseline — always the commonest token, at [MASK] positions (next to masked_accuracy);
    selected_baseline — copy the input token, or the commonest one where it is [MASK], over all
    selected positions (next to selected_accuracy: ~0.1 + 0.8 × unigram with BERT's split)."""
    mode = most_frequent_token(train)
    hits = {"masked": 0, "selected": 0}
    totals = {"masked": 0, "selected": 0}
    for i in range(eval_source.num_batches(0, batch_size)):
        batch = eval_source.batch(0, i, batch_size)
        selected = batch["labels"] != IGNORE
        targets, seen = batch["labels"][selected], batch["input_ids"][selected]  # (M,) each
        at_mask = seen == mask_token_id
        guess = torch.where(at_mask, torch.full_like(seen, mode), seen)
        hits["masked"] += int((targets[at_mask] == mode).sum())
        totals["masked"] += int(at_mask.sum())
        hits["selected"] += int((guess == targets).sum())
        totals["selected"] += targets.numel()
    return {f"{k}_baseline": hits[k] / totals[k] if totals[k] else float("nan") for k in hits}


def evaluation_masking(config):
    """Held-out evaluation always masks as the paper does (15%, 80/10/10; the run's seed and
    whole-word choice): runs trained with another --mask-rate or --mask-split are then scored on the
    same positions against the same baselines, and compare."""
    return dataclasses.replace(config, mask_rate=0.15, mask_split="bert", max_predictions_per_seq=None)


def packed(batches, tok, max_length: int) -> PackedBatches:
    """--pack: every batch's examples (masked as unpacked) packed into rows of max_length tokens."""
    return PackedBatches(batches, row_length=max_length, token_keys=("input_ids", "token_type_ids", "labels"),
                         pads={"input_ids": tok.pad_token_id, "labels": IGNORE})


def describe_length(config) -> str:
    if config.time_budget is None:
        return f"{config.steps} steps"
    return f"steps for {config.time_budget}"


def describe_baselines(baselines: dict[str, float]) -> str:
    if not baselines:
        return "none (no held-out data)"
    return (f"commonest token at [MASK] {baselines['masked_baseline']:.4f} (for masked_accuracy), "
            f"copy-or-commonest over all selected {baselines['selected_baseline']:.4f} (for selected_accuracy)")


def run_pretrain(args: PretrainArgs, train_config) -> dict[str, float]:
    """`bertkit pretrain`: prepared shards -> a pretrained BERT in train_config.out (one or many processes)."""
    from bertkit import distributed
    from bertkit.data.pretraining import PretrainingBatches
    from bertkit.data.shards import load_prepared
    from bertkit.model import num_parameters
    from bertkit.runs import adapt_to_checkpoint, start_run
    from bertkit.train import evaluate_sums, fit, use_bf16

    world = distributed.init(train_config.device)
    try:
        train_config.check_steps()
        start_run(train_config, world)  # before any reading: a refused --out costs nothing
        train_config = adapt_to_checkpoint(train_config, world)
        device = distributed.device_for(world, train_config.device)
        meta, train, valid, tok = load_prepared(args.data)
        data_config = dataclasses.replace(args, seed=train_config.seed)  # a run has one seed
        batches = PretrainingBatches(train, tok, data_config)
        train_source = packed(batches, tok, args.max_length) if train_config.pack else batches
        valid_source = PretrainingBatches(valid, tok, evaluation_masking(data_config), drop_last=False)
        guard_not_empty(train_source.num_batches(0, train_config.batch_size, world_size=world.world_size),
                        f"{args.data}/train")
        torch.manual_seed(train_config.seed)  # the same initial weights on every process
        config = model_config(args.config, tok.vocab_size, args.max_length)
        model = build_model(args.objective, config, args.init_from).to(device)
        objective = PretrainingObjective(model, mask_token_id=tok.mask_token_id)
        bf16 = use_bf16(train_config.precision, device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        eval_source = CappedSource(valid_source, args.eval_batches)

        # every process: evaluate() returns the same row everywhere
        baselines = mlm_baselines(train, eval_source, train_config.batch_size, tok.mask_token_id) if len(valid) else {}

        def evaluate() -> dict[str, float]:
            metrics = evaluate_sums(objective, eval_source, train_config.batch_size, world, autocast=autocast)
            return {**metrics, **baselines}  # side by side in metrics.jsonl and TensorBoard

        if world.is_main:
            examples = len(batches.examples(0))
            print(
                f"model: {args.config}, {num_parameters(model) / 1e6:.1f}M parameters, objective {args.objective}; "
                f"data: {train.num_tokens:,} tokens, {examples:,} examples of up to {args.max_length} tokens per epoch; "
                f"{describe_length(train_config)} of {train_config.batch_size * train_config.grad_accum * world.world_size} "
                f"sequences on {world.world_size} process(es), {device.type}, {'bf16' if bf16 else 'fp32'}; "
                f"held-out baselines: {describe_baselines(baselines)}",
                flush=True,
            )
            print(padding_report(train_source, train_config.batch_size, row_length=args.max_length), flush=True)
        state = fit(objective, train_source, train_config, evaluate=evaluate if len(valid) else None,
                    tokenizer=tok, world=world)
        final = next((r for r in reversed(state.history) if r.get("split") == "valid"), {})
        if world.is_main:
            print(f"saved the pretrained model to {train_config.out}", flush=True)
        return final
    finally:
        distributed.shutdown(world)
