"""Validation during a run: the evaluation rows, the best model, early stopping.

Every metric bertkit reports has a known direction (higher or lower is better); the validation row
with the best value of --best-metric is the best evaluation, its model is kept in OUT/best and
becomes the final model, and --patience evaluations without a better one stop the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from bertkit import distributed
from bertkit.checkpoint import restore_weights
from bertkit.distributed import World
from bertkit.errors import BertkitError
from bertkit.metrics_log import MetricsLog, say
from bertkit.options import lower_is_better
from bertkit.runs import BEST, TrainState
from bertkit.settings import TrainConfig


def best_evaluation(history: list[dict], metric: str) -> dict | None:
    """The validation row with the best value of `metric` (the earliest among equals)."""
    rows = [r for r in history if r.get("split") == "valid" and metric in r]
    if not rows:
        return None
    sign = -1.0 if lower_is_better(metric) else 1.0

    def score(r: dict) -> float:  # an undefined value (a correlation of constants is NaN) is the worst
        return -math.inf if math.isnan(r[metric]) else sign * r[metric]

    return max(rows, key=lambda r: (score(r), -r["step"]))


def evaluations_since_best(history: list[dict], metric: str) -> int:
    best = best_evaluation(history, metric)
    if best is None:
        return 0
    return sum(1 for r in history if r.get("split") == "valid" and metric in r and r["step"] > best["step"])


def last_evaluated(history: list[dict]) -> int | None:
    """The step of the latest validation row."""
    return next((r["step"] for r in reversed(history) if r.get("split") == "valid"), None)


def validate(evaluate: Callable[[], dict[str, float]], model: nn.Module, log: MetricsLog, state: TrainState,
             config: TrainConfig, world: World, tokenizer, bar=None) -> None:
    """Evaluate (on every process), log the validation row, keep the model when it is the best."""
    model.eval()
    with torch.no_grad():
        metrics = evaluate()
    model.train()
    row = {"step": state.step, "split": "valid", **metrics}
    log.write(row)
    state.history.append(row)
    if world.is_main:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        say(f"step {state.step}: valid {shown}", bar)
    keep_best(model, state, config, world, tokenizer, bar)


def keep_best(model: nn.Module, state: TrainState, config: TrainConfig, world: World, tokenizer,
              bar=None) -> None:
    """Save the model to out/best when the latest evaluation is the best so far."""
    metric = config.best_metric
    if not metric:
        return
    latest = next(r for r in reversed(state.history) if r.get("split") == "valid")
    if metric not in latest:
        shown = ", ".join(k for k in latest if k not in ("step", "split"))
        raise BertkitError(f"best metric {metric!r} is not among the validation metrics ({shown})")
    if best_evaluation(state.history, metric) is latest and world.is_main:
        model.save_pretrained(config.out / BEST, tokenizer=tokenizer)
        say(f"step {state.step}: new best {metric} {latest[metric]:.4g}, saved to {config.out / BEST}", bar)
    distributed.barrier(world)


def should_stop(state: TrainState, config: TrainConfig, world: World) -> bool:
    """Early stopping: --patience evaluations in a row without a better --best-metric."""
    if not (config.best_metric and config.patience):
        return False
    if evaluations_since_best(state.history, config.best_metric) < config.patience:
        return False
    if world.is_main:
        best = best_evaluation(state.history, config.best_metric)
        print(f"early stop at step {state.step}: no better {config.best_metric} for {config.patience} "
              f"evaluation(s); best {best[config.best_metric]:.4g} at step {best['step']}", flush=True)
    return True


def save_final(model: nn.Module, config: TrainConfig, world: World, tokenizer) -> None:
    """The final model in config.out: the best one when a metric picks it (main process writes)."""
    if config.best_metric and (config.out / BEST).is_dir():
        restore_weights(model, config.out / BEST)
    if world.is_main:
        model.save_pretrained(config.out, tokenizer=tokenizer)
