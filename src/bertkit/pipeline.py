"""`bertkit.pipeline(task, model=DIR)`: a callable that takes a string (or a pair, or a dict) or a
list of them and returns predictions as plain dicts, the same as `bertkit predict` writes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from bertkit.errors import InputError
from bertkit.models import resolve_model
from bertkit.options import plural

KINDS = ("classify", "tag", "qa", "choice", "fill-mask", "embed")


class Pipeline:
    """Predictions of a fine-tuned model for inputs given as Python values."""

    def __init__(self, task: str, model: str | Path, *, device: str | None = None, batch_size: int = 32,
                 **options: Any):
        from bertkit.predict import load_finetuned

        self.loaded = load_finetuned(model, options, device=device)
        if self.loaded.task.name != task:
            raise InputError(f"{model} is a {self.loaded.task.name} model, not {task}")
        self.batch_size = batch_size

    def __call__(self, inputs: Any) -> dict[str, Any] | list[dict[str, Any]]:
        from bertkit.predict import long_inputs, predict_examples
        from bertkit.tasks import BadInput

        single = not isinstance(inputs, list)
        task, tokenizer = self.loaded.task, self.loaded.tokenizer
        examples = task.parse([inputs] if single else inputs)
        featurized = task.featurize(examples, tokenizer, self.loaded.config, BadInput())
        if featurized.long and task.options.long_text == "truncate":  # qa always windows
            warnings.warn(f"{plural(len(examples), 'input')}: {long_inputs(task, featurized)} "
                          "(long_text='window' predicts on all of them)", stacklevel=2)
        predictions = predict_examples(task, self.loaded.model, tokenizer, examples, featurized,
                                       batch_size=self.batch_size)
        out = [self.loaded.task.to_json(e, p) for e, p in zip(examples, predictions)]
        return out[0] if single else out


def pipeline(task: str, model: str | Path | None = None, **kwargs: Any):
    """A predictor for `task`: classify, tag, qa, choice (a model from `bertkit finetune`),
    fill-mask (a model with an MLM head) or embed (any BERT; default all-MiniLM-L6-v2)."""
    if task not in KINDS:
        raise InputError(f"unknown pipeline {task!r}; choose one of {', '.join(KINDS)}")
    if task == "embed":
        from bertkit.embedding import Embedder

        return Embedder.from_pretrained(model)
    if model is None:
        raise InputError(f"pipeline({task!r}) needs model=DIR")
    model = resolve_model(model)  # a directory or a model name (bertkit.models)
    if task == "fill-mask":
        from bertkit.fill_mask import FillMask

        return FillMask.from_pretrained(model)
    return Pipeline(task, model, **kwargs)
