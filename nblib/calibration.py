"""Calibrated probabilities: temperature scaling with class biases, expected calibration error, reliability data.

A classifier's probabilities are *calibrated* when, of the texts it gives 0.8, about 80% are right. Fine-tuned
encoders are usually overconfident. Temperature scaling (Guo et al., 2017) divides the logits by one number
``T`` fitted on held-out texts (minimum negative log-likelihood): ``T > 1`` softens overconfident
probabilities, ``T < 1`` sharpens underconfident ones, and the predicted class never changes. A model is
often overconfident by different amounts per class, which one number cannot undo: bias-corrected temperature
scaling (BCTS, Alexandari et al., 2020) adds one learnt bias per class, ``softmax(logits / T + b)``. The
biases may move a text that lies between two classes to the other one (a few percent of texts; the reported
scores stay those of the raw predictions).

Where a calibration comes from (:class:`Calibration`, both parts fitted by minimum negative log-likelihood):

- the **temperature** of each fold's model is fitted on its own validation part (the part that chooses the
  epoch; never the test fold), stored in the fold's metrics as ``temperature``: how overconfident a model is
  differs from one training run to the next;
- the **class biases**, once a run has two or more folds, are *cross-fitted* (:func:`cross_fitted`): fold k's
  are fitted on the other folds' out-of-fold outputs (each scaled by its own temperature), thousands of texts
  none of which is in fold k. Which classes a model over- or under-predicts is a property of the task that
  the fold models share, and a validation part (~10% of a fold's training part) is too small for one number
  per class. With a single fold, the temperature alone is used.
- The final model, trained on every labelled text, has no held-out part: it takes the median of its folds'
  temperatures and the biases fitted on all out-of-fold outputs.

How much each part lowers the expected calibration error is measured by ``benchmarks/calibration.py``
(figures in benchmarks/README.md).

A saved model keeps its calibration in ``calibration.json`` next to its weights (the validation temperature
while its run is unfinished, then the cross-fitted one), which :mod:`nblib.predict` applies. A model folder
without it means no calibration, and :func:`load_calibration` logs so.

Probabilities are scaled as ``softmax(log p / T + b)``, which equals ``softmax(logits / T + b)``: the raw
probabilities of ``predictions.csv`` are enough, no logits need to be stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax

if TYPE_CHECKING:
    from .results import ModelResults

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15  # equal-width bins of the top-class probability over [0, 1]
_EPS = 1e-12  # log(0) guard for probabilities that are exactly zero
T_BOUNDS = (0.05, 20.0)  # the temperatures searched
BIAS_PRIOR = 1e-3  # weight of the squared class biases in the fitted loss: keeps a class without texts finite


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: ``softmax(logits / temperature + bias)``.

    Attributes:
        temperature: the divisor of the logits (1: none).
        bias: one number per class added after the division, or None (temperature scaling alone).
        fitted_on: where it was fitted, in words (kept in ``calibration.json`` for the reader).
    """

    temperature: float = 1.0
    bias: tuple[float, ...] | None = None
    fitted_on: str = "nothing (not calibrated)"

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, ``softmax(log p / T + b)``.

        Args:
            probs: one row of raw class probabilities per text.
        """
        z = log_probs(probs) / self.temperature
        return np.exp(log_softmax(z + (np.asarray(self.bias) if self.bias is not None else 0.0), axis=1))

    def describe(self) -> str:
        """The kind of calibration in a few words (04's table)."""
        if self.bias is not None:
            return "temperature + class biases"
        return "temperature" if self.temperature != 1.0 else "none"


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
    lo, hi = T_BOUNDS
    res = minimize_scalar(lambda beta: nll(logits * beta, labels), bounds=(1 / hi, 1 / lo), method="bounded")
    return float(1 / res.x)


def fit_class_bias(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The per-class biases ``b`` of least negative log-likelihood of ``softmax(log p + b)``, centred on 0.

    The loss is convex in ``b``; it is minimised by L-BFGS with its exact gradient, plus ``BIAS_PRIOR · |b|²``
    (a class without texts would push its bias to minus infinity).

    Args:
        probs: class probabilities of held-out texts (already temperature-scaled), one row per text.
        labels: the gold label id of each row.
    """
    z, labels = log_probs(probs), np.asarray(labels, dtype=int)
    n, k = z.shape
    rows = np.arange(n)

    def loss(bias: np.ndarray) -> tuple[float, np.ndarray]:
        logp = log_softmax(z + bias, axis=1)
        grad = np.exp(logp)
        grad[rows, labels] -= 1
        value = -logp[rows, labels].mean() + BIAS_PRIOR * (bias**2).sum()
        return value, grad.sum(axis=0) / n + 2 * BIAS_PRIOR * bias

    bias = minimize(loss, np.zeros(k), jac=True, method="L-BFGS-B").x
    return bias - bias.mean()  # the softmax ignores a common shift


def cross_fitted(
    probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, temperatures: dict[int, float]
) -> dict[int, Calibration]:
    """Each fold's calibration: its own temperature, then class biases fitted on the other folds' out-of-fold
    outputs (each scaled by its own fold's temperature), so that no text of fold k sets fold k's biases.

    Args:
        probs: raw out-of-fold class probabilities, one row per text.
        labels: the gold label id of each row.
        folds: the fold of each row (at least two folds).
        temperatures: each fold's validation temperature (1 for a fold missing here).
    """
    probs, labels, folds = np.asarray(probs, dtype=float), np.asarray(labels), np.asarray(folds)
    ids = [int(k) for k in np.unique(folds)]
    if len(ids) < 2:
        raise ValueError("Cross-fitting needs the out-of-fold outputs of at least two folds.")
    scaled = apply_per_fold(probs, folds, {k: Calibration(temperatures.get(k, 1.0)) for k in ids})
    out = {}
    for k in ids:
        others = folds != k
        bias = fit_class_bias(scaled[others], labels[others])
        temperature = f"fold {k}'s validation part" if k in temperatures else "none"
        where = (
            f"temperature: {temperature}; class biases: the out-of-fold outputs of folds "
            f"{', '.join(str(j) for j in ids if j != k)}, {others.sum()} texts"
        )
        out[k] = Calibration(temperatures.get(k, 1.0), tuple(float(b) for b in bias), where)
    return out


def apply_per_fold(probs: np.ndarray, folds: np.ndarray, calibrations: dict[int, Calibration]) -> np.ndarray:
    """Each row's probabilities calibrated by its fold's calibration (a fold without one is left as it is).

    Args:
        probs: raw class probabilities, one row per text.
        folds: the fold of each row.
        calibrations: by fold.
    """
    probs, folds = np.asarray(probs, dtype=float), np.asarray(folds)
    out = probs.copy()
    for k, cal in calibrations.items():
        rows = folds == k
        out[rows] = cal.apply(probs[rows])
    return out


# --- which calibration a run's probabilities get ------------------------------------------------------------


def cross_fits(folds: Iterable[int]) -> bool:
    """Whether a run's class biases are cross-fitted: it has out-of-fold outputs of two or more folds.

    Args:
        folds: the folds of the run's out-of-fold outputs.
    """
    return len(set(int(k) for k in folds)) >= 2


def temperature_calibrations(temperatures: Mapping[int, float]) -> dict[int, Calibration]:
    """Each fold's validation temperature alone as its calibration (no class biases), by fold.

    Args:
        temperatures: each fold's validation temperature (folds without one left out).
    """
    return {int(k): Calibration(float(t), None, f"fold {k}'s validation part") for k, t in temperatures.items()}


def fold_calibrations(
    probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, temperatures: dict[int, float]
) -> dict[int, Calibration]:
    """The calibration each fold's out-of-fold outputs get: its validation temperature, then, with two or more
    folds (:func:`cross_fits`), class biases fitted on the other folds' outputs (:func:`cross_fitted`). A fold
    without a temperature (a run without calibration, TF-IDF + LR) has ``T = 1``.

    Args:
        probs: raw out-of-fold class probabilities, one row per text.
        labels: the gold label id of each row.
        folds: the fold of each row.
        temperatures: each fold's validation temperature (folds without one left out).
    """
    if cross_fits(np.unique(folds)):
        return cross_fitted(probs, labels, folds, temperatures)
    return temperature_calibrations(temperatures)


def pooled_calibration(
    probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, temperatures: dict[int, float]
) -> Calibration:
    """The final model's calibration, which no held-out part can give: the median of the folds' temperatures
    and the class biases fitted on all out-of-fold outputs (each scaled by its fold's temperature).

    Args:
        probs: raw out-of-fold class probabilities, one row per text.
        labels: the gold label id of each row.
        folds: the fold of each row.
        temperatures: each fold's validation temperature (folds without one left out).
    """
    scaled = apply_per_fold(probs, folds, temperature_calibrations(temperatures))
    bias = fit_class_bias(scaled, np.asarray(labels))
    temps = list(temperatures.values())
    temperature = "the median of folds' validation temperatures" if temps else "1, the folds fitted none"
    where = (
        f"temperature: {temperature}; "
        f"class biases: the out-of-fold outputs of folds {', '.join(str(int(k)) for k in np.unique(folds))}, "
        f"{len(scaled)} texts"
    )
    return Calibration(float(np.median(temps)) if temps else 1.0, tuple(float(b) for b in bias), where)


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


def calibration_report(probs: np.ndarray, calibrated: np.ndarray, labels: np.ndarray) -> dict:
    """ECE and NLL of out-of-fold probabilities before and after calibration.

    Args:
        probs: raw out-of-fold class probabilities, one row per text.
        calibrated: the same rows calibrated.
        labels: the gold label id of each row.

    Returns:
        ``ECE before``, ``ECE after``, ``NLL before``, ``NLL after``, and ``top class changed`` (the share of
        texts whose most probable class the calibration changed; only class biases can).
    """
    return {
        "ECE before": ece(probs, labels),
        "ECE after": ece(calibrated, labels),
        "NLL before": nll(log_probs(probs), labels),
        "NLL after": nll(log_probs(calibrated), labels),
        "top class changed": float((np.argmax(probs, 1) != np.argmax(calibrated, 1)).mean()),
    }


def calibration_table(results: dict[str, ModelResults]) -> pd.DataFrame:
    """ECE and NLL of every model's out-of-fold probabilities before and after its folds' calibrations.

    Args:
        results: each model's out-of-fold results, by name.

    Returns:
        One row per model (index ``model``): ``calibration`` (its kind and where it was fitted),
        ``temperature`` (mean over texts of their fold's), and the columns of :func:`calibration_report`.
    """
    rows = []
    for name, res in results.items():
        cals = res.calibrations
        kinds = {c.describe() for c in cals.values()} or {"none"}
        where = " (cross-fitted)" if res.cross_fitted else " (validation part)" if kinds != {"none"} else ""
        temps = pd.Series({k: c.temperature for k, c in cals.items()}, dtype=float)
        report = calibration_report(res.probs, res.calibrated_probs, res.predictions["gold"].to_numpy())
        rows.append(
            {
                "model": name,
                "calibration": " / ".join(sorted(kinds)) + where,
                "temperature": float(temps.reindex(res.predictions["fold"]).fillna(1.0).mean()),
                **report,
            }
        )
    return pd.DataFrame(rows).set_index("model")


def save_calibration(model_dir: str | Path, cal: Calibration) -> Path:
    """Write ``calibration.json`` into a saved model's folder (read back by :func:`load_calibration`).

    Args:
        model_dir: the saved model's folder.
        cal: its calibration.
    """
    path = Path(model_dir) / CALIBRATION_FILE
    fields = {"temperature": cal.temperature, "bias": None if cal.bias is None else list(cal.bias)}
    path.write_text(json.dumps({**fields, "fitted_on": cal.fitted_on}, indent=2))
    return path


def save_with_models(calibrations: Mapping[int, Calibration], model_dir: Callable[[int], Path]) -> list[Path]:
    """Write each fold's calibration into its saved model's folder; folds whose model was not kept are skipped.

    Args:
        calibrations: fold → its calibration.
        model_dir: fold → its model's folder (a saved model holds ``config.json``).
    """
    return [
        save_calibration(model_dir(k), cal)
        for k, cal in calibrations.items()
        if (model_dir(k) / "config.json").exists()
    ]


def load_calibration(model_dir: str | Path) -> Calibration:
    """The calibration of a saved model (its ``calibration.json``); none (logged) when the folder has none.

    Args:
        model_dir: the saved model's folder.
    """
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.exists():
        log.info("%s has no %s: its probabilities are not calibrated.", model_dir, CALIBRATION_FILE)
        return Calibration()
    saved = json.loads(path.read_text())
    bias = saved.get("bias")  # a file may hold a temperature only: no class biases
    return Calibration(float(saved["temperature"]), None if bias is None else tuple(bias), saved.get("fitted_on", ""))
