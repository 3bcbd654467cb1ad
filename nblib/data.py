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
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .settings import MAX_LEN
from .sheets import ENCODING_NAMES, DataError, Params, Sheet, cell_text, clean_text, read_sheet

log = logging.getLogger(__name__)

LABEL_SHEET = "labels"  # optional second sheet of an .xlsx: Label, Name, Description
LOADER_PARAMS = Params()  # load_labelled's parameters, as the notebooks name them
UNLABELLED_PARAMS = Params(columns="text_col= (the notebooks' unlabelled_text_col)")
EXTRA_PARAMS = Params(columns="text_col=/label_col= (an annotator sheet keeps the study's column names)")


@dataclass
class LoadReport:
    """What the loader found and did, one row per kind of problem; ``encoding``: how a CSV/TSV was decoded."""

    source: str
    rows_read: int = 0
    entries: list[dict] = field(default_factory=list)
    encoding: str | None = None

    def add(self, problem: str, rows: Sequence[int], action: str) -> None:
        """Record a problem affecting the given sheet rows (1-based, as Excel numbers them).

        Args:
            problem: what is wrong.
            rows: the sheet rows affected.
            action: what was done about it.
        """
        rows = list(rows)
        if not rows:
            return
        shown = ", ".join(map(str, rows[:10])) + (" …" if len(rows) > 10 else "")
        self.entries.append({"problem": problem, "rows": len(rows), "action": action, "sheet rows": shown})
        log.warning("%s: %d row(s) %s — %s (sheet rows %s)", self.source, len(rows), problem, action, shown)

    def read_from(self, sheet: Sheet) -> None:
        """Take over what the reader found: its notes, and the encoding (listed when it was a guess or not UTF-8).

        Args:
            sheet: the sheet as read.
        """
        self.encoding = sheet.encoding
        if sheet.encoding not in (None, "utf-8", "utf-8-sig"):
            self.entries.append(
                {
                    "problem": f"file encoding: {ENCODING_NAMES.get(sheet.encoding, sheet.encoding)}",
                    "rows": 0,
                    "action": "decoded; pass encoding= if the texts look garbled",
                    "sheet rows": "",
                }
            )
        for problem, rows, action in sheet.notes:
            self.add(problem, rows, action)

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
    ``label_name``, ``row`` (the row number in the sheet, for going back to it) and ``source`` (the file
    name of that sheet: the labelled sheet, or an annotator sheet added with ``extra_labelled_paths``).
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
        return pd.DataFrame(
            {
                "id": range(self.num_labels),
                "value in sheet": self.label_values,
                "name": self.label_names,
                "description": self.label_descriptions or [""] * self.num_labels,
                "count": counts.to_numpy(),
                "share": (counts / counts.sum()).round(3).to_numpy(),
            }
        )

    def fingerprint(self) -> str:
        """A hash of the texts and labels, to tie saved folds and results to this exact data."""
        h = hashlib.sha256()
        for t, y in zip(self.df["text"], self.df["label"]):
            h.update(f"{y}\t{t}\n".encode())
        return h.hexdigest()[:16]


def read_table(
    path: str | Path, sheet: str | int | None = None, header_row: int = 1, encoding: str | None = None
) -> pd.DataFrame:
    """Read an .xlsx/.csv/.tsv file as a table of raw cells (see :func:`nblib.sheets.read_sheet`).

    Args:
        path: the file.
        sheet: sheet name or 0-based index of an .xlsx (None: the first).
        header_row: the row of the column names (1-based).
        encoding: the encoding of a CSV/TSV (None: detected).

    Returns:
        The cells as written (only empty cells are missing), indexed by sheet row; the reader's notes are logged.
    """
    table = read_sheet(path, sheet=sheet, header_row=header_row, encoding=encoding)
    LoadReport(Path(path).name).read_from(table)
    return table.df


def too_long(texts: Sequence[str], max_len: int, tokenizer: Any = None) -> np.ndarray:
    """Which texts a BERT encoder reading at most ``max_len`` tokens would cut.

    Args:
        texts: the texts.
        max_len: the encoder's maximum sequence length, [CLS] and [SEP] included.
        tokenizer: a Hugging Face tokenizer to count tokens; None: characters count as tokens (about right
            for Chinese, where most characters are one token each).

    Returns:
        A boolean array, True for each text longer than ``max_len``.
    """
    if tokenizer is None:
        return np.array([len(t) + 2 > max_len for t in texts], dtype=bool)
    ids = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    return np.array([len(i) > max_len for i in ids], dtype=bool)


def _clean_texts(raw: pd.Series, report: LoadReport) -> pd.Series:
    """Clean the text column; empty texts become NaN (to drop). The index is the sheet row."""
    is_missing = raw.isna()
    non_string = ~is_missing & ~raw.map(lambda v: isinstance(v, str))
    report.add("text cell is a number/date, not text", raw.index[non_string], "converted to text")
    text = raw.astype(object).where(is_missing, raw.map(cell_text))
    empty = is_missing | (text == "")
    report.add("text is missing, empty, or only whitespace or zero-width characters", raw.index[empty], "dropped")
    return text.mask(empty)


def _normalise_label(value: object) -> object:
    """Numbers stay numbers (1.0 and '1' become the integer 1, '1.5' the float 1.5); other labels become stripped text."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer, float, np.floating)):
        number = value
    else:
        try:
            number = float(clean_text(value))
        except ValueError:
            return clean_text(value)
    if not math.isfinite(number):
        return clean_text(value)
    return int(number) if float(number).is_integer() else float(number)


def _normalise_labels(values: pd.Series) -> pd.Series:
    """:func:`_normalise_label` of each value, as objects (``map`` would turn 1 and 1.5 into 1.0 and 1.5)."""
    return pd.Series([_normalise_label(v) for v in values], index=values.index, dtype=object)


def _read_label_table(spec: str | Path | pd.DataFrame | dict | None, data_path: Path) -> pd.DataFrame | None:
    """Label descriptions: a table with columns Label, Name and optionally Description."""
    if spec is None:
        if data_path.suffix.lower() in (".xlsx", ".xlsm"):
            import openpyxl

            wb = openpyxl.load_workbook(data_path, read_only=True)
            has_sheet = LABEL_SHEET in wb.sheetnames
            wb.close()
            if has_sheet:
                return _read_label_table(read_sheet(data_path, sheet=LABEL_SHEET).df, data_path)
        return None
    if isinstance(spec, dict):
        table = pd.DataFrame({"Label": list(spec), "Name": [str(v) for v in spec.values()]})
    elif isinstance(spec, pd.DataFrame):
        table = spec.copy()
    else:
        table = read_table(spec, sheet=LABEL_SHEET if Path(spec).suffix.lower() in (".xlsx", ".xlsm") else None)
    if "Label" not in table.columns or "Name" not in table.columns:
        raise DataError(
            f"Label table needs columns 'Label' and 'Name' (optional 'Description'); it has {list(table.columns)}."
        )
    table = table.dropna(subset=["Label"]).copy()
    table["Label"] = _normalise_labels(table["Label"])
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
    header_row: int = 1,
    encoding: str | None = None,
    max_len: int | None = MAX_LEN,
    tokenizer: Any = None,
    extra_labelled_paths: str | Path | Sequence[str | Path] | None = None,
) -> LabelledData:
    """Load and check a labelled sheet (and annotator sheets that add labelled rows to it).

    Labels may be numbers or strings; they are mapped to contiguous ids 0..K-1 in sorted order, or in
    the order of the label table when one is given. The label table (names and descriptions) comes from
    ``label_table`` (a file, a DataFrame or ``{value: name}``) or, for an .xlsx, from a sheet named
    ``labels`` when present.

    Exact duplicate texts with the same label are kept (they are put in the same fold); a text
    that occurs with two different labels is dropped (``on_conflict="drop"``) or stops the load
    (``"error"``). Both are reported.

    ``extra_labelled_paths`` adds the rows of filled annotator sheets (written by
    :func:`nblib.active_learning.write_annotator_sheet`; any sheet with the same text and label columns
    will do): rows whose label is left empty are skipped and counted in the report, a label that is not
    one of the labelled sheet's (or the label table's) is an error naming the file and its rows, a row whose text
    is already labelled (a blind check of 05's workbook, or a repeat) is skipped and counted: the earlier label
    stands. Added rows change the data, hence its fingerprint and so the study folder: a study with them gets
    new folds and results, and the earlier ones stay as they were.

    Args:
        path: the sheet (.xlsx, .csv, .tsv); read by :func:`nblib.sheets.read_sheet`.
        text_col: the column of the texts.
        label_col: the column of the labels.
        sheet: sheet name or 0-based index of an .xlsx (None: the first).
        label_table: label names and descriptions (see above).
        on_conflict: what to do with a text that has two labels.
        header_row: the row of the column names (1-based, as Excel numbers rows).
        encoding: the encoding of a CSV/TSV (None: detected, and named in the report).
        max_len: the BERT maximum sequence length; the report counts the texts longer than it (None: no count).
        tokenizer: the model's tokenizer, to count tokens (None: characters as a proxy).
        extra_labelled_paths: filled annotator sheets (one path or several) whose labelled rows are added.

    Returns:
        The cleaned data, with its load report.

    Raises:
        DataError: the sheet cannot be used (the message says why and what to do), e.g. fewer than two classes.
    """
    path = Path(path)
    table = read_sheet(path, [text_col, label_col], sheet, header_row, encoding, LOADER_PARAMS)
    raw = table.df
    report = LoadReport(source=path.name, rows_read=len(raw))
    report.read_from(table)
    if raw.empty:
        raise DataError(f"{path.name}: the sheet has a header but no rows.")

    df = _labelled_rows(raw, text_col, label_col, report, path.name, "dropped (load them as unlabelled instead)")
    if df.empty:
        raise DataError(f"{path.name}: no row has both a text and a label (read {len(raw)} rows).")
    table_of_labels = _read_label_table(label_table, path)
    known = set(df["label_value"]) if table_of_labels is None else set(table_of_labels["Label"])
    for extra in path_list(extra_labelled_paths):
        rows = annotated_rows(Path(extra), text_col, label_col, known, report)
        again = rows["text"].isin(set(df["text"]))  # blind checks (05's blind_share) or repeats: not new labels
        report.add(
            f"{Path(extra).name}: text already labelled (a blind check, or a repeat)",
            rows.loc[again, "row"],
            "skipped (the earlier label stands; nblib.active_learning.returned_sheet measures agreement)",
        )
        df = pd.concat([df, rows[~again]], ignore_index=True)

    df = _resolve_conflicts(df, report, on_conflict)
    values, names, descriptions = _label_scheme(df["label_value"], table_of_labels, path, label_col)
    ids = {v: i for i, v in enumerate(values)}
    df["label"] = df["label_value"].map(ids).astype(int)
    df["label_name"] = df["label"].map(dict(enumerate(names)))
    df = df[["text", "label", "label_name", "row", "source"]].reset_index(drop=True)
    if max_len is not None:
        long = too_long(df["text"], max_len, tokenizer)
        unit = "tokens" if tokenizer is not None else "characters + [CLS]/[SEP], a proxy for tokens"
        report.add(
            f"text longer than max_len={max_len} ({unit})",
            df.loc[long, "row"],
            "kept; BERT reads only its start (truncation='head'), or its start and end (truncation='head+tail')",
        )
    n_dup = int(df["text"].duplicated(keep=False).sum())
    if n_dup:
        log.info(
            "%s: %d rows share their text with another row (same label); kept, and kept in one fold.", path.name, n_dup
        )
    log.info(
        "%s: %d labelled texts in %d classes (%d of %d rows dropped).",
        path.name,
        len(df),
        len(values),
        report.dropped(),
        report.rows_read,
    )
    return LabelledData(df, names, values, descriptions, report, str(path))


def _labelled_rows(
    raw: pd.DataFrame, text_col: str, label_col: str, report: LoadReport, source: str, no_label_action: str
) -> pd.DataFrame:
    """The rows of a sheet with a text and a label: columns text, label_value (normalised), row, source."""
    df = pd.DataFrame({"text": _clean_texts(raw[text_col], report), "label_value": raw[label_col], "row": raw.index})
    no_label = df["label_value"].isna() | (df["label_value"].astype(str).str.strip() == "")
    report.add("label is missing", df.loc[no_label & df["text"].notna(), "row"], no_label_action)
    df = df[df["text"].notna() & ~no_label].copy()
    df["label_value"] = _normalise_labels(df["label_value"])
    return df.assign(source=source)


def path_list(paths: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    """One path or several as a list (None: none).

    Args:
        paths: a path, a sequence of paths, or None.
    """
    return [] if paths is None else [paths] if isinstance(paths, (str, Path)) else list(paths)


def annotated_rows(path: Path, text_col: str, label_col: str, known: set, report: LoadReport) -> pd.DataFrame:
    """The labelled rows of a filled annotator sheet; an empty label skips its row, an unknown label is an error.

    Args:
        path: the sheet.
        text_col: its column of texts.
        label_col: its column of labels.
        known: the label values allowed (as the labelled sheet writes them, normalised).
        report: the study's load report; the sheet's own findings are added under its name.

    Returns:
        Columns ``text`` (cleaned), ``label_value`` (normalised), ``row`` (the sheet row), ``source`` (file name).
    """
    table = read_sheet(path, [text_col, label_col], params=EXTRA_PARAMS)
    own = LoadReport(source=path.name, rows_read=len(table.df))
    own.read_from(table)
    df = _labelled_rows(table.df, text_col, label_col, own, path.name, "skipped (not annotated)")
    unknown = df[~df["label_value"].isin(known)]
    if len(unknown):
        rows = ", ".join(map(str, unknown["row"].tolist()[:20])) + (" …" if len(unknown) > 20 else "")
        raise DataError(
            f"{path.name} (extra_labelled_paths): label(s) {sorted(map(str, set(unknown['label_value'])))} in "
            f"sheet row(s) {rows} are not in the label table {sorted(known, key=str)}. Write one of those "
            f"labels (its sheet '{LABEL_SHEET}' lists them), or leave the cell empty to skip the row."
        )
    for entry in own.entries:  # the annotator sheet's findings, under its own name, in the study's report
        report.entries.append(entry | {"problem": f"{path.name}: {entry['problem']}"})
    log.info(
        "%s: %d annotated rows added (%d of %d rows skipped).",
        path.name,
        len(df),
        len(table.df) - len(df),
        len(table.df),
    )
    return df


def _resolve_conflicts(df: pd.DataFrame, report: LoadReport, on_conflict: str) -> pd.DataFrame:
    n_labels = df.assign(key=df["label_value"].map(repr)).groupby("text")["key"].transform("nunique")
    conflict = n_labels > 1
    if conflict.any():
        examples = df[conflict].groupby("text")["label_value"].apply(lambda s: sorted(set(map(str, s))))
        shown = "; ".join(f"{t!r}: {v}" for t, v in list(examples.items())[:5])
        if on_conflict == "error":
            raise DataError(
                f"{conflict.sum()} rows have a text that also appears with another label ({shown}). "
                f"Fix the labels in the sheet, or pass on_conflict='drop'."
            )
        report.add(
            f"same text with different labels ({len(examples)} texts, e.g. {shown})",
            df.loc[conflict, "row"],
            "dropped (all copies)",
        )
    return df[~conflict]


def _label_scheme(
    values: pd.Series, table: pd.DataFrame | None, path: Path, label_col: str
) -> tuple[list, list[str], list[str] | None]:
    """Ordered label values, their names and descriptions; at least two classes."""
    present = set(values)
    if len(present) < 2:
        raise DataError(
            f"{path.name}: every kept row has the label {sorted(map(str, present))} in column "
            f"{label_col!r}: a classifier needs at least two classes. Check that label_col= names the "
            f"label column, and that the other classes were not dropped (see the load report)."
        )
    if table is None:
        kinds = {"number" if isinstance(v, (int, float)) else "text" for v in present}
        if len(kinds) > 1:
            mixed = sorted(map(str, present))
            raise DataError(f"{path.name}: labels mix numbers and text ({mixed}); use one kind, or give a label table.")
        ordered = sorted(present)
        return ordered, [str(v) for v in ordered], None
    unknown = sorted(map(str, present - set(table["Label"])))
    if unknown:
        raise DataError(
            f"{path.name}: label(s) {unknown} are not in the label table {table['Label'].tolist()}. "
            f"Fix the sheet or add them to the table."
        )
    unused = table[~table["Label"].isin(present)]
    if len(unused):
        log.warning(
            "%s: label(s) %s of the label table never occur; they are left out.", path.name, unused["Label"].tolist()
        )
    table = table[table["Label"].isin(present)]
    descriptions = table["Description"].fillna("").astype(str).tolist() if "Description" in table else None
    return table["Label"].tolist(), table["Name"].astype(str).tolist(), descriptions


def load_unlabelled(
    path: str | Path,
    text_col: str = "Sentence",
    sheet: str | int | None = None,
    header_row: int = 1,
    encoding: str | None = None,
) -> pd.DataFrame:
    """Load a pool of unlabelled texts through the same reader and checks.

    Args:
        path: the sheet (.xlsx, .csv, .tsv).
        text_col: the column of the texts.
        sheet: sheet name or 0-based index of an .xlsx (None: the first).
        header_row: the row of the column names (1-based).
        encoding: the encoding of a CSV/TSV (None: detected).

    Returns:
        Columns ``text`` and ``row`` (the sheet row), one row per non-empty text.
    """
    path = Path(path)
    table = read_sheet(path, [text_col], sheet, header_row, encoding, UNLABELLED_PARAMS)
    raw = table.df
    if raw.empty:
        raise DataError(f"{path.name}: the sheet has a header but no rows.")
    report = LoadReport(source=path.name, rows_read=len(raw))
    report.read_from(table)
    text = _clean_texts(raw[text_col], report)
    df = pd.DataFrame({"text": text, "row": raw.index}).dropna(subset=["text"]).reset_index(drop=True)
    log.info("%s: %d unlabelled texts (%d of %d rows dropped).", path.name, len(df), report.dropped(), len(raw))
    return df
