"""Calibrated probabilities: temperature scaling, expected calibration error, reliability-diagram data.

A classifier's probabilities are *calibrated* when, of the texts it gives 0.8, about 80% are right. Fine-tuned
encoders are usually overconfident. Temperature scaling (Guo et al., 2017) divides the logits by one number
``T`` fitted on held-out texts (minimum negative log-likelihood): ``T > 1`` softens overconfident
probabilities, ``T < 1`` sharpens underconfident ones, and the predicted class never changes.

Where the temperature comes from: each fold's model fits its own on the fold's validation part (the part
that already chooses the epoch; never the test fold), stored in the fold's metrics as ``temperature`` and,
for a saved model, in ``calibration.json`` next to its weights. The final model, trained on every labelled
text, has no held-out part: it gets the median of its folds' temperatures. A model folder without
``calibration.json`` (saved before this existed) means ``T = 1``, and :func:`load_temperature` logs so.

Probabilities are scaled as ``softmax(log p / T)``, which equals ``softmax(logits / T)``: the raw
probabilities of ``predictions.csv`` are enough, no logits need to be stored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

if TYPE_CHECKING:
    from .results import ModelResults

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15  # equal-width bins of the top-class probability over [0, 1]
_EPS = 1e-12  # log(0) guard for probabilities that are exactly zero


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Natural log of class probabilities, zeros clipped to 1e-12.

    Args:
        probs: one row of class probabilities per text.
    """
    return np.log(np.clip(np.asarray(probs, dtype=float), _EPS, 1.0))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold labels under ``softmax(logits / temperature)``.

    Args:
        logits: one row of logits (or log-probabilities) per text.
        labels: the gold label id of each row.
        temperature: the divisor of the logits.
    """
    logp = log_softmax(np.asarray(logits, dtype=float) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray | None, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of held-out texts.

    The NLL is convex in ``1 / T``; it is minimised over ``T`` in [0.05, 20] (bounded Brent search).

    Args:
        logits: one row of logits (or log-probabilities, e.g. :func:`log_probs`) per held-out text; None when
            the model was trained without a validation part.
        labels: the gold label id of each row.

    Returns:
        The fitted temperature (1.0, logged, when there is nothing to fit on).
    """
    if logits is None or len(labels) == 0:
        log.warning("No held-out texts to fit a temperature on: temperature 1 (probabilities left as they are).")
        return 1.0
    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels)
    res = minimize_scalar(lambda beta: nll(logits * beta, labels), bounds=(1 / 20, 20), method="bounded")
    return float(1 / res.x)


def apply_temperature(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """Class probabilities scaled by a temperature: ``softmax(log p / T)``.

    Args:
        probs: one row of class probabilities per text.
        temperature: one temperature, or one per row (e.g. each text's fold's).
    """
    t = np.asarray(temperature, dtype=float)
    z = log_probs(probs) / (t[:, None] if t.ndim else t)
    return np.exp(log_softmax(z, axis=1))


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Reliability-diagram data: texts binned by their top-class probability (equal-width bins over [0, 1]).

    Args:
        probs: one row of class probabilities per text.
        labels: the gold label id of each row.
        n_bins: number of bins.

    Returns:
        One row per non-empty bin: ``lower``, ``upper`` (its edges), ``confidence`` (mean top probability),
        ``accuracy`` (share of texts whose top class is the gold label), ``texts``.
    """
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)  # (a, b]; the first bin holds 0
    table = (
        pd.DataFrame({"bin": bins, "confidence": conf, "accuracy": correct})
        .groupby("bin")
        .agg(confidence=("confidence", "mean"), accuracy=("accuracy", "mean"), texts=("accuracy", "size"))
        .reset_index()
    )
    table.insert(1, "lower", edges[table["bin"]])
    table.insert(2, "upper", edges[table["bin"] + 1])
    return table.drop(columns="bin")


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: the texts-weighted mean of |accuracy − confidence| over equal-width bins.

    Args:
        probs: one row of class probabilities per text.
        labels: the gold label id of each row.
        n_bins: number of equal-width bins of the top-class probability over [0, 1].
    """
    table = reliability(probs, labels, n_bins)
    return float((table["texts"] * (table["accuracy"] - table["confidence"]).abs()).sum() / table["texts"].sum())


def calibration_report(probs: np.ndarray, labels: np.ndarray, temperatures: np.ndarray) -> dict:
    """ECE and NLL of out-of-fold probabilities before and after each text's fold temperature.

    Args:
        probs: raw out-of-fold class probabilities, one row per text.
        labels: the gold label id of each row.
        temperatures: the temperature applied to each row (its fold's).

    Returns:
        ``temperature`` (mean over texts), ``ECE before``, ``ECE after``, ``NLL before``, ``NLL after``.
    """
    scaled = apply_temperature(probs, temperatures)
    return {
        "temperature": float(np.mean(temperatures)),
        "ECE before": ece(probs, labels),
        "ECE after": ece(scaled, labels),
        "NLL before": nll(log_probs(probs), labels),
        "NLL after": nll(log_probs(scaled), labels),
    }


def calibration_table(results: dict[str, ModelResults]) -> pd.DataFrame:
    """ECE and NLL of every model's out-of-fold probabilities before and after its folds' temperatures.

    Args:
        results: each model's out-of-fold results, by name.

    Returns:
        One row per model (index ``model``): ``temperature`` (mean over texts of their fold's), ``fitted``
        (whether the folds have temperatures; without them T = 1 and before = after), and the columns of
        :func:`calibration_report`.
    """
    rows = []
    for name, res in results.items():
        fitted = "temperature" in res.metrics and res.metrics["temperature"].notna().any()
        report = calibration_report(res.probs, res.predictions["gold"].to_numpy(), res.temperatures)
        rows.append({"model": name, "fitted": "per fold" if fitted else "no (T = 1)", **report})
    return pd.DataFrame(rows).set_index("model")


def save_temperature(model_dir: str | Path, temperature: float, fitted_on: str) -> Path:
    """Write ``calibration.json`` into a saved model's folder (read back by :func:`load_temperature`).

    Args:
        model_dir: the saved model's folder.
        temperature: the temperature to apply to its logits.
        fitted_on: where it comes from, in words (kept in the file for the reader).
    """
    path = Path(model_dir) / CALIBRATION_FILE
    path.write_text(json.dumps({"temperature": temperature, "fitted_on": fitted_on}, indent=2))
    return path


def load_temperature(model_dir: str | Path) -> float:
    """The temperature of a saved model (its ``calibration.json``); 1 (logged) when the folder has none.

    Args:
        model_dir: the saved model's folder.
    """
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.exists():
        log.info("%s has no %s: temperature 1 (its probabilities are not calibrated).", model_dir, CALIBRATION_FILE)
        return 1.0
    return float(json.loads(path.read_text())["temperature"])
