"""Contrastive losses for sentence embeddings, as LossSums (objective.py): in-batch negatives
(MultipleNegativesRankingLoss, optionally symmetric, with hard negatives), Matryoshka dimensions,
cosine similarity for scored pairs, negatives gathered across processes, and the gradient cache
that lets a batch be far larger than memory allows.

Each loss is a sum over this process's anchors (or pairs) with its count, so the training loop's
rule (divide by the count over all processes and micro-batches) gives the update of one big batch.
The semantics are sentence-transformers' (ST), checked against it in tests/tasks/test_embed.py.

Letters: B anchors of this process, M its hard negatives, D embedding width, S texts of a batch
(B + B + M), G rows gathered from all processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bertkit.distributed import World, gather_rows
from bertkit.errors import InputError
from bertkit.objective import LossSum

Inputs = dict[str, Tensor]


def cosine_scores(a: Tensor, b: Tensor) -> Tensor:
    """(N, D), (K, D) -> (N, K) cosine similarities (ST's cos_sim)."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def ranking_loss(anchors: Tensor, positives: Tensor, negatives: Tensor, *, scale: float = 20.0,
                 symmetric: bool = False, world: World | None = None) -> LossSum:
    """MultipleNegativesRankingLoss (InfoNCE, van den Oord et al. 2018), summed over this process's anchors.

    Anchor i is scored (cosine × scale) against every positive and hard negative of the batch —
    of every process when `world` has several, gathered with their gradients — and the loss is
    the cross-entropy of its own positive. symmetric adds ST's backward term (positive i against
    every anchor) and averages the two, as ST's MultipleNegativesSymmetricRankingLoss
    (directions query_to_doc + doc_to_query, one softmax per direction).
    anchors, positives: (B, D); negatives: (M, D), M may be 0."""
    world = world or World()
    all_positives, offset = gather_rows(positives, world)  # (G_B, D)
    all_negatives, _ = gather_rows(negatives, world)  # (G_M, D)
    candidates = torch.cat([all_positives, all_negatives])  # (G_B + G_M, D)
    labels = torch.arange(anchors.shape[0], device=anchors.device) + offset  # (B,)
    scores = scale * cosine_scores(anchors, candidates)  # (B, G_B + G_M)
    total = F.cross_entropy(scores.float(), labels, reduction="sum")
    if symmetric:
        all_anchors, _ = gather_rows(anchors, world)  # (G_B, D)
        backward = scale * cosine_scores(positives, all_anchors)  # (B, G_B)
        total = (total + F.cross_entropy(backward.float(), labels, reduction="sum")) / 2
    return LossSum(total, torch.tensor(anchors.shape[0], device=anchors.device))


def cosine_loss(a: Tensor, b: Tensor, scores: Tensor) -> LossSum:
    """ST's CosineSimilarityLoss: squared error between cos(a_i, b_i) and the gold score, summed
    over the B pairs. a, b: (B, D); scores: (B,)."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1)  # (B,)
    return LossSum(((cos - scores.float()) ** 2).sum(), torch.tensor(a.shape[0], device=a.device))


def matryoshka(loss: Callable[[Tensor], LossSum], embeddings: Tensor, dims: Sequence[int]) -> LossSum:
    """Matryoshka representation learning (Kusupati et al. 2022; ST's MatryoshkaLoss, weights 1):
    the loss summed over the first d components of every vector for each d of `dims`. The losses
    compare by cosine, so each truncation is renormalised. embeddings: (S, D)."""
    D = embeddings.shape[-1]
    too_big = [d for d in dims if d > D]
    if too_big:
        raise InputError(f"--matryoshka-dims {','.join(map(str, too_big))}: more than the model's {D} dimensions")
    parts = [loss(embeddings[..., :d]) for d in dims]
    return LossSum(sum(p.total for p in parts), parts[0].count)


# ---- the gradient cache -------------------------------------------------------------------------------


def chunks(inputs: Inputs, size: int) -> list[Inputs]:
    """Rows of (S, T) inputs in pieces of `size`, each cut to its own longest text (right padding)."""
    out = []
    for start in range(0, inputs["input_ids"].shape[0], size):
        piece = {k: v[start:start + size] for k, v in inputs.items()}
        T = int(piece["attention_mask"].sum(1).max())
        out.append({k: v[:, :T] for k, v in piece.items()})
    return out


class _RngState:
    """The random state one mini-batch's forward starts from (CPU, and its CUDA device), so the
    second forward draws the same dropout masks (GradCache's RandContext)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class _Replay(torch.autograd.Function):
    """Carries the loss's value forward; its backward runs `replay` with the gradient that reaches
    the loss (train.fit's 1 / global count), so the cached gradients get the loop's scaling."""

    @staticmethod
    def forward(ctx, value: Tensor, anchor: Tensor, replay: Callable[[Tensor], None]) -> Tensor:  # type: ignore[override]
        ctx.replay = replay
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ctx.replay(grad)
        return None, None, None


def cached_loss(embed: Callable[[Inputs], Tensor], inputs: Inputs, mini_batch_size: int,
                loss: Callable[[Tensor], LossSum]) -> LossSum:
    """`loss(embed(inputs))` with the memory of `mini_batch_size` texts: GradCache (Gao et al. 2021;
    ST's CachedMultipleNegativesRankingLoss).

    1. embed the S texts in mini-batches without a graph, noting each one's random state;
    2. compute the loss of the (S, D) embeddings and its gradient with respect to them;
    3. in backward: re-embed each mini-batch with a graph (same random state, so the same dropout;
       same autocast) and backpropagate the cached gradient through it, one mini-batch at a time.
    The gradients of the parameters are those of the plain loss; the returned LossSum carries the
    value, and its backward does step 3."""
    pieces = chunks(inputs, mini_batch_size)
    device = inputs["input_ids"].device
    autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
    states, parts = [], []
    with torch.no_grad():
        for piece in pieces:
            states.append(_RngState(device))
            parts.append(embed(piece))  # (s, D)
    reps = torch.cat(parts).detach().requires_grad_(True)  # (S, D)
    with torch.enable_grad():
        value = loss(reps)
        (grad,) = torch.autograd.grad(value.total, reps)  # (S, D)
    sizes = [p.shape[0] for p in parts]

    def replay(scale: Tensor) -> None:
        for piece, state, g in zip(pieces, states, grad.split(sizes)):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad(), \
                    torch.autocast(device.type, dtype=autocast[1], enabled=autocast[0]):
                state.restore()
                out = embed(piece)  # (s, D)
            torch.autograd.backward(out, g.to(out.dtype) * scale)

    return LossSum(_Replay.apply(value.total.detach(), reps, replay), value.count)
