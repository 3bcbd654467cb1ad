"""nblib.data: loading, every kind of bad input, label mapping, folds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO_LABELLED, DEMO_UNLABELLED
from nblib import data as nbdata
from nblib.data import DataError


def sheet(texts, labels, text_col="Sentence", label_col="Label"):
    return pd.DataFrame({label_col: labels, text_col: texts})


def balanced(n_per_class=6, classes=(0, 1, 2)):
    texts = [f"第{c}类的第{i}条评论" for c in classes for i in range(n_per_class)]
    labels = [c for c in classes for _ in range(n_per_class)]
    return sheet(texts, labels)


# --- reading -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["s.xlsx", "s.csv", "s.tsv"])
def test_reads_each_format(write_sheet, name):
    d = nbdata.load_labelled(write_sheet(balanced(), name))
    assert len(d.df) == 18 and d.num_labels == 3
    assert d.df["text"].iloc[0] == "第0类的第0条评论"
    assert d.df["row"].iloc[0] == 2  # header is row 1


def test_missing_file_names_the_path_and_neighbours(tmp_path, write_sheet):
    write_sheet(balanced(), "real.xlsx")
    with pytest.raises(FileNotFoundError, match=r"nope\.xlsx.*real\.xlsx"):
        nbdata.load_labelled(tmp_path / "nope.xlsx")


def test_unsupported_format(tmp_path):
    p = tmp_path / "data.json"
    p.write_text("{}")
    with pytest.raises(DataError, match="Cannot read data.json"):
        nbdata.load_labelled(p)


def test_missing_column_lists_existing_columns(write_sheet):
    p = write_sheet(sheet(["a", "b"], [0, 1], text_col="Text"))
    with pytest.raises(DataError, match=r"\['Sentence'\] not found.*\['Label', 'Text'\]"):
        nbdata.load_labelled(p)


def test_other_column_names_by_parameter(write_sheet):
    p = write_sheet(sheet(["好看", "文物"], ["a", "b"], text_col="评论", label_col="类别"))
    d = nbdata.load_labelled(p, text_col="评论", label_col="类别")
    assert d.texts == ["好看", "文物"] and d.label_names == ["a", "b"]


def test_empty_sheet(write_sheet):
    with pytest.raises(DataError, match="no rows"):
        nbdata.load_labelled(write_sheet(sheet([], [])))


def test_unknown_sheet_name(write_sheet):
    with pytest.raises(DataError, match="nosuch"):
        nbdata.load_labelled(write_sheet(balanced()), sheet="nosuch")


# --- cleaning ----------------------------------------------------------------------------------

def test_empty_and_whitespace_texts_are_dropped_and_reported(write_sheet):
    d = nbdata.load_labelled(write_sheet(sheet(["好", None, "", "   \t", "\ufeff", "棒"], [0, 1, 0, 1, 0, 1])))
    assert d.texts == ["好", "棒"]
    rep = d.report.to_frame()
    assert rep.loc[0, "rows"] == 4 and rep.loc[0, "action"] == "dropped"
    assert rep.loc[0, "sheet rows"] == "3, 4, 5, 6"
    assert d.report.dropped() == 4


def test_bom_and_surrounding_whitespace_stripped_emoji_kept(write_sheet):
    d = nbdata.load_labelled(write_sheet(sheet(["\ufeff  三刷🉑️👍 ", "#只此青绿# 好看！"], [0, 1]), "s.csv"))
    assert d.texts == ["三刷🉑️👍", "#只此青绿# 好看！"]
    assert d.report.to_frame().empty


def test_numeric_cells_become_text_and_are_reported(write_sheet):
    d = nbdata.load_labelled(write_sheet(sheet([123, "好看", 4.5], [0, 1, 0])))
    assert d.texts == ["123", "好看", "4.5"]
    rep = d.report.to_frame()
    assert rep.loc[0, "action"] == "converted to text" and rep.loc[0, "rows"] == 2


def test_missing_labels_are_dropped_and_reported(write_sheet):
    d = nbdata.load_labelled(write_sheet(sheet(["a", "b", "c"], [0, None, 1])))
    assert d.texts == ["a", "c"]
    assert "label is missing" in d.report.to_frame()["problem"].tolist()


def test_nothing_left_is_an_error(write_sheet):
    with pytest.raises(DataError, match="no row has both a text and a label"):
        nbdata.load_labelled(write_sheet(sheet(["a", None], [None, 1])))


# --- labels ------------------------------------------------------------------------------------

def test_string_labels_map_to_sorted_ids(write_sheet):
    d = nbdata.load_labelled(write_sheet(sheet(["a", "b", "c", "d"], ["文物", "节目", "文物", " 无关 "])))
    assert d.label_names == sorted(["文物", "节目", "无关"])
    assert [d.label_names[i] for i in d.labels] == ["文物", "节目", "文物", "无关"]


def test_non_contiguous_int_labels(write_sheet):
    d = nbdata.load_labelled(write_sheet(sheet(["a", "b", "c"], [30, 10, 20])))
    assert d.label_values == [10, 20, 30] and list(d.labels) == [2, 0, 1]


def test_float_and_string_integers_are_the_same_label(write_sheet):
    d = nbdata.load_labelled(write_sheet(sheet(["a", "b", "c"], ["1", 1.0, 2]), "s.csv"))
    assert d.label_values == [1, 2] and list(d.labels) == [0, 0, 1]


def test_mixed_label_kinds_is_an_error(write_sheet):
    with pytest.raises(DataError, match="mix numbers and text"):
        nbdata.load_labelled(write_sheet(sheet(["a", "b"], [1, "x"])))


def test_label_sheet_gives_order_names_and_descriptions(write_sheet):
    table = pd.DataFrame({"Label": [2, 0, 1], "Name": ["文化", "节目", "文物"], "Description": ["d2", "d0", "d1"]})
    d = nbdata.load_labelled(write_sheet(sheet(["a", "b", "c"], [0, 1, 2]), labels=table))
    assert d.label_names == ["文化", "节目", "文物"] and d.label_descriptions == ["d2", "d0", "d1"]
    assert list(d.labels) == [1, 2, 0]
    assert d.label_table()["description"].tolist() == ["d2", "d0", "d1"]


def test_label_table_as_dict(write_sheet):
    d = nbdata.load_labelled(write_sheet(sheet(["a", "b"], [0, 1])), label_table={0: "节目", 1: "文物"})
    assert d.label_names == ["节目", "文物"] and d.label_descriptions is None


def test_unknown_label_is_an_error(write_sheet):
    with pytest.raises(DataError, match=r"\['7'\] are not in the label table"):
        nbdata.load_labelled(write_sheet(sheet(["a", "b"], [0, 7])), label_table={0: "节目", 1: "文物"})


def test_conflicting_labels_dropped_or_refused(write_sheet):
    p = write_sheet(sheet(["好看", "好看", "文物", "文物", "别的"], [0, 2, 1, 1, 3]))
    d = nbdata.load_labelled(p)
    assert d.texts == ["文物", "文物", "别的"]
    rep = d.report.to_frame()
    assert rep.loc[0, "rows"] == 2 and "'好看'" in rep.loc[0, "problem"]
    with pytest.raises(DataError, match="also appears with another label"):
        nbdata.load_labelled(p, on_conflict="error")


# --- folds -------------------------------------------------------------------------------------

def test_folds_are_stratified_and_reproducible(write_sheet):
    d = nbdata.load_labelled(write_sheet(balanced(10)))
    f1, f2 = nbdata.make_folds(d, 5, seed=1), nbdata.make_folds(d, 5, seed=1)
    assert (f1 == f2).all()
    assert pd.crosstab(f1, d.labels).to_numpy().tolist() == [[2, 2, 2]] * 5
    assert not (nbdata.make_folds(d, 5, seed=2) == f1).all()


def test_identical_texts_share_a_fold(write_sheet):
    df = balanced(10)
    df = pd.concat([df, df.iloc[[0, 0, 11, 25]]], ignore_index=True)
    d = nbdata.load_labelled(write_sheet(df))
    folds = nbdata.make_folds(d, 5, seed=0)
    assert d.df.assign(fold=folds).groupby("text")["fold"].nunique().max() == 1


def test_class_smaller_than_folds_is_an_error(write_sheet):
    df = pd.concat([balanced(10, (0, 1)), sheet(["少", "少", "很少"], [2, 2, 2])], ignore_index=True)
    d = nbdata.load_labelled(write_sheet(df))
    with pytest.raises(DataError, match=r"fewer distinct texts than folds \(5\): '2': 2"):
        nbdata.make_folds(d, 5)


def test_folds_saved_and_read_back(tmp_path, write_sheet):
    d = nbdata.load_labelled(write_sheet(balanced(10)))
    folds = nbdata.load_or_make_folds(d, tmp_path / "results", 5, 3)
    path = nbdata.study_dir(tmp_path / "results", d) / "folds_k5_seed3.csv"
    assert path.exists() and path.with_suffix(".json").exists()
    saved = pd.read_csv(path)
    assert saved.columns.tolist() == ["row", "label", "text", "fold"] and (saved["fold"] == folds).all()
    assert (nbdata.load_or_make_folds(d, tmp_path / "results", 5, 3) == folds).all()


def test_folds_of_other_data_are_refused(tmp_path, write_sheet):
    d1 = nbdata.load_labelled(write_sheet(balanced(10)))
    nbdata.save_folds(tmp_path / "f.csv", d1, nbdata.make_folds(d1, 5), 5, 42)
    d2 = nbdata.load_labelled(write_sheet(balanced(10, (0, 1, 3)), "other.xlsx"))
    with pytest.raises(DataError, match="made for different data"):
        nbdata.load_folds(tmp_path / "f.csv", d2)
    assert nbdata.study_dir("r", d1) != nbdata.study_dir("r", d2)


# --- unlabelled pool and the bundled demo data ------------------------------------------------

def test_unlabelled_pool(write_sheet):
    pool = nbdata.load_unlabelled(write_sheet(pd.DataFrame({"Sentence": ["好", None, " 棒 ", 3]})))
    assert pool["text"].tolist() == ["好", "棒", "3"] and pool["row"].tolist() == [2, 4, 5]


def test_unlabelled_missing_column(write_sheet):
    with pytest.raises(DataError, match="not found"):
        nbdata.load_unlabelled(write_sheet(pd.DataFrame({"text": ["好"]})))


def test_demo_data_matches_the_origin_format():
    raw = pd.read_excel(DEMO_LABELLED)
    assert raw.columns.tolist() == ["Label", "Sentence"] and len(raw) >= 800
    d = nbdata.load_labelled(DEMO_LABELLED)
    assert len(d.df) >= 800 and d.label_values == [0, 1, 2, 3]
    assert d.label_names == ["节目制作", "文物典籍", "文化精神", "无关"] and all(d.label_descriptions)
    counts = np.bincount(d.labels)
    assert counts.max() > 2 * counts.min()  # uneven, like a real sheet
    assert d.df["text"].nunique() > 0.98 * len(d.df)
    pool = nbdata.load_unlabelled(DEMO_UNLABELLED)
    assert len(pool) >= 400
    assert len(set(pool["text"]) & set(d.texts)) < 5
