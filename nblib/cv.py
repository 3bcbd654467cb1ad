"""The cross-validation loop shared by every model: split, fit a fresh model, predict the test fold once, save."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from .folds import FoldSplit
from .hardware import keep_freed_memory, set_seed
from .results import ModelRun
from .study import Study

log = logging.getLogger(__name__)


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
    n_jobs: int = 1,
    threads: int | None = None,
) -> None:
    """Train and test folds of ``run``, saving each as it finishes.

    ``fit_predict`` builds a fresh model for each fold, so nothing learnt on one fold reaches another.
    Each fold is seeded with ``seed + k`` before it starts. With ``n_jobs`` > 1 the folds run side by side in
    worker processes (joblib); the results are saved here, in this process. Call ``run.finish()`` when every
    fold is done.

    Args:
        study: the study whose folds are run.
        run: the model folder the folds are saved in.
        fit_predict: trains a fresh model on a fold's train part (selecting on its validation part) and
            returns the test part's probabilities; picklable when ``n_jobs`` > 1.
        val_fraction: share of the training folds used for validation.
        which: the folds to run (default: every fold of ``run`` without results).
        save: False in the processes of a distributed run that do not save (all run the same folds).
        n_jobs: folds trained at the same time, each in its own process (1: one after another, here).
        threads: PyTorch threads of each fold (None: leave as is). A fold gives the same numbers whatever
            ``n_jobs`` is, as long as ``threads`` is the same.
    """
    if which is not None:
        study.check_folds(which)
    pending = run.pending_folds() if which is None else list(which)
    splits = [study.split(k, val_fraction) for k in pending]
    n_jobs = max(1, min(n_jobs, len(splits)))
    if n_jobs == 1:
        done = (_fit_fold(fit_predict, split, threads) for split in splits)
    else:
        done = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            delayed(_fit_fold)(fit_predict, split, threads) for split in splits
        )
    for split, out, seconds in tqdm(done, desc=run.name, total=len(splits), disable=not splits or not save):
        if save:
            save_fold(run, split, out, seconds)


def save_fold(run: ModelRun, split: FoldSplit, out: FoldOutput, seconds: float) -> dict:
    """Save one fold's output in ``run`` (test probabilities, metrics row with its wall time, curves); its metrics row.

    Args:
        run: the model folder.
        split: the fold.
        out: what the model returned for it.
        seconds: how long it took.
    """
    m = run.save_fold(split.fold, split.test, out.probs, {"seconds": seconds, **out.extra}, out.history)
    log.info("%s fold %d: accuracy %.3f, macro-F1 %.3f", run.name, split.fold, m["accuracy"], m["macro_f1"])
    return m


def _fit_fold(
    fit_predict: Callable[[FoldSplit], FoldOutput], split: FoldSplit, threads: int | None
) -> tuple[FoldSplit, FoldOutput, float]:
    """One fold, seeded, with its wall time (in this process or a worker); PyTorch's threads are restored after."""
    keep_freed_memory()
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        set_seed(split.seed)
        start = time.perf_counter()
        out = fit_predict(split)
    finally:
        torch.set_num_threads(before)
    return split, out, round(time.perf_counter() - start, 2)
