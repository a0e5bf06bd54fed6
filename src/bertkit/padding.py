"""Ragged token lists -> padded batches: the one place that pads on the right to the longest row.

    pad(rows, value)                         (B, T) int64, each row followed by `value`
    pad_inputs(rows, pad_id, token_types=)   input_ids, attention_mask[, token_type_ids]: what the model takes
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def pad(rows: Sequence[Sequence[int]], value: int = 0) -> Tensor:
    """Ragged rows (lists or 1-d arrays) -> (B, T) int64 tensor, each row followed by `value` up to the
    longest row's length T."""
    T = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), T), value, dtype=np.int64)  # (B, T)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def pad_inputs(rows: Sequence[Sequence[int]], pad_id: int, *,
               token_types: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
    """Ragged token ids -> the model's inputs, (B, T) each: input_ids padded with pad_id, attention_mask
    (1 on the rows' own tokens, 0 on padding) and, when `token_types` are given, token_type_ids padded
    with 0."""
    batch = {"input_ids": pad(rows, pad_id), "attention_mask": pad([[1] * len(r) for r in rows], 0)}
    if token_types is not None:
        batch["token_type_ids"] = pad(token_types, 0)
    return batch
