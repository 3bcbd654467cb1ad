"""The one answer a study reports: class shares by the method that held out best, with calibrated intervals.

Which class-share estimator to trust depends on the model: with a weak classifier the adjusted estimates
(ACC, PACC, EMQ) swing with their noisy error rates and the probability average (PCC) lands closest; with a
strong one the adjusted estimates are unbiased and precise while PCC keeps the model's pull towards the
training shares. The run's own labelled texts decide, on the held-out shifted check of :mod:`nblib.shares_check`
(each fold in turn held out, resampled to other class shares, estimated from the other folds):

1. **Choice**: the method with the lowest mean absolute error over the check's samples and classes; methods
   within :data:`TIE` (10%) of that error count as tied, and of those the one with the narrowest calibrated
   intervals wins (mean width on the check × its factor).
2. **Calibration**: the chosen method's intervals are scaled around the estimate by the factor with which
   95% of its intervals on the check's samples hold the truth (:func:`nblib.shares_check.needed_factor`): widened
   where they held it less often, narrowed where the bootstrap over-covers; the factor is stated with the
   estimate. CC and PCC intervals are sampling-only (they ignore the model's bias), which is what the
   widening makes up for when one of them is chosen.
3. **Report**: the chosen method alone in the paper table, figure and sentence (:func:`paper_sentence`), with
   differences between groups from the same bootstrap replicates (:func:`group_differences`); the other methods
   go to an appendix table.

The check's samples are drawn at the pool's size (with replacement from a held-out fold smaller than the
pool): the sampling part of an interval shrinks with the size while a method's bias does not, so the factor a
biased method (CC, PCC, or PPI under shift) needs depends on it. Groups smaller than the pool get the whole
pool's factor, which for a biased method is, if anything, too wide for them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import shares, shares_check, shares_pool
from .results import ModelResults
from .sheets import DataError

log = logging.getLogger(__name__)
TIE = 0.10  # methods whose check error is within 10% of the lowest count as tied
DIFF_COLUMNS = ["group", "other", "class", "method", "difference", "lower", "upper", "clear"]


@dataclass(frozen=True)
class Choice:
    """The headline method, the widening of its intervals, why, and the held-out check it rests on."""

    method: str
    factor: float
    reason: str
    check: pd.DataFrame  # nblib.shares_check.coverage: one row per method


def choose(check: pd.DataFrame, level: float = 0.95, tie: float = TIE) -> Choice:
    """The headline method of a held-out check (:func:`nblib.shares_check.coverage`), its widening and the reason.

    Args:
        check: one row per method with ``mean abs error``, ``coverage``, ``needed factor`` and ``samples``.
        level: the coverage the intervals should reach.
        tie: methods whose error is within this fraction of the lowest are tied; the narrowest calibrated
            interval (mean width × needed factor) wins. Methods whose intervals need an infinite widening
            (zero width around a wrong estimate) are left out unless all do.
    """
    if check.empty:
        raise DataError("The held-out check has no methods to choose from: set shares_methods= (or --methods).")
    finite = check.index[np.isfinite(check["needed factor"])]
    err = check["mean abs error"]
    # a method whose intervals no finite widening makes hold the truth (zero width around a wrong estimate)
    # cannot be calibrated: it is chosen only when every method is like that
    best = err[finite].min() if len(finite) else err.min()
    tied = [m for m in (finite if len(finite) else check.index) if err[m] <= best * (1 + tie)]
    calibrated = (check["mean width"] * check["needed factor"]).fillna(np.inf)
    method = min(tied, key=lambda m: (calibrated[m], err[m]))
    factor = float(check.loc[method, "needed factor"])
    others = ", ".join(f"{m} {100 * e:.1f}" for m, e in err.items() if m != method)
    why = "lowest mean absolute error" if err[method] == best else f"within {tie:.0%} of the lowest error"
    if len(finite) < len(check):
        why += f" of the methods whose intervals can be calibrated (not {', '.join(check.index.difference(finite))})"
    if len(tied) > 1:
        why += f" (tied with {', '.join(m for m in tied if m != method)}; its calibrated intervals are the narrowest)"
    held = check.loc[method, "coverage"]
    scaled = "widened" if factor > 1 else "narrowed"
    widened = (
        f"they are {scaled} ×{factor:.2f}, with which {level:.0%} of them hold it there"
        if factor != 1
        else "they are kept as they are"
    )
    reason = (
        f"{method}: {why} on {int(check.loc[method, 'samples'])} shifted held-out samples, "
        f"{100 * err[method]:.1f} percentage points per class (others: {others}); "
        f"its {level:.0%} intervals held the true share in {held:.0%} of the class cells, so {widened}."
    )
    return Choice(method, factor, reason, check)


def run_choice(
    res: ModelResults,
    methods: Sequence[str] = shares.METHODS,
    repeats: int = 10,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    shift: float = 2.0,
    texts: int | None = None,
) -> Choice:
    """The held-out shifted check of a run's out-of-fold predictions, and the headline method it picks.

    Args:
        res: the run's results.
        methods: the candidate methods.
        repeats: shifted held-out samples (cycling through the folds).
        n_boot: bootstrap replicates per sample.
        level: the intervals' confidence level.
        seed: sampling seed.
        shift: how much the check makes its rarest class more and its largest less frequent; the choice and
            the calibration hold for pools shifted about as much (raise it where the pool may differ more).
        texts: the size of the check's samples: give the pool's (drawn with replacement from a smaller fold),
            so that the calibration is made at the pool's size.
    """
    check = shares_check.coverage(
        res.temperature_scaled_probs,
        res.predictions["gold"].to_numpy(),
        res.predictions["fold"].to_numpy(),
        repeats=repeats,
        n_boot=n_boot,
        level=level,
        factor=shift,
        methods=methods,
        seed=seed,
        texts=texts,
    )
    return choose(check, level)


@dataclass
class Headline:
    """Class shares of a pool by every method (``headline`` marks the chosen one) and its group differences."""

    choice: Choice
    table: pd.DataFrame  # nblib.shares.COLUMNS + headline
    differences: pd.DataFrame  # DIFF_COLUMNS
    level: float = 0.95

    @property
    def paper(self) -> pd.DataFrame:
        """The headline method's rows only (the paper table and figure)."""
        return self.table[self.table["headline"]].drop(columns="headline").reset_index(drop=True)


def headline_shares(
    oof_probs: np.ndarray,
    oof_gold: np.ndarray,
    pool_probs: np.ndarray,
    class_names: Sequence[str],
    choice: Choice,
    groups: Sequence | None = None,
    methods: Sequence[str] = shares.METHODS,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_group: int = shares.MIN_GROUP,
    oof_folds: Sequence[int] | None = None,
) -> Headline:
    """:func:`nblib.shares.shares` of every method with the chosen one's intervals widened, and group differences.

    Args:
        oof_probs: out-of-fold class probabilities of the labelled texts (as :func:`nblib.shares.shares`).
        oof_gold: their gold label ids.
        pool_probs: the pool's class probabilities.
        class_names: the class names, in label order.
        choice: the headline method and its widening factor (:func:`choose`); computed even when ``methods``
            leaves it out.
        groups: the group of each pool text (None: the whole pool only).
        methods: the other methods shown beside it.
        n_boot: bootstrap replicates.
        level: the intervals' confidence level.
        seed: resampling seed.
        min_group: groups with fewer texts are marked small.
        oof_folds: the fold of each labelled text (whole folds are drawn first in the bootstrap).
    """
    methods = list(dict.fromkeys([*shares.check_methods(methods), choice.method]))
    boot = shares.bootstrap(oof_probs, oof_gold, pool_probs, groups, methods, n_boot, seed, oof_folds)
    table = shares.shares(
        oof_probs,
        oof_gold,
        pool_probs,
        class_names,
        groups,
        methods,
        n_boot,
        level,
        seed,
        min_group,
        oof_folds,
        factors={choice.method: choice.factor},
        boot=boot,
    )
    table["headline"] = table["method"] == choice.method
    return Headline(choice, table, group_differences(boot, class_names, choice, level, min_group), level)


def pool_headline(
    res: ModelResults,
    pool: shares_pool.Pool,
    choice: Choice,
    methods: Sequence[str] = shares.METHODS,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_group: int = shares.MIN_GROUP,
) -> Headline:
    """:func:`headline_shares` of a checked pool (:func:`nblib.shares_pool.pool_from_table`) with a run's error rates.

    Args:
        res: the run's results.
        pool: the pool.
        choice: the headline method (:func:`run_choice`).
        methods: the methods shown besides it (appendix).
        n_boot: bootstrap replicates.
        level: the intervals' confidence level.
        seed: resampling seed.
        min_group: groups with fewer texts are marked ``small``.
    """
    if len(pool.probs) == 0:
        raise DataError("No pool texts left to estimate shares from (all empty, or all repeat labelled texts).")
    return headline_shares(
        res.calibrated_probs,
        res.predictions["gold"].to_numpy(),
        pool.probs,
        res.config["label_names"],
        choice,
        pool.groups,
        methods,
        n_boot,
        level,
        seed,
        min_group,
        oof_folds=res.predictions["fold"].to_numpy(),
    )


def group_differences(
    boot: shares.Bootstrap, class_names: Sequence[str], choice: Choice, level: float = 0.95, min_group: int = 0
) -> pd.DataFrame:
    """Share differences between every pair of groups by the chosen method, with intervals from the same replicates.

    A replicate draws the error rates once for all groups, so the differences carry that uncertainty once; the
    intervals are widened like the shares' (fold draw and the choice's factor) and kept inside [-1, 1].

    Args:
        boot: :func:`nblib.shares.bootstrap` of the pool with groups.
        class_names: the name of each class id.
        choice: the headline method and its widening.
        level: the intervals' confidence level.
        min_group: groups with fewer texts are left out (too few for an interval).

    Returns:
        One row per pair × class: ``group``, ``other``, ``class``, ``method``, ``difference`` (group minus other,
        fraction), ``lower``, ``upper``, ``clear`` (the interval leaves out 0).
    """
    m = boot.methods.index(choice.method)
    named = [g for g, idx in boot.members.items() if g and len(idx) >= max(min_group, 1)]
    alpha = (1 - level) / 2
    rows = []
    for a, b in itertools.combinations(named, 2):
        diff = boot.point[a][m] - boot.point[b][m]
        if not np.isfinite(choice.factor):
            low, high = np.full_like(diff, -1.0), np.full_like(diff, 1.0)
        elif len(boot.boot[a]):
            reps = boot.boot[a][:, m] - boot.boot[b][:, m]
            low, high = (
                np.clip(diff + choice.factor * boot.spread * (np.quantile(reps, q, axis=0) - diff), -1, 1)
                for q in (alpha, 1 - alpha)
            )
        else:
            low = high = np.full_like(diff, np.nan)
        for k, cls in enumerate(class_names):
            clear = bool(low[k] > 0 or high[k] < 0)
            rows.append([a, b, str(cls), choice.method, diff[k], low[k], high[k], clear])
    return pd.DataFrame(rows, columns=DIFF_COLUMNS)


def _pct(x: float) -> str:
    """A share in percent: whole numbers from 10%, one decimal below."""
    return f"{100 * x:.0f}" if abs(x) >= 0.095 else f"{100 * x:.1f}"


def paper_sentence(headline: Headline, unit: str = "comments") -> str:
    """The headline shares in words, per group, and the group differences whose interval leaves out zero.

    Args:
        headline: :func:`headline_shares` output.
        unit: what the pool's texts are, e.g. "comments".
    """
    ci = f"{headline.level:.0%} CI"
    paper = headline.paper
    parts = []
    for group, rows in paper.groupby("group", sort=False):
        n, small = int(rows["texts"].iloc[0]), bool(rows["small"].iloc[0])
        each = ", ".join(
            f"{_pct(r['share'])}%"
            + (f" ({ci} {_pct(r['lower'])}–{_pct(r['upper'])}%)" if not np.isnan(r["lower"]) else "")
            + f" {'are' if i == 0 else ''} in class {r['class']}".replace("  ", " ")
            for i, r in enumerate(rows.sort_values("share", ascending=False).to_dict("records"))
        )
        where = (
            f"Of the {n:,} {unit}" if not group else f"In group {group} ({n:,} {unit}{', too few' if small else ''})"
        )
        parts.append(f"{where}, an estimated {each}.")
    c = headline.choice
    widened = f", intervals scaled ×{c.factor:.2f} to hold on held-out samples"
    parts.append(f"(Estimator: {c.method}, chosen on shifted held-out folds{widened}.)")
    clear = headline.differences[headline.differences["clear"]]
    for r in clear.to_dict("records"):
        flip = r["difference"] < 0
        more, less = (r["other"], r["group"]) if flip else (r["group"], r["other"])
        d, lo, hi = (-r["difference"], -r["upper"], -r["lower"]) if flip else (r["difference"], r["lower"], r["upper"])
        parts.append(
            f"Group {more} has more {r['class']} than group {less}: difference {100 * d:.0f} points "
            f"[{100 * lo:.0f}, {100 * hi:.0f}]."
        )
    if len(headline.differences) and clear.empty:
        parts.append(f"No difference between the groups is clear at the {headline.level:.0%} level.")
    return " ".join(parts)
