"""Fine-tuning, evaluation and prediction for every task family, on the one training loop.

`bertkit finetune` reads labelled files with the task's reader, adds the task's head to a
pretrained checkpoint, trains with train.fit (evaluating on the dev file every epoch, keeping the
best model, stopping early when asked) and saves a standard BERT directory whose config.json holds
the labels (id2label) and how inputs were read (under "bertkit"), so that `bertkit evaluate`,
`bertkit predict` and `bertkit.pipeline` need nothing but the directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bertkit import distributed
from bertkit.config import BertConfig
from bertkit.distributed import World
from bertkit.errors import CheckpointError, InputError
from bertkit.fileio import write_text_atomically
from bertkit.options import at_least, check_choices, choices, greater_than
from bertkit.tasks import TASKS, DataOptions, Task, make_task, task_for_architecture
from bertkit.tasks.base import BadInput, FeatureBatches, Featurized, model_outputs

SETTINGS_KEY = "bertkit"  # config.json entry with the task and its DataOptions


@dataclass
class FinetuneArgs:
    """What `bertkit finetune` needs beyond the training loop's and the data's settings."""

    task: str = field(metadata=choices(TASKS))
    """classify, tag, qa or choice."""
    model: str
    """Checkpoint to start from: a BERT from `bertkit pretrain`, a published one, or a fine-tuned one."""
    train: Path
    """Labelled training file (CSV/TSV/JSONL, CoNLL, SQuAD JSON, by task)."""
    dev: Path | None = None
    """Labelled file to evaluate on after every epoch (and to pick the best model with)."""
    epochs: float = 3.0
    """Passes over the training data."""
    eval_batch_size: int = 64
    """Sequences per batch when evaluating."""
    random_init: bool = False
    """Re-initialise every weight of --model, keeping only its architecture and vocabulary: the
    from-scratch baseline that shows what pretraining is worth."""

    def __post_init__(self) -> None:
        check_choices(self)
        greater_than("epochs", self.epochs, 0)
        at_least("eval_batch_size", self.eval_batch_size, 1)


@dataclass
class Loaded:
    """A fine-tuned model ready to predict: its task, tokenizer and device."""

    task: Task
    model: torch.nn.Module
    tokenizer: Any
    config: BertConfig


# ---- settings stored with the model -------------------------------------------------------------------


def saved_settings(config: BertConfig) -> dict[str, Any]:
    settings = config.extra.get(SETTINGS_KEY) or {}
    if not isinstance(settings, dict) or not isinstance(settings.get("options", {}), dict):
        raise CheckpointError(f"config.json: its {SETTINGS_KEY!r} entry (the task and reading options) must be "
                              f"a JSON object with an 'options' object, got {json.dumps(settings)[:60]}")
    return dict(settings)


def options_for(config: BertConfig, overrides: dict[str, Any] | None = None) -> DataOptions:
    """The DataOptions the model was trained with, updated by explicitly given ones."""
    stored = saved_settings(config).get("options", {})
    known = {f.name for f in dataclasses.fields(DataOptions)}
    values = {k: v for k, v in stored.items() if k in known}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in known})
    return DataOptions(**values)


def with_settings(config: BertConfig, task: Task) -> BertConfig:
    extra = dict(config.extra)
    extra[SETTINGS_KEY] = {"task": task.name, "options": dataclasses.asdict(task.options)}
    return config.replace(extra=extra)


# ---- finetune -----------------------------------------------------------------------------------------


def run_finetune(args: FinetuneArgs, options: DataOptions, train_config) -> dict[str, float]:
    """`bertkit finetune`: returns the best (or last) dev metrics."""
    from bertkit.heads import HEADS
    from bertkit.tokenizer import Tokenizer
    from bertkit.train import adapt_to_checkpoint, best_evaluation, fit, start_run

    world = distributed.init()
    try:
        start_run(train_config, world)  # before any reading: a refused --out costs nothing
        train_config = adapt_to_checkpoint(train_config, world)
        device = distributed.device_for(world)
        say = print if world.is_main else (lambda *a, **k: None)
        task = make_task(args.task, options)
        base = BertConfig.load(args.model)
        _check_length(options.max_length, base)
        tokenizer = Tokenizer.from_pretrained(args.model)
        bad = BadInput(options.skip_bad_lines)
        train_examples = task.read(args.train, bad)
        dev_examples = task.read(args.dev, bad) if args.dev else []
        labels = task.label_names(train_examples)
        changes = task.configure(base, labels)
        same_head = (base.architectures or [None])[0] == task.architecture and \
            base.id2label == changes.get("id2label", base.id2label)
        # the data is featurized (and checked: labels unseen in training, ...) before any weights load
        model_config = with_settings(base.replace(**changes), task)
        train_features = task.featurize(train_examples, tokenizer, model_config, bad)
        dev_features = task.featurize(dev_examples, tokenizer, model_config, bad) if dev_examples else None
        say(_data_summary(task, args, train_examples, train_features, dev_examples, dev_features, labels, bad),
            flush=True)

        source = FeatureBatches(train_features.features, pad_id=tokenizer.pad_token_id, seed=train_config.seed)
        per_epoch = math.ceil(source.num_batches(0, train_config.batch_size, world_size=world.world_size)
                              / train_config.grad_accum)
        config = dataclasses.replace(
            train_config,
            steps=max(1, math.ceil(args.epochs * per_epoch)),
            eval_every=per_epoch if dev_examples else 0,
            save_every=per_epoch,
            best_metric=(train_config.best_metric or task.metric) if dev_examples else None,
        )
        config.check_steps()
        torch.manual_seed(train_config.seed)  # the same new head on every process
        model = HEADS[task.architecture].from_pretrained(args.model, with_head=same_head, **changes)
        if args.random_init:
            model.init_weights()
        model.config = with_settings(model.config, task)
        model.to(device)
        objective = task.objective(model)
        say(f"{config.steps} steps ({args.epochs:g} epochs of {per_epoch}) of "
            f"{config.batch_size * config.grad_accum * world.world_size} sequences, lr {config.lr:g}, "
            f"{'new' if not same_head else 'loaded'} {task.architecture} head"
            f"{', all weights re-initialised' if args.random_init else ''}, {device.type}", flush=True)

        def evaluate() -> dict[str, float]:
            return evaluate_examples(task, model, tokenizer, dev_examples, dev_features, args.eval_batch_size,
                                     world=world)

        state = fit(objective, source, config, evaluate=evaluate if dev_examples else None,
                    tokenizer=tokenizer, world=world)
        best = best_evaluation(state.history, config.best_metric) if config.best_metric else None
        result = {k: v for k, v in (best or {}).items() if k not in ("split",)}
        if world.is_main:
            if best:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "step")
                say(f"best dev {config.best_metric} at step {best['step']}: {shown}")
                write_text_atomically(config.out / "dev_metrics.json", json.dumps(result, indent=2) + "\n")
            say(f"saved the fine-tuned model to {config.out}", flush=True)
        return result
    finally:
        distributed.shutdown(world)


def _check_length(max_length: int, config: BertConfig) -> None:
    if max_length > config.max_position_embeddings:
        raise InputError(f"--max-length {max_length} exceeds the model's max_position_embeddings="
                         f"{config.max_position_embeddings}")


def long_inputs(task: Task, featurized: Featurized) -> str:
    """How many inputs did not fit: '3 longer than 128 tokens, truncated'."""
    what = "split into windows" if task.options.long_text == "window" else "truncated"
    return f"{featurized.long:,} longer than {task.options.max_length} tokens, {what}"


def _data_summary(task, args, train_examples, train_features: Featurized, dev_examples, dev_features,
                  labels, bad: BadInput) -> str:
    parts = [f"train: {len(train_examples):,} examples -> {len(train_features.features):,} sequences "
             f"({long_inputs(task, train_features)})"]
    if dev_features is not None:
        parts.append(f"dev: {len(dev_examples):,} examples ({long_inputs(task, dev_features)})")
    shown = ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")
    parts.append(f"labels: {shown}")
    if bad.summary():
        parts.append(bad.summary())
    return "; ".join(parts)


# ---- prediction and evaluation ------------------------------------------------------------------------


def predict_examples(task: Task, model, tokenizer, examples: list, featurized: Featurized | None = None,
                     batch_size: int = 64, *, progress: bool = False, world: World | None = None) -> list:
    """Predictions for `examples`; under torchrun (`world`) each process runs the model on its share
    of the features and every process gets all the outputs back."""
    featurized = featurized or task.featurize(examples, tokenizer, model.config, BadInput())

    def run(features: list) -> list:
        return model_outputs(lambda b: task.outputs(model, b), model, features,
                             pad_id=tokenizer.pad_token_id, batch_size=batch_size, progress=progress)

    outputs = shared_outputs(run, featurized.features, world or World())
    return task.postprocess(examples, featurized.features, outputs, model.config)


def shared_outputs(run, features: list, world: World) -> list:
    """`run(features)`, the work split over processes: rank r takes features r, r + n, r + 2n, ..."""
    if not world.distributed:
        return run(features)
    outputs: list = [None] * len(features)
    for rank, part in enumerate(distributed.all_gather_objects(run(features[world.rank::world.world_size]), world)):
        outputs[rank::world.world_size] = part
    return outputs


def evaluate_examples(task: Task, model, tokenizer, examples: list, featurized: Featurized | None = None,
                      batch_size: int = 64, *, progress: bool = False, world: World | None = None) -> dict[str, float]:
    predictions = predict_examples(task, model, tokenizer, examples, featurized, batch_size, progress=progress,
                                   world=world)
    return task.metrics(examples, predictions, model.config)


def load_finetuned(model_dir: str | Path, overrides: dict[str, Any] | None = None, *,
                   device: str | torch.device | None = None) -> Loaded:
    """A fine-tuned checkpoint with its task, reading options and tokenizer."""
    from bertkit.heads import HEADS
    from bertkit.tokenizer import Tokenizer

    config = BertConfig.load(model_dir)
    architecture = (config.architectures or ["BertModel"])[0]
    task_name = saved_settings(config).get("task") or task_for_architecture(architecture)
    options = options_for(config, overrides)
    if config.problem_type == "regression":
        options.regression = True
    task = make_task(task_name, options)
    _check_length(options.max_length, config)
    if architecture != task.architecture:
        raise InputError(f"{model_dir}: a {architecture} checkpoint, not a {task.name} model")
    model = HEADS[architecture].from_pretrained(model_dir).eval()
    if device is not None:
        model.to(device)
    return Loaded(task, model, Tokenizer.from_pretrained(model_dir), model.config)


def run_evaluate(model_dir: str, data: Path, overrides: dict[str, Any], *, batch_size: int = 64,
                 as_json: bool = False) -> dict[str, float]:
    loaded = load_finetuned(model_dir, overrides)
    bad = BadInput(loaded.task.options.skip_bad_lines)
    examples = loaded.task.read(data, bad)
    featurized = loaded.task.featurize(examples, loaded.tokenizer, loaded.config, bad)
    metrics = evaluate_examples(loaded.task, loaded.model, loaded.tokenizer, examples, featurized, batch_size,
                                progress=not as_json)
    _report(data, examples, loaded.task, featurized, bad)
    if as_json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:<16} {v:.4f}")
    return metrics


def _report(source, examples: list, task: Task, featurized: Featurized, bad: BadInput) -> None:
    """One line on stderr (stdout holds the results): inputs read, how many did not fit, lines skipped."""
    print(f"{source}: {len(examples):,} examples ({long_inputs(task, featurized)})"
          + (f"; {bad.summary()}" if bad.summary() else ""), file=sys.stderr)


def run_predict(model_dir: str, source: str, output: str, overrides: dict[str, Any], *,
                batch_size: int = 64) -> int:
    """Predictions as JSONL, one line per input, to `output` ('-' for stdout)."""
    loaded = load_finetuned(model_dir, overrides)
    bad = BadInput(loaded.task.options.skip_bad_lines)
    examples = read_inputs(loaded.task, source, bad)
    featurized = loaded.task.featurize(examples, loaded.tokenizer, loaded.config, bad)
    _report("<stdin>" if source == "-" else source, examples, loaded.task, featurized, bad)
    predictions = predict_examples(loaded.task, loaded.model, loaded.tokenizer, examples, featurized,
                                   batch_size=batch_size, progress=output != "-")
    lines = [json.dumps(loaded.task.to_json(e, p), ensure_ascii=False) for e, p in zip(examples, predictions)]
    text = "".join(line + "\n" for line in lines)
    if output == "-":
        sys.stdout.write(text)
    else:
        write_text_atomically(Path(output), text)
        print(f"wrote {len(lines):,} predictions to {output}", file=sys.stderr)
    return len(lines)


def read_inputs(task: Task, source: str, bad: BadInput) -> list:
    """A task file (CSV/TSV/JSONL, CoNLL, SQuAD JSON) read without requiring labels, or plain text
    (a file or '-'): one input per line, JSON objects where a line starts with '{'."""
    from bertkit.fileio import check_input_file

    if source == "-":
        data, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        path = check_input_file(source)
        if path.suffix.lower() in task.file_suffixes:
            return task.read(path, bad, labelled=False)
        data, name = path.read_bytes(), source
    inputs = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            bad(f"{name}:{number}", f"not valid UTF-8 (byte {e.start})")
            continue
        if line.startswith("{"):
            try:
                inputs.append(json.loads(line))
            except json.JSONDecodeError as e:
                bad(f"{name}:{number}", f"not valid JSON ({e.msg})")
        elif line:
            inputs.append(line)
    if not inputs:
        raise InputError(f"{name}: no inputs")
    return task.parse(inputs)
