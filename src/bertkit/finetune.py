"""`bertkit finetune`: any task family on the one training loop.

It reads labelled files with the task's reader, adds the task's head to a pretrained checkpoint,
trains with train.fit (evaluating on the dev file every epoch, keeping the best model, stopping
early when asked) and saves a standard BERT directory whose config.json holds the labels (id2label)
and how inputs were read (under "bertkit"), so that predict.py needs nothing but the directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from bertkit import distributed
from bertkit.best import best_evaluation
from bertkit.config import BertConfig
from bertkit.distributed import World
from bertkit.errors import InputError
from bertkit.fileio import write_text_atomically
from bertkit.heads import HEADS
from bertkit.labels import IGNORE
from bertkit.packing import PackedBatches, padding_report
from bertkit.predict import check_max_length, evaluate_examples, long_inputs, with_settings
from bertkit.runs import TrainState, adapt_to_checkpoint, start_run
from bertkit.settings import FinetuneArgs, TrainConfig  # torch-free there, for the command line
from bertkit.tasks import DataOptions, Task, make_task
from bertkit.tasks.base import BadInput, FeatureBatches, Featurized
from bertkit.tokenizer import Tokenizer
from bertkit.train import fit


@dataclass
class Data:
    """The labelled files read and featurized, and the model config they imply."""

    tokenizer: Any
    changes: dict[str, Any]
    """What the task changes in the checkpoint's config (labels, problem type, ...)."""
    same_head: bool
    """The checkpoint already has this task's head with these labels: keep its weights."""
    labels: list[str]
    train_examples: list
    train: Featurized
    dev_examples: list
    dev: Featurized | None
    bad: BadInput


def run_finetune(args: FinetuneArgs, options: DataOptions, train_config: TrainConfig) -> dict[str, float]:
    """`bertkit finetune`: returns the best (or last) dev metrics."""
    world = distributed.init(train_config.device)
    try:
        task = make_task(args.task, options)
        check_packing(task, train_config.pack)
        start_run(train_config, world)  # before any reading: a refused --out costs nothing
        train_config = adapt_to_checkpoint(train_config, world)
        device = distributed.device_for(world, train_config.device)
        say = print if world.is_main else (lambda *a, **k: None)
        data = read_data(task, args)
        say(_data_summary(task, data), flush=True)
        source = batch_source(task, data, train_config)
        config = epoch_schedule(train_config, source, args.epochs, world, best_metric=task.metric,
                                evaluates=bool(data.dev_examples))
        model = build_model(task, args, data, seed=train_config.seed).to(device)
        say(f"{config.steps} steps ({args.epochs:g} epochs of {config.save_every}) of "
            f"{config.batch_size * config.grad_accum * world.world_size} "
            f"{'examples' if task.name in ('embed', 'choice') else 'sequences'}, lr {config.lr:g}, "
            f"{'loaded' if data.same_head else 'new'} {task.architecture} head"
            f"{', all weights re-initialised' if args.random_init else ''}, {device.type}", flush=True)
        if world.is_main and task.packed_token_keys is not None:
            print(padding_report(source, config.batch_size, row_length=task.options.max_length), flush=True)

        def evaluate() -> dict[str, float]:
            return evaluate_examples(task, model, data.tokenizer, data.dev_examples, data.dev,
                                     args.eval_batch_size, world=world)

        state = fit(task.objective(model), source, config, evaluate=evaluate if data.dev_examples else None,
                    tokenizer=data.tokenizer, world=world)
        return _best_dev_metrics(state, config, world)
    finally:
        distributed.shutdown(world)


def check_packing(task: Task, pack: bool) -> None:
    if pack and task.packed_token_keys is None:
        raise InputError(f"--pack packs pretraining and finetune --task classify or tag, not --task {task.name}")


def batch_source(task: Task, data: Data, config: TrainConfig):
    """The training batches, packed with --pack: the same examples in the same batches."""
    source = task.batches(data.train.features, pad_id=data.tokenizer.pad_token_id, seed=config.seed)
    if not config.pack:
        return source
    return PackedBatches(source, row_length=task.options.max_length, token_keys=task.packed_token_keys,
                         pads={"input_ids": data.tokenizer.pad_token_id, "labels": IGNORE})


def read_data(task: Task, args: FinetuneArgs) -> Data:
    """The training and dev files, read and featurized (and checked: labels unseen in training, ...)
    before any weights load."""
    base = BertConfig.load(args.model)
    check_max_length(task.options.max_length, base)
    tokenizer = Tokenizer.from_pretrained(args.model)
    bad = BadInput(task.options.skip_bad_lines)
    train_examples = task.read(args.train, bad)
    dev_examples = task.read(args.dev, bad) if args.dev else []
    labels = task.label_names(train_examples)
    changes = task.configure(base, labels)
    same_head = (base.architectures or [None])[0] == HEADS[task.architecture].architecture and \
        base.id2label == changes.get("id2label", base.id2label)
    model_config = with_settings(base.replace(**changes), task)
    train = task.featurize(train_examples, tokenizer, model_config, bad)
    dev = task.featurize(dev_examples, tokenizer, model_config, bad) if dev_examples else None
    return Data(tokenizer, changes, same_head, labels, train_examples, train, dev_examples, dev, bad)


def epoch_schedule(train_config: TrainConfig, source: FeatureBatches, epochs: float, world: World, *,
                   best_metric: str, evaluates: bool) -> TrainConfig:
    """Steps from the number of epochs; with a dev file, evaluation every epoch picks the best model
    (by --best-metric, else the task's metric); a checkpoint every epoch."""
    per_epoch = math.ceil(source.num_batches(0, train_config.batch_size, world_size=world.world_size)
                          / train_config.grad_accum)
    config = dataclasses.replace(
        train_config,
        steps=max(1, math.ceil(epochs * per_epoch)),
        eval_every=per_epoch if evaluates else 0,
        save_every=per_epoch,
        best_metric=(train_config.best_metric or best_metric) if evaluates else None,
    )
    config.check_steps()
    return config


def build_model(task: Task, args: FinetuneArgs, data: Data, *, seed: int) -> torch.nn.Module:
    """The checkpoint with the task's head (new, or its own when it has the same one), carrying
    the task's settings in its config."""
    torch.manual_seed(seed)  # the same new head on every process
    model = HEADS[task.architecture].from_pretrained(args.model, with_head=data.same_head, **task.model_options(),
                                                     **data.changes)
    if args.random_init:
        model.init_weights()
    model.config = with_settings(model.config, task)
    return model


def _best_dev_metrics(state: TrainState, config: TrainConfig, world: World) -> dict[str, float]:
    """The best dev evaluation (written to dev_metrics.json), or {} without a dev file."""
    best = best_evaluation(state.history, config.best_metric) if config.best_metric else None
    result = {k: v for k, v in (best or {}).items() if k not in ("split",)}
    if world.is_main:
        if best:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "step")
            print(f"best dev {config.best_metric} at step {best['step']}: {shown}")
            write_text_atomically(config.out / "dev_metrics.json", json.dumps(result, indent=2) + "\n")
        print(f"saved the fine-tuned model to {config.out}", flush=True)
    return result


def _data_summary(task: Task, data: Data) -> str:
    parts = [f"train: {len(data.train_examples):,} examples -> {len(data.train.features):,} sequences "
             f"({long_inputs(task, data.train)})"]
    if data.dev is not None:
        parts.append(f"dev: {len(data.dev_examples):,} examples ({long_inputs(task, data.dev)})")
    labels = data.labels
    shown = ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")
    if labels:  # an embedding task has none
        parts.append(f"labels: {shown}")
    if data.bad.summary():
        parts.append(data.bad.summary())
    return "; ".join(parts)
