"""Faults of data, written files, folds and the results folder: each case gives the right result or one message
that says what happened and what to do (issue 19; see docs/faults.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from helpers import LOCK_CHILD

from nblib import files, folds, layout, results, run_lock
from nblib.data import DataError
from nblib.sheets import read_machine_table, read_sheet, write_table

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


# --- sheets -------------------------------------------------------------------------------------------


def test_text_of_only_zero_width_characters_is_empty(write_sheet):
    from helpers import sheet

    from nblib import data as nbdata

    texts = ["好", "\u200b", "\u200c\u200d", " \u2060\ufeff\u200b ", "\u200b棒"]
    d = nbdata.load_labelled(write_sheet(sheet(texts, [0, 1, 0, 1, 1])))
    assert d.texts == ["好", "\u200b棒"]  # a visible text keeps its zero-width characters (and its fingerprint)
    rep = d.report.to_frame()
    assert rep.loc[0, "sheet rows"] == "3, 4, 5" and "zero-width" in rep.loc[0, "problem"]


def test_big5_csv_is_read_as_big5_not_garbled_gb18030(tmp_path, caplog):
    texts = ["只此青綠的舞美絕了", "文物修復師太厲害了", "國家寶藏真好看"]
    path = tmp_path / "trad.csv"
    path.write_bytes(("Sentence\n" + "\n".join(texts) + "\n").encode("big5"))
    with caplog.at_level(logging.WARNING, logger="nblib.sheets"):
        table = read_sheet(path)
    assert table.encoding == "big5" and table.df["Sentence"].tolist() == texts
    assert "Big5" in caplog.text


def test_garbled_gb18030_that_is_not_big5_names_big5_as_likely(tmp_path, caplog):
    path = tmp_path / "odd.csv"
    path.write_bytes(b"Sentence\n" + "只此青綠的舞美".encode("big5") + b"\x81\x30\x81\x30\n")
    with caplog.at_level(logging.WARNING, logger="nblib.sheets"):
        assert read_sheet(path).encoding == "gb18030"
    assert "rare or private-use" in caplog.text and "'big5'" in caplog.text


def test_gbk_sheet_with_some_traditional_characters_stays_gbk(tmp_path):
    texts = ["只此青绿的舞美绝了", "文物修复师太厉害了🉑️", "國家寶藏真好看"]
    path = tmp_path / "gbk.csv"
    path.write_bytes(("Sentence\n" + "\n".join(texts) + "\n").encode("gb18030"))
    table = read_sheet(path)
    assert table.encoding == "gb18030" and table.df["Sentence"].tolist() == texts


def test_password_protected_xlsx_is_called_so(tmp_path):
    # what Excel writes for "Encrypt with Password": an OLE compound file holding an EncryptedPackage stream
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504) + "EncryptedPackage".encode("utf-16-le") + bytes(100)
    path = tmp_path / "locked.xlsx"
    path.write_bytes(ole)
    with pytest.raises(DataError, match=r"locked.xlsx is password-protected.*remove the password"):
        read_sheet(path)
    (tmp_path / "old.xlsx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600))
    with pytest.raises(DataError, match="old Excel 97-2003"):
        read_sheet(tmp_path / "old.xlsx")


def test_formula_without_saved_value_is_named_not_just_empty(tmp_path, caplog):
    from nblib import data as nbdata

    path = tmp_path / "pandas.xlsx"
    texts = ["好看", "=_=", "不错", "=-=", "棒", "还行"]
    pd.DataFrame({"Sentence": texts, "Label": [0, 1, 0, 1, 0, 1]}).to_excel(path, index=False)
    with caplog.at_level(logging.WARNING):
        d = nbdata.load_labelled(path)
    rep = d.report.to_frame().set_index("problem")
    problem = next(p for p in rep.index if p.startswith("formula without a saved value"))
    assert rep.loc[problem, "sheet rows"] == "3, 5" and "open and save the file in Excel/WPS" in problem
    assert "save it as CSV" in problem


# --- folds --------------------------------------------------------------------------------------------


@pytest.fixture
def saved_folds(tmp_path, tiny_data):
    """A tiny study's data and the path of its saved folds (3 folds, seed 0)."""
    data = tiny_data()
    path = layout.folds_file(tmp_path / "study", 3, 0)
    folds.load_or_make_folds(data, path, 3, 0)
    return data, path


def test_folds_json_deleted_says_how_to_remake(saved_folds):
    data, path = saved_folds
    path.with_suffix(".json").unlink()
    with pytest.raises(DataError, match=r"lost its partner folds_k3_seed0.json.*Delete both folds_k3_seed0.csv"):
        folds.load_or_make_folds(data, path, 3, 0)


def test_folds_json_damaged_says_how_to_remake(saved_folds):
    data, path = saved_folds
    path.with_suffix(".json").write_text("{")
    with pytest.raises(DataError, match=r"folds_k3_seed0.json is damaged.*Delete both"):
        folds.load_folds(path, data)


@pytest.mark.parametrize("edit", ["move", "out_of_range", "text"])
def test_folds_column_edited_by_hand_is_refused(saved_folds, edit):
    data, path = saved_folds
    table = read_machine_table(path)
    if edit == "move":  # a valid-looking assignment: one text moved to another fold
        table.loc[0, "fold"] = (table.loc[0, "fold"] + 1) % 3
    else:
        table["fold"] = table["fold"].astype(object)
        table.loc[0, "fold"] = 7 if edit == "out_of_range" else "x"
    write_table(table, path)
    with pytest.raises(DataError, match=r"fold column of .*folds_k3_seed0.csv was changed.*Delete both"):
        folds.load_or_make_folds(data, path, 3, 0)


def test_folds_remade_after_deleting_both_are_the_same(saved_folds):
    data, path = saved_folds
    before = folds.load_folds(path, data)
    path.unlink()
    path.with_suffix(".json").unlink()
    assert (folds.load_or_make_folds(data, path, 3, 0) == before).all()
    assert folds.load_folds(path, data).tolist() == before.tolist()


def test_folds_csv_deleted_is_made_again_with_a_warning(saved_folds, caplog):
    data, path = saved_folds
    before = folds.load_folds(path, data)
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="nblib.folds"):
        assert (folds.load_or_make_folds(data, path, 3, 0) == before).all()
    assert "folds_k3_seed0.csv is missing" in caplog.text


def test_folds_json_of_before_the_hash_still_loads(saved_folds):
    data, path = saved_folds
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["folds_sha"]
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert folds.load_folds(path, data).tolist() == read_machine_table(path)["fold"].tolist()


def test_resuming_on_other_folds_explains_folds_sha(tiny_study):
    study = tiny_study()
    study.open_run("m", {"x": 1}).lock.release()
    study.folds = (study.folds + 1) % 3  # as if the folds file had been remade differently
    with pytest.raises(results.ResultsExistError, match="'folds_sha' is not a setting: that run was made on other"):
        study.open_run("m", {"x": 1})


# --- results folder -----------------------------------------------------------------------------------


def _tiny_bert_config(sheet, results_dir):
    from nblib import bert, bert_cv
    from nblib.settings import from_params

    params = {"data_path": str(sheet), "results_dir": str(results_dir), "model": bert.TINY_RANDOM, "n_folds": 3}
    return from_params(bert_cv.FineTuneConfig, params | {"unlabelled_path": None, "device": "cpu", "max_len": 32})


def _open_job(cfg):
    from nblib import bert_cv
    from nblib.study import open_study

    job = bert_cv.FineTuneJob(cfg, open_study(cfg.study))
    job.run.lock.release()
    return job


def test_moved_results_folder_reopens_its_tiny_random_run(tmp_path, tiny_sheet):
    from nblib import bert_cv

    sheet = tiny_sheet()
    job = _open_job(_tiny_bert_config(sheet, tmp_path / "disk1" / "res"))
    assert job.run.saved_config()["source"] == "encoders/tiny-random"  # stored relative to the study folder
    (tmp_path / "disk1" / "res").rename(tmp_path / "res2")
    moved = _open_job(_tiny_bert_config(sheet, tmp_path / "res2"))  # no ResultsExistError
    assert moved.run.path.is_relative_to(tmp_path / "res2")
    again = bert_cv.config_of_run(moved.study, moved.run.name)
    assert Path(again.model).is_dir() and Path(again.model).is_relative_to(tmp_path / "res2")


def test_run_saved_with_absolute_encoder_path_still_opens_after_a_move(tmp_path, tiny_sheet):
    sheet = tiny_sheet()
    job = _open_job(_tiny_bert_config(sheet, tmp_path / "res"))
    config = job.run.saved_config()
    config["source"] = f"/old/disk/results/{job.study.path.name}/encoders/tiny-random"  # as runs were stored before
    job.run.config_file.write_text(json.dumps(config))
    _open_job(_tiny_bert_config(sheet, tmp_path / "res"))  # no ResultsExistError
    assert layout.located(config["source"], job.study.path) == str(job.study.path / "encoders" / "tiny-random")


def test_paths_outside_the_study_folder_are_stored_as_given(tmp_path):
    (tmp_path / "models" / "enc").mkdir(parents=True)
    assert layout.stored_path(str(tmp_path / "models" / "enc"), tmp_path / "res" / "s") == str(
        tmp_path / "models" / "enc"
    )
    assert layout.stored_path("bert-base-chinese", tmp_path / "res" / "s") == "bert-base-chinese"
    assert layout.located("bert-base-chinese", tmp_path / "res" / "s") == "bert-base-chinese"


SIBLING = """
import sys, time
from nblib.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_an_inherited_lock_token_does_not_let_a_second_job_in(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import ROOT

    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    # two jobs started by one parent that passes them the same token (e.g. a shell that exported it)
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{run_lock.RunLock.ENV: "inherited"})
    first = subprocess.Popen([sys.executable, "-c", SIBLING, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-c", LOCK_CHILD, str(folder)], env=env, capture_output=True, text=True
        )
        assert second.returncode == 3 and f"process {first.pid}" in second.stdout
    finally:
        first.kill()
        first.wait()


def test_atomic_writes_get_the_usual_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        files.write_atomic(tmp_path / "a.json", lambda p: p.write_text("{}"))
        (tmp_path / "b.json").write_text("{}")
        os.umask(0o027)
        files.write_atomic(tmp_path / "c.json", lambda p: p.write_text("{}"))
    finally:
        os.umask(old)
    mode = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ["a.json", "b.json", "c.json"]}
    assert mode == {"a.json": 0o644, "b.json": 0o644, "c.json": 0o640}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]  # no temporary left


@pytest.fixture
def read_only_disk(monkeypatch):
    """Writes under a folder fail as on a read-only disk (tests may run as root, whom permissions do not stop)."""
    import errno
    import os

    def refuse(folder):
        real_mkdir, real_open, real_write_text = Path.mkdir, os.open, Path.write_text

        def check(path):
            if Path(path).is_relative_to(folder):
                raise OSError(errno.EROFS, "Read-only file system", str(path))

        def mkdir(self, *a, **kw):
            if not self.exists():
                check(self)
            return real_mkdir(self, *a, **kw)

        def open_(path, flags, *a, **kw):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                check(path)
            return real_open(path, flags, *a, **kw)

        def write_text(self, *a, **kw):
            check(self)
            return real_write_text(self, *a, **kw)

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(Path, "write_text", write_text)

    return refuse


def test_read_only_results_folder_gives_one_message(tmp_path, tiny_study, read_only_disk):
    from nblib.study import open_study

    study = tiny_study()  # made while writable: folds saved
    read_only_disk(tmp_path / "res")
    again = open_study(study.settings)  # reading a study needs no writes
    assert (again.folds == study.folds).all()
    with pytest.raises(files.ResultsFolderError, match=r"Cannot write .*res.*Read-only file system.*results_dir="):
        again.open_run("m", {"x": 1})
    with pytest.raises(files.ResultsFolderError, match="results_dir="):
        again.folder("analysis")
    with pytest.raises(files.ResultsFolderError, match="results_dir="):
        open_study(study.settings.data_path, results_dir=str(tmp_path / "res" / "new"), unlabelled_path=None)
