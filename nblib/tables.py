"""Result tables written next to each other for machines and for the paper."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .sheets import write_table


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


def save_table(table: pd.DataFrame, folder: str | Path, name: str) -> list[Path]:
    """Write ``table`` as ``<folder>/<name>.csv`` (formula-safe, see :mod:`nblib.sheets`); return the paths.

    Args:
        table: the table; its index is written as the first column(s).
        folder: where to write.
        name: file name without suffix.
    """
    return [write_table(flat(table), Path(folder) / f"{name}.csv")]
