"""Result tables written next to each other for machines and for the paper.

:func:`save_table` writes every table three times: ``.csv`` (formula-safe, read back by
:func:`nblib.sheets.read_machine_table`), ``.tex`` (a booktabs ``tabular`` for LaTeX; Chinese needs ``ctex`` or
``xeCJK`` in the document) and ``.md`` (a Markdown pipe table). The paper tables (:func:`model_comparison`,
:func:`per_class`, :func:`class_shares`) are tables of formatted strings. Bold (the best value) is a property of
a cell, not of its text: the (row, column) labels of the bold cells in ``table.attrs["bold"]``, set bold in LaTeX,
Markdown and the notebook (:func:`styled`), and left out of the CSV. Every text is escaped for LaTeX and
Markdown, and the CSV keeps it exactly. The ``.tex`` and ``.md`` show display names (:mod:`nblib.names`);
the CSV keeps the ids, for machines. p-values read ``3.2 × 10⁻⁷`` (:func:`format_p`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .analysis import mcnemar
from .metrics import HEADLINE
from .names import display, display_words
from .results import ModelResults
from .sheets import write_table

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

DAGGER = "†"
CLIPPED = "‡"  # a class share whose interval (or estimate) was clipped to [0, 1]
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    DAGGER: r"\textsuperscript{\dag}",
    "±": r"$\pm$",
    "×": r"$\times$",
}
_MARKDOWN_SPECIAL = set("\\`*_<>|~$")  # not [ ]: intervals "[0.1, 0.2]" stay as they are
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_P_COLUMN = re.compile(r"^p(-value)?\b")
NAMED_COLUMNS = ("model", "method", "metric", "strategy")  # columns whose cells are ids shown by display name


def flat(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its index as leading columns and multi-level column names joined by "/" (e.g. "bert/f1").

    Args:
        table: any result table (a named or unnamed index, one or more column levels).
    """
    out = table.copy()
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = ["/".join(str(p) for p in c if str(p)) for c in out.columns]
    has_index = out.index.names != [None] or not out.index.equals(pd.RangeIndex(len(out)))
    return out.reset_index(names=[n or "name" for n in out.index.names]) if has_index else out


def format_p(p: float) -> str:
    """A p-value as a paper shows it: ``0.032`` from 0.001 up, ``3.2 × 10⁻⁷`` below, ``< 10⁻³⁰⁰`` for 0.

    Args:
        p: the p-value (NaN: an empty string).
    """
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    p = float(p)
    if p >= 1e-3:
        return f"{p:.3f}"
    if p <= 0:
        return "< 10⁻³⁰⁰"
    mantissa, exponent = f"{p:.1e}".split("e")
    return f"{mantissa} × 10{str(int(exponent)).translate(_SUPERSCRIPT)}"


def is_p_column(name: object) -> bool:
    """Whether a column holds p-values (its name starts with ``p `` or ``p-value``, e.g. ``p (McNemar)``)."""
    return bool(_P_COLUMN.match(str(name)))


def bold_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Which cells of ``table`` are bold (a boolean table of its shape), from the (row, column) labels in
    ``table.attrs["bold"]`` (none where it has none)."""
    cells = table.attrs.get("bold", set())
    return pd.DataFrame(
        [[(r, c) in cells for c in table.columns] for r in table.index], index=table.index, columns=table.columns
    )


def _bold_set(mask: pd.DataFrame) -> set[tuple]:
    """The (row, column) labels of the True cells of ``mask`` (what ``attrs["bold"]`` holds)."""
    return {(r, c) for c in mask.columns for r in mask.index[mask[c].to_numpy(bool)]}


def shown_names(table: pd.DataFrame, display_names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``table`` with display names (:mod:`nblib.names`) in its index, id columns (``model``, ``method``, …)
    and column names (each word that is an id, e.g. ``macro_f1 gain``); a trailing † stays. Texts of the sheet
    are never renamed.

    Args:
        table: a result table with ids.
        display_names: overrides by id (e.g. a study's ``display_names``).
    """

    def name(value: object) -> object:
        if not isinstance(value, str):
            return value
        mark = DAGGER if value.endswith(DAGGER) else ""
        return display(value.removesuffix(DAGGER), display_names) + mark

    def header(value: object) -> object:
        return display_words(value, display_names) if isinstance(value, str) else value

    out = table.copy()
    for c in out.columns:
        if str(c) in NAMED_COLUMNS:
            out[c] = out[c].map(name)
    return out.rename(index=name).rename(columns=header)


def styled(table: pd.DataFrame, display_names: Mapping[str, str] | None = None, digits: int = 3) -> Styler:
    """``table`` for a notebook: display names, bold cells bold, p-values as :func:`format_p`, numbers rounded.

    Args:
        table: a result table (the labels of its bold cells in ``attrs["bold"]``, if any).
        display_names: overrides by id.
        digits: decimals of the other numbers.

    Returns:
        A pandas ``Styler`` (a notebook shows it as an HTML table).
    """
    bold = bold_cells(table).to_numpy()
    shown = shown_names(table, display_names)
    p_columns = [c for c in shown.columns if is_p_column(c)]
    styler = shown.style.format(precision=digits, na_rep="").format(_p_cell, subset=p_columns)
    return styler.apply(lambda d: np.where(bold, "font-weight: bold", ""), axis=None)


def save_table(
    table: pd.DataFrame,
    folder: str | Path,
    name: str,
    note: str | None = None,
    display_names: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``table`` as ``<folder>/<name>.csv`` (formula-safe, see :mod:`nblib.sheets`), ``.tex`` and ``.md``.

    The CSV keeps the values and ids as they are (texts round-trip exactly); the ``.tex`` and ``.md`` show
    display names, bold cells (``table.attrs["bold"]``) bold, p-values as :func:`format_p` and every text escaped.

    Args:
        table: the table; its index is written as the first column(s).
        folder: where to write.
        name: file name without suffix.
        note: a line printed under the table in ``.tex`` and ``.md`` (e.g. what † means); None: the table's
            ``attrs["note"]`` if it has one (the paper tables do).
        display_names: overrides of the display names by id (e.g. a study's ``display_names``).

    Returns:
        The paths written: .csv, .tex, .md.
    """
    note = table.attrs.get("note") if note is None else note
    folder = Path(folder)
    csv = write_table(flat(table), folder / f"{name}.csv")
    shown = flat(shown_names(table, display_names))
    shown = pd.DataFrame(
        {str(c): shown[c].map(_p_cell if is_p_column(c) else _cell) for c in shown.columns}, index=shown.index
    )
    bold = bold_cells(table).to_numpy()
    mask = np.hstack([np.zeros((len(shown), shown.shape[1] - bold.shape[1]), bool), bold])
    tex, md = folder / f"{name}.tex", folder / f"{name}.md"
    tex.write_text(to_latex(shown, note, mask), encoding="utf-8")
    md.write_text(to_markdown(shown, note, mask), encoding="utf-8")
    return [csv, tex, md]


def _cell(value: object) -> str:
    """A cell as text: numbers with three decimals (tiny ones in scientific notation), missing as empty."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return ""
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return "" if value is None else str(value)


def _p_cell(value: object) -> str:
    """A p-value cell as :func:`format_p` (a text, e.g. already formatted, as it is)."""
    return format_p(value) if isinstance(value, float | np.floating | int | np.integer) else _cell(value)


def latex_text(text: str) -> str:
    """``text`` escaped for LaTeX: special characters as commands, † as a superscript dagger, a line break as a space."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in _LINE_BREAK.sub(" ", text))


def markdown_text(text: str) -> str:
    """``text`` escaped for a Markdown table cell: Markdown's marks backslash-escaped, a line break as ``<br>``."""
    escaped = "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)
    return _LINE_BREAK.sub("<br>", escaped)


def _marked(table: pd.DataFrame, bold: np.ndarray | None, escape, mark) -> pd.DataFrame:
    """The cells escaped, the bold ones (and only those with text) wrapped by ``mark``."""
    body = table.map(lambda v: escape(str(v)))
    if bold is not None:
        body = body.mask(bold & (body != "").to_numpy(), body.map(mark))
    return body


def to_latex(table: pd.DataFrame, note: str | None = None, bold: np.ndarray | None = None) -> str:
    """A table of strings as a booktabs ``tabular`` (``\\toprule``, ``\\midrule``, ``\\bottomrule``).

    Args:
        table: the cells as strings (escaped here: LaTeX's special characters, † as a superscript dagger).
        note: a line under the table, or None.
        bold: which cells to set bold (a boolean array of the table's shape), or None.
    """
    body = _marked(table, bold, latex_text, lambda c: f"\\textbf{{{c}}}")
    body.columns = [latex_text(str(c)) for c in table.columns]
    latex = body.to_latex(index=False, escape=False, column_format="l" * table.shape[1])
    return latex + (f"\\par\\smallskip{{\\footnotesize {latex_text(note)}}}\n" if note else "")


def to_markdown(table: pd.DataFrame, note: str | None = None, bold: np.ndarray | None = None) -> str:
    """A table of strings as a Markdown pipe table.

    Args:
        table: the cells as strings (escaped here: ``|``, ``*``, ``_`` and the other marks; a line break as ``<br>``).
        note: a paragraph under the table, or None.
        bold: which cells to set bold (a boolean array of the table's shape), or None.
    """
    body = _marked(table, bold, markdown_text, lambda c: f"**{c}**")

    def row(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    header = row(markdown_text(str(c)) for c in table.columns)
    lines = [header, "|" + "---|" * table.shape[1], *(row(r) for r in body.itertuples(index=False))]
    return "\n".join(lines) + "\n" + (f"\n{markdown_text(note)}\n" if note else "")


def _best(means: pd.Series) -> pd.Series:
    """Whether each entry is the highest mean (all ties)."""
    return means == means.max()


def model_comparison(
    runs: dict[str, ModelResults], columns: Sequence[str] = HEADLINE, alpha: float = 0.05
) -> pd.DataFrame:
    """The paper's model comparison: mean ± std over folds, the best in bold, † where McNemar's test against
    the best model (by the first metric) has p < ``alpha``.

    Args:
        runs: each model's out-of-fold results, by name (same texts in the same order).
        columns: the metrics (per-fold columns of ``metrics.csv``); models are ranked by the first.
        alpha: the significance level of the paired test.

    Returns:
        One row per model, best first (index ``model``, with † where the test is significant), one column per
        metric, and ``p (McNemar vs. best)``; ``attrs["note"]`` says what † means.
    """
    means = pd.DataFrame({n: r.metrics[list(columns)].mean() for n, r in runs.items()}).T
    stds = pd.DataFrame({n: r.metrics[list(columns)].std() for n, r in runs.items()}).T
    order = means.sort_values(columns[0], ascending=False).index
    means, stds = means.loc[order], stds.loc[order]
    best = order[0]
    table = pd.DataFrame({c: means[c].map("{:.3f}".format) + " ± " + stds[c].map("{:.3f}".format) for c in columns})
    bold = pd.DataFrame({c: _best(means[c]) for c in columns})
    p = pd.Series({n: np.nan if n == best else mcnemar(runs[best], runs[n])["p-value (exact McNemar)"] for n in order})
    table["p (McNemar vs. best)"] = p.map(format_p)
    bold["p (McNemar vs. best)"] = False
    table.index = bold.index = pd.Index([f"{n}{DAGGER}" if p[n] < alpha else n for n in order], name="model")
    table.attrs["bold"] = _bold_set(bold)
    table.attrs["note"] = (
        f"Mean ± standard deviation over folds; best in bold. {DAGGER}: exact McNemar test against {display(best)} "
        f"on the out-of-fold predictions, p < {alpha}."
    )
    return table


def per_class(runs: dict[str, ModelResults], label_names: Sequence[str], metric: str = "f1") -> pd.DataFrame:
    """The paper's per-class scores: one row per class, one column per model, mean ± std over folds, best in bold.

    Args:
        runs: each model's results, by name (columns in this order).
        label_names: the class names by id.
        metric: ``precision``, ``recall`` or ``f1``.
    """
    rows, bold = {}, {}
    for k, name in enumerate(label_names):
        scores = {n: r.metrics[f"{metric}_{k}"] for n, r in runs.items()}
        rows[str(name)] = pd.Series({n: f"{s.mean():.3f} ± {s.std():.3f}" for n, s in scores.items()})
        bold[str(name)] = _best(pd.Series({n: s.mean() for n, s in scores.items()}))
    table = pd.DataFrame(rows).T
    table.index.name = "class"
    table.attrs["bold"] = _bold_set(pd.DataFrame(bold).T)
    table.attrs["note"] = f"Per-class {metric}, mean ± standard deviation over folds; best per class in bold."
    return table


def class_shares(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's class shares: ``share [lower, upper]`` in percent, one column per method.

    Args:
        table: :func:`nblib.shares.shares` output; groups marked ``small`` get "(n < 30)"-style marks, intervals
            clipped to [0, 1] a ‡, and the columns of methods with sampling-only intervals (CC, PCC) say so; the
            note says how each method's interval was made.
    """
    clipped = table["clipped"] if "clipped" in table else pd.Series(False, index=table.index)
    cells = table.assign(
        cell=[
            (f"{s:.1%} [{lo:.1%}, {hi:.1%}]" if not np.isnan(lo) else f"{s:.1%}").replace("%", "")
            + (CLIPPED if c else "")
            for s, lo, hi, c in zip(table["share"], table["lower"], table["upper"], clipped)
        ],
        group=[
            (g or "whole pool") + (f" (n = {n}, too few)" if small else f" (n = {n})")
            for g, n, small in zip(table["group"], table["texts"], table["small"])
        ],
    )
    out = cells.pivot(index=["group", "class"], columns="method", values="cell")
    methods = list(dict.fromkeys(table["method"]))
    out = out.reindex(index=pd.MultiIndex.from_frame(cells[["group", "class"]].drop_duplicates()), columns=methods)
    kinds = table.groupby("method", sort=False)["interval"].first() if "interval" in table else pd.Series(dtype=str)
    out.columns = [f"{m} (%, sampling only)" if kinds.get(m) == "sampling only" else f"{m} (%)" for m in methods]
    out.columns.name = None
    how = "; ".join(f"{m}: {k}" for m, k in kinds.items())
    out.attrs["note"] = (
        "Estimated class shares in percent with 95% intervals"
        + (f" ({how})" if how else " (bootstrap: error rates and pool resampled)")
        + ". Sampling-only intervals ignore the model's bias."
        + (f" {CLIPPED} interval clipped to [0, 100]." if clipped.any() else "")
    )
    return out


def agreement(table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """The paper's agreement table: texts, Cohen's κ and Krippendorff's α as ``0.812 [0.781, 0.840]``.

    Args:
        table: :func:`nblib.agreement.agreement_table` (or :func:`nblib.agreement.study_agreement`) output; its
            note (how it was computed, and whether a second coder was measured) is kept.
        level: the intervals' coverage, for the column names.
    """

    def cell(value: float, lower: float, upper: float) -> str:
        if np.isnan(value):
            return "n/a"
        return f"{value:.3f}" + ("" if np.isnan(lower) else f" [{lower:.3f}, {upper:.3f}]")

    out = pd.DataFrame(
        {
            "texts": table["texts"].astype(int),
            f"κ [{level:.0%} CI]": [cell(*v) for v in table[["kappa", "kappa_lower", "kappa_upper"]].to_numpy()],
            f"α [{level:.0%} CI]": [cell(*v) for v in table[["alpha", "alpha_lower", "alpha_upper"]].to_numpy()],
        },
        index=table.index,
    )
    out.attrs["note"] = table.attrs.get("note", "") + " n/a: undefined (e.g. a class neither rater used)."
    return out
