"""The cross-validation loop shared by every model: split, fit a fresh model, predict the test fold once, save."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .folds import FoldSplit
from .results import ModelRun
from .study import Study

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices).

    Args:
        seed: the seed.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FoldOutput:
    """What a model returns for one fold: test-set probabilities, extras for the metrics row, curves."""

    probs: np.ndarray
    extra: dict = field(default_factory=dict)
    history: pd.DataFrame | None = None


def run_folds(
    study: Study,
    run: ModelRun,
    fit_predict: Callable[[FoldSplit], FoldOutput],
    val_fraction: float,
    which: Sequence[int] | None = None,
    save: bool = True,
) -> None:
    """Train and test folds of ``run`` one after another, saving each as it finishes.

    ``fit_predict`` builds a fresh model for each fold, so nothing learnt on one fold reaches another.
    Each fold is seeded with ``seed + k`` before it starts. Call ``run.finish()`` when every fold is done.

    Args:
        study: the study whose folds are run.
        run: the model folder the folds are saved in.
        fit_predict: trains a fresh model on a fold's train part (selecting on its validation part) and
            returns the test part's probabilities.
        val_fraction: share of the training folds used for validation.
        which: the folds to run (default: every fold of ``run`` without results).
        save: False in the processes of a distributed run that do not save (all run the same folds).
    """
    pending = run.pending_folds() if which is None else list(which)
    for k in tqdm(pending, desc=run.name, disable=not pending or not save):
        split = study.split(k, val_fraction)
        set_seed(split.seed)
        start = time.perf_counter()
        out = fit_predict(split)
        extra = {"seconds": round(time.perf_counter() - start, 2), **out.extra}
        if save:
            m = run.save_fold(k, split.test, out.probs, extra, out.history)
            log.info("%s fold %d: accuracy %.3f, macro-F1 %.3f", run.name, k, m["accuracy"], m["macro_f1"])
