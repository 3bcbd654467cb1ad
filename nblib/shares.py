"""Class shares of a pool by each estimator, with intervals that include the uncertainty of the error rates.

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

:mod:`nblib.shares_check` tests all this where the truth is known; :mod:`nblib.shares_pool` reads the pool and
the run; ``python -m nblib.shares_cli`` is the command line.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from quapy.method.aggregative import ACC, CC, EMQ, PACC, PCC, AggregativeQuantifier
from sklearn.base import BaseEstimator, ClassifierMixin

from .sheets import DataError, clean_text

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
