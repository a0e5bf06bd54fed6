"""tag: a label per word — parts of speech, or named entities in BIO (IOB2) tags.

Reader: CoNLL (a token per line with its tag in --tag-column, the last by default; a blank line
between sentences; -DOCSTART- lines ignored), CoNLL-U (.conllu: FORM and UPOS; comments,
multi-word token lines and empty nodes skipped), or JSONL {"tokens": [...], "tags": [...]}.

Featurizer: every word is cut into WordPiece pieces; the first piece of a word carries its label
and the others, like [CLS] and [SEP], take no part in the loss (BERT paper §5.3, "we use the
representation of the first sub-token as the input to the token-level classifier"). A word with no
pieces at all (a control character, an empty token) is fed as one [UNK] piece, so that it is
still predicted from its context. A sentence longer than max_length is truncated (the words cut
off are predicted as "O", or as the first tag of a tag set without "O") or, with --long-text window,
cut into overlapping windows; each word is then predicted from the window in which it has the most
context (windows() and max_context()).

Metrics: with BIO tags, seqeval in its default mode (conlleval's rules: an I- tag after O or after
another type starts an entity): entity precision, recall and F1 (micro), F1 per type, and word
accuracy; with other tags (parts of speech), word accuracy and macro F1 over the tags.
"""

from __future__ import annotations

import logging
import re
import warnings
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import InputError
from bertkit.labels import IGNORE
from bertkit.model import reads_every_row
from bertkit.objective import Mean, Objective, Step, correct, cross_entropy_loss, labelled
from bertkit.tasks.base import (
    BadInput,
    Featurized,
    Task,
    drop_skipped,
    max_context,
    pick_field,
    read_records,
    read_text_lines,
    windows,
)

log = logging.getLogger("bertkit")

TOKEN_FIELDS = ("tokens", "words")
TAG_FIELDS = ("tags", "ner_tags", "pos_tags", "labels")
OUTSIDE = "O"
CONLLU_FORM, CONLLU_UPOS = 1, 3  # 0-based columns of CoNLL-U (ID FORM LEMMA UPOS XPOS ...)

# Characters written without spaces between words: Han (with extensions and compatibility forms),
# kana, CJK punctuation and full-width forms.
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002ffff"
_CJK_CHAR = re.compile(f"[{_CJK}]")


@dataclass
class Sentence:
    where: str  # file:line of its first word, or "input N"
    words: list[str]
    tags: list[str] | None = None  # None: unlabelled
    lines: list[int] | None = None  # line of each word in its file (CoNLL), for file:line messages
    text: str | None = None  # the string the words were split from (a plain-text input), for character offsets

    def where_word(self, k: int) -> str:
        if self.lines is None:
            return self.where
        return f"{self.where.rpartition(':')[0]}:{self.lines[k]}"


@dataclass
class TagPrediction:
    tags: list[str]


class Entity(NamedTuple):
    type: str
    start: int  # index of the first word
    end: int  # index after the last word (a Python slice: words[start:end])
    text: str


# ---- BIO helpers --------------------------------------------------------------------------------------


def is_bio(labels: list[str] | None) -> bool:
    """True when the tags are IOB2 entity tags: O, B-TYPE, I-TYPE (and at least one B-/I- tag)."""
    if not labels:
        return False
    prefixed = [x for x in labels if x != OUTSIDE]
    return bool(prefixed) and all(x[:2] in ("B-", "I-") and len(x) > 2 for x in prefixed)


def _split_tag(tag: str) -> tuple[str, str | None]:
    """('B', type), ('I', type), or ('O', None) for O and for any tag without a B-/I- prefix."""
    if tag[:2] in ("B-", "I-") and len(tag) > 2:
        return tag[0], tag[2:]
    return OUTSIDE, None


def entities(words: list[str], tags: list[str]) -> list[Entity]:
    """Entities of IOB2 tags with conlleval's rules: B-X starts an entity; I-X continues one of type X
    and starts a new one after O or after another type. Tags without a B-/I- prefix count as O."""
    found: list[Entity] = []
    start, current = 0, None
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, kind = _split_tag(tag)
        continues = prefix == "I" and kind == current
        if current is not None and not continues:
            found.append(Entity(current, start, i, join_words(words[start:i])))
            current = None
        if kind is not None and not continues:
            start, current = i, kind
    return found


def word_spans(text: str, words: list[str]) -> list[tuple[int, int]]:
    """Each word's [start, end) characters in the text it was split from (split_text's words, in order)."""
    spans, at = [], 0
    for w in words:
        start = text.index(w, at)
        spans.append((start, start + len(w)))
        at = start + len(w)
    return spans


def entity_json(entity: Entity, spans: list[tuple[int, int]] | None) -> dict[str, Any]:
    """An entity as predict and pipeline write it: type, words [start, end), text, and, for a plain-text
    input, its characters [start_char, end_char) in that text (spaCy's names for the same pair)."""
    out: dict[str, Any] = entity._asdict()
    if spans is not None:
        out["start_char"], out["end_char"] = spans[entity.start][0], spans[entity.end - 1][1]
    return out


def join_words(words: list[str]) -> str:
    """Words joined by spaces, except next to CJK characters (character-level Chinese reads as text)."""
    out = ""
    for w in words:
        if out and w and not (_CJK_CHAR.match(out[-1]) or _CJK_CHAR.match(w[0])):
            out += " "
        out += w
    return out


def sort_tags(names: set[str]) -> list[str]:
    """Alphabetical, with O first when present (so that O is label 0)."""
    rest = sorted(names - {OUTSIDE})
    return [OUTSIDE, *rest] if OUTSIDE in names else rest


def split_text(text: str) -> list[str]:
    """Words of a plain string: split on whitespace, or into characters for CJK text without spaces."""
    words = text.split()
    if len(words) == 1 and _CJK_CHAR.search(text):
        return list(words[0])
    return words


# ---- the task -----------------------------------------------------------------------------------------


class Tag(Task):
    name = "tag"
    architecture = "BertForTokenClassification"
    # `bertkit predict` reads these with the task's reader; other files (.txt) are plain text, a
    # sentence per line.
    file_suffixes = (".conll", ".conllu", ".bio", ".iob", ".iob2", ".jsonl")
    packed_token_keys = ("input_ids", "token_type_ids", "labels")  # a label per token

    labels: list[str] | None = None
    """The tag set, once known (label_names, configure, postprocess, metrics): decides the metric."""

    @property
    def metric(self) -> str:  # type: ignore[override]
        return "f1" if self.labels is None or is_bio(self.labels) else "accuracy"

    # ---- reader

    def read(self, path: Path, bad: BadInput, *, labelled: bool = True) -> list[Sentence]:
        path = Path(path)
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            sentences = self._read_jsonl(path, bad, labelled)
        else:
            sentences = self._read_conll(path, bad, labelled)
        if not sentences:
            raise InputError(f"{path}: no sentences")
        return sentences

    def _read_conll(self, path: Path, bad: BadInput, labelled: bool) -> list[Sentence]:
        undecodable: set[int] = set()

        def note(where: str, problem: str) -> None:
            undecodable.add(int(where.rpartition(":")[2]))
            bad(where, problem)

        lines = read_text_lines(path, note)  # type: ignore[arg-type]
        conllu = path.suffix.lower() == ".conllu"
        sentences = []
        for block in _blocks(lines, undecodable, conllu):
            sentence = self._sentence(path, block, undecodable, conllu, labelled, bad)
            if sentence is not None:
                sentences.append(sentence)
        return sentences

    def _sentence(self, path: Path, block: list[tuple[int, str]], undecodable: set[int], conllu: bool,
                  labelled: bool, bad: BadInput) -> Sentence | None:
        """One sentence from its lines; None (the whole sentence skipped) when one line is bad."""
        words, tags, numbers = [], [], []
        for number, line in block:
            if number in undecodable:
                return None  # already reported by read_text_lines
            if conllu and _is_conllu_extra(line):
                continue
            row = self._row(line, conllu, labelled)
            if isinstance(row, str):
                bad(f"{path}:{number}", row)
                return None
            words.append(row[0])
            tags.append(row[1])
            numbers.append(number)
        if not words:
            return None
        return Sentence(f"{path}:{numbers[0]}", words, tags if labelled else None, numbers)

    def _row(self, line: str, conllu: bool, labelled: bool) -> tuple[str, str | None] | str:
        """(token, tag) of one line, or what is wrong with it."""
        if conllu or "\t" in line:
            columns = [c.strip() for c in line.strip("\r\n").split("\t")]
        else:
            columns = line.split()
        token_at = CONLLU_FORM if conllu else 0
        tag_at = CONLLU_UPOS if conllu and self.options.tag_column == -1 else self.options.tag_column
        if len(columns) <= token_at:
            return f"expected a token in column {token_at + 1}, found {len(columns)} column(s)"
        token = columns[token_at]
        if not token:
            return "empty token"
        if not labelled:
            return token, None
        if len(columns) < 2 or not -len(columns) <= tag_at < len(columns):
            return f"expected a token and a tag (tag column {self.options.tag_column}), found " \
                   f"{len(columns)} column(s)"
        tag = columns[tag_at]
        return (token, tag) if tag else "empty tag"

    def _read_jsonl(self, path: Path, bad: BadInput, labelled: bool) -> list[Sentence]:
        sentences, fields = [], None
        for where, record in read_records(path, bad):
            if fields is None:
                o = self.options
                fields = (pick_field(record, o.text_column, TOKEN_FIELDS, "text", where),
                          pick_field(record, o.label_column, TAG_FIELDS, "label", where, required=labelled))
            sentence = _json_sentence(where, record, *fields, labelled)
            if isinstance(sentence, str):
                bad(where, sentence)
            else:
                sentences.append(sentence)
        return sentences

    def parse(self, inputs: list) -> list[Sentence]:
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, dict):
                item = next((item[k] for k in (*TOKEN_FIELDS, "text") if k in item), None)
            text = item if isinstance(item, str) else None
            if isinstance(item, str):
                words = split_text(item)
            elif isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item):
                words = list(item)
            else:
                raise InputError(f"input {i}: expected a text, a list of words or a dict with 'tokens'")
            if not words:
                raise InputError(f"input {i}: no words")
            out.append(Sentence(f"input {i}", words, text=text))
        return out

    def label_names(self, examples: list[Sentence]) -> list[str]:
        self.labels = sort_tags({t for e in examples for t in (e.tags or [])})
        if not self.labels:
            raise InputError("no tags in the training data")
        return self.labels

    def configure(self, config: BertConfig, labels: list[str]) -> dict[str, Any]:
        self.labels = list(labels)
        return {"id2label": dict(enumerate(labels))}

    # ---- featurizer

    def featurize(self, examples: list[Sentence], tokenizer, config: BertConfig, bad: BadInput) -> Featurized:
        o = self.options
        room = o.max_length - 2  # [CLS] and [SEP]
        if room < 1:
            raise InputError(f"max_length {o.max_length} leaves no room for words")
        label2id = config.label2id
        # Truncation needs only the first room + 1 words: every word has a piece at least (an [UNK]
        # where it has none), so those already overflow, and the words after them are cut off whole.
        shown = [e.words if o.long_text == "window" else e.words[:room + 1] for e in examples]
        features, long, cut_words = [], 0, 0
        skipped: set[int] = set()
        pieces = tokenizer.pieces(shown, split_into_words=True)
        for i, (e, words, p) in enumerate(zip(examples, shown, pieces)):
            labels = _label_ids(e, label2id, bad)
            if labels is _SKIP:
                skipped.add(i)
                continue
            ids, firsts = word_pieces(p.ids, p.word_ids, len(words), tokenizer.unk_token_id)
            if len(ids) > room:
                long += 1
                cut_words += sum(1 for f in firsts if f >= room) + len(e.words) - len(words)
            spans = windows(len(ids), room, o.stride) if o.long_text == "window" else [(0, min(len(ids), room))]
            for k, span in enumerate(spans):
                features.append(_window_feature(i, ids, firsts, spans, k, span, labels, tokenizer))
        if cut_words and o.long_text != "window":
            log.warning("%d words beyond max_length %d are predicted as %s (--long-text window tags them all)",
                        cut_words, o.max_length, OUTSIDE)
        return Featurized(drop_skipped(examples, features, skipped), long)

    # ---- head and loss

    def objective(self, model: nn.Module) -> nn.Module:
        return TagObjective(model)

    def outputs(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"logits": model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits}

    # ---- post-processing

    def postprocess(self, examples, features, outputs, config: BertConfig) -> list[TagPrediction | None]:
        """A tag per word, from its first piece in the window chosen at featurize time; words no window
        predicts (cut off by truncation) get O (or, for tag sets without O, the first tag). An example
        the featurizer skipped (bad input) gets None."""
        names = [config.id2label[i] for i in range(len(config.id2label))]
        self.labels = names
        fallback = OUTSIDE if OUTSIDE in names else names[0]
        chosen: dict[int, list[str | None]] = {}
        for f, out in zip(features, outputs):
            tags = chosen.setdefault(f["_example"], [None] * len(examples[f["_example"]].words))
            best = out["logits"].argmax(-1)  # (T,)
            for position, w in enumerate(f["_predicts"]):
                if w >= 0:
                    tags[w] = names[int(best[position])]
        return [TagPrediction([t or fallback for t in chosen[i]]) if i in chosen else None
                for i in range(len(examples))]

    # ---- metrics

    def metrics(self, examples, predictions, config: BertConfig) -> dict[str, float]:
        names = [config.id2label[i] for i in range(len(config.id2label))]
        self.labels = names
        pairs = [(e.tags, p.tags) for e, p in zip(examples, predictions) if p is not None and e.tags is not None]
        gold, guess = [g for g, _ in pairs], [p for _, p in pairs]
        if not pairs:
            return {}
        return entity_metrics(gold, guess) if is_bio(names) else tag_metrics(gold, guess)

    def to_json(self, example: Sentence, prediction: TagPrediction | None) -> dict[str, Any]:
        tags = prediction.tags if prediction is not None else None
        out: dict[str, Any] = {"tokens": example.words, "tags": tags}
        if is_bio(self.labels) and tags is not None:
            spans = word_spans(example.text, example.words) if example.text is not None else None
            out["entities"] = [entity_json(e, spans) for e in entities(example.words, tags)]
        return out


_SKIP = object()


# ---- reading helpers ----------------------------------------------------------------------------------


def _blocks(lines: list[str], undecodable: set[int], conllu: bool) -> list[list[tuple[int, str]]]:
    """Runs of (line number, line) between whitespace-only lines; -DOCSTART- lines (and CoNLL-U
    comments) dropped. An undecodable line stays inside its sentence so that the sentence is skipped."""
    blocks: list[list[tuple[int, str]]] = [[]]
    for number, line in enumerate(lines, start=1):
        if number in undecodable:
            blocks[-1].append((number, line))
        elif not line.strip():
            blocks.append([])
        elif line.startswith("-DOCSTART-") or (conllu and line.startswith("#")):
            continue
        else:
            blocks[-1].append((number, line))
    return [b for b in blocks if b]


def _is_conllu_extra(line: str) -> bool:
    """Multi-word token ranges (1-2) and empty nodes (1.1): not words of the sentence."""
    first = line.split("\t", 1)[0]
    return "-" in first or "." in first


def _json_sentence(where: str, record: dict, token_field: str, tag_field: str | None,
                   labelled: bool) -> Sentence | str:
    words = record.get(token_field)
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        return f"{token_field!r} must be a non-empty list of strings"
    if not labelled:
        return Sentence(where, words)
    tags = record.get(tag_field) if tag_field else None
    if not isinstance(tags, list) or not all(isinstance(t, (str, int)) and str(t) for t in tags):
        return f"{tag_field!r} must be a list of tags"
    if len(tags) != len(words):
        return f"{len(words)} tokens but {len(tags)} tags"
    return Sentence(where, words, [str(t) for t in tags])


# ---- featurizing helpers ------------------------------------------------------------------------------


def word_pieces(ids: Sequence[int], word_ids: Sequence[int], n_words: int,
                unk_id: int) -> tuple[list[int], list[int]]:
    """The sentence's piece ids with an [UNK] for each word that has no pieces, and the position of
    every word's first piece."""
    by_word: list[list[int]] = [[] for _ in range(n_words)]
    for piece, w in zip(ids, word_ids):
        by_word[w].append(piece)
    out, firsts = [], []
    for pieces in by_word:
        firsts.append(len(out))
        out.extend(pieces or [unk_id])
    return out, firsts


def _label_ids(e: Sentence, label2id: dict[str, int], bad: BadInput) -> list[int] | None | object:
    if e.tags is None:
        return None
    for k, t in enumerate(e.tags):
        if t not in label2id:
            bad(e.where_word(k), f"tag {t!r} was not in the training data (tags: {', '.join(label2id)})")
            return _SKIP
    return [label2id[t] for t in e.tags]


def _window_feature(example: int, ids: list[int], firsts: list[int], spans: list[tuple[int, int]], k: int,
                    span: tuple[int, int], labels: list[int] | None, tokenizer) -> dict[str, Any]:
    """[CLS] pieces[start:end] [SEP]. Labels sit on every first piece inside the window (training sees
    each word in every window that holds it); `_predicts` marks, per position, the word whose tag
    this window predicts (its first piece has the most context here), else -1."""
    start, end = span
    # first-piece position -> word, for the words starting in the window (firsts is increasing)
    word_at = {firsts[w]: w for w in range(bisect_left(firsts, start), bisect_left(firsts, end))}
    predicts = [word_at[p] if p in word_at and max_context(spans, p) == k else -1 for p in range(start, end)]
    feature = {
        "input_ids": [tokenizer.cls_token_id, *ids[start:end], tokenizer.sep_token_id],
        "token_type_ids": [0] * (end - start + 2),
        "_example": example,
        "_predicts": [-1, *predicts, -1],
    }
    if labels is not None:
        feature["labels"] = [IGNORE, *(labels[word_at[p]] if p in word_at else IGNORE
                                       for p in range(start, end)), IGNORE]
    return feature


# ---- metrics ------------------------------------------------------------------------------------------


def entity_metrics(gold: list[list[str]], guess: list[list[str]]) -> dict[str, float]:
    """seqeval, default (conlleval) mode: entity precision/recall/F1 (micro), F1 per type, word accuracy."""
    from seqeval.metrics import accuracy_score, classification_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about types absent from one side
        report = classification_report(gold, guess, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    out = {"accuracy": accuracy_score(gold, guess), "precision": micro["precision"],
           "recall": micro["recall"], "f1": micro["f1-score"]}
    for kind in sorted(k for k in report if not k.endswith(" avg")):
        out[f"f1_{kind}"] = report[kind]["f1-score"]
    return {k: float(v) for k, v in out.items()}


def tag_metrics(gold: list[list[str]], guess: list[list[str]]) -> dict[str, float]:
    """Tags that are not entities (parts of speech): word accuracy and macro F1 over the tags seen."""
    from sklearn.metrics import f1_score

    g = [t for s in gold for t in s]
    p = [t for s in guess for t in s]
    return {
        "accuracy": float(np.mean([a == b for a, b in zip(g, p)])),
        "macro_f1": float(f1_score(g, p, average="macro", zero_division=0)),
    }


# ---- objective ----------------------------------------------------------------------------------------


def tag_step(model: nn.Module, batch: dict[str, Tensor]) -> Step:
    """Cross-entropy summed over the labelled pieces (first pieces of words), and how many are right;
    the encoder's last layer runs at those pieces alone (except where reads_every_row says not)."""
    inputs, labels = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]), batch["labels"]
    if reads_every_row(model.training):  # every piece, the unlabelled ones ignored by the loss
        logits, targets = model(*inputs).logits.float(), labels  # (B, T, L), (B, T)
    else:
        at = labels != IGNORE  # (B, T)
        logits, targets = model.logits_at(*inputs, at).float(), labels[at]  # (M, L), (M,)
    return Step({"tag": cross_entropy_loss(logits, targets)}, {"correct": correct(logits, targets)})


class TagObjective(Objective):
    """Loss sums for train.fit, and piece accuracy."""

    def __init__(self, model: nn.Module):
        super().__init__(model, tag_step, counts={"tag": lambda batch: labelled(batch["labels"])},
                         report={"accuracy": Mean("correct", over="tag")})
