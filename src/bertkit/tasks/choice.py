"""choice: a context and N candidate answers or endings -> which candidate is right (SWAG, ARC, COPA...).

Reader: JSONL or CSV/TSV with a header. Each example has an optional context ("context", "question",
"sent1", "premise", "goal", "ctx"), its candidates — a list field ("choices", "endings", "options"),
numbered columns (ending0.., choice0.., option1.., sol1..) or letter columns (A, B, C, D) — and a label:
the index of the right candidate, its column name ("B"), or its text. SWAG's CSV layout (sent1,
sent2, ending0..3) reads as context = sent1, candidate k = sent2 + " " + ending k (sentence A and
the possible continuation B, as in the BERT paper's SWAG set-up, §4.4). ARC / CommonsenseQA JSONL ({"question": {"stem", "choices": [{"label",
"text"}]}, "answerKey"}) reads as it is.

How a string label is read: first as the name of a candidate (its column, or a choice's "label");
then in a CSV/TSV file as a 0-based index ("2") before the text of a candidate, and in JSONL the
other way round — JSON can write an index as a number, so a JSON string is text first.

Different numbers of candidates: allowed (ARC has 3 to 5). The head needs the same N for every
example of a batch, so an example with fewer than the most of its file (or of one predict call) is
padded with [CLS] [SEP] candidates that a mask ("choice_mask") takes out of the softmax: they change
neither the loss nor the probabilities, only cost their two tokens. In a table, trailing empty cells
mean fewer candidates; an empty candidate before a filled one is a bad line. --batch-size counts
examples, each of N sequences.

Featurizer: one feature per example with N sequences [CLS] context [SEP] candidate [SEP] (token
types 0 then 1), or [CLS] candidate [SEP] without a context. A pair longer than max_length is
truncated longest first, by the tokenizer itself; --long-text window means the same as truncate
here, since N candidates cut into different numbers of windows could not be compared.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import InputError
from bertkit.objective import Mean, Objective, Step, correct, cross_entropy_loss, labelled, mask_choices
from bertkit.tasks.base import (
    BadInput,
    DataOptions,
    Featurized,
    Task,
    pick_field,
    read_records,
    softmax,
    table_format,
)

CONTEXT_FIELDS = ("context", "question", "sent1", "premise", "goal", "ctx")
CHOICE_FIELDS = ("choices", "endings", "options", "candidates")
CHOICE_PREFIXES = ("ending", "choice", "option", "answer", "sol", "candidate")
LABEL_FIELDS = ("label", "answerKey", "answer", "gold_label", "gold")
STEM_FIELD = "sent2"  # SWAG: the start of the second sentence, shared by every ending
MIN_CHOICES = 2


@dataclass
class ChoiceExample:
    where: str  # file:line, or "input N"
    context: str | None
    choices: list[str]  # the texts the model sees as second segments (SWAG: sent2 + " " + ending)
    label: int | None = None  # index of the right choice; None when unlabelled


@dataclass
class ChoicePrediction:
    label: int  # index of the most probable choice
    score: float  # its probability
    scores: list[float]  # probability of every choice (softmax over the example's choices)


class Fields(NamedTuple):
    """Field names given by the user (None: find the usual ones)."""

    context: str | None  # --text-column
    choices: str | None  # --text-pair-column: a list field, or the prefix of numbered columns
    label: str | None  # --label-column


@dataclass
class Layout:
    """Which fields of a record hold what (found once per file, from its first record)."""

    context: str | None
    choices: str | None  # a field holding a list of choices ...
    columns: list[str] = field(default_factory=list)  # ... or one field per choice, in order
    stem: str | None = None
    label: str | None = None


class Choice(Task):
    name = "choice"
    architecture = "BertForMultipleChoice"
    metric = "accuracy"
    file_suffixes = (".csv", ".tsv", ".jsonl", ".json")

    def __init__(self, options: DataOptions | None = None):
        super().__init__(options)
        if self.options.long_text == "window":  # no windows for choices (module docstring): truncate
            self.options = dataclasses.replace(self.options, long_text="truncate")

    # ---- reader

    def read(self, path: Path, bad: BadInput, *, labelled: bool = True) -> list[ChoiceExample]:
        from_table = table_format(path) != "jsonl"
        examples, layout = [], None
        for where, record in read_records(path, bad):
            record = _flatten_question(record)
            if layout is None:
                layout = find_layout(record, where, self._given(), labelled=labelled)
            example = self._example(where, record, layout, bad, labelled=labelled, from_table=from_table)
            if example is not None:
                examples.append(example)
        if not examples:
            raise InputError(f"{path}: no examples")
        return examples

    def _given(self) -> Fields:
        o = self.options
        return Fields(o.text_column, o.text_pair_column, o.label_column)

    def _example(self, where: str, record: dict[str, Any], layout: Layout, bad: BadInput, *,
                 labelled: bool, from_table: bool) -> ChoiceExample | None:
        context = record.get(layout.context) if layout.context else None
        if context is not None and not isinstance(context, str):
            return bad(where, f"{layout.context!r} is not a text")
        found = self._choices(record, layout)
        if isinstance(found, str):
            return bad(where, found)
        texts, names = found
        stem = record.get(layout.stem, "") if layout.stem else ""
        choices = [f"{stem.strip()} {t}" if stem.strip() else t for t in texts]
        label = None
        value = record.get(layout.label) if layout.label else None
        if value is not None and value != "":
            label = resolve_label(value, texts, names, from_table=from_table)
            if isinstance(label, str):
                return bad(where, label)
        elif labelled:
            return bad(where, "no label")
        context = context.strip() if context else ""
        return ChoiceExample(where, context or None, choices, label)

    def _choices(self, record: dict[str, Any], layout: Layout) -> tuple[list[str], list[str]] | str:
        """(texts, names) of the record's choices, or what is wrong with them."""
        if layout.choices is not None:
            return _listed_choices(record.get(layout.choices), layout.choices)
        cells = [record.get(c) for c in layout.columns]
        while cells and (cells[-1] is None or (isinstance(cells[-1], str) and not cells[-1].strip())):
            cells.pop()  # a table holds fewer choices in a row as trailing empty cells
        return _checked_choices(cells, layout.columns[: len(cells)], "column")

    def parse(self, inputs: list) -> list[ChoiceExample]:
        out = []
        for i, item in enumerate(inputs):
            where = f"input {i}"
            if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], (list, tuple)):
                item = {"context": item[0], "choices": list(item[1])}
            if not isinstance(item, dict):
                raise InputError(f"{where}: expected a dict with 'choices' (and 'context'), "
                                 "or a (context, [choices]) pair")
            record = _flatten_question(item)
            # the names the model was trained with where the input has them, else the usual ones
            given = Fields(*(g if g is not None and any(k.startswith(g) for k in record) else None
                             for g in self._given()))
            layout = find_layout(record, where, given, labelled=False)
            # one input is one item: its problem is an error, not a skipped line
            out.append(self._example(where, record, layout, BadInput(), labelled=False, from_table=False))
        return out

    def label_names(self, examples: list[ChoiceExample]) -> list[str]:
        """The label set is the choice indices: "0" .. "N-1" for the most choices of an example."""
        return [str(i) for i in range(max(len(e.choices) for e in examples))]

    def configure(self, config: BertConfig, labels: list[str]) -> dict[str, Any]:
        # A multiple-choice head scores each candidate with one output: no label names, no problem_type
        # (transformers' BertForMultipleChoice ignores num_labels), and none inherited from the base model.
        return {"id2label": {}, "problem_type": None}

    # ---- featurizer

    def featurize(self, examples: list[ChoiceExample], tokenizer, config: BertConfig, bad: BadInput) -> Featurized:
        limit = self.options.max_length
        # Whether a sequence fits needs only its first pieces (more than max_length tells it does
        # not), so a huge context or candidate is tokenized only that far; the tokenizer truncates.
        contexts = tokenizer.pieces([e.context or "" for e in examples], max_pieces=limit)
        flat = [c for e in examples for c in e.choices]
        pieces = iter(tokenizer.pieces(flat, max_pieces=limit))
        sequences: list[list[tuple[list[int], list[int]] | None]] = []
        too_long: list[tuple[int, int]] = []  # (example, choice) pairs the tokenizer must truncate
        long = 0
        for i, (e, a) in enumerate(zip(examples, contexts)):
            row: list[tuple[list[int], list[int]] | None] = []
            for j in range(len(e.choices)):
                b = next(pieces).ids
                if len(a.ids) + len(b) + (3 if e.context else 2) > limit:
                    too_long.append((i, j))
                    row.append(None)
                else:
                    row.append(_sequence(tokenizer, a.ids if e.context else None, b))
            long += any(s is None for s in row)
            sequences.append(row)
        self._truncate(tokenizer, examples, sequences, too_long)
        return Featurized(_features(examples, sequences, tokenizer), long)

    def _truncate(self, tokenizer, examples, sequences, positions: list[tuple[int, int]]) -> None:
        """Longest-first truncation by the tokenizer itself, so ids match other BERT tokenizers exactly."""
        with_context = [(i, j) for i, j in positions if examples[i].context]
        alone = [(i, j) for i, j in positions if not examples[i].context]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # finetune reports the number of truncated examples itself
            for group, paired in ((with_context, True), (alone, False)):
                if not group:
                    continue
                firsts = [examples[i].context if paired else examples[i].choices[j] for i, j in group]
                seconds = [examples[i].choices[j] for i, j in group] if paired else None
                enc = tokenizer(firsts, seconds, truncation=True, max_length=self.options.max_length)
                for (i, j), ids, types in zip(group, enc["input_ids"], enc["token_type_ids"]):
                    sequences[i][j] = (ids, types)

    # ---- head and loss

    def objective(self, model: nn.Module) -> nn.Module:
        return ChoiceObjective(model)

    def outputs(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits  # (B, N)
        return {"logits": mask_choices(logits.float(), batch["choice_mask"])}

    # ---- post-processing

    def postprocess(self, examples, features, outputs, config: BertConfig) -> list[ChoicePrediction]:
        logits = {f["_example"]: out["logits"] for f, out in zip(features, outputs)}
        return [_predict(logits[i][: len(e.choices)]) for i, e in enumerate(examples)]

    # ---- metrics

    def metrics(self, examples, predictions, config: BertConfig) -> dict[str, float]:
        gold = np.array([e.label for e in examples])
        guess = np.array([p.label for p in predictions])
        return {"accuracy": float((gold == guess).mean())}

    def to_json(self, example: ChoiceExample, prediction: ChoicePrediction) -> dict[str, Any]:
        return {
            "context": example.context,
            "choices": example.choices,
            "label": prediction.label,
            "choice": example.choices[prediction.label],
            "score": round(prediction.score, 6),
            "scores": [round(s, 6) for s in prediction.scores],
        }


# ---- reading helpers (pure) ---------------------------------------------------------------------------


def find_layout(record: dict[str, Any], where: str, given: Fields, *, labelled: bool) -> Layout:
    """Where a record's context, choices and label are, from the given names or the usual ones."""
    context = pick_field(record, given.context, CONTEXT_FIELDS, "text", where, required=False)
    label = pick_field(record, given.label, LABEL_FIELDS, "label", where, required=labelled)
    stem = STEM_FIELD if context == "sent1" and STEM_FIELD in record else None
    listed = [given.choices] if given.choices else CHOICE_FIELDS
    field_name = next((f for f in listed if isinstance(record.get(f), list)), None)
    if field_name is not None:
        return Layout(context, field_name, stem=stem, label=label)
    columns = choice_columns(list(record), (given.choices,) if given.choices else CHOICE_PREFIXES)
    if len(columns) < MIN_CHOICES:
        raise InputError(
            f"{where}: cannot tell which fields hold the choices (fields: {', '.join(record)}); "
            f"expected a list field ({', '.join(CHOICE_FIELDS)}), numbered columns (ending0, ending1, ...) "
            "or letter columns (A, B, ...); name a list field or column prefix with --text-pair-column"
        )
    return Layout(context, None, columns, stem=stem, label=label)


def choice_columns(fields: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """Fields holding one choice each, in order: numbered with a known prefix (ending0, ending1...;
    sol1, sol2), else single capital letters from A on (A, B, C, D)."""
    for prefix in prefixes:
        numbered = [(int(m.group(1)), f) for f in fields if (m := re.fullmatch(re.escape(prefix) + r"(\d+)", f))]
        if len(numbered) >= MIN_CHOICES:
            return [f for _, f in sorted(numbered)]
    letters = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if letter not in fields:
            break
        letters.append(letter)
    return letters


def _flatten_question(record: dict[str, Any]) -> dict[str, Any]:
    """ARC / CommonsenseQA / OpenBookQA: {"question": {"stem", "choices"}} -> "question" and "choices"."""
    q = record.get("question")
    if isinstance(q, dict) and "stem" in q and "choices" in q and "choices" not in record:
        return {**record, "question": q["stem"], "choices": q["choices"]}
    return record


def _listed_choices(value: Any, name: str) -> tuple[list[str], list[str]] | str:
    if not isinstance(value, list):
        return f"{name!r} is not a list of choices"
    texts, names = [], []
    for k, c in enumerate(value):
        if isinstance(c, dict):  # {"label": "A", "text": "..."}
            texts.append(c.get("text"))
            names.append(str(c.get("label", k)))
        else:
            texts.append(c)
            names.append(str(k))
    return _checked_choices(texts, names, "choice")


def _checked_choices(texts: list[Any], names: list[str], what: str) -> tuple[list[str], list[str]] | str:
    for text, name in zip(texts, names):
        if not isinstance(text, str):
            return f"{what} {name!r} is not a text"
        if not text.strip():
            return f"empty {what} {name!r}"
    if len(texts) < MIN_CHOICES:
        return f"{len(texts)} choice(s); a question needs at least {MIN_CHOICES}"
    return [t.strip() for t in texts], names


def resolve_label(value: Any, texts: list[str], names: list[str], *, from_table: bool) -> int | str:
    """The index of the right choice, or what is wrong with the label (see the module docstring)."""
    n = len(texts)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"label {value!r} is neither an index nor a text"
    if isinstance(value, int):
        return value if 0 <= value < n else f"label {value} is out of range ({n} choices: 0..{n - 1})"
    wanted = value.strip()
    if names != [str(k) for k in range(n)] and names.count(wanted) == 1:  # a column name ("B", "ending2")
        return names.index(wanted)
    by_text = [k for k, t in enumerate(texts) if t == wanted]
    if len(by_text) > 1:
        return f"label {value!r} matches several choices"
    number = int(wanted) if wanted.isascii() and wanted.isdigit() else None
    as_index = number if number is not None and number < n else None
    as_text = by_text[0] if by_text else None
    first, second = (as_index, as_text) if from_table else (as_text, as_index)
    if first is not None or second is not None:
        return first if first is not None else second  # type: ignore[return-value]
    if number is not None:
        return f"label {value!r} is out of range ({n} choices: 0..{n - 1})"
    return f"label {value!r} is not one of the choices"


# ---- featurizing helpers (pure) -----------------------------------------------------------------------


def _sequence(tokenizer, a: list[int] | None, b: list[int]) -> tuple[list[int], list[int]]:
    """[CLS] A [SEP] B [SEP] with token types 0 / 1, or [CLS] B [SEP] without a context."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if a is None:
        return [cls, *b, sep], [0] * (len(b) + 2)
    return [cls, *a, sep, *b, sep], [0] * (len(a) + 2) + [1] * (len(b) + 1)


def _features(examples: list[ChoiceExample], sequences, tokenizer) -> list[dict[str, Any]]:
    """One feature per example, every one padded to the same number of choices N (the most of any
    example here) with [CLS] [SEP] candidates that choice_mask = 0 takes out of the softmax."""
    N = max(len(e.choices) for e in examples)
    empty = ([tokenizer.cls_token_id, tokenizer.sep_token_id], [0, 0])
    labelled = all(e.label is not None for e in examples)
    features = []
    for i, (e, row) in enumerate(zip(examples, sequences)):
        row = row + [empty] * (N - len(row))
        feature: dict[str, Any] = {
            "input_ids": [ids for ids, _ in row],  # (N, T_k)
            "token_type_ids": [types for _, types in row],
            "choice_mask": [1] * len(e.choices) + [0] * (N - len(e.choices)),  # (N,)
            "_example": i,
        }
        if labelled:
            feature["labels"] = e.label
        features.append(feature)
    return features


def _predict(logits: np.ndarray) -> ChoicePrediction:
    p = softmax(logits)
    k = int(p.argmax())
    return ChoicePrediction(k, float(p[k]), p.tolist())


def choice_step(model: nn.Module, batch: dict[str, Tensor]) -> Step:
    """Cross-entropy over each example's real choices (padding ones masked out, as the head does
    with choice_mask), and how many examples are right."""
    logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits  # (B, N)
    logits = mask_choices(logits.float(), batch["choice_mask"])
    labels = batch["labels"]  # (B,)
    return Step({"choice": cross_entropy_loss(logits, labels)}, {"correct": correct(logits, labels)})


class ChoiceObjective(Objective):
    """Loss sums for train.fit, counted per example, and accuracy."""

    def __init__(self, model: nn.Module):
        super().__init__(model, choice_step, counts={"choice": lambda batch: labelled(batch["labels"])},
                         report={"accuracy": Mean("correct", over="choice")})
