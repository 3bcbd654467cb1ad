"""Quiet notebooks: log records to a file in the study folder, one summary line in the notebook, short errors.

:func:`nblib.setup_notebook` installs both. Every log record (nblib's INFO and up, other libraries' warnings) goes
to ``<study folder>/logs/<notebook>.log``; records that arrive before the study is open (loading the sheet) wait
in memory and are written once :class:`nblib.study.Study` calls :func:`attach`. The notebook then shows one line:
how many warnings loading the data gave and where the log is (01_eda shows them all in its data report); later
warnings show as one plain line each on stdout, not as red stderr blocks. An error that nblib raised on purpose
(a bad column, a missing file, …) shows as its message alone, without the stack.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from types import TracebackType

NBLIB_DIR = Path(__file__).resolve().parent
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# exceptions nblib raises with a message meant for the user (a bug raises other kinds, or from other code)
MESSAGE_ERRORS = (ValueError, OSError, RuntimeError)


class NotebookLog(logging.Handler):
    """Writes every record to the notebook's log file, and warnings as one plain line each to stdout.

    Records before :meth:`attach` are kept in memory and written to the file when it is known.
    """

    def __init__(self, name: str) -> None:
        """A handler for notebook ``name`` (the log file's name)."""
        super().__init__(logging.DEBUG)
        self.name = name
        self.path: Path | None = None
        self.pending: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the log file (or keep it until there is one); show a warning once attached."""
        if self.path is None:
            self.pending.append(record)
            return
        self._write([record])
        if record.levelno >= logging.WARNING:
            print(f"{record.levelname.capitalize()}: {record.getMessage()}", file=sys.stdout)

    def _write(self, records: list[logging.LogRecord]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(self.format(r) + "\n" for r in records)

    def attach(self, folder: str | Path) -> Path:
        """Log to ``<folder>/logs/<name>.log`` (appended), write the records kept so far and say how many of
        them were warnings, in one line; returns the log file."""
        path = Path(folder) / "logs" / f"{self.name}.log"
        if path == self.path:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with path.open("a", encoding="utf-8") as f:
            f.write(f"--- {self.name} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        pending, self.pending = self.pending, []
        self._write(pending)
        warnings = sum(r.levelno >= logging.WARNING for r in pending)
        if warnings:
            print(
                f"Loading the data gave {warnings} warning(s): 01_eda shows them in its data report; "
                f"this notebook's log: {path}"
            )
        return path


def handler() -> NotebookLog | None:
    """The notebook log handler :func:`install` put on the root logger, or None."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, NotebookLog)), None)


def install(name: str, level: int = logging.INFO) -> NotebookLog:
    """Route log records to a :class:`NotebookLog` (nblib's from ``level``, other libraries' from WARNING) and
    Python warnings into the log; replaces the handlers logging had (stderr).

    Args:
        name: the notebook's name, for the log file.
        level: the least level of nblib's records that are logged.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    new = NotebookLog(name)
    root.addHandler(new)
    root.setLevel(logging.WARNING)
    logging.getLogger("nblib").setLevel(level)
    logging.captureWarnings(True)
    return new


def attach(folder: str | Path) -> Path | None:
    """Point the notebook log (if :func:`install` set one up) at ``<folder>/logs``; returns the log file or None."""
    h = handler()
    return h.attach(folder) if h else None


def is_message_error(etype: type[BaseException], tb: TracebackType | None) -> bool:
    """Whether an exception is one nblib raised for the user: a class of nblib's own, or a
    ValueError/OSError/RuntimeError raised in nblib's code (not deeper, in a library).

    Args:
        etype: the exception's class.
        tb: its traceback (None: not raised, so not nblib's).
    """
    if etype.__module__.split(".")[0] == "nblib":
        return True
    if not issubclass(etype, MESSAGE_ERRORS) or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(NBLIB_DIR)


def short_errors() -> bool:
    """In IPython, show nblib's own errors (:func:`is_message_error`) as their message alone; others as usual.

    Returns:
        Whether it is installed (False outside IPython).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False

    def show(shell, etype, value, tb, tb_offset=None) -> list[str]:
        if not is_message_error(etype, tb):
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
            return []
        stb = [f"{etype.__name__}: {value}"]
        shell._showtraceback(etype, value, stb)  # what the kernel sends as the cell's error output
        return stb

    shell.set_custom_exc((Exception,), show)
    return True
