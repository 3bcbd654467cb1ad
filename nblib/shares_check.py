"""How well the class-share estimators do where the truth is known: a held-out fold resampled to other shares.

One fold is held out, resampled to class shares unlike those of the training folds (:func:`shifted_sample`),
and its shares are estimated from the other folds' error rates: :func:`shift_check` gives each method's error
on one such sample, :func:`coverage` how often the intervals of many samples hold the true shares, and the
factor by which they would have to be widened to hold them as often as they claim (:func:`needed_factor`).
:mod:`nblib.headline` chooses the reported method and calibrates its intervals on this check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .calibration import Calibration, apply_per_fold, cross_fitted, fit_class_bias
from .shares import METHODS, estimate, shares
from .sheets import DataError


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
    (as :func:`shift_check`), compute :func:`nblib.shares.shares` with intervals from the other folds, and compare each
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
        fold_bootstrap: draw whole training folds before texts in the bootstrap (``oof_folds`` of :func:`nblib.shares.shares`),
            as :func:`nblib.headline.pool_headline` does; False: texts only.
        calibrate: as in :func:`shift_check`.
        factors: widening factors per method applied to the intervals (as :func:`nblib.shares.shares`).
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
        long: one row per sample × class × method: :func:`nblib.shares.shares`' columns plus ``sample``, ``truth``,
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
