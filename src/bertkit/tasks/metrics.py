"""Classification metrics from scikit-learn and scipy, as plain floats keyed by name."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def classification(gold: Sequence[str], guess: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """accuracy, macro and micro F1, Matthews correlation; `f1` is the F1 of the second label for
    two labels (GLUE's convention, e.g. positive = "1"), else macro F1."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # labels absent from a small dev set: sklearn counts them as 0
        out = {
            "accuracy": accuracy_score(gold, guess),
            "macro_f1": f1_score(gold, guess, labels=list(names), average="macro", zero_division=0),
            "micro_f1": f1_score(gold, guess, labels=list(names), average="micro", zero_division=0),
            "mcc": matthews_corrcoef(gold, guess),
        }
        if len(names) == 2:
            out["f1"] = f1_score(gold, guess, pos_label=names[1], average="binary", zero_division=0)
        else:
            out["f1"] = out["macro_f1"]
    return {k: float(v) for k, v in out.items()}


def multi_label(gold: Sequence[Sequence[str]], guess: Sequence[Sequence[str]], names: Sequence[str]) -> dict[str, float]:
    """Several labels per example: exact-set accuracy, micro and macro F1 over labels."""
    from sklearn.metrics import f1_score

    index = {n: i for i, n in enumerate(names)}

    def matrix(rows: Sequence[Sequence[str]]) -> np.ndarray:
        m = np.zeros((len(rows), len(names)), dtype=int)
        for r, labels in enumerate(rows):
            for x in labels:
                m[r, index[x]] = 1
        return m

    g, p = matrix(gold), matrix(guess)
    micro = f1_score(g, p, average="micro", zero_division=0)
    return {
        "accuracy": float((g == p).all(1).mean()),
        "f1": float(micro),
        "micro_f1": float(micro),
        "macro_f1": float(f1_score(g, p, average="macro", zero_division=0)),
    }


def regression(gold: Sequence[float], guess: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (scipy) and mean squared error."""
    from scipy.stats import pearsonr, spearmanr

    g, p = np.asarray(gold, dtype=float), np.asarray(guess, dtype=float)
    constant = len(g) < 2 or g.std() == 0 or p.std() == 0
    return {
        "pearson": float("nan") if constant else float(pearsonr(g, p)[0]),
        "spearman": float("nan") if constant else float(spearmanr(g, p)[0]),
        "mse": float(((g - p) ** 2).mean()),
    }
