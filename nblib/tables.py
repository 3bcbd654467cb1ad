"""Result tables written next to each other for machines and for the paper.

:func:`save_table` writes every table three times: ``.csv`` (formula-safe, read back by
:func:`nblib.sheets.read_machine_table`), ``.tex`` (a booktabs ``tabular`` for LaTeX; Chinese needs ``ctex`` or
``xeCJK`` in the document) and ``.md`` (a Markdown pipe table). The paper tables (:func:`model_comparison`,
:func:`per_class`, :func:`class_shares`) are tables of formatted strings; ``**…**`` marks the best value,
written bold in LaTeX and Markdown and left out of the CSV.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .analysis import mcnemar
from .metrics import HEADLINE
from .results import ModelResults
from .sheets import write_table

BOLD = re.compile(r"\*\*(.+?)\*\*")
DAGGER = "†"
CLIPPED = "‡"  # a class share whose interval (or estimate) was clipped to [0, 1]
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


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


def save_table(table: pd.DataFrame, folder: str | Path, name: str, note: str | None = None) -> list[Path]:
    """Write ``table`` as ``<folder>/<name>.csv`` (formula-safe, see :mod:`nblib.sheets`), ``.tex`` and ``.md``.

    Args:
        table: the table; its index is written as the first column(s).
        folder: where to write.
        name: file name without suffix.
        note: a line printed under the table in ``.tex`` and ``.md`` (e.g. what † means); None: the table's
            ``attrs["note"]`` if it has one (the paper tables do).

    Returns:
        The paths written: .csv, .tex, .md.
    """
    note = table.attrs.get("note") if note is None else note
    table = flat(table)
    shown = table.map(_cell)
    shown.columns = [str(c) for c in shown.columns]
    folder = Path(folder)
    csv = write_table(table.map(lambda v: BOLD.sub(r"\1", v) if isinstance(v, str) else v), folder / f"{name}.csv")
    tex, md = folder / f"{name}.tex", folder / f"{name}.md"
    tex.write_text(to_latex(shown, note), encoding="utf-8")
    md.write_text(to_markdown(shown, note), encoding="utf-8")
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


def _latex_text(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(c, c) for c in text)
    return BOLD.sub(r"\\textbf{\1}", escaped).replace(DAGGER, r"\textsuperscript{\dag}").replace("±", r"$\pm$")


def to_latex(table: pd.DataFrame, note: str | None = None) -> str:
    """A table of strings as a booktabs ``tabular`` (``\\toprule``, ``\\midrule``, ``\\bottomrule``).

    Args:
        table: the cells as strings; ``**…**`` is set bold, † as a superscript dagger, LaTeX's special characters escaped.
        note: a line under the table, or None.
    """
    body = table.map(_latex_text)
    body.columns = [_latex_text(str(c)) for c in table.columns]
    latex = body.to_latex(index=False, escape=False, column_format="l" * table.shape[1])
    return latex + (f"\\par\\smallskip{{\\footnotesize {_latex_text(note)}}}\n" if note else "")


def to_markdown(table: pd.DataFrame, note: str | None = None) -> str:
    """A table of strings as a Markdown pipe table.

    Args:
        table: the cells as strings (``**…**`` stays Markdown bold; ``|`` is escaped).
        note: a paragraph under the table, or None.
    """

    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|").replace("\n", " ") for c in cells) + " |"

    lines = [row(table.columns), "|" + "---|" * table.shape[1], *(row(r) for r in table.itertuples(index=False))]
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


def _bold_best(means: pd.Series, cells: pd.Series) -> pd.Series:
    """``cells`` with the one at the highest mean (all ties) marked bold."""
    best = means == means.max()
    return cells.where(~best, "**" + cells + "**")


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
    table = pd.DataFrame(
        {c: _bold_best(means[c], means[c].map("{:.3f}".format) + " ± " + stds[c].map("{:.3f}".format)) for c in columns}
    )
    p = pd.Series({n: np.nan if n == best else mcnemar(runs[best], runs[n])["p-value (exact McNemar)"] for n in order})
    table["p (McNemar vs. best)"] = p.map(lambda v: "" if np.isnan(v) else _cell(float(v)))
    table.index = pd.Index([f"{n}{DAGGER}" if p[n] < alpha else n for n in order], name="model")
    table.attrs["note"] = (
        f"Mean ± standard deviation over folds; best in bold. {DAGGER}: exact McNemar test against {best} "
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
    rows = {}
    for k, name in enumerate(label_names):
        scores = {n: r.metrics[f"{metric}_{k}"] for n, r in runs.items()}
        means = pd.Series({n: s.mean() for n, s in scores.items()})
        cells = pd.Series({n: f"{s.mean():.3f} ± {s.std():.3f}" for n, s in scores.items()})
        rows[str(name)] = _bold_best(means, cells)
    table = pd.DataFrame(rows).T
    table.index.name = "class"
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
