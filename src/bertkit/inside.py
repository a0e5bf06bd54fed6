"""A look inside the model: contextual vectors per word piece, and attention maps.

token_vectors is the "word2vec replacement": a static word vector gives "bank" one vector whatever
the sentence; BERT gives every occurrence its own, read from the hidden states of the layer asked
for, so "river bank" and "bank account" get two different vectors. Each piece keeps its character
span in the original text, so a vector can be traced back to the word it came from.

attention_map draws the attention weights of one layer of the encoder (BertModel's
output_attentions): one head as a heat map with the word pieces on both axes, or a grid of every
head of the layer, for people learning how BERT reads a sentence (Clark et al. 2019, "What Does
BERT Look At?", found heads that attend to the previous token, to [SEP], to a verb's object...).

Layer indexes count as Python does, negative ones from the end, but over different lists:
token_vectors reads hidden_states, the embeddings' output (0) then every layer's (1..L), so -1 is
the last layer and -2 the one before (bert-as-service's default); attention_map reads the L layers'
attention weights (0..L-1), so 0 is the first layer's attention and -1 the last one's.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from bertkit import fileio
from bertkit.devices import model_device, to_device, to_numpy
from bertkit.embedding import Embedder, length_batches
from bertkit.errors import InputError
from bertkit.model import BertModel
from bertkit.options import at_least
from bertkit.padding import pad_inputs
from bertkit.sentence import check_layer
from bertkit.settings import check_figure_path
from bertkit.tokenizer import Tokenizer

ModelArg = str | os.PathLike | Embedder | None


class TokenVector(NamedTuple):
    """One word piece of a text and its contextual vector.

    start, end: the piece's characters in the original text, `text[start:end]` (the whole word's
    span for a word the vocabulary has no piece for, [UNK]); None for the [CLS] and [SEP] the
    tokenizer adds, which stand for no characters."""

    token: str  # the vocabulary's piece, "##" marking a piece that continues a word
    id: int
    start: int | None
    end: int | None
    vector: np.ndarray  # (C,) float32


# ---- loading ------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _cached(path: str | None, device: str = "auto") -> Embedder:
    return Embedder.from_pretrained(path, device=device)


def load(model: ModelArg, device: str = "auto") -> Embedder:
    """`model` as an Embedder: a checkpoint directory or model name, in the plain or the
    sentence-transformers layout (loaded once and cached), an Embedder, or None for the built-in
    all-MiniLM-L6-v2. Its encoder (`.model.bert`) and tokenizer are what this module reads, and its
    length limit (a sentence-transformers folder's max_seq_length, 256 for all-MiniLM-L6-v2) applies,
    as sentence-transformers' own token embeddings are cut there. device: where a loaded model runs
    (an Embedder runs where it is)."""
    return model if isinstance(model, Embedder) else _cached(None if model is None else str(model), str(device))


def check_index(name: str, index: int, count: int, what: str) -> int:
    """`index` into `count` things as Python indexes (negative from the end) -> 0..count-1; out of
    range is one line naming the valid range."""
    if isinstance(index, bool) or not isinstance(index, int) or not -count <= index < count:
        raise InputError(f"--{name} {index} is out of range: the model has {count} {what} "
                         f"(0..{count - 1}, or -{count}..-1 from the end)")
    return index % count


# ---- token vectors ----------------------------------------------------------------------------------


def token_vectors(
    texts: str | Sequence[str],
    model: ModelArg = None,
    *,
    layer: int = -1,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = False,
    device: str = "auto",
) -> list[list[TokenVector]]:
    """Contextual vectors of every word piece of every text, [CLS] and [SEP] included.

    layer indexes the hidden states: 0 the embeddings' output, 1..L the layers', -1 the last (the
    model's last_hidden_state), -2 the one before. normalize=True scales each vector to unit length
    (then a dot product is the cosine). A single string gives a list with one entry. device: as `load`.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is {type(text).__name__}, expected a string")
    at_least("batch_size", batch_size, 1)
    embedder = load(model, device)
    encoder, tokenizer = embedder.model.bert.eval(), embedder.tokenizer
    index = check_layer(layer, encoder.config.num_hidden_layers)
    # The texts as they are, no prompt and no lower-casing in front of the tokenizer, so that the
    # offsets point into them (an uncased vocabulary's tokenizer lower-cases by itself).
    enc = tokenizer(texts, truncation=True, max_length=embedder._limit(max_length), return_offsets_mapping=True)
    out: list[list[TokenVector]] = [[] for _ in texts]
    for idx in length_batches([len(ids) for ids in enc["input_ids"]], batch_size):
        rows = [enc["input_ids"][i] for i in idx]
        hidden = _hidden_rows(encoder, rows, tokenizer.pad_token_id, index, normalize)
        for i, vectors in zip(idx, hidden):
            out[i] = _pieces(tokenizer, enc["input_ids"][i], enc["offset_mapping"][i], vectors)
    return out


@torch.inference_mode()
def _hidden_rows(encoder: BertModel, rows: list[list[int]], pad_id: int, index: int,
                 normalize: bool) -> list[np.ndarray]:
    """The hidden states `index` of each row, its real tokens only: (T_i, C) float32 each."""
    batch = to_device(pad_inputs(rows, pad_id), model_device(encoder))  # input_ids, attention_mask: (B, T) each
    hidden = encoder(**batch, output_hidden_states=True).hidden_states[index]  # (B, T, C)
    if normalize:
        hidden = torch.nn.functional.normalize(hidden, dim=-1)
    hidden = to_numpy(hidden)
    return [hidden[b, : len(r)] for b, r in enumerate(rows)]


def _pieces(tokenizer: Tokenizer, ids: list[int], offsets: Sequence[tuple[int, int]],
            vectors: np.ndarray) -> list[TokenVector]:
    tokens = tokenizer.convert_ids_to_tokens(ids)
    # The tokenizer gives (0, 0) to the specials it adds; a piece of the text always spans a character.
    return [TokenVector(token, i, *((s, e) if e > s else (None, None)), vector)
            for token, i, (s, e), vector in zip(tokens, ids, offsets, vectors)]


def token_records(text: str, pieces: list[TokenVector], *, digits: int = 7) -> dict:
    """One text's pieces as a JSON-ready record: `bertkit embed --tokens` writes one per line."""
    return {"text": text, "tokens": [
        {"token": p.token, "id": p.id, "start": p.start, "end": p.end,
         "embedding": [round(float(x), digits) for x in p.vector]} for p in pieces]}


# ---- attention maps ---------------------------------------------------------------------------------


class Attention(NamedTuple):
    """One layer's attention over one text (or pair): who attends to whom."""

    tokens: list[str]  # the T word pieces, [CLS] and [SEP]s included
    weights: np.ndarray  # (H, T, T): row = the attending piece (query), column = the piece attended (key)
    layer: int  # 0..L-1
    layers: int  # L


@torch.inference_mode()
def attention_weights(text: str, model: ModelArg = None, *, layer: int = -1, pair: str | None = None,
                      max_length: int | None = None, device: str = "auto") -> Attention:
    """The attention weights of every head of one layer (0..L-1, or negative from the end) for `text`
    (and `pair`, the second segment of a sentence pair)."""
    for name, value in (("text", text), ("pair", pair)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{name} is {type(value).__name__}, expected a string")
        if value is not None and not value.strip():
            raise InputError(f"the {name} is empty: give a sentence to draw its attention")
    embedder = load(model, device)
    encoder, tokenizer = embedder.model.bert.eval(), embedder.tokenizer
    index = check_index("layer", layer, encoder.config.num_hidden_layers, "layers")
    batch = tokenizer(text, pair, truncation=True, max_length=embedder._limit(max_length), return_tensors="pt")
    on_device = to_device({k: batch[k] for k in ("input_ids", "token_type_ids")}, model_device(encoder))
    attentions = encoder(**on_device, output_attentions=True).attentions  # L × (1, H, T, T)
    return Attention(tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()),
                     to_numpy(attentions[index][0]), index, len(attentions))


def attention_map(text: str, model: ModelArg = None, layer: int = -1, head: int | None = None, *,
                  out: str | os.PathLike, pair: str | None = None, max_length: int | None = None,
                  device: str = "auto") -> Path:
    """Draw one head of one layer (or, head=None, every head of the layer in a grid) to `out`
    (.png, .pdf or .svg), written atomically; returns the path."""
    path = check_figure_path("out", out)
    fileio.check_output_file(path)
    att = attention_weights(text, model, layer=layer, pair=pair, max_length=max_length, device=device)
    heads = None if head is None else [check_index("head", head, att.weights.shape[0], "attention heads")]
    figure = draw(att, heads)
    with _quiet_missing_glyphs(), fileio.atomic_write(path, "wb") as f:
        figure.savefig(f, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    return path


def draw(att: Attention, heads: list[int] | None = None):
    """A matplotlib Figure: one heat map per head (all of them if None), queries down, keys across.

    A bare Figure rather than pyplot: no window, no global backend, so it works headless and leaves
    a notebook's own matplotlib settings alone."""
    from matplotlib.figure import Figure

    heads = list(range(att.weights.shape[0])) if heads is None else heads
    T = len(att.tokens)
    cols = 1 if len(heads) == 1 else min(4, len(heads))
    rows = -(-len(heads) // cols)
    cell = 0.22 if len(heads) == 1 else 0.12  # inches per token
    side = min(max(3.0, T * cell + 1.2), 14.0 if len(heads) == 1 else 5.0)
    figure = Figure(figsize=(side * cols + 1.0, side * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    font = max(4.0, min(10.0, 260 / max(T, 1))) if len(heads) == 1 else max(3.0, min(7.0, 110 / max(T, 1)))
    for ax, h in zip(axes.flat, heads):
        image = ax.imshow(att.weights[h], cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {h}", fontsize=10)
        ax.set_xticks(range(T), att.tokens, rotation=90, fontsize=font)
        ax.set_yticks(range(T), att.tokens, fontsize=font)
    for ax in axes[:, 0]:
        ax.set_ylabel("attending piece (query)", fontsize=9)
    for ax in axes[-1, :]:
        ax.set_xlabel("attended piece (key)", fontsize=9)
    for ax in list(axes.flat)[len(heads):]:
        ax.set_axis_off()
    figure.suptitle(f"attention of layer {att.layer} (layers 0..{att.layers - 1})", fontsize=11)
    figure.colorbar(image, ax=axes, shrink=0.6 if len(heads) == 1 else 0.3, label="attention weight")
    return figure


@contextlib.contextmanager
def _quiet_missing_glyphs():
    """A font without CJK glyphs draws boxes for Chinese pieces, and warns once per glyph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        yield
