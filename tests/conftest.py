"""Shared fixtures: small sheets written on the fly, paths to the demo and benchmark data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_LABELLED = ROOT / "data" / "demo_labelled.xlsx"
DEMO_UNLABELLED = ROOT / "data" / "demo_unlabelled.xlsx"
SHARED = ROOT.parent / "shared" / "datasets" / "weibo_emotion"


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


def tiny_data(write_sheet, n_per_class: int = 12):
    """Three classes, each marked by its own words: a separable set of 3 × n_per_class texts."""
    from nblib.data import load_labelled

    words = {0: ["舞美", "灯光", "演员"], 1: ["文物", "青铜", "古籍"], 2: ["文化", "精神", "民族"]}
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for c, ws in words.items():
        for i in range(n_per_class):
            texts.append("".join(rng.choice(ws, 3)) + f"第{i}条" + "好" * (i % 4))
            labels.append(c)
    return load_labelled(write_sheet(pd.DataFrame({"Label": labels, "Sentence": texts})))


@pytest.fixture
def shared_labelled() -> Path:
    """The real benchmark sheet, or a clean skip where ../shared is absent."""
    path = SHARED / "labelled_8665.xlsx"
    if not path.exists():
        pytest.skip(f"benchmark data not present at {path}")
    return path


NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture
def run_notebook(tmp_path):
    """Execute a notebook headless with papermill parameters; returns the executed notebook."""
    import nbformat
    import papermill

    def run(name: str, **parameters) -> nbformat.NotebookNode:
        out = tmp_path / f"executed_{name}"
        papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters,
                                   cwd=str(NOTEBOOKS), progress_bar=False)
        return nbformat.read(out, as_version=4)

    return run


def cell_text(nb, tag: str | None = None) -> str:
    """All text output of a notebook's cells (or of those with a tag), for assertions."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code" or (tag and tag not in cell.metadata.get("tags", [])):
            continue
        parts.append(cell.source)
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)
