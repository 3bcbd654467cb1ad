"""The inputs of a class-share estimate, checked: a finished run's out-of-fold results and a predicted pool sheet."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .layout import RunFolder, run_of_saved_model
from .results import ModelResults, load_run
from .shares import NOTEBOOK_NAMES, Names
from .sheets import DataError, clean_text

log = logging.getLogger(__name__)


def run_results(run_dir: str | Path, names: Names = NOTEBOOK_NAMES) -> ModelResults:
    """The out-of-fold results of a finished run, or a :class:`DataError` that says what to run first.

    Args:
        run_dir: the run's results folder (``results/<study>/models/<run>``).
        names: how the caller names its parameters, for the messages.
    """
    path = Path(run_dir)
    owner = run_of_saved_model(path)
    if owner != path:
        raise DataError(
            f"{path} is a saved model; {names.run.strip('= ')} must be its run's results folder ({owner}), "
            f"whose out-of-fold predictions give the error rates."
        )
    if not RunFolder(path).config_file.exists():
        raise FileNotFoundError(
            f"No run results in {path} (no config.json): the class shares need the out-of-fold predictions of the "
            f"model's run. Give {names.run.strip('= ')} a run folder results/<study>/models/<run> (in 05: "
            f"model_dir=…/models/<run>/final, or bert_run=<run>)."
        )
    run = RunFolder(path)
    if not (run.is_finished() and (path / "predictions.csv").exists()):
        raise DataError(
            f"{path} has no out-of-fold predictions yet (folds done: {run.done_folds()}): run 03_bert_cv "
            f"(or 02_baselines for a baseline) to the end first; the error rates come from those predictions."
        )
    return load_run(path)


@dataclass
class Pool:
    """The pool texts whose shares are estimated: their probabilities, groups and what was left out."""

    probs: np.ndarray
    groups: np.ndarray | None
    repeated: int  # texts that repeat a labelled text (left out)
    empty: int  # rows without a prediction (left out)


def pool_from_table(
    table: pd.DataFrame,
    class_names: Sequence[str],
    labelled_texts: Sequence[str],
    text_col: str,
    group_col: str | None = None,
    names: Names = NOTEBOOK_NAMES,
) -> Pool:
    """The probabilities (and groups) of a predicted sheet, checked against the run's classes.

    Rows without probabilities (empty texts) and texts that repeat a labelled text are left out and counted.

    Args:
        table: the sheet as :mod:`nblib.predict` writes it: the input columns and one ``prob_<class name>``
            column per class.
        class_names: the run's class names, in label-id order.
        labelled_texts: the texts of the labelled sheet (``ModelResults.predictions["text"]``).
        text_col: the text column.
        group_col: a column that groups the texts, or None.
        names: how the caller names its parameters, for the messages.
    """
    wanted = [f"prob_{c}" for c in class_names]
    found = [str(c) for c in table.columns if str(c).startswith("prob_")]
    if sorted(found) != sorted(wanted):
        raise DataError(
            f"The sheet's class columns {found} do not match the run's classes, which need {wanted}: "
            f"label the sheet with a model of the same classes (python -m nblib.predict)."
        )
    for col, flag in [(text_col, names.column), (group_col, names.group)]:
        if col is not None and col not in table.columns:
            raise DataError(
                f"No column '{col}' in the predicted sheet; its columns: {[str(c) for c in table.columns]}. "
                f"Set {flag}<one of them>."
            )
    probs = table[wanted].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    present = ~np.isnan(probs).any(axis=1)
    labelled = {clean_text(t) for t in labelled_texts}
    repeated = present & table[text_col].map(lambda t: not pd.isna(t) and clean_text(t) in labelled).to_numpy()
    if repeated.any():
        log.warning(
            "%d pool text(s) repeat labelled texts: left out of the shares (they are not unseen).", int(repeated.sum())
        )
    keep = present & ~repeated
    groups = table[group_col].to_numpy(dtype=object)[keep] if group_col else None
    return Pool(probs[keep], groups, int(repeated.sum()), int((~present).sum()))
