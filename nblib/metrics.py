"""Classification metrics per fold and across folds, and the validation scores that select an epoch
(thin wrappers over sklearn.metrics)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from .settings import SelectOn

HEADLINE = ["accuracy", "macro_f1", "weighted_f1"]
PER_CLASS = ["precision", "recall", "f1", "support"]


def per_class_scores(gold: Sequence[int], pred: Sequence[int], label_names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class.

    Args:
        gold: gold label ids.
        pred: predicted label ids.
        label_names: the name of each id 0..K-1 (a class that never occurs gets zeros).

    Returns:
        One row per class (index: class name), columns ``precision``, ``recall``, ``f1``, ``support``.
    """
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=range(len(label_names)), zero_division=0)
    return pd.DataFrame({"precision": p, "recall": r, "f1": f, "support": s}, index=pd.Index(label_names, name="class"))


def fold_metrics(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """The metrics row of one fold: accuracy, macro-/weighted-F1, and per class ``precision_<k>`` … ``support_<k>``.

    Args:
        gold: gold label ids.
        pred: predicted label ids.
        num_labels: number of classes K.
    """
    labels = list(range(num_labels))
    out = {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, pred, labels=labels, average="weighted", zero_division=0)),
    }
    per_class = per_class_scores(gold, pred, [str(k) for k in labels])
    for k in labels:
        out.update({f"{m}_{k}": per_class[m].iloc[k].item() for m in PER_CLASS})
    return out


def per_class_over_folds(per_fold: pd.DataFrame, label_names: Sequence[str]) -> pd.DataFrame:
    """Per-class precision, recall and F1, each the mean over folds.

    Args:
        per_fold: one model's metrics, one row per fold (``metrics.csv``).
        label_names: the class names.

    Returns:
        One row per class, columns ``precision``, ``recall``, ``f1`` (rounded to 3 digits).
    """
    return pd.DataFrame(
        {
            metric: [per_fold[f"{metric}_{k}"].mean() for k in range(len(label_names))]
            for metric in ("precision", "recall", "f1")
        },
        index=pd.Index(label_names, name="class"),
    ).round(3)


def per_class_long(per_fold: dict[str, pd.DataFrame], label_names: Sequence[str]) -> pd.DataFrame:
    """Per-class scores (mean over folds) of several models in long form, for plots.

    Args:
        per_fold: each model's per-fold metrics, by model name.
        label_names: the class names.

    Returns:
        Columns ``class``, ``precision``, ``recall``, ``f1``, ``model``.
    """
    return pd.concat(
        [per_class_over_folds(m, label_names).reset_index().assign(model=name) for name, m in per_fold.items()],
        ignore_index=True,
    )


def summarize(per_fold: pd.DataFrame, columns: Sequence[str] = HEADLINE) -> pd.Series:
    """Mean and standard deviation across folds (ddof=1) of the given metric columns.

    Args:
        per_fold: one model's metrics, one row per fold.
        columns: the metrics to summarise.
    """
    return pd.Series({f"{c} {stat}": getattr(per_fold[c], stat)() for c in columns for stat in ("mean", "std")})


def mean_std_table(per_fold: dict[str, pd.DataFrame], columns: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """One row per model of 'mean ± std' strings for a paper table, sorted by the first column.

    Args:
        per_fold: each model's per-fold metrics, by model name.
        columns: the metrics to show.
    """
    rows = {}
    for name, m in per_fold.items():
        s = summarize(m, columns)
        rows[name] = {c: f"{s[f'{c} mean']:.3f} ± {s[f'{c} std']:.3f}" for c in columns} | {
            "_sort": s[f"{columns[0]} mean"]
        }
    table = pd.DataFrame(rows).T.sort_values("_sort", ascending=False).drop(columns="_sort")
    table.index.name = "model"
    return table


def confusion(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> np.ndarray:
    """Confusion matrix of counts (rows: gold, columns: predicted).

    Args:
        gold: gold label ids.
        pred: predicted label ids.
        num_labels: number of classes K.
    """
    return confusion_matrix(gold, pred, labels=list(range(num_labels)))


def validation_scores(gold: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The scores of one epoch on the validation part, for every trainer: loss, accuracy, macro-F1.

    Args:
        gold: gold label ids of the validation texts.
        probs: predicted class probabilities, one row per text.

    Returns:
        ``val_loss`` (mean cross-entropy), ``val_accuracy`` and ``val_macro_f1``.
    """
    labels = list(range(probs.shape[1]))
    pred = probs.argmax(1)
    gold_prob = np.clip(probs[np.arange(len(gold)), gold], 1e-12, None)
    return {
        "val_loss": float(-np.log(gold_prob).mean()),
        "val_accuracy": float(accuracy_score(gold, pred)),
        "val_macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
    }


def improves(scores: dict[str, float], best: dict[str, float] | None, select_on: SelectOn) -> bool:
    """Whether an epoch's validation scores beat the best so far.

    With ``val_macro_f1`` a tie (common on small validation parts) goes to the lower validation loss; a
    complete tie keeps the earlier epoch.

    Args:
        scores: this epoch's :func:`validation_scores`.
        best: the best epoch's scores so far, or None before the first.
        select_on: ``val_macro_f1`` (higher is better) or ``val_loss`` (lower is better).
    """
    if best is None:
        return True
    if select_on == "val_loss":
        return scores["val_loss"] < best["val_loss"]
    return (scores["val_macro_f1"], -scores["val_loss"]) > (best["val_macro_f1"], -best["val_loss"])
