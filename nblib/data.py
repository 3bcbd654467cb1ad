"""Loading and checking a labelled sheet of short texts (and an unlabelled pool of them).

Every problem in the input either stops the load with a :class:`DataError` that says what to do,
or is fixed and written to the load report (``LabelledData.report``), which is also logged.
Nothing is dropped silently.

Cleaning is deliberately light: a byte-order mark (U+FEFF) is removed wherever it occurs and
surrounding whitespace is stripped. Emoji, punctuation, hashtags, @-mentions and URLs are kept:
they carry signal and BERT tokenizers handle them.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

READERS = {".xlsx": "excel", ".xlsm": "excel", ".csv": "csv", ".tsv": "tsv"}
LABEL_SHEET = "labels"  # optional second sheet of an .xlsx: Label, Name, Description


class DataError(ValueError):
    """The input data cannot be used as it is; the message says why and what to do."""


@dataclass
class LoadReport:
    """What the loader found and did, one row per kind of problem."""

    source: str
    rows_read: int = 0
    entries: list[dict] = field(default_factory=list)

    def add(self, problem: str, rows: Sequence[int], action: str) -> None:
        """Record a problem affecting the given sheet rows (1-based, header = row 1)."""
        rows = list(rows)
        if not rows:
            return
        shown = ", ".join(map(str, rows[:10])) + (" …" if len(rows) > 10 else "")
        self.entries.append({"problem": problem, "rows": len(rows), "action": action, "sheet rows": shown})
        log.warning("%s: %d row(s) %s — %s (sheet rows %s)", self.source, len(rows), problem, action, shown)

    def dropped(self) -> int:
        """Number of rows dropped."""
        return sum(e["rows"] for e in self.entries if e["action"].startswith("dropped"))

    def to_frame(self) -> pd.DataFrame:
        """The report as a table (empty table when the sheet was clean)."""
        return pd.DataFrame(self.entries, columns=["problem", "rows", "action", "sheet rows"])


@dataclass
class LabelledData:
    """A cleaned labelled sheet.

    ``df`` has one row per kept text with columns ``text``, ``label`` (contiguous id 0..K-1),
    ``label_name`` and ``row`` (the row number in the sheet, header = 1, for going back to it).
    """

    df: pd.DataFrame
    label_names: list[str]
    label_values: list  # the value in the sheet for each id
    label_descriptions: list[str] | None
    report: LoadReport
    source: str

    @property
    def texts(self) -> list[str]:
        return self.df["text"].tolist()

    @property
    def labels(self) -> np.ndarray:
        return self.df["label"].to_numpy()

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_table(self) -> pd.DataFrame:
        """Label id, sheet value, name, description and count: the table a paper shows first."""
        counts = self.df["label"].value_counts().reindex(range(self.num_labels), fill_value=0)
        return pd.DataFrame({
            "id": range(self.num_labels),
            "value in sheet": self.label_values,
            "name": self.label_names,
            "description": self.label_descriptions or [""] * self.num_labels,
            "count": counts.to_numpy(),
            "share": (counts / counts.sum()).round(3).to_numpy(),
        })

    def fingerprint(self) -> str:
        """A hash of the texts and labels, to tie saved folds and results to this exact data."""
        h = hashlib.sha256()
        for t, y in zip(self.df["text"], self.df["label"]):
            h.update(f"{y}\t{t}\n".encode())
        return h.hexdigest()[:16]


def clean_text(value: object) -> str:
    """Remove byte-order marks and surrounding whitespace; keep everything else."""
    return str(value).replace("\ufeff", "").strip()


def _cell_text(value: object) -> str:
    """A cell as cleaned text; whole numbers that Excel stored as floats lose their '.0'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return clean_text(value)


def read_table(path: str | Path, sheet: str | int | None = None) -> pd.DataFrame:
    """Read an .xlsx/.csv/.tsv file as a table of raw cells (no type guessing for text)."""
    path = Path(path)
    if not path.exists():
        near = sorted(p.name for p in path.parent.glob("*") if p.suffix.lower() in READERS) if path.parent.is_dir() else []
        hint = f" Files in {path.parent}: {', '.join(near)}." if near else ""
        raise FileNotFoundError(f"Data file not found: {path.resolve()}.{hint}")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"Cannot read {path.name}: use one of {', '.join(READERS)} (save the sheet as .xlsx or .csv).")
    if kind == "excel":
        try:
            return pd.read_excel(path, sheet_name=sheet if sheet is not None else 0, engine="openpyxl")
        except ValueError as e:  # unknown sheet name
            raise DataError(f"{path.name}: {e}") from None
    return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=object, keep_default_na=True)


def require_columns(df: pd.DataFrame, wanted: Sequence[str], path: Path) -> None:
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(
            f"{path.name}: column(s) {missing} not found. The sheet has columns {list(map(str, df.columns))}; "
            f"pass text_col=/label_col= (notebook parameters) to name the right ones."
        )


def _clean_texts(raw: pd.Series, report: LoadReport) -> pd.Series:
    """Clean the text column in place of the frame's index; empty texts become NaN (to drop)."""
    is_missing = raw.isna()
    non_string = ~is_missing & ~raw.map(lambda v: isinstance(v, str))
    report.add("text cell is a number/date, not text", raw.index[non_string] + 2, "converted to text")
    text = raw.astype(object).where(is_missing, raw.map(_cell_text))
    empty = is_missing | (text == "")
    report.add("text is missing, empty or whitespace only", raw.index[empty] + 2, "dropped")
    return text.mask(empty)


def _normalise_label(value: object) -> object:
    """Integers stay integers (also 1.0 and '1'); everything else becomes a stripped string."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    s = clean_text(value)
    try:
        number = float(s)
    except ValueError:
        return s
    return int(number) if number.is_integer() else s


def _read_label_table(spec: str | Path | pd.DataFrame | dict | None, data_path: Path) -> pd.DataFrame | None:
    """Label descriptions: a table with columns Label, Name and optionally Description."""
    if spec is None:
        if data_path.suffix.lower() in (".xlsx", ".xlsm"):
            import openpyxl

            wb = openpyxl.load_workbook(data_path, read_only=True)
            has_sheet = LABEL_SHEET in wb.sheetnames
            wb.close()
            if has_sheet:
                return _read_label_table(pd.read_excel(data_path, sheet_name=LABEL_SHEET), data_path)
        return None
    if isinstance(spec, dict):
        table = pd.DataFrame({"Label": list(spec), "Name": [str(v) for v in spec.values()]})
    elif isinstance(spec, pd.DataFrame):
        table = spec.copy()
    else:
        table = read_table(spec, sheet=LABEL_SHEET if Path(spec).suffix.lower() in (".xlsx", ".xlsm") else None)
    if "Label" not in table.columns or "Name" not in table.columns:
        raise DataError(f"Label table needs columns 'Label' and 'Name' (optional 'Description'); it has {list(table.columns)}.")
    table = table.dropna(subset=["Label"]).copy()
    table["Label"] = table["Label"].map(_normalise_label)
    if table["Label"].duplicated().any():
        raise DataError(f"Label table lists a label twice: {table.loc[table['Label'].duplicated(), 'Label'].tolist()}.")
    return table.reset_index(drop=True)


def load_labelled(
    path: str | Path,
    text_col: str = "Sentence",
    label_col: str = "Label",
    sheet: str | int | None = None,
    label_table: str | Path | pd.DataFrame | dict | None = None,
    on_conflict: Literal["drop", "error"] = "drop",
) -> LabelledData:
    """Load and check a labelled sheet.

    Labels may be integers (any values) or strings; they are mapped to contiguous ids 0..K-1 in
    sorted order, or in the order of the label table when one is given. The label table (names
    and descriptions) comes from ``label_table`` (a file, a DataFrame or ``{value: name}``) or,
    for an .xlsx, from a sheet named ``labels`` when present.

    Exact duplicate texts with the same label are kept (they are put in the same fold); a text
    that occurs with two different labels is dropped (``on_conflict="drop"``) or stops the load
    (``"error"``). Both are reported.
    """
    path = Path(path)
    raw = read_table(path, sheet)
    require_columns(raw, [text_col, label_col], path)
    report = LoadReport(source=path.name, rows_read=len(raw))
    if raw.empty:
        raise DataError(f"{path.name}: the sheet has a header but no rows.")

    df = pd.DataFrame({"text": _clean_texts(raw[text_col], report), "label_value": raw[label_col], "row": raw.index + 2})
    no_label = df["label_value"].isna() | (df["label_value"].astype(str).str.strip() == "")
    report.add("label is missing", df.loc[no_label & df["text"].notna(), "row"], "dropped (load them as unlabelled instead)")
    df = df[df["text"].notna() & ~no_label].copy()
    df["label_value"] = df["label_value"].map(_normalise_label)
    if df.empty:
        raise DataError(f"{path.name}: no row has both a text and a label (read {len(raw)} rows).")

    df = _resolve_conflicts(df, report, on_conflict)
    values, names, descriptions = _label_scheme(df["label_value"], _read_label_table(label_table, path), path)
    ids = {v: i for i, v in enumerate(values)}
    df["label"] = df["label_value"].map(ids).astype(int)
    df["label_name"] = df["label"].map(dict(enumerate(names)))
    df = df[["text", "label", "label_name", "row"]].reset_index(drop=True)
    n_dup = int(df["text"].duplicated(keep=False).sum())
    if n_dup:
        log.info("%s: %d rows share their text with another row (same label); kept, and kept in one fold.", path.name, n_dup)
    log.info("%s: %d labelled texts in %d classes (%d of %d rows dropped).",
             path.name, len(df), len(values), report.dropped(), report.rows_read)
    return LabelledData(df, names, values, descriptions, report, str(path))


def _resolve_conflicts(df: pd.DataFrame, report: LoadReport, on_conflict: str) -> pd.DataFrame:
    n_labels = df.assign(key=df["label_value"].map(repr)).groupby("text")["key"].transform("nunique")
    conflict = n_labels > 1
    if conflict.any():
        examples = df[conflict].groupby("text")["label_value"].apply(lambda s: sorted(set(map(str, s))))
        shown = "; ".join(f"{t!r}: {v}" for t, v in list(examples.items())[:5])
        if on_conflict == "error":
            raise DataError(f"{conflict.sum()} rows have a text that also appears with another label ({shown}). "
                            f"Fix the labels in the sheet, or pass on_conflict='drop'.")
        report.add(f"same text with different labels ({len(examples)} texts, e.g. {shown})",
                   df.loc[conflict, "row"], "dropped (all copies)")
    return df[~conflict]


def _label_scheme(values: pd.Series, table: pd.DataFrame | None, path: Path) -> tuple[list, list[str], list[str] | None]:
    """Ordered label values, their names and descriptions."""
    present = set(values)
    kinds = {type(v) for v in present}
    if table is None:
        if len(kinds) > 1:
            mixed = sorted(map(str, present))
            raise DataError(f"{path.name}: labels mix numbers and text ({mixed}); use one kind, or give a label table.")
        ordered = sorted(present)
        return ordered, [str(v) for v in ordered], None
    unknown = sorted(map(str, present - set(table["Label"])))
    if unknown:
        raise DataError(f"{path.name}: label(s) {unknown} are not in the label table {table['Label'].tolist()}. "
                        f"Fix the sheet or add them to the table.")
    unused = table[~table["Label"].isin(present)]
    if len(unused):
        log.warning("%s: label(s) %s of the label table never occur; they are left out.", path.name, unused["Label"].tolist())
    table = table[table["Label"].isin(present)]
    descriptions = table["Description"].fillna("").astype(str).tolist() if "Description" in table else None
    return table["Label"].tolist(), table["Name"].astype(str).tolist(), descriptions


def load_unlabelled(path: str | Path, text_col: str = "Sentence", sheet: str | int | None = None) -> pd.DataFrame:
    """Load a pool of unlabelled texts through the same checks; returns columns ``text`` and ``row``."""
    path = Path(path)
    raw = read_table(path, sheet)
    require_columns(raw, [text_col], path)
    if raw.empty:
        raise DataError(f"{path.name}: the sheet has a header but no rows.")
    report = LoadReport(source=path.name, rows_read=len(raw))
    text = _clean_texts(raw[text_col], report)
    df = pd.DataFrame({"text": text, "row": raw.index + 2}).dropna(subset=["text"]).reset_index(drop=True)
    log.info("%s: %d unlabelled texts (%d of %d rows dropped).", path.name, len(df), report.dropped(), len(raw))
    return df
