"""nblib.data: loading, every kind of bad input, label mapping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import DEMO_LABELLED, DEMO_UNLABELLED, balanced, sheet

from nblib import data as nbdata
from nblib.data import DataError

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
