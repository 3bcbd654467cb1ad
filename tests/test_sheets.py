"""nblib.sheets and the checks built on it: spreadsheets as users have them, each case with its own small file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
from helpers import LOCK_CHILD, ROOT

from nblib import data as nbdata
from nblib import results, run_lock
from nblib.data import DataError
from nblib.sheets import read_sheet, write_table

TEXTS = ["只此青绿的舞美绝了", "文物修复师太厉害了", "三刷🉑️👍", "CCTV1 好看", "民族精神", "舞蹈好美"]
TRICKY = [
    '=HYPERLINK("http://x.cn","点我")',
    "=cmd|' /C calc'!A0",
    "+86 138 0000",
    "-_-||",
    "@央视 好看",
    "\t前面是制表符",
    "\r前面是回车",
    "'=已有撇号",
    "''两个撇号",
    "'普通撇号",
    '"好看"极了',
    '"整句在引号里"',
    '他说""好""',
    "NA",
    "null",
    "None",
    "nan",
    "N/A",
    "#N/A",
    "第一行\r\n第二行",
    "_x000D_ 字面",
    "控\x0b制",
    "逗号,在这",
    "  前后空格  ",
    "",
]


def csv_bytes(lines: list[str], encoding: str = "utf-8") -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode(encoding)  # "utf-16" writes a BOM, as Excel does


def labelled_lines(sep: str = ",", texts: list[str] = TEXTS) -> list[str]:
    return [f"Sentence{sep}Label"] + [f"{t}{sep}{i % 2}" for i, t in enumerate(texts)]


# --- encodings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, name, shown",
    [
        ("gb18030", "s.csv", "GB18030/GBK (detected)"),
        ("gbk", "s.csv", "GB18030/GBK (detected)"),
        ("utf-8-sig", "s.csv", None),
        ("utf-8", "s.csv", None),
        ("utf-16", "s.txt", "UTF-16 (Excel's Unicode text)"),
        ("utf-16", "s.tsv", "UTF-16 (Excel's Unicode text)"),
        ("utf-16", "s.csv", "UTF-16 (Excel's Unicode text)"),
    ],
)
def test_encodings_are_detected_and_reported(tmp_path, encoding, name, shown):
    sep = "\t" if encoding == "utf-16" else ","  # Excel's "Unicode text": tab-separated UTF-16LE with BOM
    texts = [t for t in TEXTS if "👍" not in t] if encoding == "gbk" else TEXTS  # GBK has no emoji; GB18030 has
    path = tmp_path / name
    path.write_bytes(csv_bytes(labelled_lines(sep, texts), encoding))
    if encoding == "utf-16":
        assert path.read_bytes()[:2] == b"\xff\xfe"
    d = nbdata.load_labelled(path)
    assert d.texts == texts
    assert d.report.encoding == {"gbk": "gb18030", "utf-16": "utf-16"}.get(encoding, encoding)
    listed = [p for p in d.report.to_frame()["problem"] if p.startswith("file encoding")]
    assert listed == ([f"file encoding: {shown}"] if shown else [])


def test_encoding_can_be_given(tmp_path):
    path = tmp_path / "big5.csv"
    path.write_bytes(csv_bytes(["Sentence,Label", "繁體中文,0", "舞蹈,1"], "big5"))
    assert nbdata.load_labelled(path, encoding="big5").texts == ["繁體中文", "舞蹈"]
    with pytest.raises(DataError, match="cannot be read as ascii.*encoding="):
        nbdata.load_labelled(path, encoding="ascii")
    with pytest.raises(DataError, match="encoding='nonsense'"):
        nbdata.load_labelled(path, encoding="nonsense")


# --- quoting ------------------------------------------------------------------------------------------


def test_tsv_stray_quote_does_not_merge_lines(tmp_path):
    lines = ["Sentence\tLabel", '"好看\t0', "不错\t1", '"好看"极了\t0', "一般\t1", '他说"太美了\t0', "再看\t1"]
    path = tmp_path / "s.tsv"
    path.write_bytes(csv_bytes(lines))
    d = nbdata.load_labelled(path)
    assert d.texts == ['"好看', "不错", '"好看"极了', "一般", '他说"太美了', "再看"]
    assert d.df["row"].tolist() == [2, 3, 4, 5, 6, 7] and d.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_tsv_cells_quoted_as_excel_writes_them_are_unquoted(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_bytes(csv_bytes(["Sentence\tLabel", '"他说""好"""\t0', '"""整句"""\t1', "普通\t0"]))
    d = nbdata.load_labelled(path)
    assert d.texts == ['他说"好"', '"整句"', "普通"]
    assert d.report.to_frame()["problem"].str.contains("inner quotes doubled").any()


def test_tsv_with_a_tab_inside_a_text_names_the_line(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_bytes(csv_bytes(["Sentence\tLabel", "好\t0", "多了\t一格\t1", "棒\t1"]))
    with pytest.raises(DataError, match=r"row\(s\) 3 have more cells"):
        nbdata.load_labelled(path)


def test_csv_stray_quote_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(csv_bytes(["Sentence,Label", "好看,0", '"好看"极了,1', "一般,0"]))
    with pytest.raises(DataError, match=r"s\.csv, line 3: .*stray double quote"):
        nbdata.load_labelled(path)


def test_csv_quote_that_merges_lines_is_reported_with_its_lines(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(csv_bytes(["Sentence,Label", '"好看,0', "不错,1", '一般",0', "再看,1"]))
    d = nbdata.load_labelled(path)
    report = d.report.to_frame()
    spans = report[report["problem"].str.contains("spans several lines")]
    assert len(spans) == 1 and "lines 2-4" in spans["problem"].iloc[0] and spans["sheet rows"].iloc[0] == "2"


# --- cells kept as text -------------------------------------------------------------------------------

NA_TEXTS = ["NA", "null", "None", "nan", "N/A", "NULL", "#N/A", "n/a", "-nan"]


@pytest.mark.parametrize("name", ["s.xlsx", "s.csv", "s.tsv"])
def test_na_strings_are_texts(write_sheet, name):
    df = pd.DataFrame({"Label": [i % 2 for i in range(len(NA_TEXTS) + 1)], "Sentence": NA_TEXTS + [None]})
    d = nbdata.load_labelled(write_sheet(df, name))
    assert d.texts == NA_TEXTS  # only the truly empty cell is missing
    assert d.report.dropped() == 1
    pool = nbdata.load_unlabelled(write_sheet(df, "pool" + name[1:]))
    assert pool["text"].tolist() == NA_TEXTS


def test_na_string_labels_are_labels(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(csv_bytes(["Sentence,Label", "a,NA", "b,None", "c,NA"]))
    assert nbdata.load_labelled(path).label_names == ["NA", "None"]


# --- header row ---------------------------------------------------------------------------------------


def title_workbook(path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws["A1"] = "2024 年春晚评论标注（第一批）"
    ws.append([])
    ws.append(["Sentence", "Label"])
    for i, t in enumerate(TEXTS):
        ws.append([t, i % 2])
    wb.save(path)
    return path


def test_header_on_row_3_below_a_title(tmp_path):
    path = title_workbook(tmp_path / "title.xlsx")
    with pytest.raises(DataError, match=r"not found in the header \(row 1\).*They are on row 3: pass header_row=3"):
        nbdata.load_labelled(path)
    d = nbdata.load_labelled(path, header_row=3)
    assert d.texts == TEXTS and d.df["row"].tolist() == [4, 5, 6, 7, 8, 9]


def test_header_on_row_3_of_a_csv(tmp_path):
    path = tmp_path / "title.csv"
    path.write_bytes(csv_bytes(["评论标注", ""] + labelled_lines()))
    with pytest.raises(DataError, match="pass header_row=3"):
        nbdata.load_labelled(path)
    assert nbdata.load_labelled(path, header_row=3).texts == TEXTS


def test_title_row_without_the_wanted_columns_is_called_a_title(tmp_path):
    path = title_workbook(tmp_path / "title.xlsx")
    with pytest.raises(DataError, match=r"Row 1 looks like a title.*header_row="):
        nbdata.load_labelled(path, text_col="评论", label_col="类别")


def test_header_row_past_the_end(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(csv_bytes(labelled_lines()))
    with pytest.raises(DataError, match="no header on row 50"):
        nbdata.load_labelled(path, header_row=50)


# --- damaged and mis-named files ----------------------------------------------------------------------


def test_truncated_xlsx_is_named_with_what_to_do(tmp_path, write_sheet):
    good = write_sheet(pd.DataFrame({"Sentence": TEXTS, "Label": [0, 1] * 3}))
    bad = tmp_path / "cut.xlsx"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        DataError,
        match=r"cut\.xlsx cannot be read as an \.xlsx workbook: it is damaged or truncated.*"
        r"Copy it again",
    ) as e:
        nbdata.load_labelled(bad)
    assert not isinstance(e.value.__cause__, zipfile.BadZipFile)


def test_csv_renamed_xlsx(tmp_path):
    path = tmp_path / "renamed.xlsx"
    path.write_bytes(csv_bytes(labelled_lines()))
    with pytest.raises(DataError, match=r"renamed\.xlsx is not an \.xlsx workbook: its content is text.*\.csv"):
        nbdata.load_labelled(path)


def test_old_xls_renamed_xlsx(tmp_path):
    path = tmp_path / "old.xlsx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    with pytest.raises(DataError, match="old Excel 97-2003 .xls"):
        nbdata.load_labelled(path)


@pytest.mark.parametrize("name", ["empty.xlsx", "empty.csv", "empty.tsv"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=rf"{name} is empty \(0 bytes\)"):
        nbdata.load_labelled(tmp_path / name)


def test_unknown_sheet_names_the_parameter(tmp_path):
    path = title_workbook(tmp_path / "s.xlsx")
    with pytest.raises(DataError, match=r"no sheet 'data'; its sheets are \['Sheet'\]. Pass sheet="):
        nbdata.load_labelled(path, sheet="data")


# --- duplicate columns --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s.xlsx", "s.csv"])
def test_duplicate_column_names_are_an_error(tmp_path, name):
    rows = [["Sentence", "Label", "Sentence"]] + [[t, i % 2, "另一列"] for i, t in enumerate(TEXTS)]
    path = tmp_path / name
    if name.endswith(".xlsx"):
        wb = openpyxl.Workbook()
        for r in rows:
            wb.active.append(r)
        wb.save(path)
    else:
        path.write_bytes(csv_bytes([",".join(map(str, r)) for r in rows]))
    with pytest.raises(DataError, match=r"more than once in the header \(row 1\): \{'Sentence': \['A', 'C'\]\}"):
        nbdata.load_labelled(path)


# --- labels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s.xlsx", "s.csv"])
def test_decimal_labels_among_integers_are_numbers(write_sheet, name):
    df = pd.DataFrame({"Sentence": TEXTS, "Label": [1, 1.5, 2, 1, 1.5, 2]})
    d = nbdata.load_labelled(write_sheet(df, name))
    assert d.label_values == [1, 1.5, 2] and d.label_names == ["1", "1.5", "2"]
    assert d.labels.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("labels", [[0] * 6, ["正面"] * 5 + [None]])
def test_single_class_is_an_error_at_load(write_sheet, labels):
    with pytest.raises(DataError, match="at least two classes"):
        nbdata.load_labelled(write_sheet(pd.DataFrame({"Sentence": TEXTS, "Label": labels})))


# --- long texts ---------------------------------------------------------------------------------------


def test_long_texts_are_counted_in_the_report(write_sheet):
    texts = ["短", "长" * 126, "长" * 127, "好"]
    d = nbdata.load_labelled(write_sheet(pd.DataFrame({"Sentence": texts, "Label": [0, 1, 0, 1]})), max_len=128)
    report = d.report.to_frame()
    long = report[report["problem"].str.startswith("text longer than max_len=128")]
    assert long["rows"].tolist() == [1] and long["sheet rows"].tolist() == ["4"]  # 127 chars + [CLS]/[SEP] > 128
    assert "head+tail" in long["action"].iloc[0]
    assert (
        nbdata.load_labelled(write_sheet(pd.DataFrame({"Sentence": texts, "Label": [0, 1, 0, 1]})), max_len=None)
        .report.to_frame()
        .empty
    )


def test_too_long_counts_tokens_with_a_tokenizer(tmp_path):
    from nblib import bert

    tok = bert.load_tokenizer(str(bert.build_tiny_encoder(["abcdef 文物"], tmp_path / "enc")))
    texts = ["abcdef", "文物" * 5]
    assert nbdata.too_long(texts, 8).tolist() == [False, True]  # characters: 6 + 2 and 10 + 2
    n_tokens = [len(i) for i in tok(texts)["input_ids"]]
    assert nbdata.too_long(texts, 8, tok).tolist() == [n > 8 for n in n_tokens]


def test_head_and_tail_truncation_keeps_both_ends(tmp_path):
    from nblib import bert

    text = "开头" + "中" * 40 + "结尾"
    tok = bert.load_tokenizer(str(bert.build_tiny_encoder([text, "短句"], tmp_path / "enc")))
    head = bert.Encoded(tok, [text, "短句"], max_len=12)
    both = bert.Encoded(tok, [text, "短句"], max_len=12, truncation="head+tail")
    assert head.truncated.tolist() == both.truncated.tolist() == [True, False]
    as_text = lambda ds: "".join(tok.convert_ids_to_tokens(ds.items[0]["input_ids"])[1:-1])  # noqa: E731
    assert as_text(head) == "开头" + "中" * 8
    assert as_text(both) == "开头" + "中" * 3 + "中" * 3 + "结尾"
    assert len(both.items[0]["input_ids"]) == 12 and both.items[1] == head.items[1]
    # "head" is what the tokenizer's own truncation gives
    assert head.items[0]["input_ids"] == tok(text, truncation=True, max_length=12)["input_ids"]
    assert both.subset([1, 0]).truncated.tolist() == [False, True]
    with pytest.raises(ValueError, match="truncation='tail'"):
        bert.Encoded(tok, [text], 12, truncation="tail")


# --- writing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_round_trip_keeps_every_text(tmp_path, suffix):
    df = pd.DataFrame({"text": TRICKY, "id": range(len(TRICKY)), "prob": np.linspace(0, 1, len(TRICKY))})
    path = write_table(df, tmp_path / f"out{suffix}")
    back = read_sheet(path, ["text", "id"]).df
    texts = [t if t != "" else None for t in TRICKY]  # an empty text is an empty cell
    assert back["text"].tolist() == texts
    assert [int(v) for v in back["id"]] == list(range(len(TRICKY)))
    assert list(back.columns) == ["text", "id", "prob"]


def test_second_sheet_round_trips(tmp_path):
    labels = pd.DataFrame({"Label": [0, 1], "Name": TRICKY[:2], "Description": ["NA", "-_-||"]})
    texts = [t for t in TRICKY if t]
    path = write_table(pd.DataFrame({"text": texts}), tmp_path / "out.xlsx", more_sheets={"labels": labels})
    assert openpyxl.load_workbook(path).sheetnames == ["Sheet", "labels"]
    assert read_sheet(path, ["text"]).df["text"].tolist() == texts
    back = read_sheet(path, ["Label", "Name"], sheet="labels").df
    assert back["Name"].tolist() == TRICKY[:2] and back["Description"].tolist() == ["NA", "-_-||"]
    assert back["Label"].tolist() == [0, 1]
    with pytest.raises(DataError, match=r"sheets \['labels'\] into out.csv: only an .xlsx"):
        write_table(pd.DataFrame({"text": ["a"]}), tmp_path / "out.csv", more_sheets={"labels": labels})
    assert not (tmp_path / "out.csv").exists()


def test_round_trip_tsv(tmp_path):
    texts = [t for t in TRICKY if t and not any(c in t for c in "\t\r\n")]
    back = read_sheet(write_table(pd.DataFrame({"text": texts}), tmp_path / "out.tsv"), ["text"]).df
    assert back["text"].tolist() == texts
    with pytest.raises(DataError, match="tab or line break"):
        write_table(pd.DataFrame({"text": ["a\tb"]}), tmp_path / "bad.tsv")


def test_xlsx_holds_no_formulas(tmp_path):
    path = write_table(pd.DataFrame({"text": TRICKY[:6]}), tmp_path / "out.xlsx")
    ws = openpyxl.load_workbook(path).active
    cells = [c for row in ws.iter_rows(min_row=2) for c in row]
    assert all(c.data_type == "s" for c in cells) and all(c.quotePrefix for c in cells)
    with zipfile.ZipFile(path) as z:
        assert b"<f>" not in z.read("xl/worksheets/sheet1.xml")


def test_csv_marks_formula_like_texts_for_spreadsheet_programs(tmp_path):
    path = write_table(pd.DataFrame({"text": ["=1+1", "@SUM(A1)", "普通"]}), tmp_path / "out.csv")
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM: Excel shows Chinese
    assert raw.decode("utf-8-sig").splitlines() == ['"text"', '"\'=1+1"', '"\'@SUM(A1)"', '"普通"']


def test_writer_refuses_a_suffix_that_does_not_match(tmp_path):
    for name in ["out.xls", "out.txt", "out"]:
        with pytest.raises(DataError, match="suffix must be one of .xlsx, .csv, .tsv"):
            write_table(pd.DataFrame({"a": [1]}), tmp_path / name)
        assert not (tmp_path / name).exists()
    with pytest.raises(DataError, match=r"\['a'\] occur more than once"):
        write_table(pd.DataFrame([[1, 2]], columns=["a", "a"]), tmp_path / "dup.xlsx")


# --- the results-folder lock --------------------------------------------------------------------------


@pytest.fixture
def run_args(tiny_study):
    """ModelRun's arguments: a study, a run name and its config."""
    return tiny_study(), "m", {"x": 1}


def lock_of(run_args) -> Path:
    return run_args[0].path / "models" / "m" / "run.lock"


def write_lock(path, pid, host=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"pid": pid, "host": host or platform.node(), "token": "someone-else", "since": "2024-01-01 00:00:00"}
        )
    )


def test_lock_is_taken_and_released(run_args):
    run = results.ModelRun(*run_args)
    held = json.loads(lock_of(run_args).read_text())
    assert held["pid"] == os.getpid() and held["host"] == platform.node()
    results.ModelRun(*run_args)  # the same run (same process) opens it again: passes
    run.lock.release()
    assert not lock_of(run_args).exists()


def test_second_run_is_refused_naming_pid_and_host(run_args):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lock(lock_of(run_args), alive.pid)
        with pytest.raises(run_lock.ResultsLockedError, match=rf"process {alive.pid} on host {platform.node()}"):
            results.ModelRun(*run_args)
        results.ModelRun(*run_args, write=False)  # the non-writing processes of a run do not need the lock
        write_lock(lock_of(run_args), 1, host="another-machine")
        with pytest.raises(run_lock.ResultsLockedError, match="another-machine.*delete"):
            results.ModelRun(*run_args)
    finally:
        alive.kill()
        alive.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(run_args, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(lock_of(run_args), dead.pid)
    results.ModelRun(*run_args)
    assert json.loads(lock_of(run_args).read_text())["pid"] == os.getpid()
    assert "which is gone" in caplog.text


def test_workers_launched_by_the_run_share_its_lock(run_args):
    results.ModelRun(*run_args)
    folder = str(lock_of(run_args).parent)
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # as bert_cv launches its fold workers: with this environment
    worker = subprocess.run([sys.executable, "-c", LOCK_CHILD, folder], env=env, capture_output=True, text=True)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert json.loads(lock_of(run_args).read_text())["pid"] == os.getpid()  # the worker leaves the lock alone
    env.pop(run_lock.RunLock.ENV)
    other = subprocess.run([sys.executable, "-c", LOCK_CHILD, folder], env=env, capture_output=True, text=True)
    assert other.returncode == 3 and f"process {os.getpid()}" in other.stdout


def test_results_exist_message_names_what_to_do(run_args):
    results.ModelRun(*run_args)
    with pytest.raises(
        results.ResultsExistError, match="run_name.*BERT.*move that folder away|move that folder away.*run_name"
    ):
        results.ModelRun(run_args[0], "m", {"x": 2})
