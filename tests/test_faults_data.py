"""Faults of data, written files, folds and the results folder: each case gives the right result or one message
that says what happened and what to do (issue 19; see docs/faults-data.md)."""

from __future__ import annotations

import logging

import openpyxl
import pandas as pd
import pytest

from nblib.sheets import read_sheet, write_table

# --- writers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\uffff", "\ufffe", "\ud800"])
def test_xlsx_with_characters_xml_forbids_stays_readable(tmp_path, caplog, bad):
    df = pd.DataFrame({"text": ["好看", f"前{bad}后"], "n": [1, 2]})
    with caplog.at_level(logging.WARNING, logger="nblib.sheets"):
        path = write_table(df, tmp_path / "out.xlsx")
    assert read_sheet(path).df["text"].tolist() == ["好看", "前\ufffd后"]
    openpyxl.load_workbook(path).close()  # well-formed for other readers too
    assert "row(s) 3" in caplog.text and "U+FFFD" in caplog.text
    exact = read_sheet(tmp_path / "out_exact.csv").df["text"].tolist()
    assert exact == ["好看", "前\ufffd后" if bad == "\ud800" else f"前{bad}后"]  # the CSV copy keeps what it can


def test_csv_with_lone_surrogate_is_written_with_a_warning(tmp_path, caplog):
    df = pd.DataFrame({"text": ["a\ud83d\ude00", "b\udc00"]})  # a pair (joined) and a lone half
    with caplog.at_level(logging.WARNING, logger="nblib.sheets"):
        path = write_table(df, tmp_path / "out.csv")
    assert read_sheet(path).df["text"].tolist() == ["a😀", "b\ufffd"]
    assert "row(s) 3" in caplog.text and "row(s) 2" not in caplog.text


def test_xlsx_text_over_excel_cell_limit_is_never_cut_silently(tmp_path, caplog):
    long = "长" * 40_000
    df = pd.DataFrame({"text": ["短", long], "n": [1, 2]})
    with caplog.at_level(logging.WARNING, logger="nblib.sheets"):
        path = write_table(df, tmp_path / "pred.xlsx")
    assert len(read_sheet(path).df["text"].iloc[1]) == 32_767
    assert "32,767" in caplog.text and "row(s) 3" in caplog.text and "pred_exact.csv" in caplog.text
    assert read_sheet(tmp_path / "pred_exact.csv").df["text"].tolist() == ["短", long]


def test_clean_xlsx_has_no_warning_and_no_copy(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="nblib.sheets"):
        write_table(pd.DataFrame({"text": ["好"]}), tmp_path / "ok.xlsx")
    assert not caplog.text and not (tmp_path / "ok_exact.csv").exists()
