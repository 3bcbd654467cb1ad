"""Reading and writing spreadsheets (.xlsx, .csv, .tsv) so that no text is lost, changed or run as a formula.

Every entry point reads through :func:`read_sheet`, and every table the project writes goes through
:func:`write_table`: sheets for people (predictions, annotator and label-issue sheets) and the machine tables
under ``results/`` (folds, per-fold and combined predictions, metrics, comparisons), which
:func:`read_machine_table` reads back with their types.

Reading
    * CSV/TSV encoding: a byte-order mark decides (UTF-8 with BOM, UTF-16 as Excel's "Unicode text"); else
      UTF-8 if the bytes are valid UTF-8, else GB18030 (a superset of GBK, what Excel on Chinese Windows
      writes), or Big5 when the GB18030 reading is mostly rare or private-use characters (traditional Chinese
      saved in Big5 reads as such garbage) and the bytes are valid Big5. ``encoding=`` overrides the guess; the
      encoding used is returned with the table.
    * CSV is parsed strictly (a stray quote is an error naming its line); a record that spans several lines
      (a quoted cell with line breaks, or quotes that merged rows) is listed with its lines. TSV is read with
      quoting off: one line is one row, so a stray quote cannot merge lines; only a cell that is entirely one
      quoted field (``"…"`` with inner quotes doubled, as Excel and pandas write TSV) is unquoted.
    * Every cell is kept as written: no NA strings ("NA", "null", "None", "nan", "N/A" are texts); only an
      empty cell is missing.
    * The header is on row ``header_row`` (1-based); when the wanted columns are not there, the message
      names the row that holds them, or says that the header looks like a title.
    * Duplicate column names, a damaged, mis-named or password-protected .xlsx and an empty file are errors
      that name the file. A formula cell without a saved result (pandas' ``to_excel`` writes a text starting
      with ``=`` so) reads as empty and is noted with its rows and what to do.

Writing
    * Suffix and format agree (.xlsx, .csv, .tsv; anything else is an error).
    * An .xlsx may hold more sheets (``more_sheets``: e.g. the label table of an annotator sheet).
    * .xlsx: every text is a text cell (never a formula), formula-like texts get Excel's "quote prefix"
      style, control characters use OOXML's ``_xHHHH_`` escapes that :func:`read_sheet` undoes.
    * .csv/.tsv: UTF-8 with BOM (so that Excel shows Chinese), every field quoted in CSV; a text that would
      start a formula (``= + - @``, tab, CR: OWASP's CSV-injection list) gets a leading apostrophe, which
      Excel and LibreOffice take as "this is text" and :func:`read_sheet` removes again. The trade-off:
      other programs (``pandas.read_csv``, R) see the apostrophe. For people, prefer .xlsx.
    * What a file cannot hold is changed, never silently (:func:`fit_cells`, one warning naming the rows): a
      lone surrogate becomes U+FFFD in every format; in an .xlsx also U+FFFE/U+FFFF (XML 1.0 forbids them), and
      a text over Excel's 32,767 characters per cell is cut there. Decision: rather than refuse a whole
      prediction for one text, the .xlsx is written and the exact texts go to a CSV copy beside it,
      ``<name>_exact.csv`` (written only then), which holds U+FFFE/U+FFFF and the full long texts.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

READERS = {".xlsx": "excel", ".xlsm": "excel", ".csv": "csv", ".tsv": "tsv", ".txt": "tsv"}
WRITERS = {".xlsx": "excel", ".csv": "csv", ".tsv": "tsv"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"  # the apostrophe that marks a CSV/TSV cell as text
MARKED_START = FORMULA_START + (TEXT_MARK,)  # what may follow the apostrophe in a marked cell
TOP_ROWS = 30  # rows searched for the column names when they are not on the header row
_OOXML_ESCAPED = re.compile(r"_x([0-9A-Fa-f]{4})_")
_OOXML_TO_ESCAPE = re.compile(r"[\x00-\x08\x0b-\x1f]|_(?=x[0-9A-Fa-f]{4}_)")
# zero-width and other invisible format characters: a text of only these (and whitespace) looks empty
_INVISIBLE = re.compile(r"[\s\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u206a-\u206f\ufeff]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_IN_XML = re.compile("[\ufffe\uffff]")  # what XML 1.0 forbids and OOXML's _xHHHH_ escapes do not cover
XLSX_CELL_MAX = 32_767  # characters in an Excel cell
EXACT_COPY = "_exact.csv"  # suffix of the CSV copy written beside an .xlsx whose texts had to be changed
UNPAIRED = "lone surrogate character (half of a UTF-16 pair, from a bad decode) replaced by U+FFFD"
NOT_IN_XLSX = "character U+FFFE or U+FFFF, which an .xlsx cannot hold, replaced by U+FFFD"
TOO_LONG = f"text longer than Excel's {XLSX_CELL_MAX:,} characters per cell, cut there"
_QUOTED_FIELD = re.compile(r'"((?:[^"]|"")*)"', re.S)
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
ENCODING_NAMES = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 with BOM",
    "utf-16": "UTF-16 (Excel's Unicode text)",
    "gb18030": "GB18030/GBK (detected)",
    "big5": "Big5 (detected: read as GB18030/GBK its text is mostly rare or private-use characters; pass the "
    "encoding if this is wrong)",
}
GARBLED = 0.5  # share of rare or private-use characters in a GB18030 reading that suggests another encoding


class DataError(ValueError):
    """The input data cannot be used as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Params:
    """How the calling entry point spells its parameters, so that each message names the one to change.

    Each value is written before the suggested value, e.g. ``"header_row="`` or ``"--header-row "``.
    """

    columns: str = "text_col=/label_col="
    sheet: str = "sheet="
    header_row: str = "header_row="
    encoding: str = "encoding="


@dataclass
class Sheet:
    """A table of raw cells read from a file, and what the reader found.

    ``df`` holds the cells as written (text as ``str``, numbers and dates as read from .xlsx, ``None`` for
    an empty cell); its index is the row number in the sheet (the header is ``header_row``; in CSV/TSV
    one row per record). ``notes`` are (problem, sheet rows, action) for the load report.
    """

    df: pd.DataFrame
    path: Path
    encoding: str | None = None
    notes: list[tuple[str, list[int], str]] = field(default_factory=list)


def clean_text(value: object) -> str:
    """Remove byte-order marks and surrounding whitespace; keep everything else. A text of nothing but
    whitespace and zero-width characters (U+200B…, which look empty) is empty.

    Args:
        value: a cell value.
    """
    text = str(value).replace("\ufeff", "").strip()
    return "" if _INVISIBLE.fullmatch(text) else text


def cell_text(value: object) -> str:
    """A cell as cleaned text; whole numbers that Excel stored as floats lose their '.0'.

    Args:
        value: a cell value.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return clean_text(value)


# --- reading ------------------------------------------------------------------------------------------


def read_sheet(
    path: str | Path,
    columns: Sequence[str] = (),
    sheet: str | int | None = None,
    header_row: int = 1,
    encoding: str | None = None,
    params: Params = Params(),
) -> Sheet:
    """Read an .xlsx/.csv/.tsv file as raw cells and check that it holds ``columns``.

    Args:
        path: the file (.xlsx, .xlsm, .csv, .tsv, or .txt as Excel's tab-separated "Unicode text").
        columns: column names that must be in the header.
        sheet: sheet name or 0-based index of an .xlsx (None: the first sheet).
        header_row: the row of the column names (1-based, as Excel numbers rows).
        encoding: the text encoding of a CSV/TSV (None: detected).
        params: how the caller spells its parameters, for the messages.

    Returns:
        The cells, the encoding used and notes for the load report.

    Raises:
        FileNotFoundError: no such file (the message lists the readable files next to it).
        DataError: anything else that stops the read; the message names the file and what to do.
    """
    path = Path(path)
    if not path.exists():
        near = (
            sorted(p.name for p in path.parent.glob("*") if p.suffix.lower() in READERS) if path.parent.is_dir() else []
        )
        hint = f" Files in {path.parent}: {', '.join(near)}." if near else ""
        raise FileNotFoundError(f"Data file not found: {path.resolve()}.{hint}")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"Cannot read {path.name}: use one of {', '.join(READERS)} (save the sheet as .xlsx or .csv).")
    if header_row < 1:
        raise DataError(f"{params.header_row}{header_row}: rows are numbered from 1, as in Excel.")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path.name} is empty ({len(data)} bytes): copy it again, or export the sheet again.")
    out = Sheet(pd.DataFrame(), path)
    if kind == "excel":
        rows = _excel_rows(path, data, sheet, params, out)
    else:
        text, out.encoding = _decode(data, encoding, path, params)
        if out.encoding not in ("utf-8", "utf-8-sig"):
            say = log.warning if out.encoding == "big5" else log.info
            say("%s: read as %s.", path.name, ENCODING_NAMES.get(out.encoding, out.encoding))
        sep = "\t" if kind == "tsv" or _tab_separated(text) else ","
        rows = _tsv_rows(text, out) if sep == "\t" else _csv_rows(text, out)
    out.df = _table(rows, columns, header_row, path, params, strict_width=kind != "excel")
    return out


def _excel_rows(path: Path, data: bytes, sheet: str | int | None, params: Params, out: Sheet) -> list[list]:
    import openpyxl

    if _encrypted(data):
        raise DataError(
            f"{path.name} is password-protected (an encrypted workbook), which nblib cannot open. Open it in Excel "
            f"or WPS with its password, remove the password (Excel: File > Info > Protect Workbook > Encrypt with "
            f"Password, clear it) and save it as .xlsx, or save a copy as 'CSV UTF-8'."
        )
    if not data.startswith(b"PK"):
        what = (
            "an old Excel 97-2003 .xls workbook"
            if data.startswith(b"\xd0\xcf\x11\xe0")
            else "text (a CSV or TSV renamed?)"
            if _looks_like_text(data)
            else "not a workbook"
        )
        raise DataError(
            f"{path.name} is not an .xlsx workbook: its content is {what}. Open it in Excel or WPS and "
            f"save it as 'Excel Workbook (.xlsx)', or give it the suffix of what it is (.csv, .tsv)."
        )
    damaged = (
        f"{path.name} cannot be read as an .xlsx workbook: it is damaged or truncated (an interrupted copy or "
        f"download?). Copy it again, or open it in Excel or WPS and save it again as .xlsx."
    )
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, SyntaxError, ValueError, TypeError) as e:
        raise DataError(f"{damaged} ({type(e).__name__}: {e})") from None
    try:
        names = wb.sheetnames
        if sheet is None or isinstance(sheet, int) and 0 <= sheet < len(names):
            ws = wb.worksheets[sheet or 0]
        elif sheet in names:
            ws = wb[sheet]
        else:
            raise DataError(
                f"{path.name} has no sheet {sheet!r}; its sheets are {names}. "
                f"Pass {params.sheet}<name or 0-based index>."
            )
        ws.reset_dimensions()  # some writers record wrong dimensions, which read-only mode trusts
        rows = [
            [_unescape_ooxml(v) if isinstance(v, str) else v for v in row] for row in ws.iter_rows(values_only=True)
        ]
        index = wb.worksheets.index(ws)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, SyntaxError) as e:
        raise DataError(f"{damaged} ({type(e).__name__}: {e})") from None
    finally:
        wb.close()
    unsaved = _formulas_without_values(path, data, index, rows)
    if unsaved:
        out.notes.append(
            (
                "formula without a saved value (pandas' to_excel writes a text that starts with = so): open and save "
                "the file in Excel/WPS, or save it as CSV",
                unsaved,
                "read as empty",
            )
        )
    return rows


def _encrypted(data: bytes) -> bool:
    """A password-protected OOXML workbook: an OLE compound file that holds an ``EncryptedPackage`` stream."""
    return data.startswith(b"\xd0\xcf\x11\xe0") and "EncryptedPackage".encode("utf-16-le") in data


def _formulas_without_values(path: Path, data: bytes, index: int, rows: list[list]) -> list[int]:
    """Sheet rows with a formula cell that has no saved result (read as empty); only looked for when the
    workbook has formulas at all, so that a plain sheet is read once."""
    import openpyxl

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        sheets = [n for n in z.namelist() if n.startswith("xl/worksheets/") and n.endswith(".xml")]
        if not any(re.search(rb"<f[ >/]", z.read(n)) for n in sheets):
            return []
    wb = openpyxl.load_workbook(path, read_only=True, data_only=False)
    try:
        ws = wb.worksheets[index]
        ws.reset_dimensions()
        return [
            i
            for i, (formulas, values) in enumerate(zip(ws.iter_rows(values_only=True), rows), 1)
            if any(isinstance(f, str) and f.startswith("=") and v is None for f, v in zip(formulas, values))
        ]
    finally:
        wb.close()


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    return b"\x00" not in head or head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


def _unescape_ooxml(text: str) -> str:
    """Undo OOXML's ``_xHHHH_`` escapes (how Excel stores control characters such as CR; ``_x005F_`` is '_')."""
    return _OOXML_ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text) if "_x" in text else text


def _decode(data: bytes, encoding: str | None, path: Path, params: Params) -> tuple[str, str]:
    """The file's text and the encoding used: the given one, else by byte-order mark, else UTF-8, else GB18030."""
    bom = next((enc for mark, enc in BOMS if data.startswith(mark)), None)
    for enc in [encoding] if encoding else [bom] if bom else ["utf-8", "gb18030"]:
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        except LookupError:
            raise DataError(
                f"{params.encoding}{encoding!r} is not an encoding Python knows (try 'gb18030', 'utf-16' or 'big5')."
            ) from None
        if enc == "gb18030" and not encoding and (garbled := _garbled_share(text)) >= GARBLED:
            return _big5_or_warn(data, text, garbled, path, params)
        return text, enc
    if encoding:
        raise DataError(
            f"{path.name} cannot be read as {encoding}. Leave {params.encoding} out to detect the "
            f"encoding, or name the right one."
        )
    raise DataError(
        f"{path.name}: its text encoding is none of UTF-8, UTF-16 or GB18030/GBK. Pass "
        f"{params.encoding}'<encoding>' (e.g. 'big5'), or save the sheet as .xlsx or 'CSV UTF-8'."
    )


def _garbled_share(text: str) -> float:
    """The share of the letters beyond ASCII that are private-use, or not among GB2312's hanzi (rare characters,
    kana, Greek…): near 0 for Chinese read in its own encoding, most of them for Big5 read as GB18030."""
    letters = {c: n for c, n in Counter(c for c in text if ord(c) > 127).items() if unicodedata.category(c)[0] in "LC"}
    total = sum(letters.values())  # each distinct character is looked up once, however often it occurs
    return sum(n for c, n in letters.items() if not _gb2312_hanzi(c)) / total if total else 0.0


def _gb2312_hanzi(char: str) -> bool:
    try:
        return 0xB0 <= char.encode("gb2312")[0] <= 0xF7
    except UnicodeEncodeError:
        return False


def _big5_or_warn(data: bytes, text: str, garbled: float, path: Path, params: Params) -> tuple[str, str]:
    """Bytes whose GB18030 reading is mostly rare or private-use characters (share ``garbled``): Big5 (traditional
    Chinese) when they are valid Big5, else the GB18030 text with a warning."""
    try:
        big5 = data.decode("big5")
    except UnicodeDecodeError:
        log.warning(
            "%s: read as GB18030/GBK, but %.0f%% of its characters are rare or private-use: garbled? Pass "
            "%s'<encoding>' (e.g. 'big5'), or save the sheet as .xlsx or 'CSV UTF-8'.",
            path.name,
            100 * garbled,
            params.encoding,
        )
        return text, "gb18030"
    return big5, "big5"


def _tab_separated(text: str) -> bool:
    """A .csv whose first line has tabs and no commas (Excel's "Unicode text" saved under .csv)."""
    first = text.split("\n", 1)[0]
    return "\t" in first and "," not in first


def _csv_rows(text: str, out: Sheet) -> list[list]:
    """Records of a CSV, parsed strictly; records spanning several lines are noted with their lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, spans, last_line = [], [], 0
    try:
        for record in reader:
            rows.append(record)
            if reader.line_num > last_line + 1:
                spans.append((len(rows), last_line + 1, reader.line_num))
            last_line = reader.line_num
    except csv.Error as e:
        raise DataError(
            f'{out.path.name}, line {reader.line_num}: {e}. A stray double quote? In CSV a text with a " must '
            f'be in quotes, with the " doubled (Excel writes it so). Fix that line, or save the sheet '
            f"as .xlsx."
        ) from None
    if spans:
        lines = ", ".join(f"{a}-{b}" for _, a, b in spans[:10])
        out.notes.append(
            (
                f"one row spans several lines of the file (lines {lines})",
                [r for r, _, _ in spans],
                "kept as one text with line breaks; if these were separate rows, a stray quote merged "
                "them: fix it in the file",
            )
        )
    return _unmark(rows, out)


def _tsv_rows(text: str, out: Sheet) -> list[list]:
    """Lines of a TSV with quoting off; a cell that is one whole quoted field is unquoted (and noted)."""
    rows, unquoted = [], []
    for i, record in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE), 1):
        quoted = [_QUOTED_FIELD.fullmatch(cell) for cell in record]
        rows.append([m.group(1).replace('""', '"') if m else cell for m, cell in zip(quoted, record)])
        if any(quoted):
            unquoted.append(i)
    if unquoted:
        out.notes.append(
            (
                'cell in quotes with inner quotes doubled ("…", as Excel and pandas write TSV)',
                unquoted,
                "outer quotes removed, inner quotes undoubled",
            )
        )
    return _unmark(rows, out)


def _unmark(rows: list[list[str]], out: Sheet) -> list[list[str | None]]:
    """Empty cells become None; the apostrophe that :func:`write_table` puts before formula-like text goes."""
    marked = [i for i, row in enumerate(rows, 1) if any(_is_marked(cell) for cell in row)]
    if marked:
        out.notes.append(
            (
                "cell starts with the apostrophe that marks = + - @ as text (as nblib writes CSV)",
                marked,
                "apostrophe removed",
            )
        )
    return [[cell[1:] if _is_marked(cell) else cell if cell != "" else None for cell in row] for row in rows]


def _is_marked(cell: str) -> bool:
    return cell[:1] == TEXT_MARK and cell[1:2] in MARKED_START


def _table(
    rows: list[list], columns: Sequence[str], header_row: int, path: Path, params: Params, strict_width: bool
) -> pd.DataFrame:
    """Rows below ``header_row`` under its names; index = sheet row. Checks names, duplicates and widths."""
    if header_row > len(rows):
        raise DataError(
            f"{path.name} has {len(rows)} row(s); there is no header on row {header_row}. "
            f"Pass {params.header_row}<row of the column names>."
        )
    rows = [[None if v is None or v == "" else v for v in row] for row in rows]
    names = [None if v is None or cell_text(v) == "" else cell_text(v) for v in rows[header_row - 1]]
    while names and names[-1] is None:
        names.pop()
    top = {i: [cell_text(v) for v in row if v is not None] for i, row in enumerate(rows[:TOP_ROWS], 1)}
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(
            f"{path.name}: column(s) {missing} not found in the header (row {header_row}), which has "
            f"columns {[n for n in names if n is not None]}. " + _header_hint(top, columns, header_row, names, params)
        )
    dup = sorted(n for n, k in Counter(n for n in names if n is not None).items() if k > 1)
    if dup:
        where = {n: [_column_letter(i) for i, m in enumerate(names) if m == n] for n in dup}
        raise DataError(
            f"{path.name}: column name(s) appear more than once in the header (row {header_row}): "
            f"{where}. Rename them so that each column has its own name."
        )
    body = rows[header_row:]
    width = max([len(names)] + [_filled_width(r) for r in body])
    if strict_width and width > len(names):
        wide = [header_row + i for i, r in enumerate(body, 1) if _filled_width(r) > len(names)]
        shown = ", ".join(map(str, wide[:10])) + (" …" if len(wide) > 10 else "")
        raise DataError(
            f"{path.name}: the header (row {header_row}) has {len(names)} column(s) but row(s) {shown} "
            f"have more cells: a separator inside a text that is not in quotes? Put such texts in "
            f"quotes (CSV) or save the sheet as .xlsx. " + _header_hint(top, columns, header_row, names, params)
        )
    names += [None] * (width - len(names))
    df = pd.DataFrame(
        [list(r[:width]) + [None] * (width - len(r)) for r in body],
        columns=[n if n is not None else f"Unnamed: {i}" for i, n in enumerate(names)],
        index=pd.RangeIndex(header_row + 1, header_row + 1 + len(body)),
        dtype=object,
    )
    unnamed_empty = [c for c, n in zip(df.columns, names) if n is None and df[c].isna().all()]
    return df.drop(columns=unnamed_empty).dropna(how="all")


def _filled_width(row: list) -> int:
    """Number of cells up to the last non-empty one."""
    return max((i + 1 for i, v in enumerate(row) if v is not None), default=0)


def _header_hint(
    top: dict[int, list[str]], columns: Sequence[str], header_row: int, names: list, params: Params
) -> str:
    """Advice on the header row: the row that holds the wanted columns, or a title row, or the column parameters."""
    found = next((i for i, cells in top.items() if i != header_row and columns and set(columns) <= set(cells)), None)
    if found is not None:
        return f"They are on row {found}: pass {params.header_row}{found}."
    named = sum(n is not None for n in names)
    widest_below = max([len(cells) for i, cells in top.items() if i > header_row], default=0)
    if named < widest_below and named <= widest_below / 2:
        return (
            f"Row {header_row} looks like a title, not the column names: pass {params.header_row}<row of the "
            f"column names>."
        )
    return f"Pass {params.columns} to name the right columns, or {params.header_row}<row> if the header is elsewhere."


def _column_letter(i: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(i + 1)


# --- writing ------------------------------------------------------------------------------------------


def write_table(df: pd.DataFrame, path: str | Path, more_sheets: Mapping[str, pd.DataFrame] | None = None) -> Path:
    """Write ``df`` (its columns, not its index) as .xlsx, .csv or .tsv, chosen by the suffix.

    Texts are written so that no program runs them as formulas and :func:`read_sheet` reads them back
    unchanged (see the module docstring). Missing values become empty cells.

    Args:
        df: the table (the first sheet of an .xlsx); column names must be unique.
        path: the file to write; its suffix picks the format.
        more_sheets: further tables by sheet name, written the same way after the first (.xlsx only: a
            CSV/TSV holds one table), e.g. the label table next to an annotator sheet.

    Returns:
        The path written.

    Raises:
        DataError: a suffix that is not .xlsx/.csv/.tsv, duplicate column names, more sheets for a CSV/TSV,
            or (TSV) a text with a tab or line break, which TSV cannot hold.

    Texts a file cannot hold (see :func:`fit_cells`) are changed with a warning that names the rows; for an .xlsx
    the exact texts of ``df`` then also go to ``<name>_exact.csv`` beside it.
    """
    path = Path(path)
    kind = writer_kind(path)
    more_sheets = dict(more_sheets or {})
    if more_sheets and kind != "excel":
        raise DataError(
            f"Cannot write sheets {list(more_sheets)} into {path.name}: only an .xlsx holds several sheets."
        )
    tables = [(None, df), *more_sheets.items()]  # None: openpyxl's default name for the first sheet
    for _, table in tables:
        dup = sorted({str(c) for c in table.columns if list(table.columns).count(c) > 1})
        if dup:
            raise DataError(f"Cannot write {path.name}: column name(s) {dup} occur more than once.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "excel":
        sheets = [(name, *fit_cells(_cells(table), kind)) for name, table in tables]
        _write_xlsx([(name, rows) for name, rows, _ in sheets], path)
        changed = [(name, changes) for name, _, changes in sheets if changes]
        exact = path.with_name(f"{path.stem}{EXACT_COPY}") if sheets[0][2] else None
        if exact is not None:
            _write_delimited(fit_cells(_cells(df), "csv")[0], exact, "csv")
        for name, changes in changed:
            _report_changes(path, name, changes, exact if name is None else None)
    else:
        rows, changes = fit_cells(_cells(df), kind)
        _write_delimited(rows, path, kind)
        _report_changes(path, None, changes, None)
    return path


def fit_cells(rows: list[list], kind: str) -> tuple[list[list], dict[str, list[int]]]:
    """The cells as a file of ``kind`` can hold them, and what was changed: {problem: sheet rows}.

    Every writer goes through this: a lone surrogate (half of a UTF-16 pair, from a bad decode) fits no file
    and becomes U+FFFD (a pair is joined into its character); an .xlsx (XML 1.0) also cannot hold U+FFFE or
    U+FFFF (replaced by U+FFFD) nor more than 32,767 characters in a cell (Excel's limit: the text is cut there).

    Args:
        rows: the header and the rows (as from ``_cells``); row ``i`` (0-based) is sheet row ``i + 1``.
        kind: "excel", "csv" or "tsv".
    """
    changes: dict[str, list[int]] = {}
    out = []
    for i, row in enumerate(rows, 1):
        fitted = []
        for v in row:
            if isinstance(v, str):
                v, problems = _fit_text(v, kind)
                for problem in problems:
                    changes.setdefault(problem, []).append(i)
            fitted.append(v)
        out.append(fitted)
    return out, {problem: sorted(set(r)) for problem, r in changes.items()}


def _fit_text(text: str, kind: str) -> tuple[str, list[str]]:
    """One text as :func:`fit_cells` writes it, and the problems found."""
    problems = []
    if _SURROGATE.search(text):  # a pair is joined into its character, a lone half becomes U+FFFD
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        if joined.count("\ufffd") > text.count("\ufffd"):
            problems.append(UNPAIRED)
        text = joined
    if kind == "excel":
        if _NOT_IN_XML.search(text):
            text = _NOT_IN_XML.sub("\ufffd", text)
            problems.append(NOT_IN_XLSX)
        if len(text) > XLSX_CELL_MAX:
            text = text[:XLSX_CELL_MAX]
            problems.append(TOO_LONG)
    return text, problems


def _report_changes(path: Path, sheet: str | None, changes: dict[str, list[int]], exact: Path | None) -> None:
    """A warning that names the rows whose texts were changed to fit the file, what was done and where the exact
    texts are."""
    if not changes:
        return
    where = f"{path.name}{f', sheet {sheet!r}' if sheet else ''}"
    done = "; ".join(f"{problem}: row(s) {_rows(rows)}" for problem, rows in changes.items())
    copy = f" The exact texts (as far as a file can hold them) are in {exact}." if exact else ""
    log.warning("%s: texts changed to fit the file. %s.%s", where, done, copy)


def _rows(rows: list[int]) -> str:
    """Row numbers for a message: the first ten, and how many more."""
    return ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")


def _cells(df: pd.DataFrame) -> list[list]:
    """The header and the rows of ``df`` as plain Python values (None for a missing value)."""
    header = [str(c) for c in df.columns]
    rows = [
        [None if _missing(v) else v.item() if hasattr(v, "item") else v for v in r]
        for r in df.itertuples(index=False, name=None)
    ]
    return [header] + rows


def read_machine_table(path: str | Path, text_columns: Sequence[str] = ("text", "source")) -> pd.DataFrame:
    """Read back a machine table that :func:`write_table` wrote (results, folds), with its types.

    The cells go through :func:`read_sheet` (so formula-marked texts come back unchanged); ``text_columns``
    stay text (an empty cell is ""), every other column becomes numeric when all its cells are numbers, or
    boolean when all are True/False (as written).

    Args:
        path: a .csv/.tsv/.xlsx written by :func:`write_table`.
        text_columns: columns that hold texts, kept as ``str`` whatever they look like.
    """
    df = read_sheet(path).df.reset_index(drop=True)
    for c in df.columns:
        if c in text_columns:
            df[c] = df[c].fillna("").astype(str)
        elif df[c].isin(["True", "False"]).all():
            df[c] = df[c] == "True"
        else:
            try:
                df[c] = pd.to_numeric(df[c])
            except (ValueError, TypeError):
                pass  # a column of names (e.g. a model's) stays text
    return df


def writer_kind(path: str | Path) -> str:
    """The format :func:`write_table` writes for ``path`` ("excel", "csv" or "tsv"); an unknown suffix is a DataError."""
    kind = WRITERS.get(Path(path).suffix.lower())
    if kind is None:
        raise DataError(
            f"Cannot write {Path(path).name}: the suffix must be one of {', '.join(WRITERS)} (it decides the format)."
        )
    return kind


def _missing(v: object) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or isinstance(v, float) and v != v


def _write_xlsx(sheets: list[tuple[str | None, list[list]]], path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook(write_only=True)
    for name, rows in sheets:
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append([_text_cell(ws, v) if isinstance(v, str) else v for v in row])
    wb.save(path)


def _text_cell(ws, text: str):
    """A cell that holds ``text`` as text, never a formula; formula-like text gets Excel's quote prefix."""
    from openpyxl.cell import WriteOnlyCell

    cell = WriteOnlyCell(ws, _OOXML_TO_ESCAPE.sub(lambda m: f"_x{ord(m.group(0)):04X}_", text))
    cell.data_type = "s"
    cell.quotePrefix = text.startswith(FORMULA_START)
    return cell


def _write_delimited(rows: list[list], path: Path, kind: str) -> None:
    if kind == "tsv":
        bad = [i for i, r in enumerate(rows, 1) if any(isinstance(v, str) and re.search(r"[\t\r\n]", v) for v in r)]
        if bad:
            raise DataError(
                f"Cannot write {path.name}: row(s) {bad[:10]} hold a tab or line break, which a TSV "
                f"cannot hold. Write .xlsx or .csv instead."
            )
    rows = [["" if v is None else _mark(v) if isinstance(v, str) else v for v in r] for r in rows]
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        if kind == "csv":
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
        else:
            f.writelines("\t".join(map(_tsv_cell, r)) + "\r\n" for r in rows)


def _mark(text: str) -> str:
    """Put the text-marking apostrophe before a formula-like text, and before a text that starts with one."""
    return TEXT_MARK + text if text.startswith(FORMULA_START) or _is_marked(text) else text


def _tsv_cell(value: object) -> str:
    """A TSV cell; a text that looks like one whole quoted field is quoted, so that reading keeps its quotes."""
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if _QUOTED_FIELD.fullmatch(text) else text
