"""`bertkit tokenizer train`: a WordPiece vocabulary from raw text, with a summary of how well it fits."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from bertkit.data.corpus import CorpusStats, Document, HeldWarnings, describe_paths, iter_documents
from bertkit.errors import InputError
from bertkit.tokenizer import Tokenizer

SAMPLE_EVERY = 20  # every 20th sentence is kept to measure the trained vocabulary on


@dataclass
class VocabSummary:
    vocab_size: int
    sentences: int
    sample_words: int  # words as the tokenizer splits them: a Chinese character is a word of its own
    unknown_rate: float  # share of sample tokens that are [UNK]
    whole_word_rate: float  # share of sample words that are a single vocabulary entry
    pieces_per_word: float
    alphabet: int = 0  # distinct characters of the sample
    alphabet_missing: int = 0  # ... of which the vocabulary has no entry (they become [UNK])

    def lines(self) -> list[str]:
        return [
            f"vocabulary: {self.vocab_size} tokens, trained on {self.sentences} sentences",
            f"on a sample of {self.sample_words} words: {self.unknown_rate:.3%} [UNK] tokens, "
            f"{self.whole_word_rate:.1%} of words kept whole, {self.pieces_per_word:.2f} pieces per word",
            f"characters: {self.alphabet - self.alphabet_missing} of the sample's {self.alphabet} distinct "
            f"characters are in the vocabulary",
        ]


def _sentences(paths: Sequence[str | os.PathLike], stats: CorpusStats, sample: list[str]) -> Iterator[str]:
    """Every sentence of `paths`; InputError (before any training or writing) when there is none.

    The reader's warnings are held until the first sentence: with no text at all, the error line
    alone says what was skipped."""
    warnings = HeldWarnings()
    documents = iter_documents(paths, stats=stats, warn=warnings)
    first = next(documents, None)
    if first is None:
        skipped = "; ".join(stats.summary()) or "no non-blank lines"
        raise InputError(f"{describe_paths(paths)}: no text to train a vocabulary on ({skipped})")
    warnings.release()
    return _sampled(itertools.chain([first], documents), sample)


def _sampled(documents: Iterator[Document], sample: list[str]) -> Iterator[str]:
    seen = 0
    for doc in documents:
        for sentence in doc.sentences:
            if seen % SAMPLE_EVERY == 0 and len(sample) < 5000:
                sample.append(sentence)
            seen += 1
            yield sentence


def measure(tok: Tokenizer, sample: Sequence[str], sentences: int) -> VocabSummary:
    words = tokens = unknown = whole = 0
    vocab = tok.vocab
    unk = vocab["[UNK]"]
    for pieces in tok.pieces(list(sample)) if sample else []:
        tokens += len(pieces.ids)
        unknown += pieces.ids.count(unk)
        for _, group in groupby(zip(pieces.word_ids, pieces.ids), key=lambda pair: pair[0]):  # a word's pieces
            ids = [i for _, i in group]
            words += 1
            whole += ids != [unk] and len(ids) == 1
    chars = {c for text in sample for c in tok.normalize(text) if not c.isspace()}
    missing = sum(c not in vocab and "##" + c not in vocab for c in chars)
    return VocabSummary(
        vocab_size=len(tok), sentences=sentences, sample_words=words,
        unknown_rate=unknown / max(tokens, 1), whole_word_rate=whole / max(words, 1),
        pieces_per_word=tokens / max(words, 1), alphabet=len(chars), alphabet_missing=missing,
    )


def train_vocabulary(
    paths: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    vocab_size: int = 30522,
    lowercase: bool = True,
    chinese_chars: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int | None = None,
    progress: bool | None = None,
) -> tuple[Tokenizer, VocabSummary]:
    """Train on every sentence of `paths`, save to `out`, print and return a summary."""
    stats, sample = CorpusStats(), []
    show = sys.stderr.isatty() if progress is None else progress
    tok = Tokenizer.train_from_iterator(
        _sentences(paths, stats, sample), vocab_size=vocab_size, lowercase=lowercase,
        chinese_chars=chinese_chars, min_frequency=min_frequency, limit_alphabet=limit_alphabet,
        show_progress=show,
    )
    tok.save_pretrained(Path(out))
    summary = measure(tok, sample, stats.sentences)
    for line in summary.lines() + stats.summary() + [f"saved to {out}"]:
        print(line)
    return tok, summary
