"""Sentence embeddings: mean of the last hidden states over real tokens, L2-normalised.

Mean pooling is what sentence-transformers models such as all-MiniLM-L6-v2 were trained with
(their 1_Pooling/config.json says pooling_mode_mean_tokens). Texts are batched by length so that
little compute goes to padding, and the vectors come back in the order the texts were given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from bertkit.errors import InputError
from bertkit.model import BertModel
from bertkit.models import DEFAULT_MODEL_PACKAGE, default_model_dir, resolve_model  # noqa: F401 (their old home)
from bertkit.options import at_least, plural
from bertkit.padding import pad_inputs
from bertkit.tokenizer import Tokenizer


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, C), (B, T) -> (B, C): the average of the hidden states of real (non-padding) tokens."""
    m = attention_mask[..., None].to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to keep padding small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class Embedder:
    """A model and its tokenizer, turning texts into normalised sentence vectors."""

    def __init__(self, model: BertModel, tokenizer: Tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> Embedder:
        path = resolve_model(path)  # a directory, a model name, or None: the built-in model
        return cls(BertModel.from_pretrained(path), Tokenizer.from_pretrained(path))

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Texts -> float32 array (N, C); a single string gives (C,)."""
        if isinstance(texts, str):
            return self([texts], batch_size=batch_size, max_length=max_length, normalize=normalize)[0]
        texts = list(texts)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        limit = self._limit(max_length)
        # Truncation reads a long text only as far as its first `limit` tokens: a 50 MB line costs
        # what its first few kilobytes do (the tokenizer's long-text handling), not ~10 GB.
        enc = self.tokenizer(texts, truncation=True, max_length=limit)
        batches = length_batches([len(ids) for ids in enc["input_ids"]], batch_size)
        for idx in _progress(batches, progress, total_texts=len(texts)):
            out[idx] = self._embed_batch([enc["input_ids"][i] for i in idx], normalize)
        return out

    def _limit(self, max_length: int | None) -> int:
        """The tokens a text keeps: max_length, at most what the model's positions allow."""
        model_limit = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        if max_length is None:
            return model_limit
        at_least("max_length", max_length, 3)
        if max_length > self.model.config.max_position_embeddings:
            raise InputError(f"--max-length {max_length} exceeds the model's max_position_embeddings="
                             f"{self.model.config.max_position_embeddings}")
        return max_length

    @torch.inference_mode()
    def _embed_batch(self, rows: list[list[int]], normalize: bool) -> np.ndarray:
        batch = pad_inputs(rows, self.tokenizer.pad_token_id)  # input_ids, attention_mask: (B, T) each
        hidden = self.model(**batch).last_hidden_state  # (B, T, C)
        vectors = mean_pool(hidden, batch["attention_mask"])  # (B, C)
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.float().numpy()


def _progress(batches, enabled: bool, *, total_texts: int):
    if not enabled:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc=f"embedding {plural(total_texts, 'text')}", unit="batch")


@lru_cache(maxsize=4)
def _cached_embedder(path: str | None) -> Embedder:
    return Embedder.from_pretrained(path)


def embed(
    texts: str | Sequence[str],
    model: str | os.PathLike | Embedder | None = None,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Normalised mean-pooled sentence vectors as a numpy array (N, C).

    `model` is a checkpoint directory (loaded once and cached), an Embedder, or None for the
    built-in default, all-MiniLM-L6-v2.
    """
    embedder = model if isinstance(model, Embedder) else _cached_embedder(None if model is None else str(model))
    return embedder(texts, batch_size=batch_size, max_length=max_length, normalize=normalize, progress=progress)


# ---- a similarity table (`bertkit similarity`, the demo) -------------------------------------------

EXAMPLE_TEXTS = (
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply today.",
    "Shares dropped as investors worried about inflation.",
    "北京是中国的首都。",
)


def similarity_table(texts: Sequence[str] | None = None, model: str | os.PathLike | None = None) -> str:
    """The cosine similarity of every pair of texts (EXAMPLE_TEXTS if none), as lines to print,
    under a line naming the model (None: the built-in default) and the vectors' dimension."""
    texts = list(texts) if texts else list(EXAMPLE_TEXTS)
    embedder = Embedder.from_pretrained(model)
    vectors = embedder(texts)  # (N, C), L2-normalised
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
