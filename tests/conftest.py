"""Shared fixtures: small sheets written on the fly, tiny studies, the benchmark data, notebook runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import NOTEBOOKS, SHARED, write_tiny_sheet


@pytest.fixture
def write_sheet(tmp_path):
    """Write a DataFrame as .xlsx/.csv/.tsv under tmp_path and return the path."""

    def write(df: pd.DataFrame, name: str = "sheet.xlsx", **sheets: pd.DataFrame) -> Path:
        path = tmp_path / name
        if path.suffix == ".xlsx":
            with pd.ExcelWriter(path) as w:
                df.to_excel(w, sheet_name="data", index=False)
                for sheet, extra in sheets.items():
                    extra.to_excel(w, sheet_name=sheet, index=False)
        else:
            df.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
        return path

    return write


@pytest.fixture
def tiny_sheet(tmp_path):
    """Write a separable three-class sheet (3 × n_per_class texts, each class marked by its own words) as .csv."""

    return lambda n_per_class=12, name="tiny.csv": write_tiny_sheet(tmp_path, n_per_class, name)


@pytest.fixture
def tiny_data(tiny_sheet):
    """The loaded tiny sheet (``LabelledData``); call with ``n_per_class``."""
    from nblib.data import load_labelled

    return lambda n_per_class=12: load_labelled(tiny_sheet(n_per_class))


@pytest.fixture
def tiny_study(tiny_sheet, tmp_path):
    """A study of the tiny sheet with its results under tmp_path/res; call with ``n_per_class``, ``n_folds``, …"""
    from nblib.study import open_study

    def make(n_per_class: int = 12, n_folds: int = 3, seed: int = 0, **settings):
        settings = {"unlabelled_path": None, "results_dir": str(tmp_path / "res")} | settings
        return open_study(tiny_sheet(n_per_class), n_folds=n_folds, seed=seed, **settings)

    return make


@pytest.fixture
def shared_labelled() -> Path:
    """The real benchmark sheet, or a clean skip where the benchmark data is absent."""
    path = SHARED / "labelled_8665.xlsx"
    if not path.exists():
        pytest.skip(f"benchmark data not present at {path}")
    return path


@pytest.fixture
def run_notebook(tmp_path):
    """Execute a notebook headless with papermill parameters; returns the executed notebook."""
    import nbformat
    import papermill

    def run(name: str, **parameters) -> nbformat.NotebookNode:
        out = tmp_path / f"executed_{name}"
        papermill.execute_notebook(
            str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(NOTEBOOKS), progress_bar=False
        )
        return nbformat.read(out, as_version=4)

    return run
