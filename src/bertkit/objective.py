"""Losses as sums with their counts, one function per head family, and the one objective that
turns a task's losses into what train.fit needs.

A loss function returns a LossSum: the loss summed over the labelled items, and how many they
are. A head reports its mean, total / count (what transformers' heads return); the training loop
divides the sums by the count over the whole accumulation window and all processes (torchtitan's
rule), so accumulation and multi-process runs give the update of one big batch. A count depends
on the labels alone: train.fit needs the counts of every micro-batch before the first forward.

The heads and the tasks both import these functions (the tasks never import the heads), so each
loss is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.labels import IGNORE

Batch = dict[str, Tensor]


# ---- losses: one function per head family ------------------------------------------------------------


class LossSum(NamedTuple):
    total: Tensor  # the loss summed over the labelled items (carries the gradient)
    count: Tensor  # how many items the sum is over (0-dim)

    def mean(self) -> Tensor:
        """The mean a head reports: NaN when nothing is labelled, as transformers' heads give."""
        return self.total / self.count


def labelled(labels: Tensor) -> Tensor:
    """How many labels take part in a cross-entropy: those that are not IGNORE."""
    return (labels != IGNORE).sum()


def cross_entropy_loss(logits: Tensor, labels: Tensor) -> LossSum:
    """Cross-entropy over the labelled items (labels == IGNORE take no part): tokens for MLM and
    tagging; examples for NSP, single-label classification and multiple choice."""
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                            reduction="sum")
    return LossSum(total, labelled(labels))


def infer_problem_type(num_labels: int, labels: Tensor) -> str:
    """What other BERT implementations assume when config.problem_type is not set."""
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def classification_count(labels: Tensor, problem_type: str) -> Tensor:
    """Examples, or example × label for several labels at once; single labels of IGNORE take no part."""
    if problem_type == "single_label_classification":
        return labelled(labels)
    return labels.new_tensor(labels.numel())


def classification_loss(logits: Tensor, labels: Tensor, problem_type: str | None) -> LossSum:
    """Cross-entropy (one class), BCE on sigmoids (several labels at once) or MSE (regression)."""
    problem_type = problem_type or infer_problem_type(logits.shape[-1], labels)
    if problem_type == "single_label_classification":
        return cross_entropy_loss(logits, labels)
    if problem_type == "regression":
        targets = labels.to(logits.dtype).view(logits.shape[:-1])
        total = F.mse_loss(logits.squeeze(-1), targets, reduction="sum")
    elif problem_type == "multi_label_classification":
        total = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum")
    else:
        raise ValueError(f"unknown problem_type {problem_type!r}")
    return LossSum(total, classification_count(labels, problem_type))


def positions_inside(positions: Tensor, T: int) -> Tensor:
    """How many answer positions fall inside a sequence of T tokens; the others take no part in
    the loss (a negative position counts as 0, as in transformers)."""
    return (positions < T).sum()


def span_loss(logits: Tensor, positions: Tensor) -> LossSum:
    """Cross-entropy of a start (or end) position over the T tokens (logits (B, T))."""
    T = logits.shape[1]
    positions = positions.view(-1).clamp(0, T)  # T marks "outside", e.g. an answer cut off by truncation
    total = F.cross_entropy(logits, positions, ignore_index=T, reduction="sum")
    return LossSum(total, positions_inside(positions, T))


def answer_loss(start_logits: Tensor, end_logits: Tensor, start_positions: Tensor,
                end_positions: Tensor) -> LossSum:
    """(start + end cross-entropy) / 2, summed over the answers (paper §4.2). Counted per answer:
    the mean of the two ends' counts, which differ only when one end lies outside the sequence."""
    start, end = span_loss(start_logits, start_positions), span_loss(end_logits, end_positions)
    return LossSum((start.total + end.total) / 2, (start.count + end.count) / 2)


def answer_count(start_positions: Tensor, end_positions: Tensor, T: int) -> Tensor:
    """answer_loss's count, from the positions alone."""
    return (positions_inside(start_positions, T) + positions_inside(end_positions, T)) / 2


def mask_choices(logits: Tensor, choice_mask: Tensor) -> Tensor:
    """Logits (B, N) with padding choices (choice_mask 0) at the lowest finite value: softmax gives
    them 0 and cross-entropy over the real choices is unchanged (no -inf, so no NaN in gradients)."""
    return logits.masked_fill(choice_mask == 0, torch.finfo(logits.dtype).min)


def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """How many labelled items the highest logit gets right (a metric: no gradient)."""
    return ((logits.argmax(-1) == labels) & (labels != IGNORE)).sum().detach()


# ---- the objective train.fit optimises -----------------------------------------------------------------


class StepSums(NamedTuple):
    losses: dict[str, Tensor]  # per loss term: sum over labelled items (with grad)
    metrics: dict[str, Tensor]  # per metric: a sum (no grad), e.g. correct predictions


class Step(NamedTuple):
    """What a task computes from a batch and its model."""

    losses: dict[str, LossSum]  # per loss term
    metrics: dict[str, Tensor]  # per metric: a sum, e.g. correct predictions


class Mean(NamedTuple):
    """A logged number: a sum (`loss_<term>`, or a metric such as "correct") over a term's count."""

    of: str
    over: str
    then: Callable[[float], float] | None = None  # applied to the mean (perplexity = exp of the MLM loss)


class Objective(nn.Module):
    """The objective train.fit optimises, for every head. A task gives

      step(model, batch) -> Step     its loss terms and metric sums, from the model's outputs;
      counts {term: batch -> count}  each term's count from the batch's labels (the count of that
                                     term's LossSum), known before the model runs;
      report {name: Mean}            what to log besides "loss", the sum of the terms' mean losses.

    It holds the model as `self.model`, so train.fit saves and optimises the model alone.
    """

    def __init__(self, model: nn.Module, step: Callable[[nn.Module, Batch], Step],
                 counts: dict[str, Callable[[Batch], Tensor]], report: dict[str, Mean]):
        super().__init__()
        self.model = model
        self.step, self.term_counts, self.report = step, counts, report

    def counts(self, batch: Batch) -> dict[str, float]:
        return {term: float(count(batch)) for term, count in self.term_counts.items()}

    def forward(self, batch: Batch) -> StepSums:
        losses, metrics = self.step(self.model, batch)
        return StepSums({term: loss.total for term, loss in losses.items()},
                        {name: value.detach() for name, value in metrics.items()})

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Means of the summed losses and metrics (train.fit names a term's sums loss_<term> and
        n_<term>); a term with nothing counted divides by 1."""

        def mean(of: str, over: str) -> float:
            return sums.get(of, 0.0) / max(sums.get(f"n_{over}", 0.0), 1.0)

        out = {"loss": sum(mean(f"loss_{term}", term) for term in self.term_counts)}
        for name, m in self.report.items():
            value = mean(m.of, m.over)
            out[name] = value if m.then is None else m.then(value)
        return out
