"""Quiet notebooks (nblib.notebook via nblib.setup_notebook): log records in a file in the study folder, not on
the notebook's stderr; one line about the data's warnings; nblib's own errors as their message alone."""

from __future__ import annotations

import logging
import re

import nbformat
import numpy as np
import pytest
from helpers import DEMO_LABELLED, ROOT
from nbclient import NotebookClient

from nblib import notebook

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """A small notebook run by a real kernel: set-up, open the demo study, a warning, a wrong text column."""
    tmp = tmp_path_factory.mktemp("quiet")
    cells = [
        'import nblib\nnblib.setup_notebook("quiet_test")',
        f"from nblib.study import open_study\nstudy = open_study({str(DEMO_LABELLED)!r}, results_dir={str(tmp)!r})",
        'import logging\nlogging.getLogger("nblib.test").warning("something to know")\n'
        'logging.getLogger("nblib.test").info("a detail for the log")',
        f"open_study({str(DEMO_LABELLED)!r}, text_col='Sentenc', results_dir={str(tmp)!r})",
        "{}['missing key']",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=300, allow_errors=True, resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb, tmp


def outputs(cell, kind: str, name: str | None = None) -> list:
    return [o for o in cell.outputs if o.output_type == kind and (name is None or o.get("name") == name)]


def test_log_records_go_to_the_study_folder_not_to_stderr(executed):
    nb, tmp = executed
    assert not any(outputs(c, "stream", "stderr") for c in nb.cells[:3])  # no pink blocks
    opened = "".join(o.text for o in outputs(nb.cells[1], "stream", "stdout"))
    (log,) = tmp.glob("*/logs/quiet_test.log")
    assert opened.count("\n") <= 1  # one line at most about the data's warnings, with a pointer
    if opened:
        assert "01_eda" in opened and str(log) in opened
    shown = "".join(o.text for o in outputs(nb.cells[2], "stream", "stdout"))
    assert shown == "Warning: something to know\n"  # a warning: one plain line; the INFO line only in the log
    text = log.read_text()
    assert "WARNING nblib.test: something to know" in text and "INFO nblib.test: a detail for the log" in text
    assert "INFO nblib" in text.split("nblib.test")[0]  # what open_study logged before the log file was known


def test_an_nblib_error_shows_its_message_alone(executed):
    nb, _ = executed
    (error,) = outputs(nb.cells[3], "error")
    lines = ANSI.sub("", "\n".join(error.traceback)).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{error.ename}: ") and "Sentenc" in lines[0]
    assert not outputs(nb.cells[3], "stream", "stderr")


def test_other_errors_keep_their_traceback(executed):
    nb, _ = executed
    (error,) = outputs(nb.cells[4], "error")
    assert error.ename == "KeyError" and len(error.traceback) > 1


def test_which_errors_are_nblib_messages():
    from nblib.settings import choices
    from nblib.sheets import DataError

    def raised(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            return type(e), e.__traceback__

    assert notebook.is_message_error(DataError, None)
    assert notebook.is_message_error(*raised(lambda: choices("nope", ["tapt", "self"], "arm")))  # raised in nblib
    assert not notebook.is_message_error(*raised(lambda: np.zeros(2).reshape(3)))  # raised inside numpy
    assert not notebook.is_message_error(*raised(lambda: {}["x"]))


def test_install_replaces_the_stderr_handlers():
    before = logging.getLogger().handlers[:]
    try:
        handler = notebook.install("t")
        assert logging.getLogger().handlers == [handler] and handler.path is None
    finally:
        root = logging.getLogger()
        root.handlers[:] = before
        logging.captureWarnings(False)


def test_papermill_engine_runs_the_kernel_without_the_tcp_warning(tmp_path, capfd):
    import papermill
    from papermill.engines import papermill_engines

    from nblib.papermill_engine import IpcEngine

    papermill_engines.register("nblib", IpcEngine)  # what the pyproject.toml entry point registers on install
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(
        str(tmp_path / "in.ipynb"),
        str(tmp_path / "out.ipynb"),
        engine_name="nblib",
        cwd=str(tmp_path),
        progress_bar=False,
        log_output=True,
    )
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs[0]["text"] == "42\n"
    assert "running over TCP" not in capfd.readouterr().err
