"""nblib.study: one object for the data, folds and results folder that every notebook opens the same way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nblib import baselines, layout, results, sheets
from nblib.settings import StudySettings
from nblib.study import open_study


def test_open_study_loads_data_makes_folds_once_and_reads_them_back(tiny_sheet, tmp_path):
    path = tiny_sheet(10)
    study = open_study(path, n_folds=5, seed=3, results_dir=str(tmp_path / "res"), unlabelled_path=None)
    assert len(study.data.df) == 30 and study.n_folds == 5 and sorted(set(study.folds)) == [0, 1, 2, 3, 4]
    assert study.path == layout.study_path(tmp_path / "res", study.data)
    assert layout.folds_file(study.path, 5, 3).exists()
    again = open_study(StudySettings(data_path=str(path), n_folds=5, seed=3, results_dir=str(tmp_path / "res")))
    assert (again.folds == study.folds).all()
    split = study.split(2, val_fraction=0.2)
    assert set(split.test) == set(np.flatnonzero(study.folds == 2)) and split.seed == 5
    assert study.pool.empty and list(study.pool.columns) == ["text", "row"]


def test_pool_is_read_from_the_unlabelled_sheet(tiny_study, tmp_path):
    pool_file = tmp_path / "pool.csv"
    pd.DataFrame({"评论": ["没有标签的评论", " 另一条 ", ""]}).to_csv(pool_file, index=False)
    study = tiny_study(unlabelled_path=str(pool_file), unlabelled_text_col="评论")
    assert study.pool["text"].tolist() == ["没有标签的评论", "另一条"]


def test_runs_final_models_and_clear_errors(tiny_study):
    study = tiny_study()
    with pytest.raises(KeyError, match=r"No finished model 'lr_tfidf_char'.*finished: \[\]"):
        study.run("lr_tfidf_char")
    with pytest.raises(FileNotFoundError, match="run 03_bert_cv with train_final=True first, or pass model_dir"):
        study.final_model()
    baselines.BaselineSuite(study, baselines.BaselineConfig(unit="char", min_df=1)).run("lr_tfidf_char")
    assert study.run("lr_tfidf_char").metrics["fold"].tolist() == [0, 1, 2]
    assert study.folder("analysis") == study.path / "analysis" and (study.path / "analysis").is_dir()
    # a model folder with only some folds done is left out of runs(), and unfinished_runs() says why
    (study.path / "models" / "lr_tfidf_char" / "metrics.csv").unlink()
    (study.path / "models" / "lr_tfidf_char" / "folds" / "fold_2.json").unlink()
    assert study.runs() == {}
    assert study.unfinished_runs() == {
        "lr_tfidf_char": "only folds [0, 1] of 3 are done; rerun its notebook to finish it"
    }


def test_saved_model_labels():
    assert layout.saved_model_label("results/s/models/bert_x/final") == "bert_x"
    assert layout.saved_model_label("results/s/models/bert_x/fold_models/fold_3") == "bert_x_fold_3"
    assert layout.saved_model_label("/data/my_model") == "my_model"


def test_results_files_keep_formula_like_and_na_texts(tmp_path):
    """Fold files, folds, predictions and the comparison are written formula-safe and read back unchanged."""
    starts = ["=HYPERLINK(1)", "+86 文物", "-古籍", "@文化", "NA", "'引号", '"引用"', "null"]
    words = {0: "舞美灯光", 1: "文物青铜", 2: "文化精神"}
    rows = [(c, f"{starts[i % len(starts)]}{w}{i}") for c, w in words.items() for i in range(8)]
    path = tmp_path / "odd.xlsx"
    sheets.write_table(pd.DataFrame(rows, columns=["Label", "Sentence"]), path)
    study = open_study(path, n_folds=2, seed=1, results_dir=str(tmp_path / "res"), unlabelled_path=None)
    assert study.data.texts == [t for _, t in rows]
    baselines.BaselineSuite(study, baselines.BaselineConfig(unit="char", min_df=1)).run("lr_tfidf_char")
    res = results.load_run(study.path / "models" / "lr_tfidf_char")
    assert sorted(res.predictions["text"]) == sorted(t for _, t in rows)
    assert res.predictions[["gold", "pred"]].dtypes.map(pd.api.types.is_integer_dtype).all()
    raw = (study.path / "models" / "lr_tfidf_char" / "predictions.csv").read_text(encoding="utf-8-sig")
    assert '"=HYPERLINK' not in raw and "\"'=HYPERLINK(1)" in raw  # a spreadsheet shows it as text
    again = open_study(path, n_folds=2, seed=1, results_dir=str(tmp_path / "res"), unlabelled_path=None)
    assert (again.folds == study.folds).all()
    table = study.comparison()
    assert sheets.read_machine_table(layout.comparison_file(study.path), text_columns=("model",))[
        "model"
    ].tolist() == list(table.index)
