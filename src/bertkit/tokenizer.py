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
"""

from __future__ import annotations

import json
import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Encoding as _EngineEncoding
from tokenizers import Tokenizer as _Engine
from tokenizers.models import WordPiece

from bertkit.errors import CheckpointError, InputError
from bertkit.fileio import write_text_atomically

__all__ = ["BatchEncoding", "Pieces", "Tokenizer"]

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # also the id order (0..4) of trained vocabularies
MAX_INPUT_CHARS_PER_WORD = 100
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
ENGINE_FILE = "tokenizer.json"
_ENGINE_MAX_LENGTH = 10**9  # model_max_length may be huge: transformers writes 1e30 for 'no limit'
_UNSET: Any = object()

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
    """The WordPiece pieces of one text, without special tokens or truncation."""

    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each piece in its text (in its word, for split words)
    word_ids: list[int]  # index of the word each piece belongs to


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
        if truncate:
            encodings = self._encode_truncated(inputs, limit, pair=text_pair is not None)
        else:
            encodings = self._engine.encode_batch(inputs)
            _check_lengths(encodings, limit)
        _pad(encodings, pad_mode, limit, self.pad_token_id)
        return _assemble(encodings, batched, return_tensors, return_offsets_mapping)

    def _encode_truncated(self, inputs: list, limit: int, pair: bool) -> list[_EngineEncoding]:
        needed = 3 if pair else 2
        if limit < needed:
            kind = "pairs" if pair else "single texts"
            raise InputError(f"max_length={limit} is too small: {kind} need {needed} special tokens")
        encodings = self._truncating_engine(limit).encode_batch(inputs)
        truncated = sum(1 for e in encodings if e.overflowing)
        if truncated:
            warnings.warn(f"{truncated} of {len(encodings)} inputs truncated to max_length={limit} tokens",
                          stacklevel=3)
        return encodings

    def _truncating_engine(self, limit: int) -> _Engine:
        engine = self._truncating.get(limit)
        if engine is None:
            engine = _Engine.from_str(self._engine.to_str())
            engine.enable_truncation(min(limit, _ENGINE_MAX_LENGTH), strategy="longest_first")
            for stale in list(self._truncating)[:-7]:  # keep a few max_lengths, not every one ever used
                self._truncating.pop(stale, None)
            self._truncating[limit] = engine
        return engine

    def pieces(self, texts: Sequence[str] | Sequence[Sequence[str]], *, split_into_words: bool = False) -> list[Pieces]:
        """Pieces of each text (or of each list of words), for callers that build their own windows.

        Nothing is added or cut: fine-tuning featurizers place [CLS]/[SEP] themselves so that a long
        text can be split into overlapping windows instead of being truncated.
        """
        inputs = [list(t) for t in texts] if split_into_words else list(texts)
        for i, text in enumerate(inputs):
            if split_into_words:
                if not all(isinstance(w, str) for w in text):
                    raise InputError(f"texts[{i}] must be a list of strings")
            elif not isinstance(text, str):
                raise InputError(f"texts[{i}] is {_type_name(text)}, expected a string")
        encodings = self._engine.encode_batch(inputs, is_pretokenized=split_into_words, add_special_tokens=False)
        return [Pieces(e.ids, e.offsets, [w if w is not None else -1 for w in e.word_ids]) for e in encodings]

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
              offsets: bool) -> BatchEncoding:
    columns: dict[str, list] = {
        "input_ids": [e.ids for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
    }
    if offsets:
        columns["offset_mapping"] = [e.offsets for e in encodings]
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
