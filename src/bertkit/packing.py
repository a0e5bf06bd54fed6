"""Sequence packing: a batch's examples laid out several to a row, and how much padding a batch computes.

The packed layout is the model's own input format (model.py), nothing more than an attention_mask
that numbers the examples of a row instead of marking them 1:

    input_ids       (P, T)  example 1's tokens, example 2's, ..., then padding
    attention_mask  (P, T)  1 on example 1, 2 on example 2, ..., k on the k-th, 0 on padding
    token_type_ids  (P, T)  and any other per-token key (token labels): packed like input_ids
    labels, ...     (S, ...) per-example keys (class labels, next_sentence_label): one per example,
                            in the packed order — row after row, in each row example 1, 2, ...

P packed rows, S examples. A mask of 0s and 1s is the special case of one example per row, so an
unpacked batch is a packed one already. The encoder restarts positions at 0 for every example,
keeps attention within each example (a (P, 1, T, T) mask over each row) and returns one pooled
vector per example (S, C) in the packed order; tests/test_packing.py checks that this equals running
the examples unpacked. Packed rows compute their few padding slots; an unpacked batch runs unpadded
(no padding in the linear layers, but attention padded to the longest row): bench/packing.py.

`--pack` changes the layout of a batch, never what it holds: a batch still has --batch-size
examples (the same ones, drawn as without packing), so the steps, the losses and a resumed run are
those of the unpacked run. Rows are filled first-fit-decreasing, a pure function of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bertkit.errors import InputError

MASK = "attention_mask"


# ---- the packing algorithm ----------------------------------------------------------------------------


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows holding at most `capacity` tokens each: longest first,
    each into the first row with room left (a new row when none has). Ties keep the given order, so
    the rows are a pure function of the lengths. An item longer than `capacity` gets a row of its own.

    The first row with room is found in a max-tree over the rows' free space: O(n log n)."""
    if capacity < 1:
        raise InputError(f"packing capacity must be at least 1 token, got {capacity}")
    n = len(lengths)
    order = sorted(range(n), key=lambda i: -int(lengths[i]))  # stable: ties in the given order
    tree = _FreeSpace(max(n, 1))
    rows: list[list[int]] = []
    for i in order:
        size = int(lengths[i])
        r = tree.first_with(size)
        if r is None:  # no open row has room: open one
            r = len(rows)
            rows.append([])
            tree.set(r, max(capacity - size, 0))
        else:
            tree.set(r, tree.free(r) - size)
        rows[r].append(i)
    return rows


class _FreeSpace:
    """Free space of rows 0..n-1 in a max segment tree (unopened rows have -1): the first row with
    at least `size` free in O(log n)."""

    def __init__(self, n: int):
        self.size = 1 << max(n - 1, 0).bit_length()
        self.tree = [-1] * (2 * self.size)

    def free(self, row: int) -> int:
        return self.tree[self.size + row]

    def set(self, row: int, free: int) -> None:
        i = self.size + row
        self.tree[i] = free
        while i > 1:
            i //= 2
            self.tree[i] = max(self.tree[2 * i], self.tree[2 * i + 1])

    def first_with(self, size: int) -> int | None:
        if self.tree[1] < size:
            return None
        i = 1
        while i < self.size:
            i = 2 * i if self.tree[2 * i] >= size else 2 * i + 1
        return i - self.size


# ---- packing a padded batch ---------------------------------------------------------------------------


def pack_batch(batch: Mapping[str, Tensor], *, row_length: int, token_keys: Sequence[str],
               pads: Mapping[str, int]) -> dict[str, Tensor]:
    """A padded batch (B examples, one per row, attention_mask of 0s and 1s) -> the packed layout
    above, rows of at most max(row_length, longest example) tokens filled first-fit-decreasing.

    token_keys: the (B, T) keys packed token by token (the attention_mask is always); pads: their
    padding values (0 when not named). Every other key is per example and comes back reordered."""
    mask = batch[MASK]  # (B, T)
    B, T = mask.shape
    lengths = mask.bool().sum(1)  # (B,)
    rows = first_fit_decreasing(lengths.tolist(), max(row_length, int(lengths.max()) if B else 0))
    plan = _placement(rows, lengths.numpy())
    width = int(plan.fill.max()) if B else 0
    src = mask.bool().reshape(-1).nonzero().squeeze(1)[plan.token_source]  # (R,) flat b * T + t
    dst = torch.from_numpy(plan.token_row * width + plan.token_offset)  # (R,) flat p * width + t
    out = {MASK: _scatter(torch.from_numpy(plan.token_example_number), dst, len(rows), width, 0)}
    for key in token_keys:
        values = batch[key].reshape(-1)[src]  # (R,)
        out[key] = _scatter(values, dst, len(rows), width, pads.get(key, 0))
    order = torch.from_numpy(plan.order)
    for key, value in batch.items():
        if key not in out:
            out[key] = value[order]  # (S, ...)
    return out


@dataclass(frozen=True)
class _Placement:
    order: np.ndarray  # (S,) the examples in packed order
    fill: np.ndarray  # (P,) tokens per packed row
    token_source: np.ndarray  # (R,) each packed token's place among the batch's real tokens
    token_row: np.ndarray  # (R,) its packed row
    token_offset: np.ndarray  # (R,) its position in that row
    token_example_number: np.ndarray  # (R,) 1..k: which example of its row it belongs to


def _placement(rows: list[list[int]], lengths: np.ndarray) -> _Placement:
    """Where every real token of the batch goes: row after row, each row's examples back to back."""
    order = np.array([b for row in rows for b in row], dtype=np.int64)
    row_of = np.repeat(np.arange(len(rows)), [len(row) for row in rows])  # (S,)
    number = np.concatenate([np.arange(1, len(row) + 1) for row in rows]) if rows else np.zeros(0, np.int64)
    sizes = lengths[order].astype(np.int64)  # (S,)
    starts_in_batch = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # (B,)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)  # (S,) start among the R
    within = np.arange(int(sizes.sum())) - np.repeat(first, sizes)  # (R,) position in its example
    row_start = first - first[_row_first(row_of)]  # (S,) where each example starts in its row
    fill = np.bincount(row_of, weights=sizes, minlength=len(rows)).astype(np.int64)
    return _Placement(order, fill, np.repeat(starts_in_batch[order], sizes) + within, np.repeat(row_of, sizes),
                      np.repeat(row_start, sizes) + within, np.repeat(number, sizes))


def _row_first(row_of: np.ndarray) -> np.ndarray:
    """(S,) for each example, the index (in packed order) of the first example of its row."""
    is_first = np.ones(len(row_of), dtype=bool)
    is_first[1:] = row_of[1:] != row_of[:-1]
    return np.maximum.accumulate(np.where(is_first, np.arange(len(row_of)), 0))


def _scatter(values: Tensor, dst: Tensor, rows: int, width: int, fill: int) -> Tensor:
    out = torch.full((rows * width,), fill, dtype=values.dtype)
    return out.index_copy_(0, dst, values).view(rows, width)


class PackedBatches:
    """A batch source (train.BatchSource) whose batches are `source`'s, packed (pack_batch): the same
    examples in the same batches, so epochs, steps and resuming are the source's."""

    def __init__(self, source, *, row_length: int, token_keys: Sequence[str], pads: Mapping[str, int]):
        self.source, self.row_length = source, row_length
        self.token_keys, self.pads = tuple(token_keys), dict(pads)

    def num_batches(self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> int:
        return self.source.num_batches(epoch, batch_size, rank=rank, world_size=world_size)

    def batch(self, epoch: int, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1):
        return self.pack(self.source.batch(epoch, index, batch_size, rank=rank, world_size=world_size))

    def pack(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return pack_batch(batch, row_length=self.row_length, token_keys=self.token_keys, pads=self.pads)


# ---- the padding report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Padding:
    """Token slots of some batches: all of them (rows × length, what the padded path computes) and
    the real tokens among them."""

    slots: int
    real: int

    @property
    def share(self) -> float:
        return 1 - self.real / self.slots if self.slots else 0.0


def batch_padding(batch: Mapping[str, Tensor]) -> Padding:
    mask = batch[MASK]
    return Padding(mask.numel(), int(mask.bool().sum()))


def padding_report(source, batch_size: int, *, row_length: int, max_batches: int = 50) -> str:
    """One line on the padding in the first `max_batches` training batches, unpacked and packed
    (`source` a batch source, or a PackedBatches: then packed comes first). This counts the slots of
    the batches as laid out: what packed rows compute, and the padded path (--compile); unpacked
    batches otherwise run unpadded, with padding in attention only."""
    packing = isinstance(source, PackedBatches)
    inner = source.source if packing else source
    n = min(inner.num_batches(0, batch_size), max_batches)
    plain, packed = Padding(0, 0), Padding(0, 0)
    for i in range(n):
        batch = inner.batch(0, i, batch_size)
        plain = _plus(plain, batch_padding(batch))
        packed = _plus(packed, packed_padding(batch[MASK].bool().sum(1).tolist(), row_length))
    if packing:
        return f"padding: {packed.share:.0%} of token slots, packed (unpacked: {plain.share:.0%}; first {n} batches)"
    return f"padding: {plain.share:.0%} of token slots (packed with --pack: {packed.share:.0%}; first {n} batches)"


def packed_padding(lengths: Sequence[int], row_length: int) -> Padding:
    """The slots of these examples packed as pack_batch packs them, without building the batch."""
    if not lengths:
        return Padding(0, 0)
    rows = first_fit_decreasing(lengths, max(row_length, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    return Padding(len(rows) * width, sum(lengths))


def _plus(a: Padding, b: Padding) -> Padding:
    return Padding(a.slots + b.slots, a.real + b.real)
