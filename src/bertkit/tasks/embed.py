"""embed: contrastive fine-tuning of a sentence encoder (sentence-transformers' training, on bertkit's loop).

Reader: CSV/TSV/JSONL in one of two shapes.
  * (anchor, positive[, negatives...]): columns `anchor` and `positive` (also query/sentence1/text1
    and document/sentence2/text2), and any hard negatives in `negative`, `negative_1`, `negative_2`...
    (sentence-transformers' naming; JSONL may also give a list `negatives`). Trained with in-batch
    negatives (MultipleNegativesRankingLoss): every other positive and negative of the batch is a
    negative of an anchor.
  * scored pairs: `sentence1`, `sentence2` and a number `score` (STS style), trained with the
    cosine-similarity loss. Scores in [-1, 1] are used as they are; a file whose scores lie in
    [0, 5] (STS-B) is divided by 5; any other range is refused.
--text-column, --text-pair-column and --label-column name the anchor, positive and score columns.
A CSV/TSV file has a header when its first row names a known column (anchor, positive, negative...,
sentence1, sentence2, score, or one given with those options); without one the columns are read by
position: anchor, positive, then negatives — or, when there are exactly three and the first row's
third is a number, sentence1, sentence2, score. Trailing empty negative cells mean fewer negatives.

Featurizer: every text on its own ([CLS] text [SEP], truncated at --max-length, which also becomes
the saved model's max_seq_length): one feature per text, its example and role (anchor 0,
positive 1, negative 2) kept beside it. Batches (EmbedBatches) group an example's texts together
and never put the same text twice into a global batch (all processes): an example that would
repeat one waits for a later batch (ST's NoDuplicatesBatchSampler), so no in-batch "negative" is
in fact a positive. --batch-size counts examples.

Evaluation on a dev file of the same shape: each distinct anchor is a query, the corpus is every
distinct positive of the file, and a query's relevant documents are its positives; recall@1,
recall@10, MRR@10 and nDCG@10 by cosine over the whole corpus (as ST's InformationRetrievalEvaluator).
Scored pairs: Pearson and Spearman correlation of the cosine with the gold score.

predict: the vectors of each input's texts (a plain line is one text), one JSON line per input.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.contrastive import cached_loss, cosine_loss, matryoshka, ranking_loss
from bertkit.distributed import World, current_world
from bertkit.errors import InputError
from bertkit.objective import LossSum, Objective, Step
from bertkit.padding import pad
from bertkit.tasks.base import (
    BadInput,
    Feature,
    Featurized,
    Task,
    pick_field,
    read_text_lines,
    table_format,
)
from bertkit.tasks.metrics import regression, retrieval

ANCHOR_FIELDS = ("anchor", "query", "sentence1", "text1")
POSITIVE_FIELDS = ("positive", "document", "sentence2", "text2")
SCORE_FIELDS = ("score",)
NEGATIVES_FIELD = "negatives"  # JSONL: a list of hard negatives
NEGATIVE_COLUMN = re.compile(r"negative(?:[_-]?(\d+))?")
ANCHOR, POSITIVE, NEGATIVE = 0, 1, 2  # a text's role in its example


@dataclass
class EmbedExample:
    where: str  # file:line, or "input N"
    texts: list[str]  # anchor, positive, negatives... (scored pairs: sentence1, sentence2); one text to predict
    score: float | None = None  # scored pairs: the gold similarity, normalised to [-1, 1]


@dataclass
class EmbedPrediction:
    vectors: np.ndarray  # (N, D): one per text of the example


@dataclass(frozen=True)
class Layout:
    """Where an example's texts are: column names (header, JSONL) or positions (headerless table)."""

    anchor: str | int
    positive: str | int
    negatives: tuple[str | int, ...] = ()
    score: str | int | None = None
    negatives_list: bool = False  # JSONL: a list field of negatives

    @property
    def scored(self) -> bool:
        return self.score is not None


class Embed(Task):
    name = "embed"
    architecture = "SentenceEncoder"
    metric = "ndcg@10"  # "spearman" once scored pairs are read
    file_suffixes = (".csv", ".tsv", ".jsonl")

    def __init__(self, options=None):
        super().__init__(options)
        self.scored: bool | None = None  # the shape of the data read so far: scored pairs or not

    # ---- reader

    def read(self, path: Path, bad: BadInput, *, labelled: bool = True) -> list[EmbedExample]:
        lines = read_text_lines(path, bad)
        if table_format(path) == "jsonl":
            examples, scored = _read_jsonl(path, lines, bad, self._given(), labelled=labelled)
        else:
            examples, scored = _read_table(path, lines, bad, "\t" if table_format(path) == "tsv" else ",",
                                           self._given(), labelled=labelled)
        if not examples:
            raise InputError(f"{path}: no examples")
        if scored and labelled:
            normalise_scores(examples, path)
        if labelled:
            self._set_shape(scored, path)
        return examples

    def _given(self) -> tuple[str | None, str | None, str | None]:
        o = self.options
        return o.text_column, o.text_pair_column, o.label_column

    def _set_shape(self, scored: bool, path: Path) -> None:
        """The data's shape picks the loss and the metric; the training and dev files must agree."""
        if self.scored is not None and scored != self.scored:
            raise InputError(f"{path}: {_shape(scored)}, but the training data holds {_shape(self.scored)}")
        loss = self.options.loss
        if loss != "auto" and (loss == "cosine") != scored:
            raise InputError(f"{path}: --loss {loss} needs {_shape(loss == 'cosine')}; this file holds {_shape(scored)}")
        self.scored = scored
        self.metric = "spearman" if scored else "ndcg@10"

    def parse(self, inputs: list) -> list[EmbedExample]:
        out = []
        for i, item in enumerate(inputs):
            where = f"input {i}"
            if isinstance(item, str):
                texts = [item]
            elif isinstance(item, (list, tuple)) and item and all(isinstance(t, str) for t in item):
                texts = list(item)
            elif isinstance(item, dict):
                layout = record_layout(list(item), self._given(), where, labelled=False)
                found = _record_texts(item, layout)
                if isinstance(found, str):
                    raise InputError(f"{where}: {found}")
                texts = found
            else:
                raise InputError(f"{where}: expected a text, a list of texts, or a dict with anchor/positive fields")
            if not all(t.strip() for t in texts):
                raise InputError(f"{where}: empty text")
            out.append(EmbedExample(where, [t.strip() for t in texts]))
        return out

    def label_names(self, examples: list) -> list[str]:
        return []

    def configure(self, config: BertConfig, labels: list[str]) -> dict[str, Any]:
        return {"id2label": {}, "problem_type": None}

    def model_options(self) -> dict[str, Any]:
        """How the SentenceEncoder loads: --pooling when given, and --max-length as its max_seq_length."""
        out: dict[str, Any] = {"max_seq_length": self.options.max_length}
        if self.options.pooling:
            out["pooling"] = self.options.pooling
        return out

    # ---- featurizer

    def featurize(self, examples: list[EmbedExample], tokenizer, config: BertConfig, bad: BadInput) -> Featurized:
        limit = self.options.max_length
        flat = [(i, role_of(k), t) for i, e in enumerate(examples) for k, t in enumerate(e.texts)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # finetune reports the number of truncated texts itself
            # one token beyond the limit tells a text that does not fit; cut here as the tokenizer would
            ids = tokenizer([t for _, _, t in flat], truncation=True, max_length=limit + 1)["input_ids"]
        long_examples: set[int] = set()
        features: list[Feature] = []
        for (i, role, text), row in zip(flat, ids):
            if len(row) > limit:
                row = row[:limit - 1] + [tokenizer.sep_token_id]
                long_examples.add(i)
            feature: Feature = {"input_ids": list(row), "_example": i, "_role": role, "_text": text}
            if role == ANCHOR and examples[i].score is not None:
                feature["_score"] = examples[i].score
            features.append(feature)
        return Featurized(features, len(long_examples))

    def batches(self, features: list[Feature], *, pad_id: int, seed: int = 0) -> EmbedBatches:
        return EmbedBatches(features, pad_id=pad_id, seed=seed, distinct=not self.scored)

    # ---- loss

    def objective(self, model: nn.Module) -> nn.Module:
        o = self.options
        world = current_world() if o.gather_across_processes else World()
        if o.mini_batch_size and current_world().distributed:
            raise InputError("--mini-batch-size (the cached loss) runs on one process only: bertkit cannot yet "
                             "replay its mini-batches under DDP; leave it out, or train on one process")
        dim = getattr(model, "dim", None)  # a SentenceEncoder's vector size
        too_big = [d for d in o.dims if dim is not None and d > dim]
        if too_big:  # here, before a first step is taken, rather than in its loss
            raise InputError(f"--matryoshka-dims {','.join(map(str, too_big))}: more than the model's {dim} "
                             "dimensions")
        term = "cosine" if self.scored else "mnrl"
        step = EmbedStep(term, o.scale, o.symmetric, o.dims, o.mini_batch_size, world)
        return Objective(model, step, counts={term: count_examples}, report={})

    def outputs(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"vector": model(batch["input_ids"], batch["attention_mask"]).float()}  # (B, D)

    # ---- post-processing and metrics

    def postprocess(self, examples, features, outputs, config: BertConfig) -> list[EmbedPrediction]:
        vectors: list[list[np.ndarray]] = [[] for _ in examples]
        for f, out in zip(features, outputs):  # features keep their texts' order within an example
            vectors[f["_example"]].append(out["vector"])
        return [EmbedPrediction(np.stack(v)) for v in vectors]

    def metrics(self, examples: list[EmbedExample], predictions: list[EmbedPrediction],
                config: BertConfig) -> dict[str, float]:
        if examples and examples[0].score is not None:
            guess = [_cosine(p.vectors[0], p.vectors[1]) for p in predictions]
            out = regression([e.score for e in examples], guess)
            return {"spearman": out["spearman"], "pearson": out["pearson"]}
        queries, corpus, relevant = retrieval_sets(examples, predictions)
        return retrieval(queries, corpus, relevant)

    def to_json(self, example: EmbedExample, prediction: EmbedPrediction) -> dict[str, Any]:
        rounded = [[round(float(x), 6) for x in v] for v in prediction.vectors]
        if len(example.texts) == 1:
            return {"text": example.texts[0], "embedding": rounded[0]}
        return {"texts": example.texts, "embeddings": rounded,
                "similarity": round(_cosine(prediction.vectors[0], prediction.vectors[1]), 6)}


def role_of(k: int) -> int:
    return min(k, NEGATIVE)


def _shape(scored: bool) -> str:
    return "scored pairs (sentence1, sentence2, score)" if scored else "(anchor, positive[, negatives]) rows"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def retrieval_sets(examples: list[EmbedExample], predictions: list[EmbedPrediction]):
    """(query vectors (Q, D), corpus vectors (C, D), relevant corpus ids per query): distinct
    anchors are the queries, distinct positives the corpus."""
    query_ids: dict[str, int] = {}
    doc_ids: dict[str, int] = {}
    queries, corpus, relevant = [], [], []
    for e, p in zip(examples, predictions):
        anchor, positive = e.texts[0], e.texts[1]
        if anchor not in query_ids:
            query_ids[anchor] = len(queries)
            queries.append(p.vectors[0])
            relevant.append(set())
        if positive not in doc_ids:
            doc_ids[positive] = len(corpus)
            corpus.append(p.vectors[1])
        relevant[query_ids[anchor]].add(doc_ids[positive])
    return np.stack(queries), np.stack(corpus), relevant


# ---- reading (pure) -----------------------------------------------------------------------------------


def normalise_scores(examples: list[EmbedExample], path: Path) -> None:
    """Scores in [-1, 1] stay as they are; [0, 5] (STS-B) is divided by 5; anything else is refused."""
    scores = [e.score for e in examples if e.score is not None]
    low, high = min(scores), max(scores)
    if -1 <= low and high <= 1:
        return
    if 0 <= low and high <= 5:
        for e in examples:
            e.score = None if e.score is None else e.score / 5
        return
    raise InputError(f"{path}: scores range from {low:g} to {high:g}; expected 0..1 (or -1..1), or 0..5 "
                     "(STS-B, divided by 5)")


def negative_columns(fields: Sequence[str]) -> tuple[str, ...]:
    """`negative`, `negative_1`, `negative_2`... in that order."""
    found = [(int(m.group(1) or 0), f) for f in fields if (m := NEGATIVE_COLUMN.fullmatch(f))]
    return tuple(f for _, f in sorted(found))


def record_layout(fields: list[str], given: tuple[str | None, ...], where: str, *, labelled: bool) -> Layout:
    """The layout of a header or a JSON record, from the given column names or the usual ones."""
    record = dict.fromkeys(fields)
    anchor = pick_field(record, given[0], ANCHOR_FIELDS, "text", where)
    positive = pick_field(record, given[1], POSITIVE_FIELDS, "text pair", where, required=False)
    if positive is None:
        if labelled or given[1]:
            raise InputError(f"{where}: no positive column (fields: {', '.join(fields)}); expected one of "
                             f"{', '.join(POSITIVE_FIELDS)}, or name it with --text-pair-column")
        return Layout(anchor, anchor)  # a file of single texts to embed
    score = pick_field(record, given[2], SCORE_FIELDS, "label", where, required=False)
    negatives = negative_columns(fields)
    if score is not None and negatives:
        raise InputError(f"{where}: both a score column ({score}) and negatives ({', '.join(negatives)}); "
                         "a file holds either scored pairs or (anchor, positive, negatives) rows")
    return Layout(anchor, positive, negatives, score, negatives_list=NEGATIVES_FIELD in fields)


def _cell(record: dict[str, Any] | list[str], key: str | int) -> Any:
    """A record's field, or a headerless row's column; None when it has none."""
    if isinstance(record, dict):
        return record.get(key)
    return record[key] if isinstance(key, int) and key < len(record) else None


def _record_texts(record: dict[str, Any] | list[str], layout: Layout) -> list[str] | str:
    """The texts of a row or record (anchor, positive, negatives), or what is wrong with them."""
    def get(key: str | int) -> Any:
        return _cell(record, key)

    texts = [get(layout.anchor)] if layout.anchor == layout.positive else [get(layout.anchor), get(layout.positive)]
    negatives = [get(k) for k in layout.negatives]
    if layout.negatives_list:
        listed = get(NEGATIVES_FIELD)
        if listed is not None and not isinstance(listed, list):
            return f"{NEGATIVES_FIELD!r} must be a list of texts"
        negatives += listed or []
    while negatives and (negatives[-1] is None or (isinstance(negatives[-1], str) and not negatives[-1].strip())):
        negatives.pop()  # fewer negatives in this row
    names = ["anchor", "positive"][:len(texts)] + [f"negative {k + 1}" for k in range(len(negatives))]
    for name, text in zip(names, texts + negatives):
        if not isinstance(text, str):
            return f"the {name} is {'missing' if text is None else 'not a text'}"
        if not text.strip():
            return f"empty {name}"
    return [t.strip() for t in texts + negatives]


def _score(value: Any) -> float | str:
    if isinstance(value, bool):
        return f"score {value!r} is not a number"
    try:
        score = float(value)
    except (TypeError, ValueError):
        return f"score {value!r} is not a number" if value not in (None, "") else "no score"
    return score if math.isfinite(score) else f"score {value!r} is not a finite number"


def _example(where: str, row: dict[str, Any] | list[str], layout: Layout, bad: BadInput, *,
             labelled: bool) -> EmbedExample | None:
    texts = _record_texts(row, layout)
    if isinstance(texts, str):
        return bad(where, texts)
    score = None
    if layout.scored:
        value = _cell(row, layout.score)
        if value not in (None, "") or labelled:
            score = _score(value)
            if isinstance(score, str):
                return bad(where, score)
    return EmbedExample(where, texts, score)


def _read_jsonl(path: Path, lines: list[str], bad: BadInput, given, *, labelled: bool):
    examples: list[EmbedExample] = []
    layout: Layout | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            bad(where, f"not valid JSON ({e.msg})")
            continue
        if not isinstance(record, dict):
            bad(where, "expected a JSON object")
            continue
        layout = layout or record_layout(list(record), given, where, labelled=labelled)
        example = _example(where, record, layout, bad, labelled=labelled)
        if example is not None:
            examples.append(example)
    return examples, bool(layout and layout.scored)


def _table_rows(path: Path, lines: list[str], delimiter: str) -> Iterator[tuple[str, list[str]]]:
    """(file:line, fields) of every non-empty row; TSV fields are never quoted (as GLUE writes them)."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quoting=quoting)
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if row and any(f.strip() for f in row):
                yield f"{path}:{start}", row
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: {e}") from None


# Column names of the other tasks' files: a first row of them is a header (and then an error naming
# the columns), never a pair of texts — a classification file given to an embedding model says so.
OTHER_TASK_FIELDS = ("text", "label", "labels", "sentence", "question", "context", "premise", "hypothesis",
                     "text_pair", "gold_label")


def is_header(row: list[str], given: tuple[str | None, ...]) -> bool:
    """A first row is a header when it names a known column (this task's or another task's) or one
    given on the command line."""
    known = {*ANCHOR_FIELDS, *POSITIVE_FIELDS, *SCORE_FIELDS, *OTHER_TASK_FIELDS, *(g for g in given if g)}
    return any(f.strip() in known or NEGATIVE_COLUMN.fullmatch(f.strip()) for f in row)


def headerless_layout(first: list[str]) -> Layout:
    """Columns by position: anchor, positive, negatives...; exactly three with a number third: a scored pair."""
    if len(first) == 3 and isinstance(_score(first[2]), float):
        return Layout(0, 1, score=2)
    return Layout(0, 1, tuple(range(2, len(first))))


def _read_table(path: Path, lines: list[str], bad: BadInput, delimiter: str, given, *, labelled: bool):
    rows = _table_rows(path, lines, delimiter)
    first = next(rows, None)
    if first is None:
        raise InputError(f"{path}: empty file")
    header: list[str] | None = None
    if is_header(first[1], given):
        header = [h.strip() for h in first[1]]
        layout = record_layout(header, given, first[0], labelled=labelled)
        data: Iterator[tuple[str, list[str]]] = rows
    else:
        layout = headerless_layout(first[1])
        data = iter([first, *rows])
    examples: list[EmbedExample] = []
    for where, row in data:
        if header is not None and len(row) != len(header):
            bad(where, f"expected {len(header)} fields (as the header), found {len(row)}")
            continue
        if header is None and len(row) < 2 and layout.anchor != layout.positive:
            bad(where, f"expected at least 2 fields (anchor, positive), found {len(row)}")
            continue
        if header is None and layout.scored and len(row) != 3:
            bad(where, f"expected 3 fields (sentence1, sentence2, score), found {len(row)}")
            continue
        if header is None and not layout.scored and len(row) > 2 + len(layout.negatives):
            layout = Layout(0, 1, tuple(range(2, len(row))))  # a row with more negatives
        record: dict[str, Any] | list[str] = dict(zip(header, row)) if header is not None else row
        example = _example(where, record, layout, bad, labelled=labelled)
        if example is not None:
            examples.append(example)
    return examples, layout.scored


# ---- batches ------------------------------------------------------------------------------------------


class EmbedBatches:
    """Random-access batches of examples for train.fit, each example's texts together.

    The order is a fresh shuffle per epoch, seeded by (seed, epoch), so any batch can be rebuilt on
    resume. With distinct=True no text appears twice in a global batch (batch_size × world_size
    examples): an example that would repeat one waits for the next batch that has room for it.
    The last batch is filled up with examples from the start of the epoch's order that repeat no
    text, so every process always gets a full batch."""

    def __init__(self, features: list[Feature], *, pad_id: int, seed: int = 0, distinct: bool = True):
        if not features:
            raise InputError("no training examples")
        groups: dict[int, list[Feature]] = {}
        for f in features:
            groups.setdefault(f["_example"], []).append(f)
        self.groups = [groups[i] for i in sorted(groups)]
        self.texts = [frozenset(f["_text"] for f in g) for g in self.groups]
        self.pad_id, self.seed, self.distinct = pad_id, seed, distinct
        self._plan: tuple[tuple[int, int], list[list[int]]] | None = None

    def plan(self, epoch: int, size: int) -> list[list[int]]:
        """The epoch's global batches (example indices), each of `size` examples."""
        if self._plan is None or self._plan[0] != (epoch, size):
            self._plan = ((epoch, size), self._make_plan(epoch, size))
        return self._plan[1]

    def _make_plan(self, epoch: int, size: int) -> list[list[int]]:
        n = len(self.groups)
        if self.distinct and size > n:
            raise InputError(f"a batch of {size} examples (--batch-size × processes) needs at least {size} "
                             f"examples; the training data has {n}")
        order = [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(n)]
        if not self.distinct:
            return [[order[(start + k) % n] for k in range(size)] for start in range(0, n, size)]
        batches, pending = [], order
        while pending:
            batch, seen, waiting = [], set(), []
            for k, i in enumerate(pending):
                if len(batch) == size:
                    waiting.extend(pending[k:])
                    break
                if self.texts[i] & seen:
                    waiting.append(i)
                else:
                    batch.append(i)
                    seen |= self.texts[i]
            if len(batch) < size:
                self._fill(batch, seen, order, size)
            batches.append(batch)
            pending = waiting
        return batches

    def _fill(self, batch: list[int], seen: set[str], order: list[int], size: int) -> None:
        chosen = set(batch)
        for i in order:
            if len(batch) == size:
                return
            if i not in chosen and not self.texts[i] & seen:
                batch.append(i)
                chosen.add(i)
                seen |= self.texts[i]
        if len(batch) < size:
            raise InputError(f"cannot make a batch of {size} examples without repeating a text: the training data "
                             "shares texts between too many examples; give a smaller --batch-size")

    def num_batches(self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> int:
        return len(self.plan(epoch, batch_size * world_size))

    def batch(self, epoch: int, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1):
        picked = self.plan(epoch, batch_size * world_size)[index]
        return collate_examples([self.groups[i] for i in picked[rank * batch_size:(rank + 1) * batch_size]],
                                self.pad_id)


def collate_examples(groups: Sequence[list[Feature]], pad_id: int) -> dict[str, Tensor]:
    """Examples' texts as one (S, T) batch: the B anchors, then the B positives, then every hard
    negative; `roles` (S,) says which is which, `scores` (B,) holds scored pairs' gold scores."""
    rows = ([g[0] for g in groups] + [g[1] for g in groups]
            + [f for g in groups for f in g[2:]])
    batch = {
        "input_ids": pad([f["input_ids"] for f in rows], pad_id),  # (S, T)
        "attention_mask": pad([[1] * len(f["input_ids"]) for f in rows], 0),  # (S, T)
        "roles": torch.tensor([f["_role"] for f in rows]),  # (S,)
    }
    if "_score" in groups[0][0]:
        batch["scores"] = torch.tensor([g[0]["_score"] for g in groups], dtype=torch.float32)  # (B,)
    return batch


# ---- the objective ------------------------------------------------------------------------------------


def count_examples(batch: dict[str, Tensor]) -> Tensor:
    """One loss item per example (anchor)."""
    return (batch["roles"] == ANCHOR).sum()


def embed_by_length(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, groups: int) -> Tensor:
    """(S, T) right-padded rows -> (S, D) vectors, run as `groups` groups of similar length, each cut
    to its own longest row: short queries are not padded to the passages' length, which one padded
    pass over all S rows would cost (1.6x the compute on questions against paragraphs). Padding
    never changes a real token's vector, so the result is that of one pass."""
    lengths = attention_mask.sum(1)  # (S,)
    order = lengths.argsort()  # (S,)
    parts = []
    for rows in order.chunk(groups):
        T = int(lengths[rows].max())
        parts.append(model(input_ids[rows, :T], attention_mask[rows, :T]))  # (S_g, D)
    return torch.cat(parts)[order.argsort()]  # back to the rows' order (a gather: gradients follow)


class EmbedStep:
    """Step of the embed objective: embed the batch's texts, then the ranking or cosine loss —
    over Matryoshka dimensions when given, through the gradient cache when --mini-batch-size is."""

    def __init__(self, term: str, scale: float, symmetric: bool, dims: tuple[int, ...],
                 mini_batch_size: int | None, world: World):
        self.term, self.scale, self.symmetric = term, scale, symmetric
        self.dims, self.mini_batch_size, self.world = dims, mini_batch_size, world

    def loss(self, batch: dict[str, Tensor], embeddings: Tensor) -> LossSum:
        """The loss of (S, D) embeddings laid out as collate_examples lays out the texts."""
        roles = batch["roles"]

        def of(e: Tensor) -> LossSum:
            a, p, n = e[roles == ANCHOR], e[roles == POSITIVE], e[roles == NEGATIVE]
            if self.term == "cosine":
                return cosine_loss(a, p, batch["scores"])
            return ranking_loss(a, p, n, scale=self.scale, symmetric=self.symmetric, world=self.world)

        return matryoshka(of, embeddings, self.dims) if self.dims else of(embeddings)

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> Step:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        groups = max(1, round(len(batch["roles"]) / max(int(count_examples(batch)), 1)))  # ~ one per role

        def embed(x: dict[str, Tensor]) -> Tensor:
            return embed_by_length(model, x["input_ids"], x["attention_mask"], groups)  # (S, D)

        if self.mini_batch_size:
            value = cached_loss(embed, inputs, self.mini_batch_size, lambda e: self.loss(batch, e))
        else:
            value = self.loss(batch, embed(inputs))
        return Step({self.term: value}, {})
