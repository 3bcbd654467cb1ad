"""The codebook: each label's name, description, what it includes and excludes, and examples.

One table serves three readers: the LLM prompt (:func:`nblib.llm.render_prompt`), the paper's appendix table and the
instructions sheet of an annotator workbook (:meth:`Codebook.to_frame`). It is read from a sheet or a YAML file
(:func:`read_codebook`), or taken from the study's label table (:meth:`Codebook.from_study`)::

    Label | Name     | Description              | Include        | Exclude       | Examples
    0     | 节目制作 | 节目本身：制作、演员、质量 | 舞美、演技      | 文物本身      | 舞美太美了|演员很用心
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .data import LABEL_SHEET, LabelledData, _normalise_label, read_table
from .sheets import DataError

if TYPE_CHECKING:
    from .study import Study

COLUMNS = ("Label", "Name", "Description", "Include", "Exclude", "Examples")
EXAMPLE_SEPARATOR = re.compile(r"\s*(?:\n|\|)\s*")  # examples in one cell: one a line, or separated by |


@dataclass(frozen=True)
class CodebookEntry:
    """One label of the codebook.

    ``label`` is the value as written in the labelled sheet's label column (e.g. 0 or "正面").
    """

    label: int | str
    name: str
    description: str = ""
    include: str = ""
    exclude: str = ""
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class Codebook:
    """The labels of a study with what a coder (human or LLM) needs to tell them apart, in class order."""

    entries: tuple[CodebookEntry, ...]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> list[int | str]:
        """The label values, in class order."""
        return [e.label for e in self.entries]

    @property
    def names(self) -> list[str]:
        """The label names, in class order."""
        return [e.name for e in self.entries]

    @classmethod
    def from_data(cls, data: LabelledData) -> Codebook:
        """The codebook of a loaded sheet's label table (names and descriptions; the other fields empty).

        Args:
            data: the labelled data.
        """
        descriptions = data.label_descriptions or [""] * data.num_labels
        return cls(
            tuple(
                CodebookEntry(label=v, name=str(n), description=str(d))
                for v, n, d in zip(data.label_values, data.label_names, descriptions, strict=True)
            )
        )

    @classmethod
    def from_study(cls, study: Study) -> Codebook:
        """The codebook of the study's label table (its description may be empty).

        Args:
            study: the study.
        """
        return cls.from_data(study.data)

    @classmethod
    def from_frame(cls, table: pd.DataFrame, source: str = "the codebook") -> Codebook:
        """A codebook from a table with columns ``Label``, ``Name`` and optionally ``Description``, ``Include``,
        ``Exclude``, ``Examples`` (column names in any case; examples separated by new lines or ``|``).

        Args:
            table: the table, one row per label.
            source: how messages name the table (e.g. its file).

        Raises:
            DataError: a required column is missing, a label has no name, or a label is listed twice.
        """
        columns = {str(c).strip().lower(): c for c in table.columns}
        missing = [c for c in ("Label", "Name") if c.lower() not in columns]
        if missing:
            raise DataError(
                f"{source} needs the columns {list(COLUMNS[:2])} (optional {list(COLUMNS[2:])}); "
                f"it lacks {missing} (it has {[str(c) for c in table.columns]})."
            )
        rows = table.rename(columns={columns[c.lower()]: c for c in COLUMNS if c.lower() in columns})
        rows = rows.dropna(subset=["Label"]).reset_index(drop=True)
        if rows.empty:
            raise DataError(f"{source} lists no label: fill in one row per label (columns {list(COLUMNS)}).")
        entries = []
        for i, row in rows.iterrows():
            label = _normalise_label(row["Label"])
            name = _cell(row.get("Name"))
            if not name:
                raise DataError(
                    f"{source}: label {label!r} (row {i + 1} of the table) has no name: write one in its 'Name' "
                    f"column (the prompt and the annotators' instructions show it)."
                )
            examples = tuple(e for e in EXAMPLE_SEPARATOR.split(_cell(row.get("Examples"))) if e)
            entries.append(
                CodebookEntry(
                    label=label,
                    name=name,
                    description=_cell(row.get("Description")),
                    include=_cell(row.get("Include")),
                    exclude=_cell(row.get("Exclude")),
                    examples=examples,
                )
            )
        seen: set = set()
        twice = [e.label for e in entries if e.label in seen or seen.add(e.label)]
        if twice:
            raise DataError(f"{source} lists label(s) {twice} twice: keep one row per label.")
        return cls(tuple(entries))

    def to_frame(self) -> pd.DataFrame:
        """The codebook as a table with the columns ``Label, Name, Description, Include, Exclude, Examples``
        (examples joined by new lines): the paper's appendix table and the annotators' instructions sheet."""
        return pd.DataFrame(
            [[e.label, e.name, e.description, e.include, e.exclude, "\n".join(e.examples)] for e in self.entries],
            columns=list(COLUMNS),
        )

    def for_data(self, data: LabelledData, source: str = "the codebook") -> Codebook:
        """This codebook in the class order of ``data`` (entry ``j`` describes class ``j``).

        Args:
            data: the labelled data the codebook is used with.
            source: how messages name the codebook.

        Raises:
            DataError: a label of the data is not in the codebook.
        """
        by_label = {e.label: e for e in self.entries}
        missing = [v for v in data.label_values if v not in by_label]
        if missing:
            raise DataError(
                f"{source} has no row for label(s) {missing} of the labelled sheet (it lists {self.labels}): "
                f"add them, or check that its Label column holds the values written in the sheet."
            )
        return Codebook(tuple(by_label[v] for v in data.label_values))


def _cell(value: object) -> str:
    """A cell as stripped text; empty for a missing cell."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return str(value).strip()


def read_codebook(path: str | Path) -> Codebook:
    """Read a codebook from an .xlsx (its sheet ``labels`` if it has one, else the first), .csv, .tsv or .yaml file.

    A YAML codebook is a list of mappings with the keys ``Label``, ``Name``, ``Description``, ``Include``,
    ``Exclude``, ``Examples`` (examples: a list or one text separated by new lines or ``|``), or a mapping with
    that list under ``codebook``.

    Args:
        path: the file.

    Raises:
        DataError: the file is missing or cannot be read, or a label has no name (the message says which).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Codebook {path} not found: give the path of a .xlsx, .csv, .tsv or .yaml file.")
    if path.suffix.lower() in (".yaml", ".yml"):
        return Codebook.from_frame(_yaml_table(path), source=str(path))
    sheet = None
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl

        wb = openpyxl.load_workbook(path, read_only=True)
        sheet = LABEL_SHEET if LABEL_SHEET in wb.sheetnames else None
        wb.close()
    return Codebook.from_frame(read_table(path, sheet=sheet), source=str(path))


def _yaml_table(path: Path) -> pd.DataFrame:
    """The rows of a YAML codebook as a table."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"Codebook {path} is not valid YAML: {e}") from None
    if isinstance(loaded, Mapping) and "codebook" in loaded:
        loaded = loaded["codebook"]
    if not isinstance(loaded, list) or not all(isinstance(r, Mapping) for r in loaded):
        raise DataError(
            f"Codebook {path}: expected a list of labels, each with the keys {list(COLUMNS)} (or that list under "
            f"'codebook:'); found {type(loaded).__name__}."
        )
    canonical = {c.lower(): c for c in COLUMNS}  # keys in any case, as in a sheet's header
    return pd.DataFrame([{canonical.get(str(k).strip().lower(), k): _joined(v) for k, v in r.items()} for r in loaded])


def _joined(value: object) -> object:
    """A YAML list of examples as one cell (new lines between)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "\n".join(str(v) for v in value)
    return value


def entries_text(codebook: Codebook, words: Mapping[str, str], labels: Iterable[str] | None = None) -> str:
    """The codebook as prompt text, one block per label: ``<label>：<name>。<description>`` then its include,
    exclude and examples lines (empty fields left out).

    Args:
        codebook: the codebook.
        words: the words of the prompt's language (``include``, ``exclude``, ``examples``, ``colon``, ``quote``).
        labels: how each label is written (default: the label values).
    """
    labels = list(labels) if labels is not None else [str(v) for v in codebook.labels]
    blocks = []
    for label, e in zip(labels, codebook.entries, strict=True):
        lines = [f"{label}{words['colon']}{e.name}" + (f"{words['stop']}{e.description}" if e.description else "")]
        if e.include:
            lines.append(f"  {words['include']}{words['colon']}{e.include}")
        if e.exclude:
            lines.append(f"  {words['exclude']}{words['colon']}{e.exclude}")
        if e.examples:
            quoted = words["sep"].join(words["quote"].format(x) for x in e.examples)
            lines.append(f"  {words['examples']}{words['colon']}{quoted}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
