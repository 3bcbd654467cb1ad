"""01_eda driven by papermill parameters alone: other columns, string labels, the real benchmark sheet."""

from __future__ import annotations

import time

import pandas as pd
from helpers import DEMO_LABELLED, SHARED, cell_text

EDA_FIGURES = ["eda_class_counts", "eda_length_by_class", "eda_top_characters", "eda_top_words"]


def test_eda_on_string_labels_and_other_columns(tmp_path, run_notebook):
    names = {0: "节目", 1: "文物", 2: "文化", 3: "无关"}
    raw = pd.read_excel(DEMO_LABELLED)
    sheet = pd.DataFrame({"评论": raw["Sentence"], "类别": raw["Label"].map(names)})
    sheet.to_csv(tmp_path / "mine.csv", index=False)
    figs, res = tmp_path / "figs", tmp_path / "res"
    nb = run_notebook(
        "01_eda.ipynb",
        data_path=str(tmp_path / "mine.csv"),
        text_col="评论",
        label_col="类别",
        unlabelled_path=None,
        n_folds=3,
        fig_dir=str(figs),
        results_dir=str(res),
    )
    injected = {}
    exec(cell_text(nb, "injected-parameters"), injected)
    assert injected["text_col"] == "评论" and injected["n_folds"] == 3
    for name in EDA_FIGURES:
        assert (figs / f"{name}.png").stat().st_size > 10_000
    assert not (figs / "eda_labelled_vs_unlabelled_length.png").exists()
    (folds,) = res.glob("mine-*/folds_k3_seed42.csv")
    assert set(pd.read_csv(folds)["fold"]) == {0, 1, 2}
    out = cell_text(nb)
    assert "文物" in out and "same text with different labels" in out


def test_eda_on_the_benchmark_sheet(tmp_path, run_notebook, shared_labelled):
    start = time.time()
    run_notebook(
        "01_eda.ipynb",
        data_path=str(shared_labelled),
        unlabelled_path=str(SHARED / "unlabelled_10000.xlsx"),
        fig_dir=str(tmp_path / "figs"),
        results_dir=str(tmp_path / "res"),
    )
    print(f"EDA on {shared_labelled.name}: {time.time() - start:.0f} s")
    for name in EDA_FIGURES + ["eda_labelled_vs_unlabelled_length"]:
        assert (tmp_path / "figs" / f"{name}.png").exists()
    (log,) = (tmp_path / "res").glob("labelled_8665-*/logs/01_eda.log")  # the notebook's log, not its output
    assert "labelled_8665.xlsx: 8665 labelled texts in 6 classes" in log.read_text(encoding="utf-8")
