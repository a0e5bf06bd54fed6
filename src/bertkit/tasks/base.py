"""What every fine-tuning task family shares: reading labelled files, bad-line handling, windows,
batches of features for the training loop, and the `Task` interface a family implements.

A task family is one small unit (classify.py, tag.py, qa.py, choice.py):
  reader       file -> examples (each remembers its file:line)
  featurizer   examples -> features: token ids ready for the model, one or more per example (windows)
  objective    features -> loss sums for train.fit (the one training loop)
  post-processing  model outputs per feature -> one prediction per example
  metrics      predictions + gold examples -> numbers (scikit-learn, scipy, seqeval)
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import InputError
from bertkit.fileio import read_lines
from bertkit.labels import IGNORE
from bertkit.padding import pad
from bertkit.settings import DataOptions  # torch-free there, for the command line

log = logging.getLogger("bertkit")

Feature = dict[str, Any]
"""Model inputs of one sequence (input_ids, token_type_ids, labels, ...) as lists and numbers.
Keys starting with "_" are bookkeeping for post-processing (_example, _word_ids, _offsets, ...)
and never reach the model."""


# ---- bad input ---------------------------------------------------------------------------------------


class BadInput:
    """Stops at the first malformed line, or with skip=True warns (20 at most) and counts."""

    def __init__(self, skip: bool = False):
        self.skip = skip
        self.count = 0

    def __call__(self, where: str, problem: str) -> None:
        if not self.skip:
            raise InputError(f"{where}: {problem} (use --skip-bad-lines to skip such lines)")
        self.count += 1
        if self.count <= 20:
            log.warning("%s: %s; skipped", where, problem)

    def summary(self) -> str | None:
        return f"skipped {self.count} bad line(s)" if self.count else None


# ---- reading files -----------------------------------------------------------------------------------


def read_text_lines(path: Path, bad: BadInput) -> list[str]:
    """The file's lines, decoded as UTF-8 (a BOM dropped); an undecodable line is reported and becomes
    empty, so that the lines keep their numbers."""
    return ["" if line is None else line for line in read_lines(path, bad, strip_bom=True)]


def table_format(path: Path) -> str:
    """csv, tsv or jsonl from the file name (.csv .tsv .txt .jsonl .json)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    raise InputError(f"{path}: unknown format; use .csv, .tsv or .jsonl")


def read_records(path: Path, bad: BadInput) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file:line, record) for every row of a CSV/TSV file with a header, or a JSONL file."""
    lines = read_text_lines(path, bad)
    if table_format(path) == "jsonl":
        yield from _jsonl_records(path, lines, bad)
    else:
        yield from _table_records(path, lines, bad, "\t" if table_format(path) == "tsv" else ",")


def _jsonl_records(path: Path, lines: list[str], bad: BadInput) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            bad(f"{path}:{number}", f"not valid JSON ({e.msg})")
            continue
        if not isinstance(record, dict):
            bad(f"{path}:{number}", "expected a JSON object")
            continue
        yield f"{path}:{number}", record


def _table_records(path: Path, lines: list[str], bad: BadInput, delimiter: str):
    # TSV as GLUE writes it: fields never quoted, so quotes inside a text are just characters.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quoting=quoting)
    header = None
    end = 0  # the line the previous row ended on: a quoted field may run over several lines
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or not any(f.strip() for f in row):
                continue
            if header is None:
                header = [h.strip() for h in row]
                continue
            where = f"{path}:{start}"
            if len(row) != len(header):
                spans = f"; the row runs to line {end}: a quote left open?" if end > start else ""
                bad(where, f"expected {len(header)} fields (as the header), found {len(row)}{spans}")
                continue
            yield where, dict(zip(header, row))
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: {e}") from None
    if header is None:
        raise InputError(f"{path}: empty file (expected a header line)")


def pick_field(record: dict[str, Any], given: str | None, usual: Sequence[str], what: str, where: str,
               *, required: bool = True) -> str | None:
    """The record's field for `what`: the one named by the user, or the first usual name present."""
    if given is not None:
        if given not in record:
            raise InputError(f"{where}: no {given!r} field for the {what} (fields: {', '.join(record)})")
        return given
    found = next((name for name in usual if name in record), None)
    if found is None and required:
        raise InputError(
            f"{where}: cannot tell which field holds the {what} (fields: {', '.join(record)}); "
            f"name it with --{what.replace(' ', '-')}-column"
        )
    return found


# ---- windows over long inputs ------------------------------------------------------------------------


def windows(length: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most `size` covering range(length), consecutive ones overlapping by
    `stride` items; the last window ends at `length`."""
    if size <= 0:
        raise InputError("max_length leaves no room for text")
    if length <= size:
        return [(0, length)]
    step = max(1, size - stride)
    spans, start = [], 0
    while True:
        end = min(start + size, length)
        spans.append((start, end))
        if end == length:
            return spans
        start += step


def max_context(spans: list[tuple[int, int]], position: int) -> int:
    """Index of the span in which `position` has the most context on its shorter side
    (BERT's rule for tokens seen by several overlapping windows). `spans` are sorted, as windows()
    makes them, so only the few that hold `position` are looked at: a long text has thousands."""
    best, best_score = 0, -1.0
    i = bisect.bisect_right(spans, position, key=lambda span: span[1])  # the first span ending after it
    while i < len(spans) and spans[i][0] <= position:
        start, end = spans[i]
        score = min(position - start, end - 1 - position) + 0.01 * (end - start)
        if score > best_score:
            best, best_score = i, score
        i += 1
    return best


# ---- post-processing ----------------------------------------------------------------------------------


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities along `axis`; the maximum is subtracted first, so large scores do not overflow."""
    z = np.exp(x - x.max(axis, keepdims=True))
    return z / z.sum(axis, keepdims=True)


# ---- batches ------------------------------------------------------------------------------------------


def collate(features: Sequence[Feature], pad_id: int = 0) -> dict[str, Tensor]:
    """Pad a list of features into tensors and add attention_mask. Token lists are padded on their
    last dimension with pad_id (input_ids), IGNORE (token labels) or 0 (token types)."""
    pads = {"input_ids": pad_id, "labels": IGNORE}
    batch = {k: _stack([f[k] for f in features], pads.get(k, 0)) for k in features[0] if not k.startswith("_")}
    batch["attention_mask"] = _stack([_ones_like(f["input_ids"]) for f in features], 0)
    return batch


def _ones_like(x: list) -> list:
    return [_ones_like(v) for v in x] if x and isinstance(x[0], list) else [1] * len(x)


def _stack(values: list, value: int) -> Tensor:
    first = values[0]
    if not isinstance(first, list) or (first and isinstance(first[0], float)):
        return torch.tensor(values)  # numbers, or fixed-size float vectors (multi-label targets)
    if first and isinstance(first[0], list):  # (N, T) per feature: multiple choice
        rows = pad([row for v in values for row in v], value)  # (B * N, T)
        return rows.view(len(values), len(first), rows.shape[1])  # (B, N, T)
    return pad(values, value)  # (B, T)


class FeatureBatches:
    """Random-access batches of features for train.fit: a fresh shuffle each epoch, seeded by
    (seed, epoch), so any batch can be rebuilt on resume. A short last batch is filled up from the
    start of the epoch's order, so every process always gets a full batch."""

    def __init__(self, features: list[Feature], *, pad_id: int, seed: int = 0, shuffle: bool = True):
        if not features:
            raise InputError("no training examples")
        self.features, self.pad_id, self.seed, self.shuffle = features, pad_id, seed, shuffle

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.features)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def num_batches(self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> int:
        return math.ceil(len(self.features) / (batch_size * world_size))

    def batch(self, epoch: int, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1):
        order = self.order(epoch)
        size = batch_size * world_size
        picked = [order[(index * size + i) % len(order)] for i in range(size)]
        mine = picked[rank * batch_size:(rank + 1) * batch_size]
        return collate([self.features[i] for i in mine], self.pad_id)


def model_outputs(outputs: Callable[[dict[str, Tensor]], dict[str, Tensor]], model: nn.Module,
                  features: list[Feature], *, pad_id: int, batch_size: int = 64,
                  progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Run `outputs(batch)` (float tensors with a leading batch dimension) over all features in
    batches of similar length; returns one dict of arrays per feature, in the features' order."""
    device = next(model.parameters()).device
    lengths = [_longest(f["input_ids"]) for f in features]
    order = sorted(range(len(features)), key=lambda i: -lengths[i])
    results: list[dict[str, np.ndarray]] = [{} for _ in features]
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(features), desc="predict", unit="seq", dynamic_ncols=True, leave=False)
    try:
        with torch.inference_mode():  # as embedding: a compiled model (--compile) keeps one graph
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                batch = {k: v.to(device) for k, v in collate([features[i] for i in chosen], pad_id).items()}
                out = {k: v.float().cpu().numpy() for k, v in outputs(batch).items()}
                for row, i in enumerate(chosen):
                    results[i] = {k: v[row] for k, v in out.items()}
                if bar is not None:
                    bar.update(len(chosen))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return results


def _longest(ids: list) -> int:
    return max(len(row) for row in ids) if ids and isinstance(ids[0], list) else len(ids)


# ---- the interface of a task family ------------------------------------------------------------------


@dataclass
class Featurized:
    features: list[Feature]
    long: int = 0
    """Examples longer than max_length (truncated, or split into windows)."""


def drop_skipped(examples: list, features: list[Feature], skipped: set[int]) -> list[Feature]:
    """Take the examples a featurizer skipped (bad input it reported, such as a label the model never
    saw) out of ``examples``, in place, and renumber the features' _example to match: predictions
    and metrics then cover the same examples, as for lines skipped when the file was read."""
    if not skipped:
        return features
    if len(skipped) == len(examples):
        raise InputError(f"nothing left to use: all {len(examples):,} example(s) were skipped as bad input")
    position: dict[int, int] = {}
    for i in range(len(examples)):
        if i not in skipped:
            position[i] = len(position)
    examples[:] = [e for i, e in enumerate(examples) if i not in skipped]
    for f in features:
        f["_example"] = position[f["_example"]]
    return features


class Task:
    """One task family. Subclasses fill in each step; finetune.py and pipeline.py drive them."""

    name: ClassVar[str]
    architecture: ClassVar[str]
    """The head class (heads.HEADS) and transformers' AutoModelFor… equivalent."""
    metric: ClassVar[str]
    """The validation metric that picks the best checkpoint by default."""
    file_suffixes: ClassVar[tuple[str, ...]] = ()
    """Files `predict` reads with the task's reader (others are plain text, an input per line)."""
    packed_token_keys: ClassVar[tuple[str, ...] | None] = None
    """The per-token keys of a training batch that --pack packs (packing.py); None: no packing."""

    def __init__(self, options: DataOptions | None = None):
        self.options = options or DataOptions()

    # reader
    def read(self, path: Path, bad: BadInput, *, labelled: bool = True) -> list:
        """Examples of a file; labelled=False for prediction inputs, which may lack labels."""
        raise NotImplementedError

    def parse(self, inputs: list) -> list:
        """Examples without gold labels from Python values (pipeline) — strings, pairs or dicts."""
        raise NotImplementedError

    def label_names(self, examples: list) -> list[str]:
        """The label set, from the training examples (stored as id2label in the saved model)."""
        raise NotImplementedError

    def configure(self, config: BertConfig, labels: list[str]) -> dict[str, Any]:
        """config.json changes for this task's head (id2label, problem_type)."""
        return {"id2label": dict(enumerate(labels))}

    # featurizer
    def featurize(self, examples: list, tokenizer, config: BertConfig, bad: BadInput) -> Featurized:
        """Features of ``examples``; an example skipped as bad input here is also removed from
        ``examples`` (drop_skipped), so that the list stays aligned with the predictions."""
        raise NotImplementedError

    def model_options(self) -> dict[str, Any]:
        """Arguments of the head's from_pretrained beyond config changes (a sentence encoder's pooling)."""
        return {}

    def batches(self, features: list[Feature], *, pad_id: int, seed: int = 0):
        """The batch source train.fit draws the training features from."""
        return FeatureBatches(features, pad_id=pad_id, seed=seed)

    # head / loss
    def objective(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def outputs(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    # post-processing
    def postprocess(self, examples: list, features: list[Feature], outputs: list[dict[str, np.ndarray]],
                    config: BertConfig) -> list:
        raise NotImplementedError

    # metrics
    def metrics(self, examples: list, predictions: list, config: BertConfig) -> dict[str, float]:
        raise NotImplementedError

    def to_json(self, example, prediction) -> dict[str, Any]:
        raise NotImplementedError
