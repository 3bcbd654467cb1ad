"""How well two labellings of the same texts agree: Cohen's κ and Krippendorff's α (nominal), with bootstrap
intervals over texts, overall and per class (one-vs-rest).

What is compared is any two label columns matched by text (:func:`match_by_text`): a second coder's sheet
against the labelled sheet (the human ceiling every model is judged against), each model's out-of-fold
predictions against the labels, an LLM run against both (:func:`study_agreement`). :func:`agreement_table`
gives the numbers (rows: each rater against the reference, overall and per class), :func:`nblib.tables.agreement`
the paper table, :func:`summary` one sentence. Without a second coder the table's note and the sentence say
that the human ceiling is not measured: no ceiling is invented.

* κ: :func:`sklearn.metrics.cohen_kappa_score`; α: the ``krippendorff`` package (nominal level), which also
  takes more than two coders and missing ratings (NaN), e.g. a texts × paraphrases label matrix, transposed.
* Intervals: percentile bootstrap over texts (:func:`interval`, seeded), the texts resampled with replacement.
  :func:`agreement_table` draws its replicates once per row and computes κ and α of every replicate from its
  contingency table (two raters, nominal: both are functions of the K × K table, checked against sklearn and
  ``krippendorff`` in the tests), overall and per class in one pass: calling the libraries 2 × (K + 1) × 1,000
  times takes minutes per row on 8,665 texts (about 15 ms a call on 2 busy cores), the tables a few seconds.
* Per class: the two labellings turned into "class k or not" (one-vs-rest); κ and α of that binary labelling.
  Undefined values (a class that neither rater uses, one category only) are NaN, never 0 or 1.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import krippendorff
import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from .data import LabelledData, LoadReport, annotated_rows
from .results import ModelResults
from .sheets import DataError, cell_text

if TYPE_CHECKING:
    from .study import Study

log = logging.getLogger(__name__)

OVERALL = "overall"  # the class column's value for the all-classes row
LABELS = "labels"  # the labelled sheet's labels, as a rater
SECOND_CODER = "second coder"
COLUMNS = ["texts", "missing", "kappa", "kappa_lower", "kappa_upper", "alpha", "alpha_lower", "alpha_upper"]
NO_SECOND_CODER = (
    "No second coder's labels: how well two people agree (the ceiling for the models) is not measured here; "
    "give a second coder's sheet to measure it."
)


def _missing(values: Sequence) -> np.ndarray:
    return pd.isna(pd.Series(list(values), dtype=object)).to_numpy()


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's κ of two raters' labels of the same texts (sklearn); pairs with a missing label are left out.

    Args:
        a: the first rater's labels (None/NaN: missing).
        b: the second rater's labels, in the same order.

    Returns:
        κ, or NaN where it is undefined (no pair, or a single category for both raters).
    """
    if len(a) != len(b):
        raise ValueError(f"the two raters have {len(a)} and {len(b)} labels: they must label the same texts")
    a, b = np.asarray(a), np.asarray(b)
    both = (
        np.vstack([a, b])
        if a.dtype.kind in "biuf" and b.dtype.kind in "biuf"
        else np.vstack([a.astype(object), b.astype(object)])
    )
    codes, n_values = _codes(both)
    codes = codes[:, ~np.isnan(codes).any(axis=0)]
    if n_values < 2 or not codes.size or len(np.unique(codes)) < 2:
        return float("nan")
    return float(cohen_kappa_score(codes[0].astype(int), codes[1].astype(int)))


def _codes(ratings: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels as codes 0…V−1 (NaN: missing), the same label the same code (1, 1.0 and True alike), and V."""
    if ratings.dtype.kind in "biuf":  # numbers only: no per-value conversion (the bootstrap calls this often)
        numbers = ratings.astype(float)
        present = ~np.isnan(numbers)
        values, inverse = np.unique(numbers[present], return_inverse=True)
        codes = np.full(numbers.shape, np.nan)
        codes[present] = inverse
        return codes, len(values)

    def key(v: object) -> object:
        if pd.isna(v):
            return None
        return float(v) if isinstance(v, (bool, int, float, np.number, np.bool_)) else str(v)

    codes, values = pd.factorize(pd.Series([key(v) for v in ratings.ravel()], dtype=object))
    return np.where(codes < 0, np.nan, codes).reshape(ratings.shape), len(values)


def krippendorff_alpha(ratings: np.ndarray) -> float:
    """Krippendorff's α at the nominal level (the ``krippendorff`` package), any number of coders, missing allowed.

    Args:
        ratings: coders × units; a label per cell (numbers or texts), NaN/None where a coder gave none.

    Returns:
        α, or NaN where it is undefined (fewer than two distinct labels, or no unit with two ratings).
    """
    ratings = np.asarray(ratings)
    if ratings.ndim != 2:
        raise ValueError(f"ratings must be coders × units (2-D), not shape {ratings.shape}")
    codes, n_values = _codes(ratings)
    pairable = (~np.isnan(codes)).sum(axis=0) >= 2
    if n_values < 2 or not pairable.any() or len(np.unique(codes[:, pairable][~np.isnan(codes[:, pairable])])) < 2:
        return float("nan")
    return float(
        krippendorff.alpha(reliability_data=codes, level_of_measurement="nominal", value_domain=list(range(n_values)))
    )


def interval(
    statistic: Callable[[np.ndarray], float],
    ratings: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """A percentile bootstrap interval of an agreement statistic, resampling the units (texts) with replacement.

    Args:
        statistic: a function of a coders × units array (e.g. :func:`krippendorff_alpha`, or
            ``lambda r: cohen_kappa(r[0], r[1])``).
        ratings: coders × units.
        n_boot: bootstrap replicates.
        seed: the seed of the resampling (the same seed gives the same interval).
        level: the interval's coverage.

    Returns:
        (lower, upper); NaN where no replicate gives a value.
    """
    ratings = np.asarray(ratings)
    n = ratings.shape[1]
    if n == 0:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reps = np.array([statistic(ratings[:, d]) for d in draws], dtype=float)
    lower, upper = _percentiles(reps[None, :], level)[0]
    return float(lower), float(upper)


def _percentiles(reps: np.ndarray, level: float) -> np.ndarray:
    """(lower, upper) of each row of replicates, NaN replicates left out (rows without any: NaN)."""
    out = np.full((reps.shape[0], 2), np.nan)
    tail = (1 - level) / 2 * 100
    for i, r in enumerate(reps):
        r = r[np.isfinite(r)]
        if len(r):
            out[i] = np.percentile(r, [tail, 100 - tail])
    return out


def _tables(a: np.ndarray, b: np.ndarray, k: int, draws: np.ndarray) -> np.ndarray:
    """Contingency tables (rows: ``a``, columns: ``b``) of the sample and of each bootstrap draw: (1 + B) × K × K."""
    pairs = a * k + b
    idx = np.vstack([np.arange(len(a))[None, :], draws])
    offset = (np.arange(len(idx)) * k * k)[:, None]
    counts = np.bincount((pairs[idx] + offset).ravel(), minlength=len(idx) * k * k)
    return counts.reshape(len(idx), k, k).astype(float)


def _one_vs_rest(tables: np.ndarray, c: int) -> np.ndarray:
    """The 2 × 2 tables of "class c or not" from K × K tables."""
    both = tables[:, c, c]
    a_only = tables[:, c, :].sum(axis=1) - both
    b_only = tables[:, :, c].sum(axis=1) - both
    rest = tables.sum(axis=(1, 2)) - both - a_only - b_only
    return np.stack([np.stack([both, a_only], -1), np.stack([b_only, rest], -1)], 1)


def _kappa_of_tables(tables: np.ndarray) -> np.ndarray:
    """Cohen's κ of each contingency table: (p_o − p_e) / (1 − p_e); NaN where p_e = 1."""
    n = tables.sum(axis=(1, 2))
    observed = np.trace(tables, axis1=1, axis2=2) / n
    expected = (tables.sum(axis=2) * tables.sum(axis=1)).sum(axis=1) / n**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isclose(expected, 1), np.nan, (observed - expected) / (1 - expected))


def _alpha_of_tables(tables: np.ndarray) -> np.ndarray:
    """Krippendorff's α (nominal, two coders, no missing) of each table: the coincidences are o = T + Tᵀ, and
    α = 1 − (n.. − 1) Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k (Krippendorff 2011, "Computing Krippendorff's α")."""
    coincidences = tables + tables.transpose(0, 2, 1)
    n_c = coincidences.sum(axis=2)
    total = n_c.sum(axis=1)
    disagree = coincidences.sum(axis=(1, 2)) - np.trace(coincidences, axis1=1, axis2=2)
    expected = total**2 - (n_c**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected == 0, np.nan, 1 - (total - 1) * disagree / expected)


def _ids(values: Sequence, name: str, k: int) -> np.ndarray:
    """Class ids 0…K−1 as floats (NaN: missing); anything else is an error naming the column."""
    series = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    bad = ~_missing(values) & ~series.isin(range(k)).to_numpy()
    if bad.any():
        shown = sorted({str(v) for v, b in zip(values, bad) if b})[:10]
        raise ValueError(f"column {name!r}: {shown} are not class ids 0…{k - 1} (map labels to ids first)")
    return series.to_numpy(dtype=float)


def agreement_table(
    columns: Mapping[str, Sequence],
    reference: str,
    label_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    coders: Sequence[str] = (),
) -> pd.DataFrame:
    """κ and α of each column against ``reference``, overall and per class, with bootstrap intervals over texts.

    Args:
        columns: label columns by rater name, all of the same texts in the same order: class ids 0…K−1, NaN
            where a rater has no label (a text the coder skipped, or an LLM could not score).
        reference: the column the others are compared with (e.g. ``"labels"``).
        label_names: the class names by id (K).
        n_boot: bootstrap replicates (texts resampled with replacement, separately for each row).
        seed: the seed of the resampling (the same for every row).
        level: the intervals' coverage.
        coders: which columns are people (second coders): their rows are the human ceiling. None given: the
            note says that no second coder was measured (:data:`NO_SECOND_CODER`).

    Returns:
        Index (``rater``, ``reference``, ``class``: ``overall`` then each class name); columns ``texts`` (labelled
        by both), ``missing`` (texts of the reference the rater left without label), ``kappa``, ``alpha`` and
        their ``_lower``/``_upper`` bounds. ``attrs``: ``note`` (how it was computed, and the coders), ``coders``.
    """
    if reference not in columns:
        raise ValueError(f"reference {reference!r} is not one of the columns {list(columns)}")
    unknown = sorted(set(coders) - set(columns))
    if unknown:
        raise ValueError(f"coders {unknown} are not among the columns {list(columns)}")
    k = len(label_names)
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the columns must hold the same texts in the same order; their lengths differ: {lengths}")
    ref = _ids(columns[reference], reference, k)
    rows = []
    for name, values in columns.items():
        if name == reference:
            continue
        other = _ids(values, name, k)
        both = ~np.isnan(ref) & ~np.isnan(other)
        a, b = ref[both].astype(int), other[both].astype(int)
        draws = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a))) if len(a) else None
        tables = _tables(a, b, k, draws) if len(a) else np.zeros((1, k, k))
        for c, cls in [(None, OVERALL), *enumerate(label_names)]:
            t = tables if c is None else _one_vs_rest(tables, c)
            kappa, alpha = _kappa_of_tables(t), _alpha_of_tables(t)
            x, y = (a, b) if c is None else (a == c, b == c)
            point_kappa = cohen_kappa(x, y)
            point_alpha = krippendorff_alpha(np.vstack([x, y]))
            (kl, ku), (al, au) = _percentiles(np.vstack([kappa[1:], alpha[1:]]), level)
            rows.append(
                {
                    "rater": name,
                    "reference": reference,
                    "class": str(cls),
                    "texts": int(both.sum()),
                    "missing": int((~np.isnan(ref) & np.isnan(other)).sum()),
                    "kappa": point_kappa,
                    "kappa_lower": kl,
                    "kappa_upper": ku,
                    "alpha": point_alpha,
                    "alpha_lower": al,
                    "alpha_upper": au,
                }
            )
    table = pd.DataFrame(rows, columns=["rater", "reference", "class", *COLUMNS]).set_index(
        ["rater", "reference", "class"]
    )
    humans = ", ".join(coders)
    table.attrs["coders"] = list(coders)
    table.attrs["note"] = (
        f"Cohen's κ and Krippendorff's α (nominal) against {reference}, with {level:.0%} percentile bootstrap "
        f"intervals over texts ({n_boot} replicates, seed {seed}); per class: that class or not (one-vs-rest). "
        + (f"Human agreement (the ceiling for the models): {humans}." if coders else NO_SECOND_CODER)
    )
    return table


def summary(table: pd.DataFrame) -> str:
    """One sentence: each rater's overall κ and α with intervals, and whether a second coder was measured.

    Args:
        table: :func:`agreement_table` output (or several concatenated, with ``attrs["coders"]``).
    """
    overall = table.xs(OVERALL, level="class")
    parts = [
        f"{rater} vs. {ref}: κ = {r.kappa:.3f} [{r.kappa_lower:.3f}, {r.kappa_upper:.3f}], "
        f"α = {r.alpha:.3f} [{r.alpha_lower:.3f}, {r.alpha_upper:.3f}] ({int(r.texts):,} texts)"
        for (rater, ref), r in overall.iterrows()
    ]
    coders = table.attrs.get("coders", [])
    head = "" if coders else NO_SECOND_CODER + " "
    return head + "; ".join(parts) + "."


def match_by_text(
    left: pd.DataFrame,
    right: pd.DataFrame,
    text_col: str = "text",
    label_col: str | tuple[str, str] = "label",
    names: tuple[str, str] = ("left", "right"),
) -> pd.DataFrame:
    """Two label columns of two tables, matched by text (cleaned as the loader cleans texts).

    A text repeated within one table counts once when its copies agree (``duplicates merged``) and is left out
    when they do not (``conflicting``); rows without text or label and texts of one table only are left out.
    Every one of these is counted in ``attrs["counts"]`` and logged: nothing is dropped silently.

    Args:
        left: one table (e.g. the labelled sheet's rows, or a model's predictions).
        right: the other (e.g. a second coder's sheet).
        text_col: the texts' column in both tables.
        label_col: the labels' column in both, or (left's, right's).
        names: the output's names of the two label columns.

    Returns:
        Columns ``text`` and the two label columns (``names``), one row per text in both tables, in left's order;
        ``attrs["counts"]``: per table, rows read, without text or label, duplicates merged, conflicting texts and
        unmatched texts, and the texts matched.
    """
    cols = (label_col, label_col) if isinstance(label_col, str) else tuple(label_col)
    if names[0] == names[1]:
        raise ValueError(f"the two label columns need different names, not {names}")
    sides, counts = [], {}
    for table, col, name in zip((left, right), cols, names):
        missing_cols = [c for c in (text_col, col) if c not in table.columns]
        if missing_cols:
            raise DataError(f"{name}: no column(s) {missing_cols}; it has {list(table.columns)}.")
        text = table[text_col].map(lambda v: v if pd.isna(v) else cell_text(v))
        label = table[col]
        usable = text.notna() & (text != "") & label.notna()
        df = pd.DataFrame({"text": text[usable].to_numpy(), name: label[usable].to_numpy()})
        key = df[name].map(repr)
        distinct = key.groupby(df["text"]).transform("nunique")
        conflicting = df.loc[distinct > 1, "text"].unique()
        unique = df[distinct == 1].drop_duplicates("text")
        counts[name] = {
            "rows": len(table),
            "without text or label": int((~usable).sum()),
            "duplicates merged": int((distinct == 1).sum() - len(unique)),
            "conflicting texts": len(conflicting),
        }
        sides.append(unique)
    matched = sides[0].merge(sides[1], on="text", how="inner")
    for side, name in zip(sides, names):
        counts[name]["unmatched texts"] = int((~side["text"].isin(matched["text"])).sum())
    counts["matched texts"] = len(matched)
    matched.attrs["counts"] = counts
    log.info("Matched by text: %s", describe_match(matched))
    return matched


def describe_match(matched: pd.DataFrame) -> str:
    """The counts of :func:`match_by_text` as one sentence.

    Args:
        matched: its output.
    """
    counts = matched.attrs["counts"]
    parts = [
        f"{name}: {c['rows']} rows, {c['without text or label']} without text or label, "
        f"{c['duplicates merged']} duplicate rows merged, {c['conflicting texts']} texts with conflicting "
        f"labels left out, {c['unmatched texts']} texts not in the other"
        for name, c in counts.items()
        if isinstance(c, dict)
    ]
    return f"{counts['matched texts']} texts in both ({'; '.join(parts)})."


def read_coder_sheet(
    path: str | Path, data: LabelledData, text_col: str = "Sentence", label_col: str = "Label"
) -> pd.DataFrame:
    """A second coder's sheet, its labels mapped to the study's class ids through its label table.

    Args:
        path: the sheet (.xlsx/.csv/.tsv) with a text and a label column; rows without a label are skipped
            (counted in the log), a label the study does not have is a :class:`DataError` naming its rows.
        data: the study's labelled data (its label values).
        text_col: the sheet's text column.
        label_col: the sheet's label column.

    Returns:
        Columns ``text``, ``label`` (class id), ``row`` (sheet row).
    """
    report = LoadReport(Path(path).name)
    rows = annotated_rows(Path(path), text_col, label_col, set(data.label_values), report)
    ids = {v: i for i, v in enumerate(data.label_values)}
    return pd.DataFrame({"text": rows["text"], "label": rows["label_value"].map(ids).astype(int), "row": rows["row"]})


def study_agreement(
    study: Study,
    coder_sheet: str | Path | None = None,
    runs: Mapping[str, ModelResults] | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """The study's agreement table: the second coder (if any) and each model's out-of-fold predictions against the
    labels, and, with a second coder, each model against the coder too (on the coder's texts).

    Args:
        study: the study (its labelled texts are the units).
        coder_sheet: a second coder's sheet of (some of) the labelled texts; None: no human ceiling (the note
            says so).
        runs: the models, by name (None: every finished run of the study, :meth:`Study.runs`).
        text_col: the coder sheet's text column (None: the study's).
        label_col: the coder sheet's label column (None: the study's).
        n_boot: bootstrap replicates.
        seed: their seed.

    Returns:
        :func:`agreement_table` rows, one block per reference; ``attrs["matches"]``: the sentence of
        :func:`describe_match` for each matched table.
    """
    data = study.data
    runs = study.runs() if runs is None else runs
    gold = data.df[["text", "label"]]
    units = gold.drop_duplicates("text")[["text"]].reset_index(drop=True)
    columns, matches = {LABELS: _aligned(units, gold, "label")}, {}
    for name, run in runs.items():
        m = match_by_text(gold, run.predictions, "text", ("label", "pred"), (LABELS, name))
        matches[name] = describe_match(m)
        columns[name] = _aligned(units, m, name)
    coders = []
    if coder_sheet is not None:
        sheet = read_coder_sheet(
            coder_sheet, data, text_col or study.settings.text_col, label_col or study.settings.label_col
        )
        m = match_by_text(gold, sheet, "text", "label", (LABELS, SECOND_CODER))
        matches[SECOND_CODER] = describe_match(m)
        if m.empty:
            raise DataError(
                f"{coder_sheet}: none of its texts is a labelled text of the study ({matches[SECOND_CODER]})"
            )
        columns = {LABELS: columns[LABELS], SECOND_CODER: _aligned(units, m, SECOND_CODER)} | columns
        coders = [SECOND_CODER]
    names = data.label_names
    table = agreement_table(columns, LABELS, names, n_boot, seed, coders=coders)
    attrs = dict(table.attrs)
    if coders:
        models = {n: v for n, v in columns.items() if n != LABELS}
        table = pd.concat([table, agreement_table(models, SECOND_CODER, names, n_boot, seed)])
        attrs["note"] += f" Rows against {SECOND_CODER}: the models on the coder's texts."
    table.attrs = attrs | {"matches": matches}
    return table


def _aligned(units: pd.DataFrame, matched: pd.DataFrame, column: str) -> np.ndarray:
    """``matched[column]`` for each text of ``units`` (NaN where it has none)."""
    return units["text"].map(dict(zip(matched["text"], matched[column]))).to_numpy(dtype=float)
