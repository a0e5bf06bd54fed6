"""Checks of option values, shared by the configs' `__post_init__` and the command line.

Every message names the option as the command line spells it (`--batch-size`), for CLI and Python
API users alike: "--batch-size must be at least 1, got 0". The argparse `type=` functions here
(`positive_int`, ...) give the same wording through the CLI's error handler.

This module is imported by `bertkit --help`: it must stay free of torch and numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bertkit.errors import InputError

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
LONG_TEXT = ("truncate", "window")
MAX_SEED = 2**32 - 1  # numpy's legacy seeding limit; torch accepts more
MIN_VOCAB = 6  # BERT's five special tokens and at least one more

Number = int | float


def flag(name: str) -> str:
    """`batch_size` -> `--batch-size`: the option's name as the command line spells it."""
    return "--" + name.lstrip("-").replace("_", "-")


def choices(values: Sequence[str]) -> dict[str, Any]:
    """Field metadata that makes a dataclass field a fixed set of values:
    `field(default="linear", metadata=choices(SCHEDULES))`; the CLI lists them in --help."""
    return cli(choices=values)


def cli(*, choices: Sequence[str] | None = None, positional: bool = False, short: str | None = None,
        metavar: str | None = None) -> dict[str, Any]:
    """Field metadata for how the command line shows a field: a fixed set of values, a positional
    argument (`bertkit embed FILE`, a list field takes any number), a short flag (`-i`), a metavar."""
    meta: dict[str, Any] = {}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if positional:
        meta["positional"] = True
    if short is not None:
        meta["short"] = short
    if metavar is not None:
        meta["metavar"] = metavar
    return meta


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """'1 example', '2,000 examples': a count with its noun in the right number."""
    return f"{n:,} {noun if n == 1 else plural_form or noun + 's'}"


# ---- the rules: each returns what is wrong with a value, or None --------------------------------------


def _kind_problem(value: Any, integer: bool) -> str | None:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        return "must be an integer"
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None


def show(value: Any) -> str:
    """A value as a message shows it: 0, 1e-05, 'windows'."""
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _bound_text(low: Number | None, high: Number | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'greater than' if low_open else 'at least'} {show(low)}")
    if high is not None:
        parts.append(f"{'less than' if high_open else 'at most'} {show(high)}")
    return " and ".join(parts)


def range_problem(value: Any, low: Number | None = None, high: Number | None = None, *, integer: bool = False,
                  low_open: bool = False, high_open: bool = False) -> str | None:
    """'must be at least 1' (and the like) when `value` is outside the range or not a number; else None."""
    kind = _kind_problem(value, integer)
    if kind:
        return kind
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        return "must be " + _bound_text(low, high, low_open, high_open)
    return None


def choice_problem(value: Any, values: Sequence[str]) -> str | None:
    """'must be one of truncate, window; got 'windows' (did you mean window?)' or None."""
    if value in values:
        return None
    close = difflib.get_close_matches(str(value), values, n=1)
    return f"must be one of {', '.join(values)}; got {show(value)}" + (f" (did you mean {close[0]}?)" if close else "")


def _fail(name: str, problem: str | None, value: Any) -> None:
    if problem:
        raise InputError(f"{flag(name)} {problem}, got {show(value)}")


# ---- validators for configs and API functions: raise InputError ----------------------------------------


def at_least(name: str, value: Any, low: Number, *, integer: bool = True) -> None:
    """`name` must be a number (an integer unless integer=False) no smaller than `low`."""
    _fail(name, range_problem(value, low, integer=integer), value)


def greater_than(name: str, value: Any, low: Number) -> None:
    """`name` must be a number strictly above `low` (a learning rate, a number of epochs)."""
    _fail(name, range_problem(value, low, low_open=True), value)


def in_range(name: str, value: Any, low: Number, high: Number, *, integer: bool = False,
             low_open: bool = False, high_open: bool = False) -> None:
    """`name` must lie between `low` and `high` (inclusive unless low_open / high_open)."""
    _fail(name, range_problem(value, low, high, integer=integer, low_open=low_open, high_open=high_open), value)


def finite(name: str, value: Any) -> None:
    """Any finite number."""
    _fail(name, range_problem(value), value)


def integer(name: str, value: Any) -> None:
    _fail(name, range_problem(value, integer=True), value)


def one_of(name: str, value: Any, values: Sequence[str]) -> None:
    problem = choice_problem(value, values)
    if problem:
        raise InputError(f"{flag(name)} {problem}")


def seed(name: str, value: Any) -> None:
    in_range(name, value, 0, MAX_SEED, integer=True)


def not_empty(name: str, value: Any) -> None:
    """A string option that, when given, must not be empty (None is fine)."""
    if value is not None and (not isinstance(value, str) or not value):
        raise InputError(f"{flag(name)} must be a non-empty string, got {value!r}")


def model_spec(name: str, value: Any) -> None:
    """A preset name (tiny ... large) or an existing config.json (or a directory holding one)."""
    from bertkit.config import CONFIG_NAME, PRESETS

    if value in PRESETS:
        return
    path = Path(value) if isinstance(value, str) else None
    if path is not None and (path.is_file() or (path / CONFIG_NAME).is_file()):
        return
    close = difflib.get_close_matches(str(value), list(PRESETS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise InputError(f"{flag(name)} {value}: neither a preset ({', '.join(PRESETS)}) nor an existing "
                     f"config.json{hint}")


def check_choices(config: Any) -> None:
    """Every field of a dataclass whose metadata lists `choices` holds one of them."""
    for f in dataclasses.fields(config):
        if "choices" in f.metadata:
            one_of(f.name, getattr(config, f.name), f.metadata["choices"])


def check_train_config(config: Any) -> None:
    """The rules of bertkit.train.TrainConfig, for its __post_init__ (and the CLI)."""
    for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
        at_least(name, getattr(config, name), 1)
    for name in ("eval_every", "save_every", "patience"):
        at_least(name, getattr(config, name), 0)
    greater_than("lr", config.lr, 0)
    at_least("warmup", config.warmup, 0, integer=False)
    one_of("schedule", config.schedule, SCHEDULES)
    at_least("weight_decay", config.weight_decay, 0, integer=False)
    in_range("layer_lr_decay", config.layer_lr_decay, 0, 1, low_open=True)
    betas(config.betas)
    at_least("eps", config.eps, 0, integer=False)
    at_least("max_grad_norm", config.max_grad_norm, 0, integer=False)
    one_of("precision", config.precision, PRECISIONS)
    seed("seed", config.seed)
    not_empty("best_metric", config.best_metric)
    if config.time_budget is not None:
        duration("time_budget", config.time_budget)
        if config.warmup >= 1:
            raise InputError(f"--warmup {config.warmup:g} counts steps, but with --time-budget the schedule "
                             "runs over time: give a fraction of the budget, such as 0.05")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(name: str, text: Any) -> float:
    """A duration such as 90s, 45m, 2h, 1.5h or 1d (plain numbers are seconds) -> seconds > 0."""
    value = str(text).strip().lower()
    unit = DURATION_UNITS.get(value[-1:], None)
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"{flag(name)} must be a duration such as 90m, 2h or 3600s; got {show(text)}")
    return seconds


def betas(value: Any) -> None:
    """AdamW's (beta1, beta2), each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InputError(f"--betas must be two numbers, got {value!r}")
    for beta in value:
        in_range("betas", beta, 0, 1, high_open=True)


# ---- argparse `type=` functions: the same rules for hand-written options ---------------------------------


def _parse(text: str, convert: Callable[[str], Number], kind: str) -> Number:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [low, high] ("--top-k must be at least 1, got 0"); int_in() takes
    any integer ("--steps must be an integer, got '1.5'")."""

    def parse(text: str) -> int:
        value = int(_parse(text, int, "an integer"))
        problem = range_problem(value, low, high, integer=True)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {value}")
        return value

    return parse


def float_in(low: Number | None = None, high: Number | None = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in the range."""

    def parse(text: str) -> float:
        value = float(_parse(text, float, "a number"))
        problem = range_problem(value, low, high, low_open=low_open, high_open=high_open)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {show(value)}")
        return value

    return parse


def choice(values: Sequence[str]) -> Callable[[str], str]:
    """argparse type for a fixed set of strings, with the same message as `one_of`; pass
    `choices=values` as well so that --help lists them."""

    def parse(text: str) -> str:
        problem = choice_problem(text, values)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
seed_int = int_in(0, MAX_SEED)


# ---- metrics that can pick the best model ---------------------------------------------------------------

# Every metric bertkit reports, with the direction that is better. A metric not listed here cannot
# pick the best model: guessing a direction kept the worst model for `mse` once.
HIGHER_IS_BETTER = frozenset({
    "accuracy", "f1", "macro_f1", "micro_f1", "mcc", "precision", "recall",  # classify, tag
    "pearson", "spearman",  # regression
    "exact_match", "has_answer_exact_match", "has_answer_f1", "no_answer_exact_match", "no_answer_f1",
    "best_f1", "position_accuracy",  # qa
    "recall@1", "recall@10", "mrr@10", "ndcg@10",  # embed: retrieval on the dev set
    # pretraining: masked_accuracy (at [MASK] positions) is the one that says what was learned
    "masked_accuracy", "random_accuracy", "kept_accuracy", "selected_accuracy", "nsp_accuracy",
})
LOWER_IS_BETTER = frozenset({"loss", "mlm_loss", "masked_loss", "nsp_loss", "perplexity", "mse"})
PER_TYPE_PREFIX = "f1_"  # entity F1 per type (f1_PER, f1_LOC, ...): higher is better


def lower_is_better(metric: str) -> bool:
    if metric in LOWER_IS_BETTER:
        return True
    if metric in HIGHER_IS_BETTER or metric.startswith(PER_TYPE_PREFIX):
        return False
    known = ", ".join(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER))
    raise InputError(f"--best-metric {metric}: not a metric that can pick the best model; choose one of "
                       f"{known}, or f1_TYPE for an entity type")
