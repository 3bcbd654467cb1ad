"""nblib: the helper library behind the notebook series (data, features, models, metrics, plots)."""

from __future__ import annotations

import logging

__version__ = "0.1.0"


def setup_notebook(level: int = logging.INFO) -> None:
    """Show nblib's log lines (what was loaded, dropped, saved) in a notebook, and set the figure style."""
    from . import plots

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("nblib").setLevel(level)
    plots.setup_style()
