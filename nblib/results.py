"""One model's cross-validation results: written fold by fold, resumed only under the same settings, read back.

A :class:`ModelRun` writes a model folder (``models/<run>/``; the files are listed in :mod:`nblib.layout`): its
``config.json``, each fold's results as the fold finishes, then the combined tables. :class:`ModelResults` is
what a finished (or partly finished) run reads back; :func:`load_run` and :func:`read_folds` read it.

A run never silently overwrites: opening an existing model folder with the same config resumes it
(finished folds are kept and skipped); with a different config it is an error that says what differs.
While a run writes to a model folder it holds ``run.lock`` there (:class:`nblib.run_lock.RunLock`): a second
run on the same folder is refused with the process and host that hold it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import calibration
from .calibration import Calibration
from .environment import environment
from .files import write_atomic, writing
from .folds import fold_hash
from .layout import RunFolder, same_source
from .metrics import fold_metrics
from .run_lock import RunLock
from .settings import RENAMED
from .sheets import read_machine_table, write_table

if TYPE_CHECKING:
    from .study import Study

log = logging.getLogger(__name__)

# settings renamed since runs were saved (settings.RENAMED): a run saved under the old key resumes under the new one
RENAMED_KEYS = {old: new for renamed in RENAMED.values() for old, (new, _) in renamed.items()}


def renamed_keys(old: dict, new: dict) -> dict:
    """``old`` (a saved run's config) with each renamed key under its new name, where ``new`` has only the new one.

    Args:
        old: the saved config.
        new: the config of this run.
    """
    renamed = {a: b for a, b in RENAMED_KEYS.items() if a in old and b not in old and b in new and a not in new}
    return {renamed.get(k, k): v for k, v in old.items()}


class ResultsExistError(RuntimeError):
    """A results folder exists for a differently configured run."""


def _json_roundtrip(obj: dict) -> dict:
    return json.loads(json.dumps(obj, default=str))


@dataclass
class ModelResults:
    """The finished (or, from :func:`read_folds`, partial) results of one model.

    Its calibrated probabilities follow the policy of :mod:`nblib.calibration` (which calibration each fold gets).
    """

    name: str
    config: dict
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    history: pd.DataFrame | None

    @property
    def prob_columns(self) -> list[str]:
        """The ``prob_<k>`` columns of ``predictions``."""
        return [c for c in self.predictions.columns if c.startswith("prob_")]

    @property
    def probs(self) -> np.ndarray:
        """Out-of-fold class probabilities, one row per text."""
        return self.predictions[self.prob_columns].to_numpy()

    @property
    def folds(self) -> list[int]:
        """The folds these results hold."""
        return sorted(int(k) for k in self.predictions["fold"].unique())

    @property
    def temperatures(self) -> dict[int, float]:
        """The temperature each fold's model fitted on its validation part, by fold (folds without one left out)."""
        fitted = self.metrics.set_index("fold").get("temperature", pd.Series(dtype=float)).dropna()
        return {int(k): float(t) for k, t in fitted.items()}

    @property
    def cross_fitted(self) -> bool:
        """Whether the calibrations are cross-fitted (:func:`nblib.calibration.cross_fits`)."""
        return calibration.cross_fits(self.folds)

    def _oof(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, float]]:
        """What a calibration policy reads: raw probabilities, gold labels, folds and validation temperatures."""
        return self.probs, self.predictions["gold"].to_numpy(), self.predictions["fold"].to_numpy(), self.temperatures

    @cached_property
    def calibrations(self) -> dict[int, Calibration]:
        """Each fold's calibration (:func:`nblib.calibration.fold_calibrations`)."""
        return calibration.fold_calibrations(*self._oof())

    @property
    def validation_calibrations(self) -> dict[int, Calibration]:
        """Each fold's validation temperature alone, by fold (folds without one left out)."""
        return calibration.temperature_calibrations(self.temperatures)

    @cached_property
    def calibrated_probs(self) -> np.ndarray:
        """Out-of-fold class probabilities with each fold's calibration applied (:attr:`calibrations`).

        ``probs`` (and ``predictions.csv``) stay the raw ones, as do the reported scores."""
        return calibration.apply_per_fold(self.probs, self.predictions["fold"].to_numpy(), self.calibrations)

    @property
    def temperature_scaled_probs(self) -> np.ndarray:
        """Out-of-fold class probabilities with each fold's validation temperature only (no class biases)."""
        return calibration.apply_per_fold(self.probs, self.predictions["fold"].to_numpy(), self.validation_calibrations)

    def pooled_calibration(self) -> Calibration:
        """The final model's calibration (:func:`nblib.calibration.pooled_calibration`)."""
        return calibration.pooled_calibration(*self._oof())


class ModelRun(RunFolder):
    """One model's cross-validation run on a study, written fold by fold."""

    def __init__(self, study: Study, name: str, config: dict, write: bool = True):
        """Open (create or resume) the model folder ``models/<name>`` of ``study``.

        Args:
            study: the study (data, folds, folder).
            name: the run's folder name.
            config: the settings that decide the results; a resumed run must have the same.
            write: False for the non-saving processes of a distributed run (they may still call
                :meth:`record_environment`).
        """
        super().__init__(study.path / "models" / name)
        self.data, self.folds = study.data, np.asarray(study.folds)
        self.config = _json_roundtrip(
            {
                "model": name,
                **config,
                "seed": study.settings.seed,
                "n_folds": int(self.folds.max()) + 1,
                "folds_sha": fold_hash(self.folds),
                "data": Path(self.data.source).name,
                "data_fingerprint": self.data.fingerprint(),
                "label_names": self.data.label_names,
            }
        )
        if self.config_file.exists():
            old = renamed_keys(
                same_source(json.loads(self.config_file.read_text()), self.config, study.path), self.config
            )
            if old != self.config:
                diff = {
                    k: (old.get(k), self.config.get(k))
                    for k in set(old) | set(self.config)
                    if old.get(k) != self.config.get(k)
                }
                folds = (
                    f" 'folds_sha' is not a setting: that run was made on other folds than the study's folds "
                    f"file holds now (folds_k<n_folds>_seed<seed>.csv in {study.path}: remade or edited?); put "
                    f"that file back, or move the run folder away to train it again on the current folds."
                    if "folds_sha" in diff
                    else ""
                )
                raise ResultsExistError(
                    f"{self.path} holds results of '{name}' run with other settings {diff} (old, new). "
                    f"To resume it, set the differing settings back to the old values; to keep both, move that "
                    f"folder away (baselines of 02) or give this run another run_name (BERT runs of 03).{folds}"
                )
            log.info("%s: resuming; folds already done: %s", name, self.done_folds())
        self.lock = None
        if not write:
            return
        with writing():
            (self.path / "folds").mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.path)
            self.lock.acquire()
            config = json.dumps(self.config, indent=2, ensure_ascii=False)
            write_atomic(self.config_file, lambda p: p.write_text(config))
            self.record_environment()

    def record_environment(self) -> Path:
        """Write this process's environment (versions, platform, devices) as a new file in ``environment/``."""
        folder = self.path / "environment"
        folder.mkdir(parents=True, exist_ok=True)
        session = (
            folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{platform.node()}-{os.getpid()}-{secrets.token_hex(3)}.json"
        )
        session.write_text(json.dumps(environment(), indent=2, ensure_ascii=False))
        return session

    @property
    def n_folds(self) -> int:
        return self.config["n_folds"]

    def pending_folds(self) -> list[int]:
        """Folds without saved results, in order."""
        return [k for k in range(self.n_folds) if not self.fold_done(k)]

    def save_fold(
        self,
        k: int,
        test_index: np.ndarray,
        probs: np.ndarray,
        extra: dict | None = None,
        history: pd.DataFrame | None = None,
    ) -> dict:
        """Save the out-of-fold probabilities of fold ``k`` and its metrics.

        Args:
            k: the fold.
            test_index: indices into ``LabelledData.df`` of the fold's test texts.
            probs: their class probabilities, one row per test text.
            extra: more values for the fold's metrics row (best epoch, seconds, …).
            history: per-epoch curves of the fold.

        Returns:
            The fold's metrics row.
        """
        probs = np.asarray(probs, dtype=float)
        gold = self.data.labels[test_index]
        pred = probs.argmax(1)
        table = pd.DataFrame(
            {
                "index": test_index,
                "row": self.data.df["row"].to_numpy()[test_index],
                "source": self.data.df["source"].to_numpy()[test_index],  # the sheet the row is in
                "fold": k,
                "text": self.data.df["text"].to_numpy()[test_index],
                "gold": gold,
                "pred": pred,
            }
        )
        table = pd.concat([table, pd.DataFrame(probs, columns=[f"prob_{j}" for j in range(probs.shape[1])])], axis=1)
        if history is not None:
            write_atomic(self.fold_file(k, "_history.csv"), lambda p: write_table(history.assign(fold=k), p))
        write_atomic(self.fold_file(k, ".csv"), lambda p: write_table(table, p))
        metrics = {"fold": k, **fold_metrics(gold, pred, self.data.num_labels), **(extra or {})}
        # the .json marks the fold as done, so it is written last
        write_atomic(self.fold_file(k, ".json"), lambda p: p.write_text(json.dumps(metrics, indent=2, default=float)))
        return metrics

    def finish(self) -> ModelResults:
        """Combine the folds into ``predictions.csv``, ``metrics.csv`` and ``history.csv``; return them."""
        missing = self.pending_folds()
        if missing:
            raise RuntimeError(f"{self.name}: folds {missing} have no results yet.")
        res = read_folds(self.path, range(self.n_folds))
        write_table(res.predictions, self.path / "predictions.csv")
        write_table(res.metrics, self.path / "metrics.csv")
        if res.history is not None:
            write_table(res.history, self.path / "history.csv")
        if self.lock is not None:
            self.lock.release()
        log.info("%s: results in %s", self.name, self.path)
        return res


def read_folds(path: str | Path, folds: Iterable[int]) -> ModelResults:
    """The per-fold files of the given (finished) folds of one model folder, combined.

    Args:
        path: the model folder.
        folds: the folds to read.
    """
    run, folds = RunFolder(path), list(folds)
    predictions = (
        pd.concat([read_machine_table(run.fold_file(k, ".csv")) for k in folds])
        .sort_values("index")
        .reset_index(drop=True)
    )
    metrics = pd.DataFrame([json.loads(run.fold_file(k, ".json").read_text()) for k in folds])
    histories = [read_machine_table(p) for k in folds if (p := run.fold_file(k, "_history.csv")).exists()]
    history = pd.concat(histories, ignore_index=True) if histories else None
    return ModelResults(run.name, run.saved_config(), predictions, metrics, history)


def load_run(path: str | Path) -> ModelResults:
    """Read the results of one finished model folder.

    Args:
        path: the model folder (``models/<run>``).
    """
    path = Path(path)
    history = read_machine_table(path / "history.csv") if (path / "history.csv").exists() else None
    return ModelResults(
        path.name,
        RunFolder(path).saved_config(),
        read_machine_table(path / "predictions.csv"),
        read_machine_table(path / "metrics.csv"),
        history,
    )
