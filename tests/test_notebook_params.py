"""Notebooks driven by papermill parameters alone: the benchmark sheet, other columns, string labels."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import MISSING
from pathlib import Path

import pandas as pd
import papermill
import pytest
from helpers import NOTEBOOKS, cell_text

from nblib import settings
from nblib.study_file import notebook_settings


def test_baselines_notebook_on_the_benchmark_sheet(tmp_path, run_notebook, shared_labelled):
    res = tmp_path / "res"
    nb = run_notebook(
        "02_baselines.ipynb",
        data_path=str(shared_labelled),
        unlabelled_path=None,
        models=["lr_tfidf_char"],
        fig_dir=str(tmp_path / "figs"),
        results_dir=str(res),
    )
    (metrics,) = res.glob("labelled_8665-*/models/lr_tfidf_char/metrics.csv")  # LR has no epochs: no selection rule
    m = pd.read_csv(metrics)
    assert len(m) == 5
    # the reference: 5-fold TF-IDF (char 1-3-grams) + LR near accuracy 0.70 / macro-F1 0.65
    assert 0.66 < m["accuracy"].mean() < 0.74 and 0.60 < m["macro_f1"].mean() < 0.70, m[["accuracy", "macro_f1"]]
    assert (tmp_path / "figs" / "baselines_confusion_lr_tfidf_char.png").exists()
    assert "lr_tfidf_char" in cell_text(nb)


def test_bert_notebook_takes_its_parameters(tmp_path, run_notebook, tiny_data):
    d = tiny_data(n_per_class=8)
    path = tmp_path / "mine.csv"
    pd.DataFrame({"文本": d.df["text"], "类别": d.df["label"].map({0: "节目", 1: "文物", 2: "文化"})}).to_csv(
        path, index=False
    )
    res = tmp_path / "res"
    run_notebook(
        "03_bert_cv.ipynb",
        data_path=str(path),
        text_col="文本",
        label_col="类别",
        model="tiny-random",
        run_name="smoke",
        n_folds=3,
        epochs=1,
        max_len=32,
        batch_size=8,
        train_final=False,
        device="cpu",
        freeze_embeddings=True,
        fig_dir=str(tmp_path / "figs"),
        results_dir=str(res),
    )
    (folder,) = res.glob("mine-*/models/smoke")
    config = json.loads((folder / "config.json").read_text())
    assert config["epochs"] == 1 and config["n_folds"] == 3 and config["label_names"] == ["文化", "文物", "节目"]
    assert config["freeze_embeddings"] is True
    assert not (folder / "final").exists() and len(pd.read_csv(folder / "metrics.csv")) == 3
    assert (tmp_path / "figs" / "smoke_confusion_per_fold.png").exists()


@pytest.mark.parametrize("name", sorted(notebook_settings()))
def test_help_notebook_lists_every_parameter_with_its_type_default_and_help(name):
    """papermill's own inspection (what --help-notebook prints) finds every setting of the notebook's classes."""
    classes = notebook_settings()[name]
    inferred = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    fields = {n: (f, settings.flat_types(c)[n]) for c in classes for n, f in settings.flat_fields(c).items()}
    assert set(inferred) == {settings.STUDY_PARAMETER, *fields}
    assert inferred["study"]["help"] == settings.STUDY_HELP
    for n, (f, hint) in fields.items():
        p = inferred[n]
        assert p["help"] == settings.help_of(f) != "", n
        assert p["inferred_type_name"] == settings.annotation(hint), n
        default = f.default if f.default is not MISSING else f.default_factory()
        assert ast.literal_eval(p["default"]) == default, n


def test_help_notebook_command_shows_the_parameters_it_used_to_drop():
    out = subprocess.run(
        [str(Path(sys.executable).with_name("papermill")), "--help-notebook", "05_predict.ipynb"],
        cwd=NOTEBOOKS,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for line in (
        "input_path: Optional[str] (default None)",
        "output_path: Optional[str] (default None)",
        "group_col: Optional[str] (default None)",
        "unlabelled_path: Optional[str] (default None)",
        "extra_labelled_paths: Union[str, list[str], None] (default None)",
        "max_len: Optional[int] (default None)",  # None: as the model was trained (its prediction.json)
        "truncation: Optional[str] (default None)",
    ):
        assert line in out, (line, out)
    assert "the texts to label (None: the study's unlabelled_path)" in out
