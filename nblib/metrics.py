"""Classification metrics per fold and across folds (thin wrappers over sklearn.metrics)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

HEADLINE = ["accuracy", "macro_f1", "weighted_f1"]


def fold_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1, weighted-F1 and per-class precision/recall/F1/support (keys ``f1_<k>`` …)."""
    labels = list(range(num_labels))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
    }
    for k in labels:
        out.update({f"precision_{k}": float(p[k]), f"recall_{k}": float(r[k]), f"f1_{k}": float(f[k]),
                    f"support_{k}": int(s[k])})
    return out


def summarize(per_fold: pd.DataFrame, columns: Sequence[str] = HEADLINE) -> pd.Series:
    """Mean and standard deviation (across folds, ddof=1) of the given metric columns."""
    return pd.Series({f"{c} {stat}": getattr(per_fold[c], stat)() for c in columns for stat in ("mean", "std")})


def mean_std_table(per_fold: dict[str, pd.DataFrame], columns: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """One row per model: 'mean ± std' strings for a paper table, sorted by the first column."""
    rows = {}
    for name, m in per_fold.items():
        s = summarize(m, columns)
        rows[name] = {c: f"{s[f'{c} mean']:.3f} ± {s[f'{c} std']:.3f}" for c in columns} | {"_sort": s[f"{columns[0]} mean"]}
    table = pd.DataFrame(rows).T.sort_values("_sort", ascending=False).drop(columns="_sort")
    table.index.name = "model"
    return table


def per_class_f1(per_fold: pd.DataFrame, label_names: Sequence[str]) -> pd.DataFrame:
    """Per-class precision, recall and F1 averaged over folds."""
    return pd.DataFrame({
        metric: [per_fold[f"{metric}_{k}"].mean() for k in range(len(label_names))]
        for metric in ("precision", "recall", "f1")
    }, index=pd.Index(label_names, name="class")).round(3)


def per_class_long(per_fold: dict[str, pd.DataFrame], label_names: Sequence[str]) -> pd.DataFrame:
    """Per-class scores of several models in long form (model, class, precision, recall, f1), for plots."""
    return pd.concat([per_class_f1(m, label_names).reset_index().assign(model=name) for name, m in per_fold.items()],
                     ignore_index=True)


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> np.ndarray:
    """Confusion matrix of counts (rows: gold, columns: predicted)."""
    return confusion_matrix(y_true, y_pred, labels=list(range(num_labels)))
