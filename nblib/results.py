"""The one results format that every model writes and every later notebook reads.

Layout, inside the study folder of the data (``nblib.data.study_dir``)::

    models/<model>/
        config.json        what was run: model settings, seed, folds, data fingerprint, label names
        environment/*.json one file per session and machine that worked on it: library versions, platform, devices, git commit
        folds/fold_<k>.csv       out-of-fold predictions of fold k, written as soon as the fold finishes
        folds/fold_<k>.json      metrics of fold k (plus extras such as best epoch and seconds)
        folds/fold_<k>_history.csv   per-epoch curves of fold k (neural models)
        predictions.csv    all folds: index, row, fold, text, gold, pred, prob_0 … prob_{K-1}
        metrics.csv        one row per fold: fold, accuracy, macro_f1, weighted_f1, precision_<k>,
                           recall_<k>, f1_<k>, support_<k>, extras
        history.csv        per-epoch curves of all folds: fold, epoch, train_loss, val_loss, val_accuracy, val_macro_f1

``index`` is the position of the text in ``LabelledData.df``, ``row`` its row in the sheet, ``gold``
and ``pred`` label ids (``LabelledData.label_names`` gives the names). Probabilities sum to one.

A run never silently overwrites: opening an existing model folder with the same config resumes it
(finished folds are kept and skipped); with a different config it is an error that says what differs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .data import LabelledData, study_dir
from .metrics import fold_metrics

log = logging.getLogger(__name__)
PACKAGES = ["nblib", "torch", "transformers", "accelerate", "tokenizers", "scikit-learn", "gensim", "jieba",
            "numpy", "pandas", "scipy"]


class ResultsExistError(RuntimeError):
    """A results folder exists for a differently configured run."""


def environment() -> dict:
    """Library versions, platform, devices and git commit: written next to every result."""
    import torch

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_commit": commit,
        "versions": versions,
    }


def _json_roundtrip(obj: dict) -> dict:
    return json.loads(json.dumps(obj, default=str))


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file so that an interrupted run never leaves half a file.

    The temporary name is unique (several processes may write the same file, e.g. config.json), and it
    is in the same folder, so that the final rename is atomic.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ModelResults:
    """The finished results of one model."""

    name: str
    config: dict
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    history: pd.DataFrame | None

    @property
    def prob_columns(self) -> list[str]:
        return [c for c in self.predictions.columns if c.startswith("prob_")]

    @property
    def probs(self) -> np.ndarray:
        return self.predictions[self.prob_columns].to_numpy()


class ModelRun:
    """One model's cross-validation results folder, written fold by fold."""

    def __init__(self, results_dir: str | Path, name: str, config: dict, data: LabelledData, folds: np.ndarray,
                 write: bool = True):
        """Open (create or resume) the folder; ``write=False`` for the non-saving processes of a distributed run
        (they may still call :meth:`record_environment`)."""
        self.name = name
        self.data = data
        self.folds = np.asarray(folds)
        self.path = study_dir(results_dir, data) / "models" / name
        self.config = _json_roundtrip({
            "model": name, **config, "n_folds": int(self.folds.max()) + 1,
            "folds_sha": _fold_hash(self.folds), "data": Path(data.source).name, "data_fingerprint": data.fingerprint(),
            "label_names": data.label_names,
        })
        config_file = self.path / "config.json"
        if config_file.exists():
            old = json.loads(config_file.read_text())
            if old != self.config:
                diff = {k: (old.get(k), self.config.get(k)) for k in set(old) | set(self.config) if old.get(k) != self.config.get(k)}
                raise ResultsExistError(
                    f"{self.path} holds results of '{name}' run with other settings {diff} (old, new). "
                    f"Give this run another name (the run_name/tag parameter) or move that folder away.")
            log.info("%s: resuming; folds already done: %s", name, sorted(set(range(self.n_folds)) - set(self.pending_folds())))
        if not write:
            return
        (self.path / "folds").mkdir(parents=True, exist_ok=True)
        _write_atomic(config_file, lambda p: p.write_text(json.dumps(self.config, indent=2, ensure_ascii=False)))
        self.record_environment()

    def record_environment(self) -> Path:
        """Write this process's environment (versions, platform, devices) as a new file in ``environment/``."""
        folder = self.path / "environment"
        folder.mkdir(parents=True, exist_ok=True)
        session = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{platform.node()}-{os.getpid()}-{secrets.token_hex(3)}.json"
        session.write_text(json.dumps(environment(), indent=2, ensure_ascii=False))
        return session

    @property
    def n_folds(self) -> int:
        return self.config["n_folds"]

    def fold_done(self, k: int) -> bool:
        return (self.path / "folds" / f"fold_{k}.json").exists()

    def pending_folds(self) -> list[int]:
        """Folds without saved results, in order."""
        return [k for k in range(self.n_folds) if not self.fold_done(k)]

    def save_fold(self, k: int, test_index: np.ndarray, probs: np.ndarray, extra: dict | None = None,
                  history: pd.DataFrame | None = None) -> dict:
        """Save the out-of-fold probabilities of fold k (and its metrics); returns the metrics."""
        probs = np.asarray(probs, dtype=float)
        gold = self.data.labels[test_index]
        pred = probs.argmax(1)
        table = pd.DataFrame({"index": test_index, "row": self.data.df["row"].to_numpy()[test_index], "fold": k,
                              "text": self.data.df["text"].to_numpy()[test_index], "gold": gold, "pred": pred})
        table = pd.concat([table, pd.DataFrame(probs, columns=[f"prob_{j}" for j in range(probs.shape[1])])], axis=1)
        folder = self.path / "folds"
        if history is not None:
            _write_atomic(folder / f"fold_{k}_history.csv", lambda p: history.assign(fold=k).to_csv(p, index=False))
        _write_atomic(folder / f"fold_{k}.csv", lambda p: table.to_csv(p, index=False))
        metrics = {"fold": k, **fold_metrics(gold, pred, self.data.num_labels), **(extra or {})}
        # the .json marks the fold as done, so it is written last
        _write_atomic(folder / f"fold_{k}.json", lambda p: p.write_text(json.dumps(metrics, indent=2, default=float)))
        return metrics

    def finish(self) -> ModelResults:
        """Combine the folds into predictions.csv, metrics.csv and history.csv."""
        missing = self.pending_folds()
        if missing:
            raise RuntimeError(f"{self.name}: folds {missing} have no results yet.")
        res = read_folds(self.path, range(self.n_folds))
        res.predictions.to_csv(self.path / "predictions.csv", index=False)
        res.metrics.to_csv(self.path / "metrics.csv", index=False)
        if res.history is not None:
            res.history.to_csv(self.path / "history.csv", index=False)
        log.info("%s: results in %s", self.name, self.path)
        return res


def read_folds(path: str | Path, folds: Iterable[int]) -> ModelResults:
    """The per-fold files of the given (finished) folds of one model folder, combined."""
    path, folds = Path(path), list(folds)
    folder = path / "folds"
    predictions = pd.concat([pd.read_csv(folder / f"fold_{k}.csv", keep_default_na=False, dtype={"text": str})
                             for k in folds]).sort_values("index").reset_index(drop=True)
    metrics = pd.DataFrame([json.loads((folder / f"fold_{k}.json").read_text()) for k in folds])
    histories = [pd.read_csv(p) for k in folds if (p := folder / f"fold_{k}_history.csv").exists()]
    history = pd.concat(histories, ignore_index=True) if histories else None
    return ModelResults(path.name, json.loads((path / "config.json").read_text()), predictions, metrics, history)


def _fold_hash(folds: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(folds, dtype=np.int64).tobytes()).hexdigest()[:16]


def load_model(path: str | Path) -> ModelResults:
    """Read one finished model folder."""
    path = Path(path)
    history = pd.read_csv(path / "history.csv") if (path / "history.csv").exists() else None
    return ModelResults(path.name, json.loads((path / "config.json").read_text()),
                        pd.read_csv(path / "predictions.csv", keep_default_na=False, dtype={"text": str}),
                        pd.read_csv(path / "metrics.csv"), history)


def load_all(results_dir: str | Path, data: LabelledData, folds: np.ndarray | None = None) -> dict[str, ModelResults]:
    """Every finished model of this data (and, if given, these folds), by name."""
    out = {}
    for path in sorted((study_dir(results_dir, data) / "models").glob("*/metrics.csv")):
        res = load_model(path.parent)
        if folds is None or res.config.get("folds_sha") == _fold_hash(folds):
            out[res.name] = res
    return out
