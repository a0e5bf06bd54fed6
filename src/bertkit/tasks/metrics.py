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


def retrieval(queries: np.ndarray, corpus: np.ndarray, relevant: Sequence[set[int]], *,
              k: int = 10) -> dict[str, float]:
    """recall@1, recall@k, MRR@k and nDCG@k (binary relevance) of every query (Q, D) ranked by
    cosine against the whole corpus (C, D); relevant[q] holds the corpus rows that answer query q.
    The definitions are sentence-transformers' InformationRetrievalEvaluator's: recall@k is the
    share of a query's relevant documents in its top k, MRR@k 1 / the rank of the first relevant
    one (0 beyond k), nDCG@k the DCG of the top k over that of a perfect ranking; ties are broken
    by the lower corpus row. Each is the mean over queries."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    c = corpus / np.maximum(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-12)
    scores = q.astype(np.float64) @ c.astype(np.float64).T  # (Q, C)
    # a stable sort of -score keeps equal scores in corpus order
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # rank r (from 0) counts 1 / log2(r + 2)
    out = {"recall@1": 0.0, f"recall@{k}": 0.0, f"mrr@{k}": 0.0, f"ndcg@{k}": 0.0}
    for ranked, gold in zip(top, relevant):
        hits = np.array([int(doc) in gold for doc in ranked], dtype=float)  # (k,)
        out["recall@1"] += hits[:1].sum() / len(gold)
        out[f"recall@{k}"] += hits.sum() / len(gold)
        out[f"mrr@{k}"] += 1.0 / (int(hits.argmax()) + 1) if hits.any() else 0.0
        out[f"ndcg@{k}"] += float(hits @ discount[:len(hits)]) / float(discount[:min(len(gold), k)].sum())
    return {name: value / len(relevant) for name, value in out.items()}
