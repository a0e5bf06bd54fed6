"""BERT's WordPiece tokenizer, run by the `tokenizers` library's engine.

Text goes through the same pipeline as Google's original BERT:

1. Basic tokenization (the engine's ``BertNormalizer`` and ``BertPreTokenizer``): drop control
   characters and U+FFFD, turn every kind of whitespace into a space, optionally lowercase and
   strip accents (NFD, then drop combining marks), put spaces around every CJK character so each
   one becomes its own word, then split on whitespace and on every punctuation character.
2. WordPiece (the engine's ``WordPiece`` model): each word is split greedily, longest match
   first, into vocabulary pieces; pieces after the first carry a ``##`` prefix, so "unaffable"
   becomes ``una ##ffa ##ble``. A word with no split, or longer than 100 characters, becomes
   ``[UNK]``.
3. Special tokens (``TemplateProcessing``): ``[CLS] A [SEP]`` with token type 0, or
   ``[CLS] A [SEP] B [SEP]`` with type 1 for ``B [SEP]``. Literal special tokens in the text
   (``"[MASK]"``) are matched as such, before normalization, as transformers does.

Truncation is the engine's ``longest_first``; offsets are character offsets into the original
text (into B for the second text of a pair), ``(0, 0)`` for special and padding tokens.
``save_pretrained`` writes files that transformers' ``AutoTokenizer`` loads to the same ids.

Long texts: the engine needs about 160 bytes per character it is given (500 for Chinese), so a
50 MB line at once takes ~10 GB. Tokenization is local — nothing joins across whitespace, and
otherwise only the last word or two of a cut text can come out differently — so a long text is
tokenized a chunk at a time (``_safe_chunks``), each chunk cut where its pieces are exactly those
of the whole text. Truncation reads only as many chunks as the kept pieces need; ``pieces`` reads
them all but keeps them in compact arrays.
"""

from __future__ import annotations

import bisect
import json
import numbers
import os
import re
import warnings
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union, overload

from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Encoding as _EngineEncoding
from tokenizers import Tokenizer as _Engine
from tokenizers.models import WordPiece

from bertkit.errors import CheckpointError, InputError
from bertkit.fileio import write_text_atomically

__all__ = ["BatchEncoding", "Pieces", "Spans", "Tokenizer"]

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # also the id order (0..4) of trained vocabularies
MAX_INPUT_CHARS_PER_WORD = 100
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
ENGINE_FILE = "tokenizer.json"
_ENGINE_MAX_LENGTH = 10**9  # model_max_length may be huge: transformers writes 1e30 for 'no limit'
_UNSET: Any = object()
CHUNK_CHARS = 100_000
"""Characters given to the engine at a time for a long text: ~16 MB of engine memory (~50 for Chinese)."""
CHARS_PER_PIECE = 8
"""First guess of the characters that hold a piece, when only a long text's first pieces are needed
(English averages ~4.5 with spaces, Chinese 1); more is read where it falls short, so any text works."""
WORDS_PER_CHUNK = 20_000
"""Pre-split words given to the engine at a time (``split_into_words``), for the same reason."""

PathLike = Union[str, "os.PathLike[str]"]


class BatchEncoding(dict):
    """The encoded batch: a dict of ``input_ids``, ``token_type_ids``, ``attention_mask`` (and
    ``offset_mapping``), so that ``model(**enc)`` works."""

    def to(self, device: Any) -> BatchEncoding:
        """Move tensor values to ``device`` (torch tensors only); returns ``self``."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self


class Pieces(NamedTuple):
    """The WordPiece pieces of one text, without special tokens or truncation.

    Lists — except for a text of more than CHUNK_CHARS characters (WORDS_PER_CHUNK words), where
    offsets are a ``Spans`` and word_ids an ``array('i')``, and the ids list shares one int object
    per vocabulary id: the same indexing, slicing and iteration at 4-8 bytes a piece instead of
    ~40-120 (a 50 MB text has ~12 million pieces).
    """

    ids: Sequence[int]
    offsets: Sequence[tuple[int, int]]  # character span of each piece in its text (in its word, for split words)
    word_ids: Sequence[int]  # index of the word each piece belongs to


class Spans(Sequence[tuple[int, int]]):
    """(start, end) pairs stored flat in one ``array('i')``; reads like a list of tuples (a slice is one)."""

    __slots__ = ("flat",)

    def __init__(self, flat: array | None = None):
        self.flat = flat if flat is not None else array("i")

    def __len__(self) -> int:
        return len(self.flat) // 2

    @overload
    def __getitem__(self, index: int) -> tuple[int, int]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[int, int]]: ...

    def __getitem__(self, index: int | slice) -> tuple[int, int] | list[tuple[int, int]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = index + len(self) if index < 0 else index
        if not 0 <= i < len(self):
            raise IndexError("Spans index out of range")
        return self.flat[2 * i], self.flat[2 * i + 1]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        """An (N, 2) numpy view of the spans, without making N tuples first."""
        import numpy as np

        spans = np.frombuffer(self.flat, dtype=np.intc).reshape(-1, 2)
        if dtype is not None and np.dtype(dtype) != spans.dtype:
            return spans.astype(dtype)
        return spans.copy() if copy else spans

    def __repr__(self) -> str:
        return f"Spans({len(self)} spans)"


class Tokenizer:
    """BERT WordPiece tokenizer with the special tokens [PAD] [UNK] [CLS] [SEP] [MASK]."""

    def __init__(
        self,
        vocab: Mapping[str, int] | PathLike,
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        chinese_chars: bool = True,
        model_max_length: int = 512,
    ) -> None:
        if isinstance(vocab, Mapping):
            self._id_to_token = _tokens_from_mapping(vocab)
            _check_specials(self._id_to_token, "vocab", InputError)
        elif isinstance(vocab, (str, os.PathLike)):
            self._id_to_token = _read_vocab_file(Path(vocab))
        else:
            raise InputError(f"vocab must be a dict or a path to vocab.txt, got {type(vocab).__name__}")
        self._vocab = {token: i for i, token in enumerate(self._id_to_token)}  # last line wins
        self.lowercase = _check_flag(lowercase, "lowercase")
        self.strip_accents = None if strip_accents is None else _check_flag(strip_accents, "strip_accents")
        self.chinese_chars = _check_flag(chinese_chars, "chinese_chars")
        self.model_max_length = _check_length(model_max_length, "model_max_length")
        self._engine = _build_engine(self._vocab, self.lowercase, self.strip_accents, self.chinese_chars)
        self._truncating: dict[int, _Engine] = {}
        self._id_objects: list[int] = []  # one int object per id, shared by the ids of long texts

    # ----------------------------------------------------------------- loading and saving

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        *,
        lowercase: bool = _UNSET,
        strip_accents: bool | None = _UNSET,
        chinese_chars: bool = _UNSET,
        model_max_length: int = _UNSET,
    ) -> Tokenizer:
        """Load from a checkpoint directory (vocab.txt, and tokenizer_config.json if present) or
        from a vocab.txt file. Keyword arguments override the config."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no such file or directory")
        settings: dict[str, Any] = {}
        if path.is_dir():
            vocab_path = path / VOCAB_FILE
            if not vocab_path.is_file():
                raise CheckpointError(f"{path}: no vocab.txt found (is this a BERT checkpoint directory?)")
            if (path / CONFIG_FILE).is_file():
                settings = _read_config(path / CONFIG_FILE)
        else:
            vocab_path = path
        overrides = dict(lowercase=lowercase, strip_accents=strip_accents, chinese_chars=chinese_chars,
                         model_max_length=model_max_length)
        settings.update({k: v for k, v in overrides.items() if v is not _UNSET})
        return cls(vocab_path, **settings)

    def save_pretrained(self, directory: PathLike) -> list[Path]:
        """Write vocab.txt, tokenizer_config.json, special_tokens_map.json and tokenizer.json
        (each atomically); transformers' ``AutoTokenizer.from_pretrained`` loads the result."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise InputError(f"{directory}: exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        specials = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS,
                    "mask_token": MASK}
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.chinese_chars,
            "do_basic_tokenize": True,
            "never_split": None,
            "model_max_length": self.model_max_length,
            **specials,
        }
        contents = {
            VOCAB_FILE: "".join(token + "\n" for token in self._id_to_token),
            CONFIG_FILE: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            SPECIAL_MAP_FILE: json.dumps(specials, indent=2) + "\n",
            ENGINE_FILE: self._engine.to_str(pretty=True),
        }
        return [write_text_atomically(directory / name, text) for name, text in contents.items()]

    # ----------------------------------------------------------------------------- training

    @classmethod
    def train(
        cls,
        files: PathLike | Iterable[PathLike],
        *,
        vocab_size: int = 30522,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        chinese_chars: bool = True,
        min_frequency: int = 2,
        limit_alphabet: int | None = None,
        show_progress: bool = True,
        model_max_length: int = 512,
    ) -> Tokenizer:
        """Train a WordPiece vocabulary (at most ``vocab_size`` tokens, [PAD] [UNK] [CLS] [SEP]
        [MASK] at ids 0-4) on UTF-8 text files.

        ``limit_alphabet`` caps the distinct characters kept (the most frequent ones); by default
        the whole vocabulary may be characters, which Chinese text, where every character is a
        token of its own, needs."""
        paths = _corpus_files(files)
        engine = _untrained_engine(lowercase, strip_accents, chinese_chars)
        trainer = _trainer(vocab_size, min_frequency, limit_alphabet, show_progress)
        try:
            engine.train([str(p) for p in paths], trainer)
        except Exception as e:  # the engine raises plain Exception, e.g. for non-UTF-8 files
            names = ", ".join(str(p) for p in paths)
            raise InputError(f"cannot train on {names}: {_one_line(e)}") from e
        return cls(engine.get_vocab(), lowercase=lowercase, strip_accents=strip_accents,
                   chinese_chars=chinese_chars, model_max_length=model_max_length)

    @classmethod
    def train_from_iterator(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int = 30522,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        chinese_chars: bool = True,
        min_frequency: int = 2,
        limit_alphabet: int | None = None,
        show_progress: bool = True,
        model_max_length: int = 512,
        length: int | None = None,
    ) -> Tokenizer:
        """Like ``train``, from an iterable of strings (``length``: its size, for the progress bar)."""
        engine = _untrained_engine(lowercase, strip_accents, chinese_chars)
        trainer = _trainer(vocab_size, min_frequency, limit_alphabet, show_progress)
        try:
            engine.train_from_iterator(_checked_strings(texts), trainer, length=length)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"cannot train on the given texts: {_one_line(e)}") from e
        return cls(engine.get_vocab(), lowercase=lowercase, strip_accents=strip_accents,
                   chinese_chars=chinese_chars, model_max_length=model_max_length)

    # ----------------------------------------------------------------------------- encoding

    def __call__(
        self,
        texts: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
    ) -> BatchEncoding:
        """Encode one text (un-batched lists) or a list of texts, optionally paired."""
        batched, inputs = _collect_inputs(texts, text_pair)
        limit = self.model_max_length if max_length is None else _check_length(max_length, "max_length")
        pad_mode = _padding_mode(padding)
        truncate = _truncation_flag(truncation)
        if return_tensors not in (None, "pt", "np"):
            raise InputError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        pair = text_pair is not None
        if truncate:
            inputs = self._capped_inputs(inputs, limit, pair)
        else:
            self._refuse_long(inputs, limit, pair)
        inputs, squeezes = _squeezed_inputs(inputs)
        encodings = _encode(self._truncating_engine(limit) if truncate else self._engine, inputs)
        if truncate:
            _warn_truncated(encodings, limit)
        else:
            _check_lengths(encodings, limit)
        _pad(encodings, pad_mode, limit, self.pad_token_id)
        return _assemble(encodings, batched, return_tensors, return_offsets_mapping, squeezes)

    def _capped_inputs(self, inputs: list, limit: int, pair: bool) -> list:
        needed = 3 if pair else 2
        if limit < needed:
            kind = "pairs" if pair else "single texts"
            raise InputError(f"max_length={limit} is too small: {kind} need {needed} special tokens")
        if limit >= _ENGINE_MAX_LENGTH:  # "no limit": nothing is cut, so all of it is needed
            return inputs
        return [self._capped(item, limit - needed) for item in inputs]

    def _capped(self, item: str | tuple[str, str], room: int) -> str | tuple[str, str]:
        """``item`` with each long text cut to a prefix that truncates to exactly what the whole text
        does with ``room`` pieces: more pieces than fit, and, for a pair of long texts, the one that
        is longer in all keeps being longer (longest-first truncation gives it the odd piece)."""
        size = _first_size(room)
        if isinstance(item, str):
            if len(item) <= size:
                return item
            text = _Counted(self._engine, item, size)
            text.grow(room + 1)
            return text.prefix
        if len(item[0]) <= size and len(item[1]) <= size:
            return item
        a, b = _Counted(self._engine, item[0], size), _Counted(self._engine, item[1], size)
        a.grow(room + 1)
        b.grow(room + 1)
        if room % 2 and a.count > room and b.count > room:  # each keeps room // 2, the longer one more
            if _first_longer(self._engine, item[0], item[1], size):
                a.grow(b.count + 1)
            else:
                b.grow(a.count)
        # Short prefixes, not the whole texts: the engine's overflow for a pair is every part of the
        # first text times every part of the second, quadratic in their lengths.
        return a.prefix, b.prefix

    def _refuse_long(self, inputs: list, limit: int, pair: bool) -> None:
        """Without truncation, a long text is refused as soon as its first pieces show it too long,
        before the engine tokenizes all of it."""
        if limit >= _ENGINE_MAX_LENGTH:
            return
        room = max(0, limit - (3 if pair else 2))
        size = _first_size(room)
        for i, item in enumerate(inputs):
            for text in (item if pair else (item,)):
                if len(text) > size:
                    counted = _Counted(self._engine, text, size)
                    counted.grow(room + 1)
                    if counted.count > room:
                        raise InputError(f"input {i} has more than max_length={limit} tokens; "
                                         "pass truncation=True")

    def _truncating_engine(self, limit: int) -> _Engine:
        engine = self._truncating.get(limit)
        if engine is None:
            engine = _Engine.from_str(self._engine.to_str())
            engine.enable_truncation(min(limit, _ENGINE_MAX_LENGTH), strategy="longest_first")
            for stale in list(self._truncating)[:-7]:  # keep a few max_lengths, not every one ever used
                self._truncating.pop(stale, None)
            self._truncating[limit] = engine
        return engine

    def pieces(self, texts: Sequence[str] | Sequence[Sequence[str]], *, split_into_words: bool = False,
               max_pieces: int | None = None) -> list[Pieces]:
        """Pieces of each text (or of each list of words), for callers that build their own windows.

        Nothing is added: fine-tuning featurizers place [CLS]/[SEP] themselves so that a long text
        can be split into overlapping windows instead of being truncated. ``max_pieces``: only the
        first pieces are wanted, so a text with more than that is tokenized only so far; its result
        is a prefix of its pieces (exactly the whole text's first ones), at least max_pieces + 1 long.
        """
        inputs = [list(t) for t in texts] if split_into_words else list(texts)
        for i, text in enumerate(inputs):
            if split_into_words:
                if not all(isinstance(w, str) for w in text):
                    raise InputError(f"texts[{i}] must be a list of strings")
            elif not isinstance(text, str):
                raise InputError(f"texts[{i}] is {_type_name(text)}, expected a string")
        if max_pieces is not None and (not _is_int(max_pieces) or max_pieces < 0):
            raise InputError(f"max_pieces must be a non-negative int, got {max_pieces!r}")
        size = CHUNK_CHARS if max_pieces is None else _first_size(max_pieces)
        out: list[Pieces | None] = [None] * len(inputs)
        short = [i for i, item in enumerate(inputs) if not _is_long(item, split_into_words, size)]
        if short:
            encodings = _encode(self._engine, [inputs[i] for i in short], is_pretokenized=split_into_words,
                                add_special_tokens=False)
            for i, e in zip(short, encodings):
                out[i] = Pieces(e.ids, e.offsets, [w if w is not None else -1 for w in e.word_ids])
        for i, item in enumerate(inputs):
            if out[i] is None:
                chunks = (_word_chunks(self._engine, item) if split_into_words
                          else _safe_chunks(self._engine, item, size))
                compact = _is_long(item, split_into_words, CHUNK_CHARS)
                out[i] = _joined(chunks, max_pieces, self._shared_ids() if compact else None)
        return out  # type: ignore[return-value]

    def piece_ids(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text's pieces, nothing added: ``pieces`` without offsets or word ids, as
        fast as the engine goes, for tokenizing a corpus a sentence at a time (data/shards.py).

        Each text goes to the engine whole, so texts should be sentence-sized strings (``pieces``
        takes texts of any length)."""
        encode = getattr(self._engine, "encode_batch_fast", self._engine.encode_batch)  # skips offsets
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def _shared_ids(self) -> list[int]:
        # The engine makes a new int object (28 bytes) for every id it returns; a long text's ids point
        # at these instead, so that its ids (and every window sliced from them) take 8 bytes a piece.
        if not self._id_objects:
            self._id_objects = list(range(len(self._id_to_token)))
        return self._id_objects

    def normalize(self, text: str) -> str:
        """``text`` as the vocabulary sees it: cleaned, lower-cased and accent-stripped as configured."""
        if not isinstance(text, str):
            raise InputError(f"text is {_type_name(text)}, expected a string")
        return self._engine.normalizer.normalize_str(text)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text``, without [CLS]/[SEP]."""
        if not isinstance(text, str):
            raise InputError(f"text is {_type_name(text)}, expected a string")
        return self._engine.encode(text, add_special_tokens=False).tokens

    # ----------------------------------------------------------------------------- decoding

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = True) -> str:
        """Text for a sequence of ids (a list, 1-D tensor or array); ## pieces are joined."""
        return self._engine.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch: Sequence[Sequence[int]] | Any,
                     skip_special_tokens: bool = True) -> list[str]:
        """``decode`` for each sequence of a batch (list of lists, or a 2-D tensor or array)."""
        rows = batch.tolist() if hasattr(batch, "tolist") else batch
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in rows]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """Token string(s) for an id or a list of ids."""
        if _is_int(ids):
            return self._id_to_token[self._check_ids([ids])[0]]
        return [self._id_to_token[i] for i in self._check_ids(ids)]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id(s) for a token or a list of tokens; unknown tokens give the [UNK] id."""
        unk = self.unk_token_id
        if isinstance(tokens, str):
            return self._vocab.get(tokens, unk)
        return [self._vocab.get(t, unk) for t in tokens]

    def _check_ids(self, ids: Any) -> list[int]:
        values = ids.tolist() if hasattr(ids, "tolist") else ids
        if _is_int(values):
            values = [values]
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise InputError(f"ids must be a list of ints, got {_type_name(ids)}")
        size = len(self._id_to_token)
        for i, value in enumerate(values):
            if not _is_int(value):
                raise InputError(f"ids[{i}] is {_type_name(value)}, expected an int "
                                 "(use batch_decode for batches)")
            if not 0 <= value < size:
                raise InputError(f"ids[{i}] = {value} is outside the vocabulary (0..{size - 1})")
        return [int(v) for v in values]

    # --------------------------------------------------------------------------- vocabulary

    def __len__(self) -> int:
        return len(self._id_to_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids (lines of vocab.txt)."""
        return len(self._id_to_token)

    @property
    def vocab(self) -> dict[str, int]:
        """A copy of the token -> id mapping."""
        return dict(self._vocab)

    @property
    def pad_token_id(self) -> int:
        return self._vocab[PAD]

    @property
    def unk_token_id(self) -> int:
        return self._vocab[UNK]

    @property
    def cls_token_id(self) -> int:
        return self._vocab[CLS]

    @property
    def sep_token_id(self) -> int:
        return self._vocab[SEP]

    @property
    def mask_token_id(self) -> int:
        return self._vocab[MASK]

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
                f"strip_accents={self.strip_accents}, chinese_chars={self.chinese_chars}, "
                f"model_max_length={self.model_max_length})")


# ------------------------------------------------------------------------------- the engine


def _normalizer(lowercase: bool, strip_accents: bool | None, chinese_chars: bool) -> normalizers.Normalizer:
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                      strip_accents=strip_accents, lowercase=lowercase)


def _build_engine(vocab: dict[str, int], lowercase: bool, strip_accents: bool | None,
                  chinese_chars: bool) -> _Engine:
    engine = _Engine(WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##",
                               max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    engine.normalizer = _normalizer(lowercase, strip_accents, chinese_chars)
    engine.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    engine.decoder = decoders.WordPiece(prefix="##")
    engine.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    engine.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return engine


def _untrained_engine(lowercase: bool, strip_accents: bool | None, chinese_chars: bool) -> _Engine:
    engine = _Engine(WordPiece(unk_token=UNK, continuing_subword_prefix="##",
                               max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    engine.normalizer = _normalizer(_check_flag(lowercase, "lowercase"), strip_accents,
                                    _check_flag(chinese_chars, "chinese_chars"))
    engine.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return engine


def _trainer(vocab_size: int, min_frequency: int, limit_alphabet: int | None,
             show_progress: bool) -> trainers.WordPieceTrainer:
    if not _is_int(vocab_size) or vocab_size <= len(SPECIAL_TOKENS):
        raise InputError(f"vocab_size must be an int above {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    if limit_alphabet is None:
        limit_alphabet = vocab_size - len(SPECIAL_TOKENS)
    for name, value in (("min_frequency", min_frequency), ("limit_alphabet", limit_alphabet)):
        if not _is_int(value) or value < 0:
            raise InputError(f"{name} must be a non-negative int, got {value!r}")
    return trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=bool(show_progress),
        special_tokens=list(SPECIAL_TOKENS), limit_alphabet=limit_alphabet,
        continuing_subword_prefix="##",
    )


def _encode(engine: _Engine, inputs: list, **options: Any) -> list[_EngineEncoding]:
    """Every text reaches the engine through here (the one place tests watch to see how much does)."""
    return engine.encode_batch(inputs, **options)


# ------------------------------------------------------------------------------ long texts


class _Chunk(NamedTuple):
    """Pieces of a part of a text, exactly as in the whole text's tokenization, up to ``end``."""

    end: int  # where the part ends (a character; a word, for pre-split words)
    ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int]
    shift: int  # to add to the offsets: where the part starts (0 for words: offsets are in the word)
    first_word: int  # to add to the word ids


def _first_size(pieces: int) -> int:
    """Characters to tokenize first when ``pieces`` pieces (and one more) are wanted."""
    return min(CHUNK_CHARS, (pieces + 1) * CHARS_PER_PIECE + 256)


def _is_long(item: str | list[str], split_into_words: bool, size: int) -> bool:
    if not split_into_words:
        return len(item) > size
    return len(item) > WORDS_PER_CHUNK or sum(len(w) for w in item) > size


def _safe_chunks(engine: _Engine, text: str, size: int) -> Iterator[_Chunk]:
    """Consecutive chunks of ``text``, each tokenized alone, whose pieces are exactly the whole text's.

    A chunk ends right before a space, tab or newline: nothing joins across whitespace (words split
    there, no special token holds one, and accents never move past it). A chunk with none (Chinese,
    one long word) ends before its last two words instead (``_word_break``). ``size`` characters are
    read at a time, growing to CHUNK_CHARS, and beyond while no place to cut is found; long runs of
    whitespace or control characters reach the engine as one character (``_squeeze``).
    """
    start, first_word = 0, 0
    while start < len(text):
        stop = min(len(text), start + size)
        cut = stop if stop == len(text) else _last_space(text, start, stop)
        part, squeeze = _squeeze(text[start:cut if cut > start else stop])
        encoding = _encode(engine, [part], add_special_tokens=False)[0]
        ids, offsets, word_ids = encoding.ids, encoding.offsets, encoding.word_ids
        if squeeze is not None:
            offsets = _unsqueezed(offsets, encoding.type_ids, (squeeze,))
        if cut <= start:
            keep = _word_break(word_ids)
            if keep is None:
                size *= 2  # a single long word (or nothing but removed characters): read on
                continue
            cut, next_word = start + offsets[keep][0], word_ids[keep]
            ids, offsets, word_ids = ids[:keep], offsets[:keep], word_ids[:keep]
        else:
            next_word = word_ids[-1] + 1 if word_ids else 0
        yield _Chunk(cut, ids, offsets, word_ids, start, first_word)
        start, first_word, size = cut, first_word + next_word, min(2 * size, CHUNK_CHARS)


def _last_space(text: str, start: int, stop: int) -> int:
    """The last position in (start, stop) that holds a space, tab or newline; -1 if none."""
    return max(text.rfind(c, start + 1, stop) for c in " \n\t\r")


def _word_break(word_ids: list[int]) -> int | None:
    """Index of the first piece of the second-to-last word, or None with fewer than three words.

    Cutting a text elsewhere than at whitespace changes at most its last two words: the last one
    may go on after the cut, and a special token cut in half ("[MA" of "[MASK]") leaves two words,
    "[" and "ma", of which only the first starts where the whole token does.
    """
    if not word_ids:
        return None
    last = len(word_ids) - 1
    while last > 0 and word_ids[last - 1] == word_ids[-1]:
        last -= 1
    if last == 0:
        return None
    second = last - 1
    while second > 0 and word_ids[second - 1] == word_ids[last - 1]:
        second -= 1
    return second if second > 0 else None


def _word_chunks(engine: _Engine, words: list[str]) -> Iterator[_Chunk]:
    """Pre-split words a batch at a time: each word is tokenized on its own anyway."""
    start = 0
    while start < len(words):
        end, chars = start, 0
        while end < len(words) and end - start < WORDS_PER_CHUNK and (chars < CHUNK_CHARS or end == start):
            chars += len(words[end])
            end += 1
        encoding = _encode(engine, [words[start:end]], is_pretokenized=True, add_special_tokens=False)[0]
        yield _Chunk(end, encoding.ids, encoding.offsets, encoding.word_ids, 0, start)
        start = end


def _joined(chunks: Iterator[_Chunk], max_pieces: int | None, shared_ids: list[int] | None) -> Pieces:
    """The chunks' pieces as one Pieces, stopping after max_pieces; compact (see Pieces) when given
    ``shared_ids``, the int objects to use for ids."""
    ids: list[int] = []
    flat, words = array("i"), array("i")
    for chunk in chunks:
        ids.extend(chunk.ids if shared_ids is None else map(shared_ids.__getitem__, chunk.ids))
        words.extend(w + chunk.first_word for w in chunk.word_ids)
        flat.extend(x + chunk.shift for span in chunk.offsets for x in span)
        if max_pieces is not None and len(ids) > max_pieces:
            break
    spans = Spans(flat)
    return Pieces(ids, spans, words) if shared_ids is not None else Pieces(ids, list(spans), words.tolist())


class _Counted:
    """A growing prefix of one text, cut where its pieces are the whole text's, and their count."""

    def __init__(self, engine: _Engine, text: str, size: int):
        self.text, self.end, self.count = text, 0, 0
        self._chunks = _safe_chunks(engine, text, size)

    @property
    def done(self) -> bool:
        return self.end == len(self.text)

    @property
    def prefix(self) -> str:
        return self.text[:self.end]

    def grow(self, want: int) -> None:
        """Read on until the prefix has at least ``want`` pieces, or is the whole text."""
        while self.count < want and not self.done:
            chunk = next(self._chunks)
            self.end, self.count = chunk.end, self.count + len(chunk.ids)


def _first_longer(engine: _Engine, first: str, second: str, size: int) -> bool:
    """Whether ``first`` has more pieces than ``second``: both counted a chunk at a time, reading on
    in the one behind until it is done or overtakes (time goes with the shorter text, memory stays
    a chunk)."""
    a, b = _Counted(engine, first, size), _Counted(engine, second, size)
    while not (a.done and b.done):
        if (a.done and b.count > a.count) or (b.done and a.count > b.count):
            break
        behind = a if not a.done and (b.done or a.count <= b.count) else b
        behind.grow(behind.count + 1)
    return a.count > b.count


# Runs of 64 or more spaces, tabs and newlines, or of ASCII control characters (which the normalizer
# drops): the engine needs ~50 bytes per character even of these, and one of each does the same.
_RUN = re.compile(r"[ \t\n\r]{64,}|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]{64,}")


class _Squeeze(NamedTuple):
    """Where a squeezed text lost characters: after each run's kept first character (``ends``, in
    the squeezed text), how many had gone by then (``removed``)."""

    ends: list[int]
    removed: list[int]


def _squeezed_inputs(inputs: list) -> tuple[list, list[tuple[_Squeeze | None, ...] | None]]:
    """Inputs with each long text's long runs cut to one character (the same pieces, and offsets
    that _unsqueezed maps back), and what was cut from each text of each input."""
    out, squeezes = [], []
    for item in inputs:
        texts = (item,) if isinstance(item, str) else item
        done = [_squeeze(t) if len(t) > CHUNK_CHARS else (t, None) for t in texts]
        out.append(done[0][0] if isinstance(item, str) else tuple(t for t, _ in done))
        squeezes.append(None if all(s is None for _, s in done) else tuple(s for _, s in done))
    return out, squeezes


def _squeeze(text: str) -> tuple[str, _Squeeze | None]:
    parts: list[str] = []
    ends: list[int] = []
    removed: list[int] = []
    last = 0
    for m in _RUN.finditer(text):
        parts.append(text[last:m.start() + 1])
        ends.append(m.start() + 1 - (removed[-1] if removed else 0))
        removed.append((removed[-1] if removed else 0) + m.end() - m.start() - 1)
        last = m.end()
    if not ends:
        return text, None
    parts.append(text[last:])
    return "".join(parts), _Squeeze(ends, removed)


def _unsqueezed(offsets: list[tuple[int, int]], type_ids: list[int],
                squeezes: tuple[_Squeeze | None, ...]) -> list[tuple[int, int]]:
    """Offsets into the squeezed texts (the first, or the second for token type 1) -> into the given ones."""

    def back(position: int, squeeze: _Squeeze) -> int:
        runs = bisect.bisect_right(squeeze.ends, position)  # runs that end at or before it
        return position + (squeeze.removed[runs - 1] if runs else 0)

    out = []
    for (start, end), kind in zip(offsets, type_ids):
        squeeze = squeezes[min(kind, len(squeezes) - 1)]
        out.append((start, end) if squeeze is None or end == 0 else (back(start, squeeze), back(end, squeeze)))
    return out


# ------------------------------------------------------------------------ vocabulary files


def _read_vocab_file(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file or directory") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected vocab.txt") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()
    tokens = [line.removesuffix("\r") for line in lines]
    if not tokens:
        raise CheckpointError(f"{path}: empty vocabulary")
    _check_specials(tokens, str(path), CheckpointError)
    return tokens


def _tokens_from_mapping(vocab: Mapping[str, int]) -> list[str]:
    tokens: list[str | None] = [None] * len(vocab)
    for token, index in vocab.items():
        if not isinstance(token, str) or "\n" in token:
            raise InputError(f"vocab token {token!r} must be a string without newlines")
        if not _is_int(index) or not 0 <= index < len(vocab) or tokens[index] is not None:
            raise InputError(f"vocab ids must be 0..{len(vocab) - 1}, each once; {token!r} has id {index!r}")
        tokens[index] = token
    return tokens  # type: ignore[return-value]


def _check_specials(tokens: list[str], source: str, error: type[Exception]) -> None:
    present = set(tokens)
    for token in SPECIAL_TOKENS:
        if token not in present:
            raise error(f"{source}: vocabulary has no {token} token (BERT needs {' '.join(SPECIAL_TOKENS)})")


def _read_config(path: Path) -> dict[str, Any]:
    """The tokenizer settings of a transformers tokenizer_config.json, as Tokenizer kwargs."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    settings: dict[str, Any] = {}
    for key, name, allowed in (("do_lower_case", "lowercase", (bool,)),
                               ("strip_accents", "strip_accents", (bool, type(None))),
                               ("tokenize_chinese_chars", "chinese_chars", (bool,))):
        if key in config:
            if not isinstance(config[key], allowed):
                choices = "true, false or null" if len(allowed) > 1 else "true or false"
                raise CheckpointError(f"{path}: {key} must be {choices}, got {config[key]!r}")
            settings[name] = config[key]
    length = config.get("model_max_length")
    if length is not None:
        if not _is_int(length) or length < 1:
            raise CheckpointError(f"{path}: model_max_length must be a positive integer, got {length!r}")
        settings["model_max_length"] = length
    return settings


def _corpus_files(files: PathLike | Iterable[PathLike]) -> list[Path]:
    items = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not items:
        raise InputError("no training files given")
    paths = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise InputError(f"training file {item!r} is {_type_name(item)}, expected a path")
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        paths.append(path)
    return paths


def _checked_strings(texts: Iterable[str]) -> Iterator[str]:
    if isinstance(texts, str):
        raise InputError("texts must be an iterable of strings, not a single string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is {_type_name(text)}, expected a string")
        yield text


# -------------------------------------------------------------------------- call arguments


def _collect_inputs(texts: Any, text_pair: Any) -> tuple[bool, list]:
    """(batched, engine inputs): strings, or (a, b) tuples for pairs."""
    batched, first = _as_batch(texts, "texts")
    if text_pair is None:
        return batched, first
    pair_batched, second = _as_batch(text_pair, "text_pair")
    if pair_batched != batched:
        raise InputError("texts and text_pair must both be strings or both be lists")
    if len(first) != len(second):
        raise InputError(f"texts has {len(first)} items but text_pair has {len(second)}")
    return batched, list(zip(first, second))


def _as_batch(texts: Any, name: str) -> tuple[bool, list[str]]:
    if isinstance(texts, str):
        return False, [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise InputError(f"{name} must be a string or a list of strings, got {_type_name(texts)}")
    if len(texts) == 0:
        raise InputError(f"{name} is an empty list; nothing to encode")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{name}[{i}] is {_type_name(text)}, expected a string")
    return True, list(texts)


def _padding_mode(padding: Any) -> str | None:
    modes = {False: None, "do_not_pad": None, True: "longest", "longest": "longest",
             "max_length": "max_length"}
    if not isinstance(padding, (bool, str)) or padding not in modes:
        raise InputError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
    return modes[padding]


def _truncation_flag(truncation: Any) -> bool:
    modes = {False: False, "do_not_truncate": False, True: True, "longest_first": True}
    if not isinstance(truncation, (bool, str)) or truncation not in modes:
        raise InputError(f"truncation must be False, True or 'longest_first', got {truncation!r}")
    return modes[truncation]


def _warn_truncated(encodings: list[_EngineEncoding], limit: int) -> None:
    truncated = sum(1 for e in encodings if e.overflowing)
    if truncated:
        warnings.warn(f"{truncated} of {len(encodings)} inputs truncated to max_length={limit} tokens",
                      stacklevel=3)  # at the caller of Tokenizer.__call__


def _check_lengths(encodings: list[_EngineEncoding], limit: int) -> None:
    for i, encoding in enumerate(encodings):
        if len(encoding.ids) > limit:
            raise InputError(f"input {i} has {len(encoding.ids)} tokens, more than max_length={limit}; "
                             "pass truncation=True")


def _pad(encodings: list[_EngineEncoding], mode: str | None, limit: int, pad_id: int) -> None:
    if mode is None:
        return
    if mode == "max_length" and limit > _ENGINE_MAX_LENGTH:
        raise InputError(f"padding='max_length' needs a max_length (model_max_length is {limit})")
    length = limit if mode == "max_length" else max(len(e.ids) for e in encodings)
    for encoding in encodings:
        encoding.pad(length, direction="right", pad_id=pad_id, pad_type_id=0, pad_token=PAD)


def _assemble(encodings: list[_EngineEncoding], batched: bool, return_tensors: str | None,
              offsets: bool, squeezes: list[tuple[_Squeeze | None, ...] | None]) -> BatchEncoding:
    columns: dict[str, list] = {
        "input_ids": [e.ids for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
    }
    if offsets:
        columns["offset_mapping"] = [e.offsets if s is None else _unsqueezed(e.offsets, e.type_ids, s)
                                     for e, s in zip(encodings, squeezes)]
    if return_tensors is None:
        return BatchEncoding({k: v if batched else v[0] for k, v in columns.items()})
    lengths = sorted({len(row) for row in columns["input_ids"]})
    if len(lengths) > 1:
        raise InputError(f"return_tensors={return_tensors!r} needs equal lengths, got {lengths[0]} to "
                         f"{lengths[-1]} tokens; pass padding=True")
    if return_tensors == "pt":
        import torch

        return BatchEncoding({k: torch.tensor(v, dtype=torch.long) for k, v in columns.items()})
    import numpy as np

    return BatchEncoding({k: np.asarray(v, dtype=np.int64) for k, v in columns.items()})


# ---------------------------------------------------------------------------------- checks


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return value


def _check_length(value: Any, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
