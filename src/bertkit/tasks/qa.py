"""qa: extractive question answering (SQuAD 1.1 and 2.0): the answer is a span of the context.

Reader: SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]})
or JSONL in the datasets library's layout ({"id", "question", "context", "answers": {"text": [...],
"answer_start": [...]}}); an answer_start that does not point at its answer text is bad input.
Featurizer: [CLS] question [SEP] context window [SEP]; a context too long for max_length is cut into
windows overlapping by `stride` tokens, and the answer is mapped from characters to tokens through the
tokenizer's offsets (a window without the whole answer points at [CLS]).
Post-processing: the n best starts and ends of every window, spans of at most MAX_ANSWER_TOKENS, the
best over all windows; for SQuAD 2.0 the [CLS] score stands for "no answer" (BERT paper §4.3).
Metrics: the official SQuAD exact match and F1, as percentages.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import InputError
from bertkit.objective import Mean, Objective, Step, answer_count, answer_loss
from bertkit.tasks.base import (
    BadInput,
    DataOptions,
    Feature,
    Featurized,
    Task,
    drop_skipped,
    max_context,
    read_records,
    softmax,
    windows,
)

# The original BERT run_squad.py settings.
MAX_QUESTION_TOKENS = 64  # max_query_length: longer questions are cut
MAX_ANSWER_TOKENS = 30  # max_answer_length
N_BEST = 20  # n_best_size: candidate starts and ends per window, and answers kept per question
CHUNK = 2048  # questions tokenized at a time, so that a SQuAD-sized file never holds all its pieces at once


@dataclass
class Answer:
    text: str
    start: int  # character offset in the context

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass
class QAExample:
    where: str  # file:line (of the question's id in SQuAD JSON), or "input N"
    id: str
    question: str
    context: str
    answers: list[Answer] | None = None  # gold answers; [] for an unanswerable question; None: unlabelled


@dataclass
class Span:
    """A candidate answer in one window."""

    score: float  # start logit + end logit
    tokens: tuple[int, int]  # first and last context token of the window (inclusive)
    chars: tuple[int, int]  # [start, end) in the context


@dataclass
class QAPrediction:
    answer: str  # "" when the context holds no answer
    start: int | None  # [start, end) of the answer in the context; None for no answer
    end: int | None
    score: float  # probability of the answer among the n best candidates (and "no answer", SQuAD 2.0)
    best_span: str  # the best non-empty answer, even where "no answer" won (for tuning the threshold)
    null_margin: float | None  # [CLS] score minus the best span's score; None when never answering nothing


class QuestionAnswering(Task):
    name = "qa"
    architecture = "BertForQuestionAnswering"
    metric = "f1"
    file_suffixes = (".json", ".jsonl")

    def __init__(self, options: DataOptions | None = None):
        # A context is always split into windows, never truncated: the answer may be anywhere in it.
        super().__init__(dataclasses.replace(options or DataOptions(), long_text="window"))

    # ---- reader

    def read(self, path: Path, bad: BadInput, *, labelled: bool = True) -> list[QAExample]:
        examples = []
        for where, record in self._records(path, bad):
            example = self._example(where, record, bad, labelled)
            if example is not None:
                examples.append(example)
        if not examples:
            raise InputError(f"{path}: no questions")
        return examples

    def _records(self, path: Path, bad: BadInput):
        """(where, flat record) for every question: SQuAD JSON, or JSONL read line by line."""
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix not in (".json", ".jsonl", ".ndjson"):
            raise InputError(f"{path}: unknown format; use .json (SQuAD) or .jsonl")
        if suffix == ".json":
            text, document = _whole_json(path)
            if isinstance(document, dict) and "data" in document:
                return squad_records(path, document, text)
        return read_records(path, bad)

    def _example(self, where: str, record: dict, bad: BadInput, labelled: bool) -> QAExample | None:
        question, context = record.get("question"), record.get("context")
        if not isinstance(question, str) or not question.strip():
            return bad(where, "empty or missing 'question'")
        if not isinstance(context, str) or not context.strip():
            return bad(where, "empty or missing 'context'")
        example = QAExample(where, str(record.get("id", where)), question, context)
        if labelled:
            example.answers = gold_answers(record, example, bad)
            if example.answers is None:
                return None
        return example

    def parse(self, inputs: list) -> list[QAExample]:
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("context"), str):
                out.append(QAExample(f"input {i}", str(item.get("id", i)), item["question"], item["context"]))
            elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
                out.append(QAExample(f"input {i}", str(i), item[0], item[1]))
            else:
                raise InputError(f"input {i}: expected a dict with 'question' and 'context' "
                                 "(a JSON object per line), or a (question, context) pair")
        return out

    def label_names(self, examples: list[QAExample]) -> list[str]:
        """No label set: "span", and "no answer" when some questions have none (SQuAD 2.0)."""
        return ["span", "no answer"] if any(e.answers == [] for e in examples) else ["span"]

    def configure(self, config: BertConfig, labels: list[str]) -> dict[str, Any]:
        # Unanswerable training questions teach the [CLS] score, so the model may answer nothing.
        if "no answer" in labels and self.options.no_answer_threshold is None:
            self.options.no_answer_threshold = 0.0
        # The span head has two outputs (start, end): two label names (transformers writes LABEL_0 and
        # LABEL_1) may stay, any other number would make transformers build a head of the wrong size.
        return {} if len(config.id2label) in (0, 2) else {"id2label": {}}

    # ---- featurizer

    def featurize(self, examples: list[QAExample], tokenizer, config: BertConfig, bad: BadInput) -> Featurized:
        features, long = [], 0
        skipped: set[int] = set()
        for begin in range(0, len(examples), CHUNK):
            chunk = examples[begin:begin + CHUNK]
            # a question is cut to MAX_QUESTION_TOKENS, so only that many of its pieces are needed
            questions = tokenizer.pieces([e.question for e in chunk], max_pieces=MAX_QUESTION_TOKENS)
            contexts = distinct_pieces(tokenizer, [e.context for e in chunk])
            for i, (e, q, c) in enumerate(zip(chunk, questions, contexts), start=begin):
                windowed = self._example_features(i, e, q.ids, c, tokenizer, bad)
                if not windowed:
                    skipped.add(i)
                long += len(windowed) > 1
                features += windowed
        return Featurized(drop_skipped(examples, features, skipped), long)

    def _example_features(self, i: int, e: QAExample, q_ids: Sequence[int], c: Context, tokenizer,
                          bad: BadInput) -> list[Feature]:
        o = self.options
        target = answer_tokens(e.answers[0], c.offsets) if e.answers else None
        if e.answers and target is None:
            bad(e.where, f"question {e.id!r}: the answer {e.answers[0].text!r} covers no token of the context")
            return []
        q_ids = list(q_ids[:min(MAX_QUESTION_TOKENS, o.max_length // 2)])
        spans = windows(len(c.ids), o.max_length - len(q_ids) - 3, o.stride)
        features = []
        for w in range(len(spans)):
            feature = window_feature(tokenizer, q_ids, c, spans, w, example=i)
            if e.answers is not None:
                feature.update(window_labels(spans[w], feature["_first"], target))
            features.append(feature)
        return features

    # ---- head and loss

    def objective(self, model: nn.Module) -> nn.Module:
        return SpanObjective(model)

    def outputs(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        start, end = span_logits(model, batch)
        return {"start_logits": start, "end_logits": end}

    # ---- post-processing

    def postprocess(self, examples, features, outputs, config: BertConfig) -> list[QAPrediction]:
        per_example: dict[int, list[tuple[Feature, dict[str, np.ndarray]]]] = defaultdict(list)
        for f, out in zip(features, outputs):
            per_example[f["_example"]].append((f, out))
        threshold = self.options.no_answer_threshold
        return [predict_answer(e.context, per_example[i], threshold) for i, e in enumerate(examples)]

    # ---- metrics

    def metrics(self, examples, predictions, config: BertConfig) -> dict[str, float]:
        golds = [[a.text for a in e.answers or []] for e in examples]
        out = squad_metrics(golds, [p.answer for p in predictions])
        if self.options.no_answer_threshold is not None:
            out.update(best_threshold(golds, predictions))
        return out

    def to_json(self, example: QAExample, prediction: QAPrediction) -> dict[str, Any]:
        return {"id": example.id, "question": example.question, "answer": prediction.answer,
                "start": prediction.start, "end": prediction.end, "score": round(prediction.score, 6)}


# ---- reading SQuAD -------------------------------------------------------------------------------------


def _whole_json(path: Path) -> tuple[str, Any]:
    """The file's text and its one JSON value; None for the value when it is JSON Lines instead."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return text, None
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def squad_records(path: Path, document: dict, text: str):
    """(file:line, flat record) for every question of a SQuAD document; the line is that of the
    question's id in the text, so a message points at the question in the (one, big) file."""
    lines = id_lines(text)
    data = document.get("data")
    if not isinstance(data, list):
        raise InputError(f"{path}: 'data' should be a list of articles")
    for a, article in enumerate(data):
        for p, paragraph in enumerate(_list_in(article, "paragraphs", f"{path}: article {a}")):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for qa in _list_in(paragraph, "qas", f"{path}: article {a}, paragraph {p}"):
                if not isinstance(qa, dict):
                    continue
                qid = str(qa.get("id", ""))
                where = f"{path}:{lines[qid]}" if qid in lines else f"{path} (question {qid!r})"
                yield where, {**qa, "context": context}


def _list_in(record, key: str, where: str) -> list:
    """record[key] when it is a list (absent: empty); anything else is a one-line error."""
    value = record.get(key, []) if isinstance(record, dict) else []
    if not isinstance(value, list):
        raise InputError(f"{where}: {key!r} should be a list, got {type(value).__name__}")
    return value


_ID = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def id_lines(text: str) -> dict[str, int]:
    """Line number of each question id in a SQuAD JSON text, in one pass (the first occurrence wins)."""
    lines: dict[str, int] = {}
    line, position = 1, 0
    for m in _ID.finditer(text):
        line += text.count("\n", position, m.start())
        position = m.start()
        lines.setdefault(json.loads(f'"{m.group(1)}"'), line)
    return lines


def gold_answers(record: dict, example: QAExample, bad: BadInput) -> list[Answer] | None:
    """The record's answers ([] when unanswerable); None (reported) when they are malformed or an
    answer_start does not point at its text."""
    where, context = example.where, example.context
    if record.get("is_impossible") is True:
        return []  # SQuAD 2.0: plausible_answers are not answers
    raw = record.get("answers")
    if isinstance(raw, dict):  # datasets layout: {"text": [...], "answer_start": [...]}
        texts, starts = raw.get("text"), raw.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            return bad(where, f"question {example.id!r}: 'answers' needs lists 'text' and 'answer_start' "
                              "of the same length")
        pairs = list(zip(texts, starts))
    elif isinstance(raw, list) and all(isinstance(a, dict) for a in raw):
        pairs = [(a.get("text"), a.get("answer_start")) for a in raw]
    else:
        return bad(where, f"question {example.id!r}: no 'answers' (use [] for a question without an answer)")
    answers = []
    for text, start in pairs:
        if not isinstance(text, str) or not text.strip() or not isinstance(start, int) or isinstance(start, bool):
            return bad(where, f"question {example.id!r}: an answer needs a non-empty 'text' and an integer "
                              f"'answer_start' (got {text!r}, {start!r})")
        found = context[start:start + len(text)]
        if found != text:
            elsewhere = context.find(text)
            hint = f"; the text occurs at {elsewhere}" if elsewhere >= 0 else "; the text is not in the context"
            return bad(where, f"question {example.id!r}: answer_start {start} does not match the answer "
                              f"{text!r} (the context has {found!r} there{hint})")
        answers.append(Answer(text, start))
    return answers


# ---- featurizer ----------------------------------------------------------------------------------------


class Context(NamedTuple):
    """A context's pieces: ids, and their character spans as an (N, 2) array, which each window
    slices (a long context has millions of pieces; tuples would take 15 times the memory)."""

    ids: Sequence[int]
    offsets: np.ndarray


def answer_tokens(answer: Answer, offsets: Sequence[tuple[int, int]] | np.ndarray) -> tuple[int, int] | None:
    """First and last context token overlapping the answer's characters; None when none does."""
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    inside = np.flatnonzero((spans[:, 0] < answer.end) & (spans[:, 1] > answer.start))
    return (int(inside[0]), int(inside[-1])) if inside.size else None


def distinct_pieces(tokenizer, texts: list[str]) -> list[Context]:
    """Pieces of each text, each distinct text tokenized once (SQuAD asks ~5 questions per context)."""
    unique = list(dict.fromkeys(texts))
    pieces = {t: Context(p.ids, np.asarray(p.offsets, dtype=np.int32).reshape(-1, 2))
              for t, p in zip(unique, tokenizer.pieces(unique))}
    return [pieces[t] for t in texts]


def window_feature(tokenizer, q_ids: list[int], c: Context, spans: list[tuple[int, int]], w: int, *,
                   example: int) -> Feature:
    """[CLS] question [SEP] context[s:t] [SEP], with what post-processing needs to map tokens back:
    where the context starts, the character offsets of its tokens, and which tokens have their
    most context in this window (only those may start an answer — BERT's run_squad rule)."""
    s, t = spans[w]
    first = len(q_ids) + 2
    return {
        "input_ids": [tokenizer.cls_token_id, *q_ids, tokenizer.sep_token_id, *c.ids[s:t], tokenizer.sep_token_id],
        "token_type_ids": [0] * first + [1] * (t - s + 1),
        "_example": example,
        "_first": first,
        # arrays, not lists of tuples: a SQuAD-sized training set keeps ~100k of these in memory
        "_offsets": np.array(c.offsets[s:t], dtype=np.int32).reshape(-1, 2),  # (t - s, 2), a copy
        "_max_context": np.array([len(spans) == 1 or max_context(spans, p) == w for p in range(s, t)]),
    }


def window_labels(span: tuple[int, int], first: int, target: tuple[int, int] | None) -> dict[str, int]:
    """Sequence positions of the answer's first and last token; 0 ([CLS]) when the question has no
    answer or this window does not hold all of it."""
    s, t = span
    if target is None or not (s <= target[0] and target[1] < t):
        return {"start_positions": 0, "end_positions": 0}
    return {"start_positions": target[0] - s + first, "end_positions": target[1] - s + first}


# ---- head and loss -------------------------------------------------------------------------------------


def span_logits(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Start and end logits (B, T) in float32, padding set very low so that it never wins and a
    feature's loss does not depend on how much its batch is padded."""
    out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    padding = batch["attention_mask"] == 0  # (B, T)
    return out.start_logits.float().masked_fill(padding, -1e4), out.end_logits.float().masked_fill(padding, -1e4)


def span_step(model: nn.Module, batch: dict[str, Tensor]) -> Step:
    """(start cross-entropy + end cross-entropy) / 2 summed over features, and how many features
    get both positions right."""
    start, end = span_logits(model, batch)
    gold_start, gold_end = batch["start_positions"], batch["end_positions"]  # (B,) each
    hit = (start.argmax(-1) == gold_start) & (end.argmax(-1) == gold_end)
    return Step({"span": answer_loss(start, end, gold_start, gold_end)}, {"exact_positions": hit.sum()})


def span_count(batch: dict[str, Tensor]) -> Tensor:
    return answer_count(batch["start_positions"], batch["end_positions"], batch["input_ids"].shape[1])


class SpanObjective(Objective):
    """Loss sums for train.fit, and the share of features with both positions right."""

    def __init__(self, model: nn.Module):
        super().__init__(model, span_step, counts={"span": span_count},
                         report={"position_accuracy": Mean("exact_positions", over="span")})


# ---- post-processing -----------------------------------------------------------------------------------


def best_spans(start: np.ndarray, end: np.ndarray, first: int, offsets: Sequence[tuple[int, int]],
               max_context: Sequence[bool], *, n_best: int = N_BEST,
               max_tokens: int = MAX_ANSWER_TOKENS) -> list[Span]:
    """The n best candidate answers of one window, best first: pairs of its n best starts and n best
    ends among the context tokens, with end >= start, at most max_tokens long, starting at a token
    whose most context is in this window."""
    n = len(offsets)
    s_logits = np.where(np.asarray(max_context, dtype=bool), start[first:first + n], -np.inf)  # (n,)
    e_logits = end[first:first + n]  # (n,)
    starts = np.argsort(-s_logits, kind="stable")[:n_best]
    starts = starts[np.isfinite(s_logits[starts])]
    ends = np.argsort(-e_logits, kind="stable")[:n_best]
    length = ends[None, :] - starts[:, None] + 1  # (S, E)
    scores = s_logits[starts][:, None] + e_logits[ends][None, :]  # (S, E)
    a, b = np.nonzero((length >= 1) & (length <= max_tokens))
    best = np.argsort(-scores[a, b], kind="stable")[:n_best]  # no more than the question keeps in all
    return [Span(float(scores[i, j]), (int(starts[i]), int(ends[j])), (int(offsets[starts[i]][0]), int(offsets[ends[j]][1])))
            for i, j in zip(a[best], b[best])]


def predict_answer(context: str, windows_out: list[tuple[Feature, dict[str, np.ndarray]]],
                   threshold: float | None) -> QAPrediction:
    """The best span over all windows of a question; "" when threshold is set and the [CLS] score
    (its lowest over windows, as run_squad) beats the best span's by more than the threshold."""
    spans, null = [], math.inf
    for f, out in windows_out:
        T = len(f["input_ids"])
        start, end = out["start_logits"][:T], out["end_logits"][:T]
        null = min(null, float(start[0] + end[0]))
        spans += best_spans(start, end, f["_first"], f["_offsets"], f["_max_context"])
    return choose_answer(context, spans, null, threshold)


def choose_answer(context: str, spans: list[Span], null: float, threshold: float | None) -> QAPrediction:
    nbest, seen = [], set()
    for span in sorted(spans, key=lambda sp: -sp.score):
        text = context[span.chars[0]:span.chars[1]]
        if text not in seen:  # the same words found in two windows count once
            seen.add(text)
            nbest.append(span)
        if len(nbest) == N_BEST:
            break
    scores = [sp.score for sp in nbest] + ([null] if threshold is not None and math.isfinite(null) else [])
    probabilities = softmax(np.array(scores)) if scores else np.array([])
    best = nbest[0] if nbest else None
    best_text = context[best.chars[0]:best.chars[1]] if best else ""
    margin = None
    if threshold is not None:
        margin = null - best.score if best else math.inf
        if margin > threshold:
            return QAPrediction("", None, None, float(probabilities[-1]) if scores else 1.0, best_text, margin)
    if best is None:
        return QAPrediction("", None, None, 0.0, "", margin)
    return QAPrediction(best_text, best.chars[0], best.chars[1], float(probabilities[0]), best_text, margin)


# ---- metrics: the official SQuAD evaluation (v1.1 and v2.0 scripts) -------------------------------------


_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces — as the official script."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Word-overlap F1 of the normalised answers; an empty answer scores 1 only against an empty one."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _golds(answers: list[str]) -> list[str]:
    """The v2.0 script's gold list: answers that normalise to nothing are dropped; none left = ""."""
    return [a for a in answers if normalize_answer(a)] or [""]


def squad_metrics(golds: list[list[str]], predictions: list[str]) -> dict[str, float]:
    """exact_match and f1 (percent, best over each question's gold answers); with unanswerable
    questions also split into has_answer_* and no_answer_* as the v2.0 script."""
    em = np.array([max(exact_match(p, g) for g in _golds(gs)) for gs, p in zip(golds, predictions)])
    f = np.array([max(f1(p, g) for g in _golds(gs)) for gs, p in zip(golds, predictions)])
    out = {"exact_match": 100 * float(em.mean()), "f1": 100 * float(f.mean())}
    has = np.array([_golds(gs) != [""] for gs in golds])
    if not has.all():
        if has.any():
            out["has_answer_exact_match"] = 100 * float(em[has].mean())
            out["has_answer_f1"] = 100 * float(f[has].mean())
        out["no_answer_f1"] = 100 * float(f[~has].mean())  # = exact match: right when nothing was answered
    return out


def best_threshold(golds: list[list[str]], predictions: list[QAPrediction]) -> dict[str, float]:
    """The no-answer threshold that would give the best F1 on these questions (the v2.0 script's
    best_f1): "" is answered where null_margin > threshold, the best span elsewhere."""
    margins = np.array([p.null_margin if p.null_margin is not None else math.inf for p in predictions])
    span_f1 = np.array([max(f1(p.best_span, g) for g in _golds(gs)) for gs, p in zip(golds, predictions)])
    null_f1 = np.array([float(_golds(gs) == [""]) for gs in golds])
    order = np.argsort(margins, kind="stable")
    # Raising the threshold past a question's margin swaps its "" for its best span.
    totals = null_f1.sum() + np.concatenate([[0.0], np.cumsum(span_f1[order] - null_f1[order])])
    k = int(totals.argmax())
    lowest = float(margins[order[0]]) if len(order) else 0.0
    chosen = lowest - 1.0 if k == 0 else float(margins[order[k - 1]])
    return {"best_f1": 100 * float(totals[k]) / max(len(golds), 1), "best_f1_threshold": chosen}


__all__ = ["Answer", "QAExample", "QAPrediction", "QuestionAnswering", "Span", "best_spans", "normalize_answer",
           "squad_metrics"]
