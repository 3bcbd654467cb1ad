"""The cross-validation loop shared by every model: split, fit, predict the test fold once, save."""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold
from tqdm.auto import tqdm

from .data import LabelledData
from .results import ModelResults, ModelRun

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FoldSplit:
    """Indices into ``LabelledData.df`` for one fold: fit on ``train``, select on ``val``, score ``test`` once."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int


@dataclass
class FoldOutput:
    """What a model returns for one fold: test-set probabilities, extras for the metrics row, curves."""

    probs: np.ndarray
    extra: dict = field(default_factory=dict)
    history: pd.DataFrame | None = None


def validation_split(train: np.ndarray, data: LabelledData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into fit and validation parts, stratified, identical texts kept together.

    The validation part is for early stopping and model selection only; it never touches the test fold.
    """
    counts = np.bincount(data.labels[train])
    n_splits = max(2, min(round(1 / fraction), counts[counts > 0].min()))  # tiny classes: a larger validation share
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fit, val = next(splitter.split(train, data.labels[train], data.df["text"].to_numpy()[train]))
    return train[fit], train[val]


def split_fold(data: LabelledData, folds: np.ndarray, k: int, val_fraction: float, seed: int) -> FoldSplit:
    """The train/validation/test indices of fold k."""
    test = np.flatnonzero(folds == k)
    train, val = validation_split(np.flatnonzero(folds != k), data, val_fraction, seed + k)
    return FoldSplit(k, train, val, test, seed + k)


def run_folds(run: ModelRun, data: LabelledData, folds: np.ndarray, fit_predict: Callable[[FoldSplit], FoldOutput],
              val_fraction: float = 0.1, seed: int = 42, which: Sequence[int] | None = None, save: bool = True) -> None:
    """Train and test the given folds (default: every pending fold of ``run``) and save each as it finishes.

    ``fit_predict`` builds a fresh model for each fold, so nothing learnt on one fold reaches another.
    In a multi-process run every process calls this with the same folds and only one saves.
    """
    pending = run.pending_folds() if which is None else list(which)
    for k in tqdm(pending, desc=run.name, disable=not pending or not save):
        split = split_fold(data, folds, k, val_fraction, seed)
        set_seed(split.seed)
        start = time.perf_counter()
        out = fit_predict(split)
        extra = {"seconds": round(time.perf_counter() - start, 2), **out.extra}
        if save:
            m = run.save_fold(k, split.test, out.probs, extra, out.history)
            log.info("%s fold %d: accuracy %.3f, macro-F1 %.3f", run.name, k, m["accuracy"], m["macro_f1"])


def run_cv(run: ModelRun, data: LabelledData, folds: np.ndarray, fit_predict: Callable[[FoldSplit], FoldOutput],
           val_fraction: float = 0.1, seed: int = 42) -> ModelResults:
    """Run every pending fold of ``run`` in this process (finished folds are skipped); return the combined results."""
    run_folds(run, data, folds, fit_predict, val_fraction, seed)
    return run.finish()
