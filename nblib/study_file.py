"""The study file: one YAML file of a study's parameters, read by every notebook (``-p study my_study.yaml``).

A study file holds any parameter of any notebook (the :mod:`nblib.settings` classes of
:func:`notebook_settings`); unknown keys are an error. Relative paths in it are read relative to the file, so
the notebooks find the data whether they run from ``notebooks/`` or the repository root. Results and figures
go to ``results/`` and ``figures/`` next to the file unless it names ``results_dir`` / ``fig_dir``.

**Override rule.** A parameter given explicitly wins over the file. Explicit is: named in papermill's
injected-parameters cell (``-p name value``, ``-f params.yaml``; read from IPython's ``In`` history, where that
cell starts with ``# Parameters``), or a value that differs from the parameter's declared default (an edit of
the parameters cell in Jupyter). A value passed with papermill that equals the default still wins; an edit in
Jupyter back to the default does not (the file's value applies).

``python -m nblib.study init my_sheet.xlsx`` writes a first study file from a sheet (:func:`init`).
"""

from __future__ import annotations

import ast
import difflib
import os
import typing
from collections.abc import Mapping, MutableMapping
from dataclasses import Field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import names
from .settings import (
    RENAMED,
    STUDY_PARAMETER,
    AnalysisSettings,
    EdaSettings,
    FigureSettings,
    LlmSettings,
    PredictSettings,
    SettingsError,
    StudySettings,
    UnlabelledSettings,
    defaults,
    flat_fields,
    flat_types,
    from_params,
    path_kind,
)
from .sheets import read_sheet

DEFAULT_FOLDERS = {"results_dir": "results", "fig_dir": "figures"}  # next to the study file
PAPERMILL_MARKER = "# Parameters"  # the first line of papermill's injected-parameters cell


def notebook_settings() -> dict[str, list[type]]:
    """The settings classes each notebook builds from its parameters cell, in the cell's order."""
    from .active_learning import ActiveLearningSettings
    from .baselines import BaselineChoice, BaselineConfig
    from .bert_cv import FineTuneConfig
    from .self_training import PseudoLabelling
    from .tapt import TaptSettings

    return {
        "01_eda": [StudySettings, EdaSettings, FigureSettings],
        "02_baselines": [StudySettings, BaselineChoice, BaselineConfig, FigureSettings],
        "03_bert_cv": [FineTuneConfig, FigureSettings],
        "04_error_analysis": [StudySettings, AnalysisSettings, FigureSettings],
        "05_predict": [StudySettings, PredictSettings, ActiveLearningSettings, FigureSettings],
        "06_unlabelled": [StudySettings, UnlabelledSettings, TaptSettings, PseudoLabelling, FigureSettings],
        "07_llm": [StudySettings, LlmSettings, FigureSettings],
    }


def _parameters(classes: list[type]) -> dict[str, tuple[Field, Any]]:
    """Every leaf setting of ``classes`` by name, with its type."""
    out = {}
    for cls in classes:
        types = flat_types(cls)
        out |= {name: (f, types[name]) for name, f in flat_fields(cls).items()}
    return out


def _all_parameters() -> dict[str, tuple[Field, Any]]:
    """Every parameter of every notebook by name, with its type."""
    return _parameters([c for classes in notebook_settings().values() for c in classes])


def known_keys() -> list[str]:
    """Every key a study file may hold: each parameter of each notebook."""
    return sorted(_all_parameters())


def _resolve(value: Any, kind: str | None, folder: Path) -> Any:
    """A path of the study file made absolute, read relative to the file's ``folder`` (a model id stays an id)."""
    if kind is None or value is None or isinstance(value, dict):
        return value
    if isinstance(value, list):
        return [_resolve(v, kind, folder) for v in value]
    path = Path(str(value)).expanduser()
    if path.is_absolute():
        return str(path)
    if kind == "model" and not (folder / path).exists():
        return value  # a hub id, or tiny-random
    return str((folder / path).resolve())


def _number(value: Any, hint: Any) -> Any:
    """YAML reads ``2e-5`` as text (it wants ``2.0e-5``): such a number for a numeric setting becomes a number."""
    if isinstance(value, str):
        for kind in (int, float):
            if kind in typing.get_args(hint) or hint is kind:
                try:
                    return kind(value)
                except ValueError:
                    continue
    return value


def read_study_file(path: str | Path) -> dict[str, Any]:
    """The parameters of a study file: keys checked, paths made absolute (relative ones read from the file's
    folder), ``results_dir`` and ``fig_dir`` defaulting to ``results/`` and ``figures/`` next to the file.

    Args:
        path: the YAML file.

    Raises:
        SettingsError: no such file, not YAML, not a mapping, or an unknown key (the message lists the known ones).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SettingsError(
            f"Study file not found: {path.resolve()} (a relative path is read from the working folder "
            f"{Path.cwd()}). Write one with: python -m nblib.study init my_sheet.xlsx -o my_study.yaml"
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SettingsError(f"Study file {path} is not valid YAML (UTF-8): {e}") from None
    if not isinstance(values, dict):
        raise SettingsError(f"Study file {path} must hold 'key: value' lines, not a {type(values).__name__}.")
    params = _all_parameters()
    known = sorted(params)
    unknown = [k for k in values if k not in params]
    if unknown:
        close = {k: difflib.get_close_matches(str(k), known, n=1) for k in unknown}
        named = ", ".join(f"'{k}'" + (f" (did you mean '{close[k][0]}'?)" if close[k] else "") for k in unknown)
        raise SettingsError(f"Study file {path}: unknown key(s) {named}. Known keys: {', '.join(known)}.")
    folder = path.resolve().parent
    out = {k: _resolve(_number(v, params[k][1]), path_kind(params[k][0]), folder) for k, v in values.items()}
    for key, name in DEFAULT_FOLDERS.items():
        out.setdefault(key, str(folder / name))
    return out


def given_explicitly(namespace: Mapping[str, Any], defaults: Mapping[str, Any]) -> set[str]:
    """The parameters a notebook run was given explicitly (see the override rule in the module docstring).

    Args:
        namespace: the notebook's ``globals()`` (with IPython's ``In`` history).
        defaults: the declared default of each parameter.
    """
    injected: set[str] = set()
    for source in namespace.get("In", []) or []:
        if isinstance(source, str) and source.lstrip().startswith(PAPERMILL_MARKER):
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            injected |= {
                t.id
                for node in tree.body
                if isinstance(node, ast.Assign)
                for t in node.targets
                if isinstance(t, ast.Name)
            }
    edited = {name for name, default in defaults.items() if name in namespace and namespace[name] != default}
    return injected | edited


def _check_inputs(namespace: Mapping[str, Any], params: Mapping[str, tuple[Field, Any]]) -> None:
    """A relative input path that does not exist from the working folder: say where it was looked for, and how to
    run the notebook so that it is found (the loaders would only say the file is missing)."""
    for name, (f, _) in params.items():
        value = namespace.get(name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if (
                path_kind(f) == "input"
                and isinstance(v, str)
                and not Path(v).expanduser().is_absolute()
                and not Path(v).exists()
            ):
                raise SettingsError(
                    f"{name} = {v!r}: no such file from the working folder {Path.cwd()}. A relative path is read "
                    f"from the folder the notebook runs in: run it from notebooks/ (papermill --cwd notebooks …), "
                    f"pass an absolute path, or name a study file (-p study data/demo_study.yaml), whose paths are "
                    f"read relative to the file."
                )


def use_parameters(namespace: MutableMapping[str, Any], notebook: str) -> dict[str, Any]:
    """Settle a notebook's parameters, first thing in its data cell: the study file's values (when ``study``
    names one) for every parameter not given explicitly, written into ``namespace``; then every parameter checked
    (numbers against their ranges, relative input paths against the working folder).

    Args:
        namespace: the notebook's ``globals()``; updated in place.
        notebook: the notebook's name, e.g. "03_bert_cv" (which settings classes it builds).

    Returns:
        The values taken from the study file (empty without one).

    Raises:
        SettingsError: a bad study file or parameter; the message names it and what to do.
    """
    classes = notebook_settings()[notebook]
    params = _parameters(classes)
    taken: dict[str, Any] = {}
    for old, (new, now) in RENAMED.get(notebook, {}).items():
        if old in namespace:
            raise SettingsError(
                f"{old} = {namespace[old]!r} is no longer a parameter of {notebook}: it is now called {new}. "
                f"Pass {new} instead ({old} is {now})."
            )
    study_path = namespace.get(STUDY_PARAMETER)
    if study_path and not isinstance(study_path, (str, os.PathLike)):
        study_path = None  # the Study an earlier run of the data cell opened: the file's values are in place already
    if study_path:
        declared = {name: value for cls in classes for name, value in defaults(cls).items()}
        given = given_explicitly(namespace, declared)
        values = read_study_file(study_path)
        taken = {k: v for k, v in values.items() if k in params and k not in given}
        for old, (new, now) in RENAMED.get(notebook, {}).items():
            if old in values and new not in values:
                print(
                    f"Study file {study_path}: {old} = {values[old]!r} no longer applies to {notebook} ({old} is {now}); "
                    f"the setting it used to be here is now called {new} ({namespace.get(new)!r} in this run)."
                )
        namespace.update(taken)
        kept = sorted(given & set(params))
        print(
            f"Study file {study_path}: {len(taken)} parameter(s) from the file"
            + (f"; given explicitly (they override it): {', '.join(kept)}" if kept else "")
        )
    _check_inputs(namespace, params)
    for cls in classes:
        from_params(cls, namespace)  # checks every parameter of the notebook against its range
    names.use(namespace.get("display_names"))  # every figure and table of this notebook shows them
    return taken


# --- init: a first study file from a sheet ---------------------------------------------------------------


def describe_columns(df: pd.DataFrame) -> pd.DataFrame:
    """One row per column of a sheet: non-empty cells, distinct values, mean text length, an example.

    Args:
        df: the sheet's cells.
    """
    rows = []
    for col in df.columns:
        cells = df[col].dropna()
        cells = cells[cells.astype(str).str.strip() != ""]
        text = cells.astype(str)
        rows.append(
            {
                "column": str(col),
                "non_empty": len(cells),
                "distinct": cells.astype(str).nunique(),
                "mean_length": round(text.str.len().mean(), 1) if len(text) else 0.0,
                "example": text.iloc[0][:30] if len(text) else "",
            }
        )
    return pd.DataFrame(rows).set_index("column")


def guess_columns(columns: pd.DataFrame) -> tuple[str, str]:
    """The likely text column (longest mean length) and label column (of the others, the fewest distinct values,
    at least two, in a column filled at least half as well as the text column).

    Args:
        columns: the table of :func:`describe_columns`.

    Raises:
        SettingsError: fewer than two usable columns.
    """
    usable = columns[columns["non_empty"] > 0]
    if len(usable) < 2:
        raise SettingsError(
            f"The sheet has {len(usable)} non-empty column(s); a study needs a text and a label column."
        )
    text = usable["mean_length"].idxmax()
    others = usable.drop(index=text)
    filled = others[(others["distinct"] >= 2) & (others["non_empty"] >= usable.loc[text, "non_empty"] / 2)]
    label = (filled if len(filled) else others).sort_values(["distinct", "mean_length"]).index[0]
    return str(text), str(label)


def init(
    sheet_path: str | Path, out: str | Path | None = None, sheet: str | int | None = None, header_row: int = 1
) -> Path:
    """Write a first study file for a sheet, printing its columns, the text and label columns guessed and the class
    counts; never overwrites a file.

    Args:
        sheet_path: the labelled sheet (.xlsx, .csv, .tsv).
        out: the study file (default: ``<sheet name>_study.yaml`` next to the sheet).
        sheet: the sheet of an .xlsx (None: the first).
        header_row: the row of the column names.

    Returns:
        The study file written.

    Raises:
        FileExistsError: the study file exists.
    """
    sheet_path = Path(sheet_path)
    out = Path(out) if out else sheet_path.with_name(f"{sheet_path.stem}_study.yaml")
    if out.exists():
        raise FileExistsError(f"{out} exists; it is left as it is. Pass another name with -o, or edit that file.")
    cells = read_sheet(sheet_path, sheet=sheet, header_row=header_row).df
    columns = describe_columns(cells)
    text_col, label_col = guess_columns(columns)
    labels = cells[label_col].dropna().astype(str).str.strip()
    counts = labels[labels != ""].value_counts()
    print(f"{sheet_path}: {len(cells)} rows; its columns:\n{columns.to_string()}\n")
    print(f"Guessed text_col: {text_col!r} (the longest texts); label_col: {label_col!r} (few distinct values).")
    print(f"{len(counts)} classes:\n{counts.to_string()}\n")
    from .bert_cv import FineTuneConfig  # imported here, as in notebook_settings

    study, model = defaults(StudySettings), defaults(FineTuneConfig)["model"]
    n_folds = study["n_folds"]
    if len(counts) and counts.min() < n_folds:
        print(f"The smallest class has {counts.min()} text(s), fewer than n_folds = {n_folds}: merge it or label more.")
    settings = {
        "data_path": os.path.relpath(sheet_path.resolve(), out.resolve().parent),
        "text_col": text_col,
        "label_col": label_col,
    }
    if sheet is not None:
        settings["sheet"] = sheet
    if header_row != 1:
        settings["header_row"] = header_row
    lines = [
        f"# Study file for {sheet_path.name}, written by `python -m nblib.study init` on {date.today()}.",
        "# text_col and label_col were guessed: check them. Paths are relative to this file.",
        yaml.safe_dump(settings, allow_unicode=True, sort_keys=False).rstrip(),
        "unlabelled_path: null  # a sheet of unlabelled texts (word2vec in 02, 05, 06), e.g. my_pool.xlsx",
        f"n_folds: {n_folds}",
        f"seed: {study['seed']}",
        "# Results and figures go to results/ and figures/ next to this file; or name other folders:",
        "# results_dir: results",
        "# fig_dir: figures",
        f"model: {model}  # 03's encoder: a hub id or a local folder (docs/models.md); tiny-random: a smoke run",
        f"plain_run: {defaults(UnlabelledSettings)['plain_run']}  # the 03 run 06 builds on: bert_ + the model folder's name",
        "# Any notebook parameter may be set here (papermill notebooks/03_bert_cv.ipynb --help-notebook), e.g.:",
        "# epochs: 4",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "x", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"Wrote {out}. Change text_col/label_col there if the guess is wrong, then run the series on it:")
    print(f"    make notebooks STUDY={out}")
    return out
