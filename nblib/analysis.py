"""Error analysis on out-of-fold predictions of several models (same texts, same folds).

Paired tests (McNemar), bootstrap confidence intervals, accuracy by text length, confident errors,
disagreements between models and confused class pairs. Texts whose gold label looks wrong: ``nblib.label_issues``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score

from .results import ModelResults


def _correct(res: ModelResults) -> np.ndarray:
    return (res.predictions["gold"] == res.predictions["pred"]).to_numpy()


def mcnemar(reference: ModelResults, other: ModelResults) -> dict:
    """Exact McNemar test on the texts where exactly one of the two models is right.

    Args:
        reference: the model compared against.
        other: the other model, on the same texts in the same order.

    Returns:
        A table row: ``model`` (``other``'s name), the number of texts only each model gets right,
        ``accuracy difference`` (reference minus other) and ``p-value (exact McNemar)``.
    """
    a, b = _correct(reference), _correct(other)
    only_ref, only_other = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_ref, only_ref + only_other, 0.5).pvalue if only_ref + only_other else 1.0
    return {
        "model": other.name,
        f"only {reference.name} right": only_ref,
        "only this model right": only_other,
        "accuracy difference": (a.mean() - b.mean()),
        "p-value (exact McNemar)": p,
    }


def bootstrap_ci(
    results: dict[str, ModelResults], n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Percentile bootstrap intervals of accuracy and macro-F1, resampling the same texts for every model.

    Args:
        results: each model's out-of-fold predictions, by name (same texts in the same order).
        n_boot: number of bootstrap resamples.
        level: confidence level of the intervals.
        seed: resampling seed.

    Returns:
        One row per model (index ``model``), best macro-F1 first, columns ``accuracy``, ``accuracy CI``,
        ``macro_f1``, ``macro_f1 CI`` (intervals as ``"[low, high]"`` strings).
    """
    any_res = next(iter(results.values()))
    n, k = len(any_res.predictions), any_res.probs.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    rows = []
    for name, res in results.items():
        y, p = res.predictions["gold"].to_numpy(), res.predictions["pred"].to_numpy()
        acc = np.array([accuracy_score(y[i], p[i]) for i in idx])
        f1 = np.array([f1_score(y[i], p[i], labels=range(k), average="macro", zero_division=0) for i in idx])
        rows.append(
            {
                "model": name,
                "accuracy": accuracy_score(y, p),
                "accuracy CI": f"[{np.quantile(acc, lo):.3f}, {np.quantile(acc, hi):.3f}]",
                "macro_f1": f1_score(y, p, labels=range(k), average="macro", zero_division=0),
                "macro_f1 CI": f"[{np.quantile(f1, lo):.3f}, {np.quantile(f1, hi):.3f}]",
            }
        )
    return pd.DataFrame(rows).set_index("model").sort_values("macro_f1", ascending=False)


def _mean_sd(values: pd.Series) -> str:
    """``mean ± sd`` over folds (the mean alone for one fold)."""
    return f"{values.mean():.3f}" + (f" ± {values.std():.3f}" if len(values) > 1 else "")


def gains_over(
    reference: ModelResults, others: dict[str, ModelResults], n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Each model against ``reference`` on the same texts: mean ± sd over folds, the pooled gain in accuracy and
    macro-F1 with a paired bootstrap interval (the same resampled texts for both), and McNemar's exact p.

    Args:
        reference: the model compared against (e.g. plain fine-tuning).
        others: the other models by name (same texts in the same order).
        n_boot: bootstrap resamples.
        level: confidence level of the intervals.
        seed: resampling seed.

    Returns:
        One row per model, ``reference`` first; gains in points (×100); ``significant`` when the McNemar p is
        below ``1 - level`` and the macro-F1 interval excludes 0.
    """
    y = reference.predictions["gold"].to_numpy()
    k = reference.probs.shape[1]
    for res in others.values():
        if not reference.predictions["index"].equals(res.predictions["index"]):
            raise ValueError(f"{res.name} and {reference.name} are not on the same texts in the same order.")
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2

    def scores(pred: np.ndarray) -> np.ndarray:  # (n_boot, 2): accuracy and macro-F1 of each resample
        return np.array(
            [[accuracy_score(y[i], pred[i]), f1_score(y[i], pred[i], labels=range(k), average="macro")] for i in idx]
        )

    ref_pred = reference.predictions["pred"].to_numpy()
    ref_boot = scores(ref_pred)
    rows = []
    for name, res in {reference.name: reference, **others}.items():
        m = res.metrics
        row = {"model": name} | {c: _mean_sd(m[c]) for c in ("accuracy", "macro_f1")}
        if res is not reference:
            pred = res.predictions["pred"].to_numpy()
            gain = 100 * (scores(pred) - ref_boot)
            point = 100 * np.array(
                [
                    accuracy_score(y, pred) - accuracy_score(y, ref_pred),
                    f1_score(y, pred, labels=range(k), average="macro")
                    - f1_score(y, ref_pred, labels=range(k), average="macro"),
                ]
            )
            p = mcnemar(reference, res)["p-value (exact McNemar)"]
            ci = np.quantile(gain, [lo, hi], axis=0)
            row |= {
                "accuracy gain": round(point[0], 2),
                "accuracy gain CI": f"[{ci[0, 0]:+.2f}, {ci[1, 0]:+.2f}]",
                "macro_f1 gain": round(point[1], 2),
                "macro_f1 gain CI": f"[{ci[0, 1]:+.2f}, {ci[1, 1]:+.2f}]",
                "p (McNemar)": p,
                "significant": bool(p < 1 - level and (ci[0, 1] > 0 or ci[1, 1] < 0)),
            }
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def accuracy_by_length(
    results: dict[str, ModelResults], edges: Sequence[int] = (0, 10, 20, 40, 80, 10_000)
) -> pd.DataFrame:
    """Accuracy of each model per bucket of text length in characters (long form: bucket, model, accuracy, texts).

    Args:
        results: each model's out-of-fold predictions, by name.
        edges: bucket boundaries in characters, each bucket ``[a, b)``; one ending at 10 000 or more is labelled ``a+``.
    """
    rows = []
    for name, res in results.items():
        pred = res.predictions
        labels = [f"{a}–{b - 1}" if b < 10_000 else f"{a}+" for a, b in zip(edges, edges[1:], strict=False)]
        bucket = pd.cut(pred["text"].str.len(), list(edges), right=False, labels=labels)
        grouped = pd.DataFrame({"bucket": bucket, "correct": _correct(res)}).groupby("bucket", observed=True)["correct"]
        table = pd.DataFrame({"accuracy": grouped.mean(), "texts": grouped.size()})
        rows.append(table.reset_index().assign(model=name))
    return pd.concat(rows, ignore_index=True)


def confident_errors(res: ModelResults, label_names: Sequence[str], top: int = 10) -> pd.DataFrame:
    """The wrong predictions the model was most sure of.

    Args:
        res: one model's out-of-fold predictions.
        label_names: the class names by id.
        top: at most this many texts.

    Returns:
        Columns ``row``, ``text``, ``gold``, ``predicted`` (class names), ``confidence`` (top probability).
    """
    pred = res.predictions.assign(confidence=res.probs.max(axis=1))
    wrong = pred[pred["gold"] != pred["pred"]].nlargest(top, "confidence")
    return _named(wrong, label_names)[["row", "text", "gold", "predicted", "confidence"]]


def disagreements(a: ModelResults, b: ModelResults, label_names: Sequence[str], top: int = 10) -> pd.DataFrame:
    """Texts model ``a`` gets wrong and ``b`` gets right, most confident (in ``b``) first.

    Args:
        a: the model whose errors are listed.
        b: the model that gets them right (same texts in the same order).
        label_names: the class names by id.
        top: at most this many texts.

    Returns:
        Columns ``row``, ``text``, ``gold (= <b's name>)``, ``<a's name> says``.
    """
    mask = ~_correct(a) & _correct(b)
    table = a.predictions.assign(
        **{f"{a.name} says": [label_names[i] for i in a.predictions["pred"]], "confidence of b": b.probs.max(axis=1)}
    )[mask]
    table = _named(table, label_names).nlargest(top, "confidence of b")
    return table[["row", "text", "gold", f"{a.name} says"]].rename(columns={"gold": f"gold (= {b.name})"})


def confused_pairs(res: ModelResults, label_names: Sequence[str], top: int = 5, examples: int = 3) -> pd.DataFrame:
    """The most frequent (gold → predicted) confusions with a few example texts each.

    Args:
        res: one model's out-of-fold predictions.
        label_names: the class names by id.
        top: at most this many class pairs.
        examples: example texts per pair.

    Returns:
        Columns ``gold``, ``predicted``, ``texts`` (count), ``examples`` (joined with " ｜ ").
    """
    pred = res.predictions[res.predictions["gold"] != res.predictions["pred"]]
    counts = pred.groupby(["gold", "pred"]).size().nlargest(top)
    return pd.DataFrame(
        [
            {
                "gold": label_names[g],
                "predicted": label_names[p],
                "texts": int(n),
                "examples": " ｜ ".join(pred[(pred["gold"] == g) & (pred["pred"] == p)]["text"].head(examples)),
            }
            for (g, p), n in counts.items()
        ]
    )


def _named(table: pd.DataFrame, label_names: Sequence[str]) -> pd.DataFrame:
    return table.assign(gold=[label_names[i] for i in table["gold"]], predicted=[label_names[i] for i in table["pred"]])
