"""classify: one text or a text pair -> a class, several labels at once, or a score.

Reader: CSV/TSV with a header (GLUE style) or JSONL. Featurizer: [CLS] A [SEP] (B [SEP]); a text
longer than max_length is truncated (longest first, as the tokenizer does) or, with
--long-text window, cut into overlapping windows whose probabilities are averaged.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import InputError
from bertkit.objective import Mean, Objective, Step, classification_count, classification_loss, correct
from bertkit.tasks.base import (
    BadInput,
    Featurized,
    Task,
    drop_skipped,
    pick_field,
    read_records,
    softmax,
    windows,
)

TEXT_FIELDS = ("text", "sentence1", "premise", "question1", "question", "sentence", "review", "content")
PAIR_FIELDS = ("text_pair", "sentence2", "hypothesis", "question2")
PAIR_AFTER_QUESTION = ("sentence", "passage", "context")  # QNLI-style: question + sentence
LABEL_FIELDS = ("label", "labels", "gold_label", "score", "class", "sentiment")


@dataclass
class TextExample:
    where: str  # file:line, or "input N"
    text: str
    text_pair: str | None = None
    label: Any = None  # str, list[str] (multi-label), float (regression), None (unlabelled)


@dataclass
class ClassPrediction:
    label: Any  # str, list[str] (multi-label) or float (regression)
    score: float  # probability of the label (its mean over windows); the value itself for regression
    scores: dict[str, float]


class Classify(Task):
    name = "classify"
    architecture = "BertForSequenceClassification"
    file_suffixes = (".csv", ".tsv", ".jsonl")
    packed_token_keys = ("input_ids", "token_type_ids")  # labels are per example: one pooled [CLS] each
    @property
    def metric(self) -> str:  # type: ignore[override]
        return "pearson" if self.options.regression else "accuracy"

    @property
    def problem_type(self) -> str:
        if self.options.regression:
            return "regression"
        return "multi_label_classification" if self.options.label_separator else "single_label_classification"

    # ---- reader

    def read(self, path: Path, bad: BadInput, *, labelled: bool = True) -> list[TextExample]:
        examples, fields = [], None
        for where, record in read_records(path, bad):
            if fields is None:
                fields = self._fields(record, where, labelled)
            example = self._example(where, record, fields, bad)
            if example is not None:
                examples.append(example)
        if not examples:
            raise InputError(f"{path}: no examples")
        return examples

    def _fields(self, record: dict, where: str, labelled: bool) -> tuple[str, str | None, str | None]:
        o = self.options
        text = pick_field(record, o.text_column, TEXT_FIELDS, "text", where)
        usual_pairs = PAIR_FIELDS + (PAIR_AFTER_QUESTION if text == "question" else ())
        pair = pick_field(record, o.text_pair_column, usual_pairs, "text pair", where, required=False)
        label = pick_field(record, o.label_column, LABEL_FIELDS, "label", where, required=labelled)
        return text, pair, label

    def _example(self, where: str, record: dict, fields, bad: BadInput) -> TextExample | None:
        text_field, pair_field, label_field = fields
        text = record.get(text_field)
        pair = record.get(pair_field) if pair_field else None
        if not isinstance(text, str) or not text.strip():
            return bad(where, f"empty {text_field!r}")
        if pair_field and (not isinstance(pair, str) or not pair.strip()):
            return bad(where, f"empty {pair_field!r}")
        label = None
        if label_field is not None and label_field in record:
            label = self._label(record[label_field], where, bad)
            if label is None:
                return None
        return TextExample(where, text, pair, label)

    def _label(self, value: Any, where: str, bad: BadInput) -> Any:
        if self.options.regression:
            try:
                return float(value)
            except (TypeError, ValueError):
                return bad(where, f"label {value!r} is not a number (--regression)")
        if isinstance(value, list):
            labels = [str(v).strip() for v in value]
        elif self.options.label_separator:
            labels = [v.strip() for v in str(value).split(self.options.label_separator) if v.strip()]
        else:
            label = str(value).strip()
            return label if label else bad(where, "empty label")
        return labels

    def parse(self, inputs: list) -> list[TextExample]:
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                out.append(TextExample(f"input {i}", item))
            elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
                out.append(TextExample(f"input {i}", item[0], item[1]))
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                out.append(TextExample(f"input {i}", item["text"], item.get("text_pair")))
            else:
                raise InputError(f"input {i}: expected a text, a (text, text_pair) pair or a dict with 'text'")
        return out

    def label_names(self, examples: list[TextExample]) -> list[str]:
        if self.options.regression:
            return ["score"]
        names: set[str] = set()
        for e in examples:
            names.update(e.label if isinstance(e.label, list) else [e.label])
        return sort_labels(names - {None})

    def configure(self, config: BertConfig, labels: list[str]) -> dict[str, Any]:
        return {"id2label": dict(enumerate(labels)), "problem_type": self.problem_type}

    # ---- featurizer

    def featurize(self, examples: list[TextExample], tokenizer, config: BertConfig, bad: BadInput) -> Featurized:
        o = self.options
        label2id = config.label2id
        # Truncation needs only a text's first pieces (more than max_length tells it is long), so a
        # 50 MB line is tokenized only that far; windows need them all.
        cap = o.max_length if o.long_text == "truncate" else None
        firsts = tokenizer.pieces([e.text for e in examples], max_pieces=cap)
        seconds = tokenizer.pieces([e.text_pair or "" for e in examples], max_pieces=cap)
        features, long = [], 0
        truncated_inputs: list[int] = []
        skipped: set[int] = set()
        for i, (e, a, b) in enumerate(zip(examples, firsts, seconds)):
            target = self._target(e, label2id, config, bad)
            if target is _SKIP:
                skipped.add(i)
                continue
            specials = 3 if e.text_pair is not None else 2
            if len(a.ids) + len(b.ids) + specials > o.max_length:
                long += 1
                if o.long_text == "truncate":
                    truncated_inputs.append(len(features))
            for ids, types in self._sequences(tokenizer, e, a.ids, b.ids):
                feature = {"input_ids": ids, "token_type_ids": types, "_example": i}
                if target is not None:
                    feature["labels"] = target
                features.append(feature)
        if truncated_inputs:
            self._truncate(tokenizer, examples, features, truncated_inputs)
        return Featurized(drop_skipped(examples, features, skipped), long)

    def _target(self, e: TextExample, label2id: dict[str, int], config: BertConfig, bad: BadInput) -> Any:
        if e.label is None:
            return None
        if self.options.regression:
            return float(e.label)
        labels = e.label if isinstance(e.label, list) else [e.label]
        unseen = [x for x in labels if x not in label2id]
        if unseen:
            bad(e.where, f"label {unseen[0]!r} was not in the training data (labels: {', '.join(label2id)})")
            return _SKIP
        if isinstance(e.label, list):
            vector = [0.0] * config.num_labels
            for x in labels:
                vector[label2id[x]] = 1.0
            return vector
        return label2id[e.label]

    def _sequences(self, tokenizer, e: TextExample, a: list[int], b: list[int]):
        """[CLS] A [SEP] (B [SEP]) — windows over the last text when it does not fit and --long-text window."""
        cls, sep, o = tokenizer.cls_token_id, tokenizer.sep_token_id, self.options
        if e.text_pair is None:
            spans = windows(len(a), o.max_length - 2, o.stride) if o.long_text == "window" else [(0, len(a))]
            return [([cls, *a[s:t], sep], [0] * (t - s + 2)) for s, t in spans]
        a = a[: max(1, (o.max_length - 3) // 2)] if len(a) > (o.max_length - 3) // 2 and o.long_text == "window" else a
        room = o.max_length - 3 - len(a)
        spans = windows(len(b), room, o.stride) if o.long_text == "window" else [(0, len(b))]
        return [([cls, *a, sep, *b[s:t], sep], [0] * (len(a) + 2) + [1] * (t - s + 1)) for s, t in spans]

    def _truncate(self, tokenizer, examples, features, positions) -> None:
        """Longest-first truncation by the tokenizer itself, so ids match other BERT tokenizers exactly
        (it reads a long text only as far as the kept pieces need)."""
        paired = [p for p in positions if examples[features[p]["_example"]].text_pair is not None]
        single = [p for p in positions if examples[features[p]["_example"]].text_pair is None]
        for group in (single, paired):  # pipeline inputs may mix texts and pairs
            if not group:
                continue
            chosen = [examples[features[p]["_example"]] for p in group]
            pairs = [e.text_pair for e in chosen] if group is paired else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # finetune reports the number of truncated examples itself
                enc = tokenizer([e.text for e in chosen], pairs, truncation=True,
                                max_length=self.options.max_length)
            for p, ids, types in zip(group, enc["input_ids"], enc["token_type_ids"]):
                features[p]["input_ids"], features[p]["token_type_ids"] = ids, types

    # ---- head and loss

    def objective(self, model: nn.Module) -> nn.Module:
        return ClassifyObjective(model, self.problem_type)

    def outputs(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"logits": model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits}

    # ---- post-processing

    def postprocess(self, examples, features, outputs, config: BertConfig) -> list[ClassPrediction]:
        per_example: dict[int, list[np.ndarray]] = defaultdict(list)
        for f, out in zip(features, outputs):
            per_example[f["_example"]].append(out["logits"])
        names = [config.id2label[i] for i in range(len(config.id2label))]
        return [self._combine(np.stack(per_example[i]), names) for i in range(len(examples))]

    def _combine(self, logits: np.ndarray, names: list[str]) -> ClassPrediction:
        """Mean over windows of the probabilities (or of the value, for regression)."""
        if self.problem_type == "regression":
            value = float(logits[:, 0].mean())
            return ClassPrediction(value, value, {names[0]: value})
        if self.problem_type == "multi_label_classification":
            p = (1 / (1 + np.exp(-logits))).mean(0)
            chosen = [names[j] for j in np.flatnonzero(p > 0.5)]
            score = float(np.prod([p[j] if p[j] > 0.5 else 1 - p[j] for j in range(len(p))]))
            return ClassPrediction(chosen, score, dict(zip(names, p.tolist())))
        p = softmax(logits).mean(0)
        j = int(p.argmax())
        return ClassPrediction(names[j], float(p[j]), dict(zip(names, p.tolist())))

    # ---- metrics

    def metrics(self, examples, predictions, config: BertConfig) -> dict[str, float]:
        from bertkit.tasks import metrics

        gold = [e.label for e in examples]
        guess = [p.label for p in predictions]
        if self.problem_type == "regression":
            return metrics.regression(gold, guess)
        names = [config.id2label[i] for i in range(len(config.id2label))]
        if self.problem_type == "multi_label_classification":
            return metrics.multi_label(gold, guess, names)
        return metrics.classification(gold, guess, names)

    def to_json(self, example: TextExample, prediction: ClassPrediction) -> dict[str, Any]:
        out: dict[str, Any] = {"text": example.text}
        if example.text_pair is not None:
            out["text_pair"] = example.text_pair
        out.update(label=prediction.label, score=round(prediction.score, 6))
        if self.problem_type != "regression":
            out["scores"] = {k: round(v, 6) for k, v in prediction.scores.items()}
        return out


_SKIP = object()


def sort_labels(names: set[str]) -> list[str]:
    """Numerically when every label is an integer ("0", "1", "2"), else alphabetically."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def classify_step(model: nn.Module, batch: dict[str, Tensor], *, problem_type: str) -> Step:
    """The loss summed per example (per example × label for several labels at once), and how
    many of those the model gets right (none for regression)."""
    out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    logits = out.logits.float()  # (B, L)
    labels = batch["labels"]  # (B,), or (B, L) for several labels
    metrics = {}
    if problem_type == "single_label_classification":
        metrics["correct"] = correct(logits, labels)
    elif problem_type == "multi_label_classification":
        metrics["correct"] = ((logits > 0) == (labels > 0.5)).sum()
    return Step({"cls": classification_loss(logits, labels, problem_type)}, metrics)


class ClassifyObjective(Objective):
    """Loss sums for train.fit, and accuracy (per label for several labels at once)."""

    def __init__(self, model: nn.Module, problem_type: str):
        accuracy = {} if problem_type == "regression" else {"accuracy": Mean("correct", over="cls")}
        super().__init__(model, partial(classify_step, problem_type=problem_type),
                         counts={"cls": lambda batch: classification_count(batch["labels"], problem_type)},
                         report=accuracy)
        self.problem_type = problem_type
