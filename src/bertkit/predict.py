"""The prediction layer: load a fine-tuned model, featurize inputs, predict, evaluate.

A model from `bertkit finetune` is a standard BERT directory whose config.json holds the labels
(id2label) and how inputs were read (under "bertkit"), so `load_finetuned` needs nothing but the
directory. `bertkit evaluate`, `bertkit predict`, `bertkit.pipeline` and fine-tuning's evaluation
on the dev file all run the same code path here, so they give the same numbers. This module never
imports training code.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bertkit import distributed
from bertkit.config import BertConfig
from bertkit.devices import inference_autocast, resolve_device
from bertkit.distributed import World
from bertkit.errors import CheckpointError, InputError
from bertkit.fileio import check_input_file, read_lines, write_text_atomically
from bertkit.heads import HEADS
from bertkit.quantize import set_inference_precision
from bertkit.sentence import load_tokenizer, read_settings
from bertkit.tasks import DataOptions, Task, make_task, task_for_architecture
from bertkit.tasks.base import BadInput, Featurized, model_outputs
from bertkit.tokenizer import Tokenizer

SETTINGS_KEY = "bertkit"  # config.json entry with the task and its DataOptions


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
    """`config` with the task and its reading options, as `saved_settings` reads them back."""
    extra = dict(config.extra)
    extra[SETTINGS_KEY] = {"task": task.name, "options": dataclasses.asdict(task.options)}
    return config.replace(extra=extra)


def check_max_length(max_length: int, config: BertConfig) -> None:
    if max_length > config.max_position_embeddings:
        raise InputError(f"--max-length {max_length} exceeds the model's max_position_embeddings="
                         f"{config.max_position_embeddings}")


def load_finetuned(model_dir: str | Path, overrides: dict[str, Any] | None = None, *,
                   device: str | torch.device | None = "auto", precision: str = "auto") -> Loaded:
    """A fine-tuned checkpoint with its task, reading options and tokenizer, on `device` (None or
    auto: a GPU if there is one, else the CPU), computing in `precision` (auto, fp32, bf16, int8)."""
    config = BertConfig.load(model_dir)
    architecture = (config.architectures or ["BertModel"])[0]
    task_name = saved_settings(config).get("task")
    if task_name is None and architecture == "BertModel":  # a plain encoder or a sentence-transformers
        task_name = "embed"  # model: the one task it can be scored on as it is (zero-shot retrieval)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        overrides = {"max_length": _encoder_max_length(model_dir, config), **given}
    task_name = task_name or task_for_architecture(architecture)
    options = options_for(config, overrides)
    if config.problem_type == "regression":
        options.regression = True
    task = make_task(task_name, options)
    check_max_length(options.max_length, config)
    head = HEADS[task.architecture]  # a sentence encoder's config.json says BertModel, as other tools read it
    if architecture != head.architecture:
        raise InputError(f"{model_dir}: a {architecture} checkpoint, not a {task.name} model")
    model = head.from_pretrained(model_dir).eval()
    model.to(resolve_device(device))
    tokenizer = load_tokenizer(model_dir) if task.name == "embed" else Tokenizer.from_pretrained(model_dir)
    set_inference_precision(model, precision, tokenizer)
    return Loaded(task, model, tokenizer, model.config)


def _encoder_max_length(model_dir: str | Path, config: BertConfig) -> int:
    """What an encoder without bertkit's settings reads: its sentence-transformers max_seq_length,
    else its positions' limit."""
    settings, _ = read_settings(model_dir)
    return settings.max_seq_length or min(512, config.max_position_embeddings)


# ---- prediction and evaluation ------------------------------------------------------------------------


def predict_examples(task: Task, model, tokenizer, examples: list, featurized: Featurized | None = None,
                     batch_size: int = 64, *, progress: bool = False, world: World | None = None) -> list:
    """Predictions for `examples`; under torchrun (`world`) each process runs the model on its share
    of the features and every process gets all the outputs back. The model runs where it is, in
    bf16 autocast on a GPU that has it (devices.inference_autocast); outputs are float32."""
    featurized = featurized or task.featurize(examples, tokenizer, model.config, BadInput())

    def run(features: list) -> list:
        with inference_autocast(model):
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


def long_inputs(task: Task, featurized: Featurized) -> str:
    """How many inputs did not fit: '3 longer than 128 tokens, truncated'."""
    what = "split into windows" if task.options.long_text == "window" else "truncated"
    return f"{featurized.long:,} longer than {task.options.max_length} tokens, {what}"


# ---- bertkit evaluate / predict -----------------------------------------------------------------------


def run_evaluate(model_dir: str, data: Path, overrides: dict[str, Any], *, batch_size: int = 64,
                 as_json: bool = False, device: str = "auto", precision: str = "auto") -> dict[str, float]:
    loaded = load_finetuned(model_dir, overrides, device=device, precision=precision)
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


def run_predict(model_dir: str, source: str, output: str, overrides: dict[str, Any], *,
                batch_size: int = 64, device: str = "auto", precision: str = "auto") -> int:
    """Predictions as JSONL, one line per input, to `output` ('-' for stdout)."""
    loaded = load_finetuned(model_dir, overrides, device=device, precision=precision)
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


def _report(source, examples: list, task: Task, featurized: Featurized, bad: BadInput) -> None:
    """One line on stderr (stdout holds the results): inputs read, how many did not fit, lines skipped."""
    print(f"{source}: {len(examples):,} examples ({long_inputs(task, featurized)})"
          + (f"; {bad.summary()}" if bad.summary() else ""), file=sys.stderr)


def read_inputs(task: Task, source: str, bad: BadInput) -> list:
    """A task file (CSV/TSV/JSONL, CoNLL, SQuAD JSON) read without requiring labels, or plain text
    (a file or '-'): one input per line, JSON objects where a line starts with '{'."""
    if source != "-":
        path = check_input_file(source)
        if path.suffix.lower() in task.file_suffixes:
            return task.read(path, bad, labelled=False)
    name = "<stdin>" if source == "-" else source
    inputs = []
    for number, text in enumerate(read_lines(source, bad), start=1):
        line = (text or "").strip()  # None: not UTF-8, already reported
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
