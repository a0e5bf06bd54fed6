"""Sentence embeddings as sentence-transformers (ST) makes them, from either folder layout.

The model is a `SentenceEncoder` (sentence.py): a plain BERT checkpoint gives normalised mean
pooling (what all-MiniLM-L6-v2 was trained with); an ST folder gives what its files say — pooling
modes, Dense layers, normalisation, max_seq_length (256 for all-MiniLM-L6-v2: longer texts are cut
there, as ST cuts them), lower-casing and prompts. Texts are batched by length so that little
compute goes to padding, and the vectors come back in the order the texts were given.

The model computes in fp32 (bf16 on a GPU that has it), or, with precision="int8", with its
matrix multiplies in int8 (bertkit.quantize; CPU only). After the model, per call: Matryoshka
truncation to the first `dimensions` components, then the output precision of ST's
`quantize_embeddings` (float32, int8, uint8, binary, ubinary: `output_precision`, ST's `precision`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bertkit.compiled import compiles_inference
from bertkit.devices import (
    inference_autocast,
    inference_precision,
    model_device,
    release_free_memory,
    resolve_device,
    to_device,
    to_numpy,
)
from bertkit.errors import InputError
from bertkit.model import BertModel
from bertkit.models import DEFAULT_MODEL_PACKAGE, default_model_dir, resolve_model  # noqa: F401 (their old home)
from bertkit.options import at_least, one_of, plural
from bertkit.padding import pad_inputs
from bertkit.quantize import set_inference_precision
from bertkit.sentence import (
    SentenceEncoder,
    SentenceSettings,
    check_layer,
    load_tokenizer,
    mean_tokens,
    parse_pooling,
    read_settings,
)
from bertkit.settings import EMBED_PRECISIONS, check_inference_precision
from bertkit.tokenizer import Tokenizer

PRECISIONS = EMBED_PRECISIONS  # float32, int8, uint8, binary, ubinary: sentence-transformers' names
TEXTS_AT_ONCE = 8192
"""Texts tokenized together (then sorted by length into batches): memory stays flat on long inputs."""


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, C), (B, T) -> (B, C): the average of the hidden states of real (non-padding) tokens."""
    return mean_tokens(hidden, attention_mask)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to keep padding small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None, *, renormalize: bool) -> np.ndarray:
    """(N, D) -> (N, dimensions): the first components (Matryoshka), rescaled to unit length when
    `renormalize` (the vectors were normalised: a cut unit vector is not one)."""
    if dimensions is None or dimensions == vectors.shape[-1]:
        return vectors
    cut = vectors[..., :dimensions]  # (N, d)
    if not renormalize:
        return np.ascontiguousarray(cut)
    return (cut / np.maximum(np.linalg.norm(cut, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def quantize(vectors: np.ndarray, output_precision: str, *, ranges: np.ndarray | None = None) -> np.ndarray:
    """(N, D) float32 -> ST's `quantize_embeddings(vectors, precision, ranges)`, bit for bit.

    int8/uint8: each component's [min, max] (`ranges`, shape (2, D)) cut into 255 equal steps; without
    `ranges` they are the min and max over these vectors themselves, as ST does without calibration
    embeddings (so the codes depend on the set embedded together, and one vector alone is refused).
    binary/ubinary: one bit per component (> 0), 8 to a byte; binary is ubinary - 128 as int8."""
    precision = output_precision
    one_of("output_precision", precision, PRECISIONS)
    if precision == "float32":
        return vectors.astype(np.float32, copy=False)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)  # (N, ceil(D / 8)) uint8
        return packed if precision == "ubinary" else (packed - 128).astype(np.int8)
    if vectors.shape[0] == 0:  # nothing to calibrate
        return np.zeros(vectors.shape, dtype=np.uint8 if precision == "uint8" else np.int8)
    if ranges is None:
        if vectors.shape[0] < 2:
            raise InputError(f"--output-precision {precision} needs at least 2 texts (the ranges of each component "
                             "come from the texts embedded together), or, in Python, ranges= from calibration texts")
        ranges = np.vstack([vectors.min(axis=0), vectors.max(axis=0)])  # (2, D)
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, vectors.shape[-1]):
        raise InputError(f"ranges must have shape (2, {vectors.shape[-1]}), got {ranges.shape}")
    steps = (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    codes = np.clip(np.floor((vectors - ranges[0]) / steps), 0, 255)  # (N, D) in 0..255
    return codes.astype(np.uint8) if precision == "uint8" else (codes - 128).astype(np.int8)


class Embedder:
    """A sentence encoder and its tokenizer, turning texts into sentence vectors."""

    def __init__(self, model: SentenceEncoder | BertModel, tokenizer: Tokenizer, *,
                 device: str | torch.device | None = None, precision: str | None = None):
        """device: where to run the model ("auto", "cpu", "cuda", "cuda:1", "mps"); precision: how it
        computes (auto, fp32, bf16, int8: see devices.set_inference_precision). None leaves either as
        it is (the server shares one encoder between its embedder and its predictions)."""
        if isinstance(model, BertModel):  # a bare encoder: bertkit's plain-BERT rule, mean + normalise
            model = SentenceEncoder(model.config, encoder=model)
        if device is not None:
            model = model.to(resolve_device(device))
        model.eval()
        if precision is None:  # as its encoder was set (a classifier's, shared by the server)
            precision = inference_precision(model.bert)
        self.model = set_inference_precision(model, precision, tokenizer)
        self.device = model_device(self.model)
        self.tokenizer = tokenizer
        self._prompt_lengths: dict[str, int] = {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, pooling: str | Sequence[str] | None = None,
                        normalize: bool | None = None, max_seq_length: int | None = None,
                        device: str | torch.device = "auto", precision: str = "auto") -> Embedder:
        """A plain BERT checkpoint or a sentence-transformers folder; a model name; None: the built-in model.
        The keyword arguments override what the folder's files say; device: where the model runs
        (auto: a GPU if there is one); precision: how it computes (auto, fp32, bf16, int8)."""
        path = resolve_model(path)  # a directory, a model name, or None: the built-in model
        model = SentenceEncoder.from_pretrained(path, pooling=pooling, normalize=normalize,
                                                max_seq_length=max_seq_length)
        return cls(model, load_tokenizer(model.source_dir or path), device=device, precision=precision)

    @classmethod
    def around(cls, encoder: BertModel, tokenizer: Tokenizer, directory: str | os.PathLike) -> Embedder:
        """The embedder of the folder `encoder` was loaded from, sharing that encoder (the server's
        one encoder for embedding and predicting); the folder's ST files give the settings."""
        settings, _ = read_settings(directory)
        if settings.dense:  # Dense weights live beside the encoder: load the whole model, on its device
            return cls.from_pretrained(directory, device=model_device(encoder), precision=inference_precision(encoder))
        return cls(SentenceEncoder(encoder.config, settings, encoder=encoder), tokenizer)

    @property
    def settings(self) -> SentenceSettings:
        return self.model.settings

    @property
    def dim(self) -> int:
        """The size of the vectors the model makes (before any `dimensions` cut)."""
        return self.model.dim

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool | None = None,
        progress: bool = False,
        pooling: str | Sequence[str] | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        layer: int | None = None,
        dimensions: int | None = None,
        output_precision: str = "float32",
        ranges: np.ndarray | None = None,
    ) -> np.ndarray:
        """Texts -> an array (N, D); a single string gives (D,).

        normalize: L2-normalise (None: as the model's files say). pooling: other modes than the
        model's, e.g. "cls" or "mean+max". prompt: text put before every input; prompt_name: one of
        the model's prompts (its default_prompt_name applies when neither is given). layer: pool
        this layer's hidden states (-2: the second-to-last). dimensions: keep the first components
        (Matryoshka), renormalised to unit length when the vectors are normalised (as `bertkit
        serve` does; ST's truncate_dim does not renormalise). output_precision: float32, int8, uint8,
        binary, ubinary, exactly as ST's quantize_embeddings (int8/uint8: see `quantize`).
        """
        options = dict(batch_size=batch_size, max_length=max_length, normalize=normalize, progress=progress,
                       pooling=pooling, prompt=prompt, prompt_name=prompt_name, layer=layer,
                       dimensions=dimensions, output_precision=output_precision, ranges=ranges)
        if isinstance(texts, str):
            return self([texts], **options)[0]
        texts = list(texts)
        del options["output_precision"], options["ranges"]
        one_of("output_precision", output_precision, PRECISIONS)
        options["pooling"] = pooling = None if pooling is None else parse_pooling(pooling)
        out = np.zeros((len(texts), self._width(pooling, dimensions)), dtype=np.float32)
        done = 0
        for _, part in self.stream(texts, total=len(texts), **options):
            out[done:done + len(part)] = part
            done += len(part)
        return quantize(out, output_precision, ranges=ranges)

    def stream(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool | None = None,
        progress: bool = False,
        total: int | None = None,
        pooling: str | Sequence[str] | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        layer: int | None = None,
        dimensions: int | None = None,
        output_precision: str = "float32",
        ranges: np.ndarray | None = None,
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """`texts` (any iterable, read lazily) and their vectors, TEXTS_AT_ONCE texts at a time, in
        order: neither the texts nor the vectors are held, however many there are (what `bertkit embed`
        uses). The options are checked when it is called, the texts read as the slices are asked for.
        total: the number of texts, for the progress bar. The options are `__call__`'s; int8/uint8
        output needs `ranges` here (without them ST takes each component's range from the whole set)."""
        at_least("batch_size", batch_size, 1)
        one_of("output_precision", output_precision, PRECISIONS)
        if output_precision in ("int8", "uint8") and ranges is None:
            raise InputError(f"output_precision={output_precision!r} takes each component's range from all the "
                             "vectors: call the embedder on the whole list, or give ranges=")
        if pooling is not None:
            pooling = parse_pooling(pooling)
        if layer is not None:
            check_layer(layer, self.model.config.num_hidden_layers)
        self._width(pooling, dimensions)  # checks dimensions
        # checked above, now; the slices come from the generator below, as they are asked for
        return self._slices(texts, batch_size=batch_size, max_length=max_length, normalize=normalize,
                            progress=progress, total=total, pooling=pooling, prompt=prompt, prompt_name=prompt_name,
                            layer=layer, dimensions=dimensions, output_precision=output_precision, ranges=ranges)

    def _slices(self, texts: Iterable[str], *, batch_size: int, max_length: int | None, normalize: bool | None,
                progress: bool, total: int | None, pooling: Sequence[str] | None, prompt: str | None,
                prompt_name: str | None, layer: int | None, dimensions: int | None, output_precision: str,
                ranges: np.ndarray | None) -> Iterator[tuple[list[str], np.ndarray]]:
        renormalize = self.settings.normalize if normalize is None else normalize
        bar = _progress(progress, total)
        try:
            # a slice of texts at a time: the token ids of a million texts are never all held at once
            for part in chunks(texts, TEXTS_AT_ONCE):
                rows, prompt_length = self.encode(part, prompt=prompt, prompt_name=prompt_name, max_length=max_length)
                vectors = np.zeros((len(rows), self._width(pooling, None)), dtype=np.float32)
                for idx in length_batches([len(ids) for ids in rows], batch_size):
                    vectors[idx] = self._embed_batch([rows[i] for i in idx], normalize, prompt_length=prompt_length,
                                                     layer=layer, pooling=pooling)
                    if bar is not None:
                        bar.update(len(idx))
                del rows
                # the slice's freed memory back to the OS: else, fragmented, it grows the process slowly.
                # Once a slice, not once a batch: re-faulting the pages made every batch 19% slower.
                release_free_memory()
                vectors = truncate_dimensions(vectors, dimensions, renormalize=renormalize)
                yield part, quantize(vectors, output_precision, ranges=ranges)
        finally:
            if bar is not None:
                bar.close()

    def _width(self, pooling: Sequence[str] | None, dimensions: int | None) -> int:
        """The width of the vectors a call makes: the model's, or that of other pooling modes, or `dimensions`."""
        width = self.dim if pooling is None or self.model.dense else self.model.config.hidden_size * len(pooling)
        if dimensions is None:
            return width
        at_least("dimensions", dimensions, 1)
        if dimensions > width:
            raise InputError(f"--dimensions {dimensions} is more than the model's {width}")
        return dimensions

    def encode(self, texts: list[str], *, prompt: str | None = None, prompt_name: str | None = None,
               max_length: int | None = None) -> tuple[list[list[int]], int]:
        """Token ids of the texts as the model reads them (prompt put before, lower-cased if the model
        says so, cut at the model's length), and the number of leading tokens that are [CLS] and prompt."""
        limit = self._limit(max_length)
        chosen = self.prompt(prompt, prompt_name)
        # Truncation reads a long text only as far as its first `limit` tokens: a 50 MB line costs
        # what its first few kilobytes do (the tokenizer's long-text handling), not ~10 GB.
        rows = self.tokenizer(self.prepare_texts(texts, chosen), truncation=True, max_length=limit)["input_ids"]
        return rows, self.prompt_length(chosen, limit)

    def prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str:
        """The prompt a call uses: `prompt`, the model's prompt named `prompt_name`, or its default ('' for none)."""
        prompts = self.settings.prompts
        if prompt is not None and prompt_name is not None:
            raise InputError("give --prompt or --prompt-name, not both")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InputError(f"--prompt must be a string, got {type(prompt).__name__}")
            return prompt
        if prompt_name is not None:
            if prompt_name not in prompts:
                known = (f"its prompts are {', '.join(repr(p) for p in prompts)}" if prompts else
                         "it has none (config_sentence_transformers.json names them); --prompt gives one")
                raise InputError(f"--prompt-name {prompt_name!r} is not one of the model's prompts: {known}")
            return prompts[prompt_name]
        if self.settings.default_prompt_name is not None:
            return prompts.get(self.settings.default_prompt_name, "")
        return ""

    def prepare_texts(self, texts: Sequence[str], prompt: str = "") -> list[str]:
        """The strings the tokenizer gets: prompt + text, lower-cased when the model's
        sentence_bert_config.json says do_lower_case (ST lower-cases in front of the tokenizer)."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text {i} is {type(text).__name__}, expected a string")
        joined = [prompt + t for t in texts] if prompt else list(texts)
        return [t.lower() for t in joined] if self.settings.do_lower_case else joined

    def prompt_length(self, prompt: str, limit: int | None = None) -> int:
        """[CLS] and the prompt's tokens: what ST leaves out of pooling with include_prompt=False
        (the prompt tokenized alone, its closing [SEP] not counted); 0 without a prompt."""
        if not prompt:
            return 0
        limit = self._limit(None) if limit is None else limit
        key = f"{limit}:{prompt}"
        if key not in self._prompt_lengths:
            ids = self.tokenizer(self.prepare_texts([prompt]), truncation=True, max_length=limit)["input_ids"][0]
            self._prompt_lengths[key] = len(ids) - (1 if ids and ids[-1] == self.tokenizer.sep_token_id else 0)
        return self._prompt_lengths[key]

    def _limit(self, max_length: int | None) -> int:
        """The tokens a text keeps: max_length, else the model's max_seq_length (sentence_bert_config.json),
        else what the tokenizer and the positions allow."""
        positions = self.model.config.max_position_embeddings
        if max_length is None:
            if self.settings.max_seq_length is not None:
                return min(self.settings.max_seq_length, positions)
            return min(self.tokenizer.model_max_length, positions)
        at_least("max_length", max_length, 3)
        if max_length > positions:
            raise InputError(f"--max-length {max_length} exceeds the model's max_position_embeddings={positions}")
        return max_length

    @torch.inference_mode()
    def _embed_batch(self, rows: list[list[int]], normalize: bool | None = None, *, prompt_length: int | None = None,
                     layer: int | None = None, pooling: Sequence[str] | None = None) -> np.ndarray:
        """Token ids of a batch -> (B, D) float32. prompt_length None: the default prompt's (the server's case)."""
        if prompt_length is None:
            prompt_length = self.prompt_length(self.prompt())
        batch = to_device(pad_inputs(rows, self.tokenizer.pad_token_id), self.device)  # (B, T) each
        with inference_autocast(self.model):
            vectors = self.model(**batch, layer=layer, pooling=pooling, prompt_length=prompt_length,
                                 normalize=normalize)  # (B, D)
        return to_numpy(vectors)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Successive lists of `size` items (the last one shorter), read from `items` as needed."""
    it = iter(items)
    while part := list(itertools.islice(it, size)):
        yield part


def _progress(enabled: bool, total_texts: int | None):
    """A progress bar counting texts, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_texts, desc="embedding", unit="text")


def cached_embedder(path: str | None, device: str = "auto", precision: str = "auto") -> Embedder:
    """Embedder.from_pretrained, loaded once per model, device, precision and compile_inference setting."""
    return _cached_as(path, device, precision, compiles_inference())


@lru_cache(maxsize=4)
def _cached_as(path: str | None, device: str, precision: str, compiled: bool) -> Embedder:
    return Embedder.from_pretrained(path, device=device, precision=precision)  # reads the compile setting itself


def embed(
    texts: str | Sequence[str],
    model: str | os.PathLike | Embedder | None = None,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool | None = None,
    progress: bool = False,
    pooling: str | Sequence[str] | None = None,
    prompt: str | None = None,
    prompt_name: str | None = None,
    layer: int | None = None,
    dimensions: int | None = None,
    output_precision: str = "float32",
    ranges: np.ndarray | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> np.ndarray:
    """Sentence vectors as a numpy array (N, D), as sentence-transformers makes them with the same model.

    `model` is a checkpoint directory or model name (loaded once and cached), an Embedder, or None
    for the built-in default, all-MiniLM-L6-v2. device: where a loaded model runs; precision: how it
    computes (auto, fp32, bf16, or int8: 1.2-1.4x fp32 on a CPU, vectors within cosine 0.99). An Embedder
    runs where and as it is. The other options are `Embedder.__call__`'s.
    """
    check_inference_precision(precision)
    if isinstance(model, Embedder):
        if precision != "auto" and precision != inference_precision(model.model):
            raise InputError(f"precision={precision!r}, but the Embedder given runs in "
                             f"{inference_precision(model.model)}: make it with Embedder.from_pretrained(..., "
                             f"precision={precision!r})")
        embedder = model
    else:
        embedder = cached_embedder(None if model is None else str(model), str(device), precision)
    return embedder(texts, batch_size=batch_size, max_length=max_length, normalize=normalize, progress=progress,
                    pooling=pooling, prompt=prompt, prompt_name=prompt_name, layer=layer, dimensions=dimensions,
                    output_precision=output_precision, ranges=ranges)


# ---- a similarity table (`bertkit similarity`, the demo) -------------------------------------------

EXAMPLE_TEXTS = (
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply today.",
    "Shares dropped as investors worried about inflation.",
    "北京是中国的首都。",
)


def similarity_table(texts: Sequence[str] | None = None, model: str | os.PathLike | None = None, *,
                     device: str | torch.device = "auto", precision: str = "auto") -> str:
    """The cosine similarity of every pair of texts (EXAMPLE_TEXTS if none), as lines to print,
    under a line naming the model (None: the built-in default) and the vectors' dimension."""
    texts = list(texts) if texts else list(EXAMPLE_TEXTS)
    embedder = Embedder.from_pretrained(model, device=device, precision=precision)
    vectors = embedder(texts, normalize=True)  # (N, D), L2-normalised: dot products are cosines
    header = (f"model: {model or 'all-MiniLM-L6-v2 (built-in default)'}, {plural(len(texts), 'text')}, "
              f"dimension {embedder.dim}")
    return header + "\n" + format_similarities(texts, vectors @ vectors.T)


def format_similarities(texts: Sequence[str], sims: np.ndarray) -> str:
    """(N, N) similarities -> a table: column numbers, then one row per text, ending with the text."""
    n = len(texts)
    width = len(str(n - 1)) + 1  # room for "[i]"
    lines = ["cosine similarity:", " " * (width + 1) + "".join(f"{j:>7}" for j in range(n))]
    for i, text in enumerate(texts):
        lines.append(f"[{i}]".rjust(width + 1) + "".join(f"{sims[i, j]:7.3f}" for j in range(n)) + f"   {text}")
    return "\n".join(lines)
