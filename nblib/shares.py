"""Class shares of an unlabelled pool, with 95% intervals that include the uncertainty of the error rates.

    python -m nblib.shares RUN_DIR PREDICTED_SHEET OUT.csv [--group COLUMN] [--methods CC ACC ...] [--n-boot 1000]

Counting a classifier's predicted labels (classify and count, CC) is biased whenever its errors are not
symmetric: a class often predicted as another is under-counted. The adjusted methods correct the count with
the error rates the same model made out of fold (its cross-validation predictions, where the gold labels
are known). All five estimators are QuaPy's, fed with probabilities computed elsewhere:

- ``CC``: the share of texts predicted as each class;
- ``ACC``: CC corrected with the out-of-fold rates P(predicted i | gold j) (Forman 2008);
- ``PCC``: the mean of the predicted probabilities;
- ``PACC``: PCC corrected with the out-of-fold mean probabilities per gold class;
- ``EMQ``: the prior adjustment of Saerens, Latinne and Decaestecker (2002) by expectation maximisation,
  from the class shares of the labelled texts;
- ``PPI``: prediction-powered inference (Angelopoulos et al., Science 2023; PPI++ power tuning, Angelopoulos,
  Duchi and Zrnic 2023), ``ppi_py.ppi_mean_pointestimate`` and ``ppi_mean_ci`` with the one-hot gold labels:
  the mean probability of the pool corrected by the mean error on the labelled texts. It assumes that the
  labelled texts are a random sample of the pool's population (no shift), and its interval is ppi-python's
  normal interval.

``CC`` and ``PCC`` intervals are sampling-only: they resample the pool and ignore the model's bias.
Intervals and point estimates are clipped to [0, 1] (``clipped`` marks where that happened).
:mod:`nblib.headline` chooses one method on held-out shifted samples and calibrates its intervals.

The intervals are percentile bootstrap intervals that resample both the out-of-fold texts (so the error
rates are re-estimated in every replicate; with the folds known, whole folds are drawn first, so that the
differences between the fold models count too) and the pool. The probabilities are taken as they are given: pass
calibrated ones where a model has them. The error rates come from the fold models, while the pool is usually
labelled by the final model trained on all texts; the final model errs a little less, so the adjustment
is, if anything, slightly too strong.

:func:`shift_check` and :func:`coverage` test all this where the truth is known: one fold is held out,
resampled to class shares unlike those of the training folds, and estimated from the other folds' error
rates.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from quapy.method.aggregative import ACC, CC, EMQ, PACC, PCC, AggregativeQuantifier
from sklearn.base import BaseEstimator, ClassifierMixin

from . import cli
from .calibration import Calibration, apply_per_fold, cross_fitted, fit_class_bias
from .layout import RunFolder, run_of_saved_model
from .results import ModelResults, load_run
from .sheets import DataError, clean_text, read_sheet, write_table, writer_kind

log = logging.getLogger(__name__)
METHODS = ("CC", "ACC", "PCC", "PACC", "EMQ", "PPI")
SAMPLING_ONLY = ("CC", "PCC")  # their intervals resample the pool only: the model's bias is not in them
MIN_GROUP = 30  # groups with fewer pool texts are shown, but flagged as too small for an interval
COLUMNS = ["group", "class", "method", "share", "lower", "upper", "texts", "small", "interval", "clipped"]


@dataclass(frozen=True)
class Names:
    """How the calling entry point spells the parameters that the messages of this module name."""

    group: str = "group_col="
    column: str = "input_col="
    run: str = "bert_run="
    methods: str = "shares_methods="


NOTEBOOK_NAMES = Names()  # 05_predict
CLI_NAMES = Names(group="--group ", column="--column ", run="RUN_DIR ", methods="--methods ")


class _Given(ClassifierMixin, BaseEstimator):
    """A stand-in classifier for QuaPy whose inputs are already class probabilities (one row per text)."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self.classes_ = np.arange(n_classes)  # fitted already: QuaPy checks for it

    def fit(self, X, y):  # nothing to fit: QuaPy only checks that it exists
        return self

    def predict_proba(self, X):
        return np.asarray(X)

    def predict(self, X):
        return np.asarray(X).argmax(axis=1)


def _quantifier(method: str, n_classes: int) -> AggregativeQuantifier:
    given = _Given(n_classes)
    make = {
        "CC": lambda: CC(given, fit_classifier=False),
        "ACC": lambda: ACC(given, fit_classifier=False, val_split=None),
        "PCC": lambda: PCC(given, fit_classifier=False),
        "PACC": lambda: PACC(given, fit_classifier=False, val_split=None),
        "EMQ": lambda: EMQ(given, fit_classifier=False),
    }
    return make[method]()


def check_methods(methods: str | Sequence[str], names: Names | None = None) -> list[str]:
    """The methods as a list, checked against :data:`METHODS` (an unknown one is a :class:`DataError`).

    Args:
        methods: method names, e.g. ``["CC", "ACC"]``, or one string of them separated by commas.
        names: how the caller names its parameters, for the message (None: the notebook's).
    """
    if isinstance(methods, str):
        methods = [m for m in methods.replace(",", " ").split() if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        flag = (names or NOTEBOOK_NAMES).methods
        raise DataError(
            f"Unknown share method(s) {unknown or '(none given)'}: set {flag}to some of {', '.join(METHODS)}."
        )
    return list(dict.fromkeys(methods))  # each once, in the order given


Estimator = Callable[[np.ndarray], np.ndarray]  # pool probabilities -> estimated shares


def fit_quantifiers(
    oof_probs: np.ndarray, oof_gold: np.ndarray, methods: Sequence[str] = METHODS
) -> dict[str, Estimator]:
    """One fitted estimator per method: pool probabilities in, estimated class shares out.

    The QuaPy methods learn the error rates (and, for EMQ, the class shares) of the labelled texts; PPI keeps
    the labelled texts' probabilities and gold labels for its correction.

    Args:
        oof_probs: out-of-fold class probabilities of the labelled texts, one row per text.
        oof_gold: their gold label ids 0..K-1.
        methods: which of :data:`METHODS`.
    """
    oof_probs, oof_gold = np.asarray(oof_probs, dtype=float), np.asarray(oof_gold, dtype=int)
    out: dict[str, Estimator] = {}
    for m in check_methods(methods):
        if m == "PPI":
            out[m] = partial(_ppi_estimate, np.eye(oof_probs.shape[1])[oof_gold], oof_probs)
        else:
            out[m] = _quantifier(m, oof_probs.shape[1]).fit(oof_probs, oof_gold).predict
    return out


def _ppi_estimate(gold_onehot: np.ndarray, oof_probs: np.ndarray, pool_probs: np.ndarray) -> np.ndarray:
    """ppi-python's prediction-powered mean of the one-hot labels (power-tuned, one lambda for all classes)."""
    from ppi_py import ppi_mean_pointestimate  # imported when used: ppi_py loads statsmodels

    return np.asarray(ppi_mean_pointestimate(gold_onehot, oof_probs, pool_probs), dtype=float).reshape(-1)


def _ppi_interval(
    oof_probs: np.ndarray, oof_gold: np.ndarray, pool_probs: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """ppi-python's normal interval for the prediction-powered class shares (labelled texts iid with the pool)."""
    from ppi_py import ppi_mean_ci

    low, high = ppi_mean_ci(np.eye(oof_probs.shape[1])[oof_gold], oof_probs, pool_probs, alpha=1 - level)
    return np.asarray(low, dtype=float).reshape(-1), np.asarray(high, dtype=float).reshape(-1)


def _estimate(estimators: dict[str, Estimator], pool_probs: np.ndarray) -> np.ndarray:
    """Methods × classes matrix of estimated shares."""
    with warnings.catch_warnings():  # EMQ warns when it stops at its iteration limit; its estimate is kept
        warnings.simplefilter("ignore", UserWarning)
        return np.stack([np.asarray(e(pool_probs), dtype=float).reshape(-1) for e in estimators.values()])


def estimate(
    oof_probs: np.ndarray, oof_gold: np.ndarray, pool_probs: np.ndarray, methods: Sequence[str] = METHODS
) -> pd.DataFrame:
    """Point estimates of the class shares of a pool, one row per method, one column per class id.

    Args:
        oof_probs: out-of-fold class probabilities of the labelled texts (``ModelResults.calibrated_probs``).
        oof_gold: their gold label ids (``ModelResults.predictions["gold"]``).
        pool_probs: class probabilities of the pool texts, same classes in the same order.
        methods: which of :data:`METHODS`.
    """
    estimators = fit_quantifiers(oof_probs, oof_gold, methods)
    return pd.DataFrame(_estimate(estimators, np.asarray(pool_probs, dtype=float)), index=list(estimators))


@dataclass
class Bootstrap:
    """Point estimates and bootstrap replicates of the shares of each group (``""``: the whole pool)."""

    methods: list[str]
    members: dict[str, np.ndarray]  # pool rows of each group
    point: dict[str, np.ndarray]  # methods × classes
    boot: dict[str, np.ndarray]  # replicates × methods × classes
    spread: float  # sqrt(G / (G - 1)) with G folds drawn first, else 1: applied to every distance from the estimate

    def interval(self, group: str, method: str, level: float, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of one group and method, its distances from the estimate widened by ``factor``.

        Args:
            group: the group ("" for the whole pool).
            method: one of :attr:`methods`.
            level: the confidence level.
            factor: the calibration's scaling (on top of :attr:`spread`).
        """
        m = self.methods.index(method)
        point, boot = self.point[group][m], self.boot[group][:, m]
        if not len(boot):
            return np.full_like(point, np.nan), np.full_like(point, np.nan)
        alpha = (1 - level) / 2
        return widened(point, *np.quantile(boot, [alpha, 1 - alpha], axis=0), factor * self.spread)


def widened(point: np.ndarray, low: np.ndarray, high: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """An interval with its distances from the estimate scaled by ``factor``; an infinite factor (no widening
    made such intervals hold the truth) gives all that is known, [0, 1].

    Args:
        point: the estimates.
        low: the interval's lower ends.
        high: its upper ends.
        factor: the scaling.
    """
    if not np.isfinite(factor):
        return np.zeros_like(point), np.ones_like(point)
    return point + factor * (low - point), point + factor * (high - point)


def bootstrap(
    oof_probs: np.ndarray,
    oof_gold: np.ndarray,
    pool_probs: np.ndarray,
    groups: Sequence | None = None,
    methods: Sequence[str] = METHODS,
    n_boot: int = 1000,
    seed: int = 0,
    oof_folds: Sequence[int] | None = None,
) -> Bootstrap:
    """Estimates and bootstrap replicates of the class shares of the pool and of each group of it.

    Every replicate resamples the out-of-fold texts (whole folds first when ``oof_folds`` is given), refits
    every method on them, and resamples the pool texts within each group; the groups of one replicate share
    its error rates, so that differences between groups can be read from the same replicates.

    Args:
        oof_probs: out-of-fold class probabilities of the labelled texts.
        oof_gold: their gold label ids 0..K-1.
        pool_probs: class probabilities of the pool texts.
        groups: a group for each pool text, or None.
        methods: which of :data:`METHODS`.
        n_boot: bootstrap replicates (0: estimates only).
        seed: resampling seed.
        oof_folds: the fold of each out-of-fold text, or None (see :func:`shares`).
    """
    if not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise DataError(f"n_boot must be a whole number of replicates, 0 or more (got {n_boot!r}).")
    oof_probs, oof_gold = np.asarray(oof_probs, dtype=float), np.asarray(oof_gold, dtype=int)
    pool_probs = np.asarray(pool_probs, dtype=float)
    methods = check_methods(methods)
    members = {"": np.arange(len(pool_probs))}
    if groups is not None:
        g = pd.Series(list(groups), dtype=object).map(lambda v: "(missing)" if pd.isna(v) else clean_text(v))
        members |= {str(name): idx.to_numpy() for name, idx in g.groupby(g).groups.items()}
    fitted = fit_quantifiers(oof_probs, oof_gold, methods)
    point = {name: _estimate(fitted, pool_probs[idx]) for name, idx in members.items()}
    rng = np.random.default_rng(seed)
    boot = {name: np.empty((n_boot, len(methods), oof_probs.shape[1])) for name in members}
    for b in range(n_boot):
        i = _resample(rng, len(oof_gold), oof_folds)
        estimators = fit_quantifiers(oof_probs[i], oof_gold[i], methods)
        for name, idx in members.items():
            boot[name][b] = _estimate(estimators, pool_probs[rng.choice(idx, len(idx))])
    # drawing G folds with replacement gives (G - 1) / G of the variance between them: widened by its inverse
    n_folds = 0 if oof_folds is None else len(np.unique(oof_folds))
    spread = float(np.sqrt(n_folds / (n_folds - 1))) if n_folds > 1 else 1.0
    return Bootstrap(methods, members, point, boot, spread)


def interval_kind(method: str, factor: float = 1.0) -> str:
    """How the interval of ``method`` is made, as the tables say it (``factor``: its calibration widening).

    Args:
        method: one of :data:`METHODS`.
        factor: the scaling applied after the held-out check (1: none).
    """
    kind = {"PPI": "PPI normal interval"}.get(method, "sampling only" if method in SAMPLING_ONLY else "bootstrap")
    return f"{kind} × {factor:.2f}, calibrated on the held-out check" if factor != 1 else kind


def clip_unit(share: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, ...]:
    """Shares and interval bounds clipped to [0, 1], and where any of them was outside it.

    Args:
        share: point estimates.
        low: lower bounds.
        high: upper bounds.
    """
    outside = (share < 0) | (share > 1) | (low < 0) | (high > 1)
    return np.clip(share, 0, 1), np.clip(low, 0, 1), np.clip(high, 0, 1), outside


def shares(
    oof_probs: np.ndarray,
    oof_gold: np.ndarray,
    pool_probs: np.ndarray,
    class_names: Sequence[str],
    groups: Sequence | None = None,
    methods: Sequence[str] = METHODS,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_group: int = MIN_GROUP,
    oof_folds: Sequence[int] | None = None,
    factors: dict[str, float] | None = None,
    boot: Bootstrap | None = None,
) -> pd.DataFrame:
    """Class shares of the pool (and of each group of it) by each method, with 95% intervals inside [0, 1].

    Every bootstrap replicate resamples the out-of-fold texts (re-estimating the error rates) and, within each
    group, the pool texts; PPI's interval is ppi-python's normal interval instead.

    Args:
        oof_probs: out-of-fold class probabilities of the labelled texts (``ModelResults.calibrated_probs``).
        oof_gold: their gold label ids 0..K-1 (``ModelResults.predictions["gold"]``).
        pool_probs: class probabilities of the pool texts, same classes in the same order.
        class_names: the name of each class id.
        groups: a group for each pool text (e.g. the TV show), or None for the whole pool only.
        methods: which of :data:`METHODS`.
        n_boot: bootstrap replicates (0: no bootstrap intervals, ``lower``/``upper`` left empty but PPI's).
        level: the intervals' confidence level.
        seed: resampling seed.
        min_group: a group with fewer pool texts is marked ``small`` (its interval is unreliable).
        oof_folds: the fold of each out-of-fold text, or None. Given, each replicate first draws whole folds
            (with replacement), then texts within them, so that the differences between the fold models'
            error rates enter the intervals; as G folds drawn with replacement vary (G - 1) / G as much as
            folds do, the interval's distances from the estimate are widened by sqrt(G / (G - 1)).
        factors: a widening factor per method (the calibration of :mod:`nblib.headline`; default 1).
        boot: the replicates already drawn by :func:`bootstrap` with these arguments (None: drawn here).

    Returns:
        One row per group × class × method: ``group`` ("" for the whole pool), ``class`` (name), ``method``,
        ``share``, ``lower``, ``upper`` (fractions in [0, 1]), ``texts`` (pool texts in the group), ``small``,
        ``interval`` (how it was made: "sampling only" for CC and PCC) and ``clipped`` (an estimate or bound
        was outside [0, 1] and was clipped).
    """
    oof_probs, oof_gold = np.asarray(oof_probs, dtype=float), np.asarray(oof_gold, dtype=int)
    pool_probs = np.asarray(pool_probs, dtype=float)
    if pool_probs.shape[1] != oof_probs.shape[1] or len(class_names) != oof_probs.shape[1]:
        raise DataError(
            f"The pool has {pool_probs.shape[1]} class probabilities, the out-of-fold results "
            f"{oof_probs.shape[1]} and the class names {len(class_names)}: they must be the same classes."
        )
    if not 0 < level < 1:
        raise DataError(f"level must be between 0 and 1 (exclusive), e.g. 0.95 (got {level!r}).")
    boot = boot or bootstrap(oof_probs, oof_gold, pool_probs, groups, methods, n_boot, seed, oof_folds)
    factors = factors or {}
    rows = []
    for name, idx in boot.members.items():
        for m, method in enumerate(boot.methods):
            f = float(factors.get(method, 1.0))
            if method == "PPI":
                low, high = widened(boot.point[name][m], *_ppi_interval(oof_probs, oof_gold, pool_probs[idx], level), f)
            else:
                low, high = boot.interval(name, method, level, f)
            share, low, high, clipped = clip_unit(boot.point[name][m], low, high)
            kind = interval_kind(method, f)
            for k, cls in enumerate(class_names):
                rows.append(
                    [
                        name,
                        str(cls),
                        method,
                        share[k],
                        low[k],
                        high[k],
                        len(idx),
                        len(idx) < min_group,
                        kind,
                        clipped[k],
                    ]
                )
    return pd.DataFrame(rows, columns=COLUMNS)


def _resample(rng: np.random.Generator, n: int, clusters: Sequence[int] | None) -> np.ndarray:
    """Bootstrap indices of ``n`` items: plain, or clusters drawn with replacement and then items within each."""
    if clusters is None:
        return rng.integers(0, n, n)
    members = [np.flatnonzero(np.asarray(clusters) == c) for c in np.unique(clusters)]
    drawn = rng.integers(0, len(members), len(members))
    return np.concatenate([rng.choice(members[c], len(members[c])) for c in drawn])


# --- where the truth is known ----------------------------------------------------------------------------


def shifted_prevalence(counts: np.ndarray, up: int, down: int, factor: float = 2.0) -> np.ndarray:
    """Class shares of ``counts`` with class ``up`` weighted ``factor`` times and class ``down`` 1/``factor``, renormalised.

    Args:
        counts: texts per class.
        up: the class whose weight is multiplied.
        down: the class whose weight is divided.
        factor: how much ``up`` gains and ``down`` loses.
    """
    weights = np.ones(len(counts))
    weights[up], weights[down] = factor, 1 / factor
    return counts * weights / (counts * weights).sum()


def shifted_sample(
    gold: np.ndarray,
    up: int,
    down: int,
    rng: np.random.Generator,
    factor: float = 2.0,
    size: float = 0.7,
    texts: int | None = None,
) -> np.ndarray:
    """Indices of a random sample of ``gold`` drawn from the :func:`shifted_prevalence`.

    The class counts are multinomial, as in a pool drawn from a population with those shares. By default the
    sample has ``size`` times as many texts as the largest sample with exactly those shares, drawn without
    replacement; with ``texts`` it has that many, and a class with fewer texts than drawn is drawn with
    replacement (a sample as large as a pool bigger than the held-out fold).

    Args:
        gold: gold label ids of the texts to sample from.
        up: the class made ``factor`` times as frequent.
        down: the class made 1/``factor`` as frequent.
        rng: the random generator.
        factor: the strength of the shift.
        size: the sample size, as a fraction of the largest possible one (leaves room for the multinomial draw).
        texts: the sample size in texts instead (None: by ``size``).
    """
    counts = np.bincount(gold, minlength=max(up, down) + 1)
    target = shifted_prevalence(counts.astype(float), up, down, factor)
    if texts is None:
        n = int(size * min(counts[c] / target[c] for c in np.flatnonzero(target)))
        take = np.minimum(rng.multinomial(n, target), counts)
    else:
        take = rng.multinomial(texts, target)
    return np.concatenate(
        [rng.choice(np.flatnonzero(gold == c), t, replace=bool(t > counts[c])) for c, t in enumerate(take)]
    )


def _held_out(
    probs: np.ndarray,
    gold: np.ndarray,
    folds: np.ndarray,
    test_fold: int,
    up: int | None,
    down: int | None,
    calibrate: bool,
):
    """Training and held-out parts of the out-of-fold results, and the default classes to shift.

    With ``calibrate``, class biases are added as a run adds them, without the held-out fold's labels: the
    training folds' cross-fitted among themselves, the held-out fold's fitted on all training folds.
    """
    train, test = folds != test_fold, folds == test_fold
    tr_p, te_p = probs[train], probs[test]
    if calibrate:
        if len(np.unique(folds[train])) >= 2:
            tr_p = apply_per_fold(tr_p, folds[train], cross_fitted(tr_p, gold[train], folds[train], {}))
        te_p = Calibration(bias=tuple(fit_class_bias(probs[train], gold[train]))).apply(te_p)
    counts = np.bincount(gold[train], minlength=probs.shape[1])
    up = int(np.argmin(counts)) if up is None else up
    down = int(np.argmax(counts)) if down is None else down
    return (tr_p, gold[train]), (te_p, gold[test]), up, down


def shift_check(
    probs: np.ndarray,
    gold: np.ndarray,
    folds: np.ndarray,
    class_names: Sequence[str],
    test_fold: int = 0,
    up: int | None = None,
    down: int | None = None,
    factor: float = 2.0,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    calibrate: bool = True,
) -> pd.DataFrame:
    """Hold out one fold, shift its class shares, and estimate them from the other folds' error rates.

    Args:
        probs: out-of-fold class probabilities of the labelled texts, each fold's scaled by its validation
            temperature (``ModelResults.temperature_scaled_probs``).
        gold: their gold label ids.
        folds: the fold of each text.
        class_names: the name of each class id.
        test_fold: the fold held out.
        up: the class made ``factor`` times as frequent (None: the rarest in the training folds).
        down: the class made 1/``factor`` as frequent (None: the most frequent).
        factor: the strength of the shift.
        methods: which of :data:`METHODS`.
        seed: sampling seed.
        calibrate: add class biases to the probabilities as a run does (``nblib.calibration``), without the
            held-out fold's labels; False: take them as they are.

    Returns:
        One row per class and a last row ``mean`` (mean over classes): ``training share``, ``true share`` (of
        the shifted held-out sample), then per method its estimate and ``<method> error`` (absolute error),
        all fractions; ``attrs["texts"]`` is the size of the shifted sample.
    """
    probs, gold, folds = np.asarray(probs, dtype=float), np.asarray(gold, dtype=int), np.asarray(folds)
    (tr_p, tr_y), (te_p, te_y), up, down = _held_out(probs, gold, folds, test_fold, up, down, calibrate)
    idx = shifted_sample(te_y, up, down, np.random.default_rng(seed), factor)
    k = probs.shape[1]
    truth = np.bincount(te_y[idx], minlength=k) / len(idx)
    est = estimate(tr_p, tr_y, te_p[idx], methods)
    table = pd.DataFrame({"training share": np.bincount(tr_y, minlength=k) / len(tr_y), "true share": truth})
    for m in est.index:
        table[m] = est.loc[m].to_numpy()
        table[f"{m} error"] = np.abs(table[m] - truth)
    table.index = pd.Index([str(c) for c in class_names], name="class")
    table.loc["mean"] = table.mean()
    table.attrs["texts"] = len(idx)
    return table


def needed_factor(need: pd.Series | np.ndarray, level: float = 0.95) -> float:
    """The factor by which the intervals' distances from the estimate must be scaled so that ``level`` of them hold the truth.

    Above 1 where the intervals held the truth less often than ``level``, below 1 where they held it more often
    (the ``level`` quantile of the needed factors; an interval of zero width that misses needs ``inf``).

    Args:
        need: per interval, the factor it needed (the ``need`` column of :func:`summarise_cells`).
        level: the coverage aimed at.
    """
    need = np.asarray(need, dtype=float)
    need = need[~np.isnan(need)]
    return float(np.quantile(need, level, method="higher")) if len(need) else 1.0


def coverage(
    probs: np.ndarray,
    gold: np.ndarray,
    folds: np.ndarray,
    repeats: int = 20,
    n_boot: int = 200,
    level: float = 0.95,
    up: int | None = None,
    down: int | None = None,
    factor: float = 2.0,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    fold_bootstrap: bool = True,
    calibrate: bool = True,
    factors: dict[str, float] | None = None,
    texts: int | None = None,
) -> pd.DataFrame:
    """How often the intervals contain the true shares of shifted held-out samples.

    Repeat ``repeats`` times, cycling through the folds as the held-out fold: draw a shifted sample of it
    (as :func:`shift_check`), compute :func:`shares` with intervals from the other folds, and compare each
    class's estimate and interval with the shares the sample was drawn from (:func:`shifted_prevalence`):
    the pool is taken as a sample of a population of texts, whose shares are what the study reports.

    Args:
        probs: out-of-fold class probabilities of the labelled texts, each fold's scaled by its validation
            temperature (``ModelResults.temperature_scaled_probs``).
        gold: their gold label ids.
        folds: the fold of each text.
        repeats: shifted samples drawn.
        n_boot: bootstrap replicates per sample.
        level: the intervals' confidence level.
        up: the class made more frequent (None: the rarest in the training folds).
        down: the class made less frequent (None: the most frequent).
        factor: the strength of the shift (1: no shift, a plain random sample of the held-out fold).
        methods: which of :data:`METHODS`.
        seed: sampling seed.
        fold_bootstrap: draw whole training folds before texts in the bootstrap (``oof_folds`` of :func:`shares`),
            as :func:`nblib.headline.pool_headline` does; False: texts only.
        calibrate: as in :func:`shift_check`.
        factors: widening factors per method applied to the intervals (as :func:`shares`).
        texts: the size of each shifted sample (None: 70% of the largest the held-out fold gives without
            replacement; :func:`shifted_sample`). Give the pool's size: the factor a biased method needs grows
            with the size, as its intervals narrow and its bias stays.

    Returns:
        One row per method (index ``method``): ``coverage`` (fraction of class intervals holding the truth),
        ``mean abs error`` (over classes and samples), ``mean width`` of the intervals, ``needed factor`` (the
        widening with which ``level`` of them would have held it, :func:`needed_factor`), ``samples``.
    """
    probs, gold, folds = np.asarray(probs, dtype=float), np.asarray(gold, dtype=int), np.asarray(folds)
    if not isinstance(repeats, int | np.integer) or repeats < 1:
        raise DataError(f"repeats (shifted held-out samples) must be a whole number, 1 or more (got {repeats!r}).")
    rng = np.random.default_rng(seed)
    fold_ids = np.unique(folds)
    held = {f: _held_out(probs, gold, folds, f, up, down, calibrate) for f in fold_ids}
    names = [str(c) for c in range(probs.shape[1])]
    parts = []
    for r in range(repeats):
        (tr_p, tr_y), (te_p, te_y), u, d = held[fold_ids[r % len(fold_ids)]]
        idx = shifted_sample(te_y, u, d, rng, factor, texts=texts)
        truth = shifted_prevalence(np.bincount(te_y, minlength=probs.shape[1]).astype(float), u, d, factor)
        table = shares(
            tr_p,
            tr_y,
            te_p[idx],
            names,
            methods=methods,
            n_boot=n_boot,
            level=level,
            seed=int(rng.integers(2**31)),
            oof_folds=folds[folds != fold_ids[r % len(fold_ids)]] if fold_bootstrap else None,
            factors=factors,
        )
        table["sample"] = r
        table["truth"] = truth[table["class"].astype(int)]
        parts.append(table)
    long = pd.concat(parts, ignore_index=True)
    long["covered"] = (long["lower"] <= long["truth"]) & (long["truth"] <= long["upper"])
    long["abs error"] = (long["share"] - long["truth"]).abs()
    long["width"] = long["upper"] - long["lower"]
    above = long["truth"] >= long["share"]
    reach = np.where(above, long["upper"] - long["share"], long["share"] - long["lower"])
    with np.errstate(divide="ignore", invalid="ignore"):
        long["need"] = np.where(long["abs error"] == 0, 0.0, long["abs error"] / reach)
    return summarise_cells(long, level)


def summarise_cells(long: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per method: coverage, mean absolute error, mean width and needed factor of the checked intervals.

    Args:
        long: one row per sample × class × method: :func:`shares`' columns plus ``sample``, ``truth``,
            ``covered``, ``abs error``, ``width`` and ``need`` (the factor by which the interval would have to
            be widened to hold the truth: at most 1 if it does), as :func:`coverage` makes them.
        level: the coverage aimed at.
    """
    by = long.groupby("method", sort=False)
    out = by.agg(
        coverage=("covered", "mean"), **{"mean abs error": ("abs error", "mean"), "mean width": ("width", "mean")}
    )
    out["needed factor"] = by["need"].apply(lambda s: needed_factor(s, level))
    out["samples"] = long["sample"].nunique()
    return out


def describe_check(check: pd.DataFrame) -> str:
    """One sentence on a :func:`shift_check`: the mean absolute error of each method, in percentage points.

    Args:
        check: the table :func:`shift_check` returns.
    """
    errors = check.loc["mean", [c for c in check.columns if c.endswith(" error")]]
    named = ", ".join(f"{c.removesuffix(' error')} {100 * e:.1f}" for c, e in errors.items())
    best = errors.idxmin().removesuffix(" error")
    return (
        f"On a held-out fold resampled to other class shares ({check.attrs['texts']} texts), the mean absolute error "
        f"per class is, in percentage points: {named}; {best} lands closest to the true shares."
    )


# --- the pool sheet and the run ---------------------------------------------------------------------------


def run_results(run_dir: str | Path, names: Names = NOTEBOOK_NAMES) -> ModelResults:
    """The out-of-fold results of a finished run, or a :class:`DataError` that says what to run first.

    Args:
        run_dir: the run's results folder (``results/<study>/models/<run>``).
        names: how the caller names its parameters, for the messages.
    """
    path = Path(run_dir)
    owner = run_of_saved_model(path)
    if owner != path:
        raise DataError(
            f"{path} is a saved model; {names.run.strip('= ')} must be its run's results folder ({owner}), "
            f"whose out-of-fold predictions give the error rates."
        )
    if not RunFolder(path).config_file.exists():
        raise FileNotFoundError(
            f"No run results in {path} (no config.json): the class shares need the out-of-fold predictions of the "
            f"model's run. Give {names.run.strip('= ')} a run folder results/<study>/models/<run> (in 05: "
            f"model_dir=…/models/<run>/final, or bert_run=<run>)."
        )
    run = RunFolder(path)
    if not (run.is_finished() and (path / "predictions.csv").exists()):
        raise DataError(
            f"{path} has no out-of-fold predictions yet (folds done: {run.done_folds()}): run 03_bert_cv "
            f"(or 02_baselines for a baseline) to the end first; the error rates come from those predictions."
        )
    return load_run(path)


@dataclass
class Pool:
    """The pool texts whose shares are estimated: their probabilities, groups and what was left out."""

    probs: np.ndarray
    groups: np.ndarray | None
    repeated: int  # texts that repeat a labelled text (left out)
    empty: int  # rows without a prediction (left out)


def pool_from_table(
    table: pd.DataFrame,
    class_names: Sequence[str],
    labelled_texts: Sequence[str],
    text_col: str,
    group_col: str | None = None,
    names: Names = NOTEBOOK_NAMES,
) -> Pool:
    """The probabilities (and groups) of a predicted sheet, checked against the run's classes.

    Rows without probabilities (empty texts) and texts that repeat a labelled text are left out and counted.

    Args:
        table: the sheet as :mod:`nblib.predict` writes it: the input columns and one ``prob_<class name>``
            column per class.
        class_names: the run's class names, in label-id order.
        labelled_texts: the texts of the labelled sheet (``ModelResults.predictions["text"]``).
        text_col: the text column.
        group_col: a column that groups the texts, or None.
        names: how the caller names its parameters, for the messages.
    """
    wanted = [f"prob_{c}" for c in class_names]
    found = [str(c) for c in table.columns if str(c).startswith("prob_")]
    if sorted(found) != sorted(wanted):
        raise DataError(
            f"The sheet's class columns {found} do not match the run's classes, which need {wanted}: "
            f"label the sheet with a model of the same classes (python -m nblib.predict)."
        )
    for col, flag in [(text_col, names.column), (group_col, names.group)]:
        if col is not None and col not in table.columns:
            raise DataError(
                f"No column '{col}' in the predicted sheet; its columns: {[str(c) for c in table.columns]}. "
                f"Set {flag}<one of them>."
            )
    probs = table[wanted].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    present = ~np.isnan(probs).any(axis=1)
    labelled = {clean_text(t) for t in labelled_texts}
    repeated = present & table[text_col].map(lambda t: not pd.isna(t) and clean_text(t) in labelled).to_numpy()
    if repeated.any():
        log.warning(
            "%d pool text(s) repeat labelled texts: left out of the shares (they are not unseen).", int(repeated.sum())
        )
    keep = present & ~repeated
    groups = table[group_col].to_numpy(dtype=object)[keep] if group_col else None
    return Pool(probs[keep], groups, int(repeated.sum()), int((~present).sum()))


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m nblib.shares RUN_DIR PREDICTED_SHEET OUT``; returns the exit status.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
    """
    from . import headline  # the headline builds on this module

    ap = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        prog="python -m nblib.shares",
        description="Class shares of a predicted sheet with intervals; the headline method chosen on held-out "
        "shifted samples of the run's labelled texts (docs/shares.md).",
    )
    ap.add_argument(
        "run_dir", help="the run's results folder, results/<study>/models/<run> (its out-of-fold predictions)"
    )
    ap.add_argument("predicted", help="a sheet with one prob_<class> column per class, as nblib.predict writes it")
    ap.add_argument("output", help=".csv, .tsv or .xlsx to write (the suffix decides the format)")
    cli.add_sheet_options(ap, "the predicted file")
    ap.add_argument("--group", default=None, help="a column that groups the texts (shares per group)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help=f"of {' '.join(METHODS)}")
    ap.add_argument("--n-boot", type=cli.int_in(20), default=1000, help="bootstrap replicates, 20 or more")
    ap.add_argument(
        "--level",
        type=cli.float_in(0, 1, low_open=True, high_open=True),
        default=0.95,
        help="confidence level",
    )
    ap.add_argument(
        "--check-repeats",
        type=cli.positive_int,
        default=10,
        help="shifted held-out samples of the check that picks the headline method",
    )
    ap.add_argument(
        "--check-boot",
        type=cli.int_in(20),
        default=200,
        help="bootstrap replicates per held-out sample, 20 or more",
    )
    ap.add_argument(
        "--check-shift",
        type=cli.float_in(1),
        default=2.0,
        help="the check makes its rarest class this many times more, its largest this many times less frequent ",
    )
    ap.add_argument(
        "--min-group",
        type=cli.positive_int,
        default=MIN_GROUP,
        help="groups with fewer texts are marked small",
    )
    ap.add_argument("--seed", type=cli.int_in(0), default=0, help="resampling seed")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = Path(args.output)
        diff_out = out.with_name(f"{out.stem}_differences{out.suffix}")
        for path in [out, diff_out] if args.group else [out]:
            if path.exists() and not args.overwrite:
                raise FileExistsError(f"{path} exists; choose another output file, or pass --overwrite.")
        writer_kind(out)
        methods = check_methods(args.methods, CLI_NAMES)
        res = run_results(args.run_dir, CLI_NAMES)
        sheet = read_sheet(args.predicted, [args.column], args.sheet, args.header_row, args.encoding, cli.SHEET_PARAMS)
        pool = pool_from_table(
            sheet.df, res.config["label_names"], res.predictions["text"], args.column, args.group, CLI_NAMES
        )
        choice = headline.run_choice(
            res, methods, args.check_repeats, args.check_boot, args.level, args.seed, args.check_shift, len(pool.probs)
        )
        log.info("headline: %s", choice.reason)
        result = headline.pool_headline(res, pool, choice, methods, args.n_boot, args.level, args.seed, args.min_group)
    except (DataError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_table(result.table, out)
    if args.group:
        write_table(result.differences, diff_out)
        print(f"group differences ({choice.method}): {diff_out}")
    print(f"{len(pool.probs)} pool texts ({pool.repeated} repeating labelled texts and {pool.empty} empty left out).")
    whole = result.table[result.table["group"] == ""].pivot(index="class", columns="method", values="share")
    print(whole[list(dict.fromkeys(result.table["method"]))].round(3).to_string())
    print(headline.paper_sentence(result, unit="texts"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
