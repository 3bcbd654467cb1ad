"""nblib: the helper library behind the notebook series (data, features, models, metrics, plots)."""

from __future__ import annotations

import logging

__version__ = "0.1.0"


def setup_notebook(name: str = "notebook", level: int = logging.INFO, short_errors: bool = True) -> None:
    """Set up a notebook of the series: quiet logs, short errors for nblib's own messages, the figure style.

    Log records go to ``<study folder>/logs/<name>.log`` once the study is open (see :mod:`nblib.notebook`),
    not to the notebook's stderr; the notebook shows one line about the data's warnings and later warnings
    as one plain line each. Progress bars (tqdm) and each step's summary stay in the notebook.

    Args:
        name: the notebook's name (e.g. ``"03_bert_cv"``), the log file's name.
        level: the least level of nblib's records written to the log.
        short_errors: show an error nblib raised for the user (a wrong column, a missing file, …) as its
            message alone, without the stack (other errors keep their traceback).
    """
    from . import notebook, plots

    notebook.install(name, level)
    if short_errors:
        notebook.short_errors()
    plots.setup_style()
