"""Tokenize a corpus once into memory-mappable shards (``prepare``), and read them back
(``ShardedCorpus``, ``load_prepared``). The layout is the one described in ``bertkit.data``.

Output directory::

    meta.json                 written last: a directory without it is not a prepared corpus
    tokenizer/                the tokenizer, as save_pretrained writes it
    train/shard-00000/        tokens.npy word_starts.npy sentences.npy documents.npy
    valid/shard-00000/

Each shard is written into a hidden temporary directory and renamed into place when complete,
and readers only open the shards that meta.json lists, so a crash leaves nothing that passes for
data. Memory while preparing is bounded by one shard's buffers per split plus one batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.data.corpus import (
    CorpusStats,
    Document,
    HeldWarnings,
    PathLike,
    WarnFn,
    describe_paths,
    iter_documents,
    released_on_first,
)
from bertkit.errors import InputError
from bertkit.fileio import TMP_PREFIX, fsync_dir, write_text_atomically
from bertkit.tokenizer import SPECIAL_TOKENS, Tokenizer

__all__ = ["FORMAT_VERSION", "PrepareStats", "ShardedCorpus", "SplitStats", "load_prepared", "prepare",
           "read_meta"]

FORMAT = "bertkit-shards"
FORMAT_VERSION = 1
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "valid")
SHARD_FILES = ("tokens.npy", "word_starts.npy", "sentences.npy", "documents.npy")
SEGMENTERS = (None, "jieba")
BATCH_SENTENCES = 4096  # sentences per encode_batch call: enough to keep the engine's threads busy

# Literal "[MASK]" etc. in raw text would otherwise become the real special ids (the engine
# matches added tokens before normalization). A zero-width space breaks the match and is then
# removed by the normalizer, so the text tokenizes as "[ mask ]", as Google's BERT did.
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
_ZWSP = "\u200b"


@dataclass
class SplitStats:
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    shards: int = 0


@dataclass
class PrepareStats:
    """What ``prepare`` wrote and dropped."""

    train: SplitStats = field(default_factory=SplitStats)
    valid: SplitStats = field(default_factory=SplitStats)
    unk_tokens: int = 0
    empty_sentences: int = 0  # sentences that tokenized to nothing (dropped)
    empty_documents: int = 0  # documents left with no sentences (dropped)
    specials_in_text: int = 0  # literal [CLS]/[SEP]/... in the text, tokenized as plain text
    corpus: CorpusStats = field(default_factory=CorpusStats)
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.train.tokens + self.valid.tokens

    @property
    def unk_rate(self) -> float:
        return self.unk_tokens / self.tokens if self.tokens else 0.0

    def summary(self) -> list[str]:
        lines = [f"{name}: {s.documents:,} documents, {s.sentences:,} sentences, {s.tokens:,} tokens "
                 f"in {s.shards} shard{'s' * (s.shards != 1)}"
                 for name, s in (("train", self.train), ("valid", self.valid))]
        lines.append(f"unknown tokens: {self.unk_rate:.3%} ({self.unk_tokens:,} of {self.tokens:,})")
        if self.empty_sentences or self.empty_documents:
            lines.append(f"dropped (no tokens): {self.empty_sentences:,} sentences, "
                         f"{self.empty_documents:,} documents")
        if self.specials_in_text:
            lines.append(f"literal special tokens in text (kept as plain text): {self.specials_in_text:,}")
        lines.extend(self.corpus.summary())
        return lines


# ------------------------------------------------------------------------------- preparing


def prepare(
    paths: PathLike | Iterable[PathLike],
    tokenizer: Tokenizer,
    out_dir: PathLike,
    *,
    valid_fraction: float = 0.01,
    shard_tokens: int = 16_000_000,
    seed: int = 0,
    segmenter: str | None = None,
    progress: bool = True,
    text_field: str = "text",
    max_line_chars: int = 100_000,
    warn: WarnFn | None = None,
    document_sentences: int | None = None,
) -> PrepareStats:
    """Tokenize the documents of ``paths`` into train/valid shards under ``out_dir``.

    A document goes to ``valid`` with probability ``valid_fraction`` (a hash of ``seed`` and its
    index decides, so reruns agree); when that picks none but there are two or more documents,
    the last training document moves to ``valid``. ``segmenter="jieba"`` marks word starts by
    jieba's segmentation, for Chinese whole-word masking. An existing prepared corpus in
    ``out_dir`` is replaced. ``document_sentences`` cuts longer documents into parts of that many
    sentences, for corpora without document boundaries (the Penn Treebank LM text is one block), so
    that next-sentence negatives can come from another part."""
    started = time.monotonic()
    _check_prepare_args(tokenizer, valid_fraction, shard_tokens, seed)
    segment = _load_segmenter(segmenter)
    stats = PrepareStats()
    held = HeldWarnings(warn)  # until the first document: no text at all is one error line, not a warning each
    documents = iter_documents(paths, warn=held, max_line_chars=max_line_chars, text_field=text_field,
                               stats=stats.corpus)  # raises for missing paths, before any writing
    documents = released_on_first(documents, held)
    if document_sentences is not None:
        if not isinstance(document_sentences, int) or document_sentences < 1:
            raise InputError(f"document_sentences must be a positive int, got {document_sentences!r}")
        documents = split_documents(documents, document_sentences)
    out_dir = Path(out_dir)
    _clear_output(out_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {split: _ShardWriter(out_dir / split, dtype, shard_tokens) for split in SPLITS}
    _write_splits(documents, _Encoder(tokenizer, segment, stats), _Router(writers, valid_fraction, seed),
                  stats, progress)
    for split, writer in writers.items():
        setattr(stats, split, writer.stats)
    if not stats.train.documents:
        skipped = "; ".join(stats.corpus.summary()) or "no non-blank lines"
        raise InputError(f"{describe_paths(paths)}: no text to prepare ({skipped})")
    tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)
    meta = _meta(tokenizer, writers, stats, valid_fraction=valid_fraction, seed=seed, segmenter=segmenter,
                 text_field=text_field, shard_tokens=shard_tokens)
    write_text_atomically(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")  # last: its presence means "complete"
    stats.seconds = time.monotonic() - started
    if progress:
        print("\n".join(stats.summary()), file=sys.stderr)
    return stats


def split_documents(documents: Iterable[Document], size: int) -> Iterator[Document]:
    """Documents of at most `size` sentences, numbered afresh."""
    n = 0
    for doc in documents:
        for start in range(0, len(doc), size):
            yield Document(doc.path, doc.lines[start:start + size], doc.sentences[start:start + size], index=n)
            n += 1


def _write_splits(documents: Iterator[Document], encoder: _Encoder, router: _Router, stats: PrepareStats,
                  progress: bool) -> None:
    """Tokenize batch by batch and route every document to its split's shard writer."""
    written = 0  # documents as written, after --document-sentences splits them
    with _progress_bar(stats.corpus.bytes_total, progress) as bar:
        for batch in _batches(documents, BATCH_SENTENCES):
            for doc in encoder(batch):
                router.add(doc)
                written += 1
            router.end_batch()
            bar.update(stats.corpus.bytes_read - bar.n)
            bar.set_postfix(documents=f"{written:,}", refresh=False)
        bar.update(stats.corpus.bytes_read - bar.n)
    router.finish()


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (the contract in ``bertkit.data``)."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def _check_prepare_args(tokenizer: Any, valid_fraction: Any, shard_tokens: Any, seed: Any) -> None:
    if not isinstance(tokenizer, Tokenizer):
        raise InputError(f"tokenizer must be a bertkit Tokenizer, got {type(tokenizer).__name__}")
    if isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float)) \
            or not 0 <= valid_fraction < 1:
        raise InputError(f"valid_fraction must be a number in [0, 1), got {valid_fraction!r}")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise InputError(f"shard_tokens must be a positive int, got {shard_tokens!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}")


def _load_segmenter(name: str | None) -> Callable[[str], set[int]] | None:
    """A function from a sentence to the character offsets where its words begin, or None for
    plain WordPiece word starts."""
    if name not in SEGMENTERS:
        raise InputError(f"segmenter must be None or 'jieba', got {name!r}")
    if name is None:
        return None
    try:
        import jieba  # optional dependency, only for Chinese whole-word masking
    except ImportError:
        raise InputError("segmenter='jieba' needs the jieba package (pip install jieba)") from None
    jieba.setLogLevel(logging.WARNING)  # it logs dictionary loading at INFO/DEBUG on first use

    def word_starts(text: str) -> set[int]:
        return {start for _, start, _ in jieba.tokenize(text)}

    return word_starts


def _clear_output(out_dir: Path) -> None:
    """Make ``out_dir`` an empty place for a corpus, replacing an earlier prepared corpus (or
    the remains of a crashed run), but never deleting anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir():
        ours = {META_FILE, TOKENIZER_DIR, *SPLITS}
        foreign = sorted(p.name for p in out_dir.iterdir()
                         if p.name not in ours and not p.name.startswith(TMP_PREFIX))
        if foreign:
            raise InputError(f"{out_dir}: not empty and not a prepared corpus (has {foreign[0]}); "
                             "choose a new output directory")
        (out_dir / META_FILE).unlink(missing_ok=True)  # first, so a half-replaced corpus is invalid
        for path in out_dir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _batches(documents: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    sentences = 0
    for doc in documents:
        batch.append(doc)
        sentences += len(doc)
        if sentences >= size:
            yield batch
            batch, sentences = [], 0
    if batch:
        yield batch


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    from tqdm import tqdm  # imported here: only prepare needs it
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare",
              disable=not enabled, dynamic_ncols=True) as bar:
        if not enabled:
            yield bar
            return
        with logging_redirect_tqdm():  # warnings print above the bar instead of through it
            yield bar


# ------------------------------------------------------------------------------- tokenizing


@dataclass
class _Tokenized:
    """One document's tokens (views into a batch's arrays until copied)."""

    index: int
    tokens: np.ndarray  # token dtype
    word_starts: np.ndarray  # uint8
    lengths: np.ndarray  # int64 tokens per sentence, all > 0

    def copy(self) -> _Tokenized:
        return _Tokenized(self.index, self.tokens.copy(), self.word_starts.copy(), self.lengths.copy())


class _Encoder:
    """Batches of documents -> tokenized documents, dropping those with no tokens."""

    def __init__(self, tokenizer: Tokenizer, segment: Callable[[str], set[int]] | None,
                 stats: PrepareStats) -> None:
        self.tokenizer = tokenizer
        self.segment = segment
        self.stats = stats
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.unk_id = tokenizer.unk_token_id
        pieces = tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
        # a lookup table by id: ## continuation pieces never begin a word
        self.starts_word = np.array([not p.startswith("##") for p in pieces], dtype=np.uint8)

    def __call__(self, docs: list[Document]) -> Iterator[_Tokenized]:
        texts = [self._defuse(s) for doc in docs for s in doc.sentences]
        if self.segment is None:
            id_lists, offsets = self.tokenizer.piece_ids(texts), None
        else:  # whole-word masking needs where each piece begins in its text
            pieces = self.tokenizer.pieces(texts)
            id_lists, offsets = [p.ids for p in pieces], [p.offsets for p in pieces]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        ids = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=int(lengths.sum()))
        self.stats.unk_tokens += int(np.count_nonzero(ids == self.unk_id))
        word_starts = self._word_starts(ids, offsets, texts)
        return self._split(docs, ids.astype(self.dtype), word_starts, lengths)

    def _defuse(self, text: str) -> str:
        if "[" not in text or not _SPECIAL_RE.search(text):
            return text
        self.stats.specials_in_text += len(_SPECIAL_RE.findall(text))
        return _SPECIAL_RE.sub(lambda m: "[" + _ZWSP + m.group()[1:], text)

    def _word_starts(self, ids: np.ndarray, offsets: list[Sequence[tuple[int, int]]] | None,
                     texts: list[str]) -> np.ndarray:
        pieces = self.starts_word[ids]
        if offsets is None:
            return pieces
        # a piece begins a word iff jieba has a word starting at its first character
        starts = np.zeros(len(ids), dtype=np.uint8)
        pos = 0
        for spans, text in zip(offsets, texts):
            words = self.segment(text) if len(spans) else ()
            for start, _ in spans:
                starts[pos] = start in words
                pos += 1
        return starts & pieces

    def _split(self, docs: list[Document], ids: np.ndarray, word_starts: np.ndarray,
               lengths: np.ndarray) -> Iterator[_Tokenized]:
        sentence_ends = np.cumsum([len(doc) for doc in docs])
        token_ends = np.concatenate([[0], np.cumsum(lengths)])
        first = 0
        for doc, last in zip(docs, sentence_ends):
            sizes = lengths[first:last]
            kept = sizes[sizes > 0]
            self.stats.empty_sentences += len(sizes) - len(kept)
            a, b = token_ends[first], token_ends[last]
            first = last
            if not len(kept):
                self.stats.empty_documents += 1
                continue
            yield _Tokenized(doc.index, ids[a:b], word_starts[a:b], kept)


# --------------------------------------------------------------------------------- writing


def _in_valid(seed: int, index: int, fraction: float) -> bool:
    """A deterministic coin for document ``index``: the same on every run and every machine
    (Python's hash() is salted per process, so it cannot be used)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


class _Router:
    """Sends each document to its split. The latest training document is held back, so that it
    can move to valid at the end if the coin flips gave valid nothing."""

    def __init__(self, writers: dict[str, _ShardWriter], fraction: float, seed: int) -> None:
        self.train, self.valid = writers["train"], writers["valid"]
        self.fraction, self.seed = fraction, seed
        self.pending: _Tokenized | None = None

    def add(self, doc: _Tokenized) -> None:
        if _in_valid(self.seed, doc.index, self.fraction):
            self.valid.add(doc)
            return
        if self.pending is not None:
            self.train.add(self.pending)
        self.pending = doc

    def end_batch(self) -> None:
        if self.pending is not None:  # own its arrays, so the whole batch can be freed
            self.pending = self.pending.copy()
        self.train.compact()
        self.valid.compact()

    def finish(self) -> None:
        """Place the held-back document and write the last shards."""
        if self.pending is not None:
            wants_valid = self.fraction > 0 and self.valid.added == 0 and self.train.added > 0
            (self.valid if wants_valid else self.train).add(self.pending)
            self.pending = None
        self.train.close()
        self.valid.close()


class _ShardWriter:
    """Buffers one split's documents and writes a shard whenever ``shard_tokens`` are buffered."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.dtype, self.shard_tokens = directory, dtype, shard_tokens
        self.stats = SplitStats()
        self.shards: list[dict[str, Any]] = []
        self.staged: list[_Tokenized] = []  # documents of the current batch
        self.chunks: list[tuple[np.ndarray, ...]] = []  # earlier batches, merged
        self.buffered = 0
        self.added = 0  # documents so far, written or buffered (stats count only written ones)

    def add(self, doc: _Tokenized) -> None:
        self.added += 1
        self.staged.append(doc)
        self.buffered += len(doc.tokens)
        if self.buffered >= self.shard_tokens:
            self._flush()

    def compact(self) -> None:
        """Merge the staged documents into one chunk: a few large arrays per shard rather than
        three small ones per document (numpy's per-array overhead would rival the data)."""
        if self.staged:
            self.chunks.append(tuple(np.concatenate(parts) for parts in (
                [d.tokens for d in self.staged], [d.word_starts for d in self.staged],
                [d.lengths for d in self.staged],
                [np.array([len(d.lengths) for d in self.staged], dtype=np.int64)])))
            self.staged = []

    def close(self) -> None:
        self._flush()
        fsync_dir(self.directory)

    def _flush(self) -> None:
        self.compact()
        if not self.chunks:
            return
        tokens, word_starts, lengths, doc_sizes = (np.concatenate(parts) for parts in zip(*self.chunks))
        self.chunks, self.buffered = [], 0
        arrays = {
            "tokens.npy": tokens.astype(self.dtype, copy=False),
            "word_starts.npy": word_starts.astype(np.uint8, copy=False),
            "sentences.npy": _offsets(lengths),
            "documents.npy": _offsets(doc_sizes),
        }
        name = f"shard-{len(self.shards):05d}"
        _write_shard(self.directory, name, arrays)
        info = {"name": name, "documents": len(doc_sizes), "sentences": len(lengths), "tokens": len(tokens)}
        self.shards.append(info)
        self.stats.shards += 1
        self.stats.documents += info["documents"]
        self.stats.sentences += info["sentences"]
        self.stats.tokens += info["tokens"]


def _offsets(sizes: np.ndarray) -> np.ndarray:
    """Start offsets plus the end: [0, s0, s0+s1, ...], int64."""
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


def _write_shard(directory: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Write into a hidden temporary directory, then rename: a shard directory either is
    complete or does not exist."""
    tmp = directory / f"{TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for filename, array in arrays.items():
            with open(tmp / filename, "xb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, directory / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _meta(tokenizer: Tokenizer, writers: dict[str, _ShardWriter], stats: PrepareStats,
          **settings: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "vocab_size": tokenizer.vocab_size,
        "token_dtype": token_dtype(tokenizer.vocab_size).name,
        "special_tokens": {
            "pad_token_id": tokenizer.pad_token_id,
            "unk_token_id": tokenizer.unk_token_id,
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "mask_token_id": tokenizer.mask_token_id,
        },
        "tokenizer": TOKENIZER_DIR,
        **settings,
        "unk_tokens": stats.unk_tokens,
        "splits": {
            split: {"documents": w.stats.documents, "sentences": w.stats.sentences,
                    "tokens": w.stats.tokens, "shards": w.shards}
            for split, w in writers.items()
        },
    }


# --------------------------------------------------------------------------------- reading


def read_meta(out_dir: PathLike) -> dict[str, Any]:
    """The meta.json of a prepared corpus, checked for format and version."""
    path = Path(out_dir) / META_FILE
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected the corpus's JSON index")
    if not path.is_file():
        raise InputError(f"{out_dir}: no {META_FILE}, not a prepared corpus (run prepare first, "
                         "and let it finish)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path}: not a bertkit shard index (format is not {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise InputError(f"{path}: shard format version {meta.get('version')!r}, this bertkit reads "
                         f"version {FORMAT_VERSION}; prepare the corpus again")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(splits.get(s), dict) for s in SPLITS):
        raise InputError(f"{path}: no 'splits' entry for {' and '.join(SPLITS)}")
    _check_meta_values(path, meta)
    return meta


def _check_meta_values(path: Path, meta: dict[str, Any]) -> None:
    """The entries that name files and types: plain names inside the corpus, known dtypes only."""
    if meta.get("token_dtype", "uint16") not in ("uint16", "uint32"):
        raise InputError(f"{path}: token_dtype {meta.get('token_dtype')!r} is not uint16 or uint32")
    if not _is_plain_name(meta.get("tokenizer", TOKENIZER_DIR)):
        raise InputError(f"{path}: tokenizer {meta.get('tokenizer')!r} is not a folder inside the corpus")
    for split in SPLITS:
        shards = meta["splits"][split].get("shards", [])
        if not isinstance(shards, list) or not all(
                isinstance(s, dict) and _is_plain_name(s.get("name")) for s in shards):
            raise InputError(f"{path}: the {split} shards are not a list of {{name, documents, sentences, tokens}}")


def _is_plain_name(name: Any) -> bool:
    """A file or folder name with no path in it (meta.json must not point outside the corpus)."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


class _Shard:
    """One shard's four arrays, memory-mapped and checked against meta.json."""

    def __init__(self, directory: Path, info: dict[str, Any], dtype: np.dtype) -> None:
        self.tokens = _load(directory, "tokens.npy")
        self.word_starts = _load(directory, "word_starts.npy")
        self.sentences = _load(directory, "sentences.npy")
        self.documents = _load(directory, "documents.npy")
        self._check(directory, info, dtype)

    def _check(self, directory: Path, info: dict[str, Any], dtype: np.dtype) -> None:
        problems = []
        if self.tokens.dtype != dtype or self.tokens.ndim != 1:
            problems.append(f"tokens.npy is {self.tokens.dtype}[{self.tokens.ndim}-D], expected 1-D {dtype}")
        elif len(self.tokens) != info.get("tokens") or self.word_starts.shape != self.tokens.shape:
            problems.append("tokens.npy/word_starts.npy lengths differ from meta.json")
        elif len(self.sentences) != info.get("sentences", -2) + 1 or self.sentences[-1] != len(self.tokens):
            problems.append("sentences.npy does not match the tokens")
        elif (len(self.documents) != info.get("documents", -2) + 1
              or self.documents[-1] != len(self.sentences) - 1):
            problems.append("documents.npy does not match the sentences")
        if problems:
            raise InputError(f"{directory}: {problems[0]} (damaged corpus; prepare it again)")


def _load(directory: Path, filename: str) -> np.ndarray:
    """A shard array, memory-mapped. allow_pickle=False: an object array or a pickle in disguise
    is refused rather than unpickled (unpickling can run code)."""
    path = directory / filename
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .npy file (damaged corpus; prepare it again)")
    if not path.is_file():
        raise InputError(f"{path}: missing (damaged or incomplete corpus; prepare it again)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy file ({_first_line(e)})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise InputError(f"{path}: not a .npy array ({type(array).__name__}; damaged corpus, prepare it again)")
    return array


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class ShardedCorpus:
    """One split of a prepared corpus, memory-mapped: documents by global index across shards.

    ``document(i)`` gives each sentence's token ids as an int64 array and
    ``document_word_starts(i)`` the matching uint8 flags (read-only views)."""

    def __init__(self, split_dir: PathLike, *, meta: dict[str, Any] | None = None) -> None:
        self.directory = Path(split_dir)
        self.split = self.directory.name
        self.meta = meta if meta is not None else read_meta(self.directory.parent)
        info = self.meta["splits"].get(self.split)
        if not isinstance(info, dict):
            raise InputError(f"{self.directory}: not a split of the corpus (expected one of "
                             f"{', '.join(self.meta['splits'])})")
        dtype = np.dtype(self.meta.get("token_dtype", "uint16"))
        self._shards = [_Shard(self.directory / s["name"], s, dtype) for s in info.get("shards", [])]
        counts = [len(s.documents) - 1 for s in self._shards]
        self._first_doc = _offsets(np.array(counts, dtype=np.int64))  # global index of each shard's doc 0
        self.num_documents = int(self._first_doc[-1])
        self.num_sentences = sum(len(s.sentences) - 1 for s in self._shards)
        self.num_tokens = sum(len(s.tokens) for s in self._shards)
        if (self.num_documents, self.num_sentences, self.num_tokens) != \
                (info.get("documents"), info.get("sentences"), info.get("tokens")):
            raise InputError(f"{self.directory}: shard contents do not add up to meta.json's counts "
                             "(damaged corpus; prepare it again)")

    def __len__(self) -> int:
        return self.num_documents

    def __getitem__(self, i: int) -> list[np.ndarray]:
        return self.document(i)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        return (self.document(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return (f"ShardedCorpus({str(self.directory)!r}, documents={self.num_documents}, "
                f"sentences={self.num_sentences}, tokens={self.num_tokens}, shards={len(self._shards)})")

    def _locate(self, i: int) -> tuple[_Shard, np.ndarray]:
        """The shard holding document ``i`` and the sentence offsets of that document."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"document index must be an int, got {type(i).__name__}")
        n = self.num_documents
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range ({n} documents)")
        i = int(i) % n
        k = int(np.searchsorted(self._first_doc, i, side="right")) - 1
        shard = self._shards[k]
        local = i - int(self._first_doc[k])
        first, last = shard.documents[local], shard.documents[local + 1]
        return shard, np.asarray(shard.sentences[first:last + 1])

    def document(self, i: int) -> list[np.ndarray]:
        """The token ids of each sentence of document ``i``, as int64 arrays."""
        shard, bounds = self._locate(i)
        ids = shard.tokens[bounds[0]:bounds[-1]].astype(np.int64)  # one copy for the document
        return np.split(ids, bounds[1:-1] - bounds[0])

    def document_word_starts(self, i: int) -> list[np.ndarray]:
        """For each sentence of document ``i``: uint8, 1 where a token begins a word."""
        shard, bounds = self._locate(i)
        return [shard.word_starts[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def sentence_lengths(self, i: int) -> np.ndarray:
        """Tokens in each sentence of document ``i`` (int64)."""
        _, bounds = self._locate(i)
        return np.diff(bounds)


def load_prepared(out_dir: PathLike) -> tuple[dict[str, Any], ShardedCorpus, ShardedCorpus, Tokenizer]:
    """(meta, train, valid, tokenizer) of a directory written by ``prepare``."""
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    train = ShardedCorpus(out_dir / "train", meta=meta)
    valid = ShardedCorpus(out_dir / "valid", meta=meta)
    tokenizer = Tokenizer.from_pretrained(out_dir / meta.get("tokenizer", TOKENIZER_DIR))
    if tokenizer.vocab_size != meta.get("vocab_size"):
        raise InputError(f"{out_dir}: tokenizer has {tokenizer.vocab_size} tokens but meta.json says "
                         f"{meta.get('vocab_size')}")
    return meta, train, valid, tokenizer
