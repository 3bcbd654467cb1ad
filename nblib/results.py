"""The results folder of a study: its layout is known here and nowhere else.

Everything computed from one labelled sheet lives in its *study folder*, named after the sheet and a
fingerprint of its cleaned texts and labels (an edited sheet gets a new folder, so results of other data
never mix in)::

    <results_dir>/<sheet>-<fingerprint>/
        folds_k<k>_seed<seed>.csv (.json)  the fold of every text (nblib.folds), shared by every model
        comparison.csv                    mean ± sd over folds of every finished model (Study.comparison)
        encoders/<name>/                  encoders built for this study: the tiny-random smoke-test BERT, and
                                          encoders adapted by TAPT (nblib.tapt: tapt.json, mlm_head.safetensors)
        analysis/                         tables and annotator sheets of 04_error_analysis
        predictions/                      sheets labelled by 05_predict, and its annotator sheets (to_label_*.xlsx)
        models/<run>/                     one model's cross-validation run (a ModelRun):
            config.json          what was run: settings that decide the results, seed, folds, data, label names
            environment/*.json   one file per session and machine that worked on it: versions, platform, devices, git commit
            folds/fold_<k>.csv            out-of-fold predictions of fold k, written when the fold finishes
            folds/fold_<k>.json           metrics of fold k (and extras: best epoch, seconds, temperature); marks it done
            folds/fold_<k>_history.csv    per-epoch curves of fold k (neural models)
            predictions.csv      all folds: index, row, source, fold, text, gold, pred, prob_0 … prob_{K-1}
            metrics.csv          one row per fold: fold, accuracy, macro_f1, weighted_f1, precision_<k>,
                                 recall_<k>, f1_<k>, support_<k>, extras
            history.csv          per-epoch curves of all folds: fold, epoch, train_loss, val_loss,
                                 val_accuracy, val_macro_f1
            fold_models/fold_<k>/  (BERT) fold k's model, save_pretrained (safetensors + tokenizer), and
                                   calibration.json (its temperature and class biases, nblib.calibration)
            final/                 (BERT) the model trained on all labelled texts, with training.json and
                                   calibration.json (folds' median temperature, biases from all out-of-fold texts)
            pseudo_labels/<fold>.csv  (self-training, nblib.self_training) the teacher's labels of the pool for
                                   fold k (fold_<k>.csv) and for the final model (final.csv), and which joined
            launch.json            (BERT) the settings that worker processes and torchrun read
            logs/                  (BERT) one log per worker process
            run.lock               the process (pid, host) writing this folder now (results.RunLock)

``index`` is the position of the text in ``LabelledData.df``, ``row`` its row in the sheet, ``gold``
and ``pred`` label ids (``LabelledData.label_names`` gives the names). Probabilities sum to one.

Paths inside the study folder (a run's encoder: the tiny random BERT, a TAPT encoder) are stored relative to it
(:func:`stored_path`), so that a results folder can move to another disk or machine; a folder that cannot be
written is one :class:`ResultsFolderError`.

A run never silently overwrites: opening an existing model folder with the same config resumes it
(finished folds are kept and skipped); with a different config it is an error that says what differs.
While a run writes to a model folder it holds ``run.lock`` there (see :class:`RunLock`): a second run on
the same folder is refused with the process and host that hold it.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import logging
import os
import platform
import secrets
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .calibration import Calibration, apply_per_fold, cross_fitted, fit_class_bias
from .data import DataError, LabelledData
from .metrics import fold_metrics
from .sheets import read_machine_table, write_table

if TYPE_CHECKING:
    from .study import Study

log = logging.getLogger(__name__)
PACKAGES = [
    "nblib",
    "torch",
    "transformers",
    "accelerate",
    "tokenizers",
    "scikit-learn",
    "gensim",
    "jieba",
    "numpy",
    "pandas",
    "scipy",
]


class ResultsExistError(RuntimeError):
    """A results folder exists for a differently configured run."""


class ModelNotAvailableError(RuntimeError):
    """A model cannot be used: not a local folder nor downloadable from here, or its folder is half-written or
    damaged (also known as ``nblib.bert.ModelNotAvailableError``)."""


TINY_RANDOM = "tiny-random"  # the smoke-test encoder's folder under <study>/encoders (nblib.bert.build_tiny_encoder)
FINAL_DONE = "training.json"  # written last into <run>/final by nblib.bert_cv: the final model is completely saved
TAPT_DONE = "tapt.json"  # written last into <study>/encoders/<name> by nblib.tapt: the adapted encoder is saved


class ResultsFolderError(DataError):
    """The results folder cannot be written (a read-only disk, no permission); the message says what to do."""


NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextmanager
def writing() -> Iterator[None]:
    """Turn a write refused in the results folder (read-only disk, no permission) into one
    :class:`ResultsFolderError` that names the file and what to do; other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in NOT_WRITABLE:
            raise
        raise ResultsFolderError(
            f"Cannot write {e.filename}: {e.strerror}. The results folder must be writable: pass "
            f"results_dir=<a folder you can write> (copy the study folder there first to keep its results), or "
            f"make this folder writable."
        ) from None


def study_path(results_dir: str | Path, data: LabelledData) -> Path:
    """The study folder of exactly this data: ``results_dir/<sheet file name>-<fingerprint>``.

    Args:
        results_dir: the folder that holds every study.
        data: the loaded labelled sheet.
    """
    return Path(results_dir) / f"{Path(data.source).stem}-{data.fingerprint()[:8]}"


def folds_file(study: Path, n_folds: int, seed: int) -> Path:
    """Where a study's folds are saved.

    Args:
        study: the study folder.
        n_folds: number of folds.
        seed: the folds' seed.
    """
    return study / f"folds_k{n_folds}_seed{seed}.csv"


def study_subfolder(study: Path, kind: Literal["encoders", "analysis", "predictions"]) -> Path:
    """A study-level folder (created): built encoders, 04's analysis tables, 05's labelled sheets.

    Args:
        study: the study folder.
        kind: which folder.
    """
    path = study / kind
    with writing():
        path.mkdir(parents=True, exist_ok=True)
    return path


def comparison_file(study: Path) -> Path:
    """The table of every finished model of a study (mean ± sd over folds).

    Args:
        study: the study folder.
    """
    return study / "comparison.csv"


def run_paths(study: Path) -> list[Path]:
    """Every model folder of a study (finished or not), by name.

    Args:
        study: the study folder.
    """
    return sorted(p.parent for p in (study / "models").glob("*/config.json"))


class ResultsLockedError(RuntimeError):
    """Another run is writing to the same results folder."""


class RunLock:
    """``run.lock`` in a model folder: the process (pid, host) of the run writing there, one run at a time.

    The processes of one run share the lock through the environment variable ``NBLIB_RUN_LOCK``: the
    opener sets it to its token, the workers it launches (fold workers, torchrun) inherit it and pass, as long as
    the holder is one of their ancestors (an inherited token alone does not let a second job in).
    A lock whose process is gone (same host, no such pid) is taken over with a warning; on another host
    liveness cannot be checked, so the message says when to delete the file.
    """

    ENV = "NBLIB_RUN_LOCK"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "run.lock"

    def acquire(self) -> None:
        """Take the lock, or pass when this run's opener holds it; raise :class:`ResultsLockedError` when
        another live run does."""
        token = os.environ.setdefault(self.ENV, secrets.token_hex(8))
        me = {"pid": os.getpid(), "host": platform.node(), "token": token, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{secrets.token_hex(3)}")
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if the lock exists, never leaves half a file
                except FileExistsError:
                    other = self.holder()
                    if other.get("token") == token and self._holder_is_my_run(other):
                        return
                    if not self._stale(other):
                        raise ResultsLockedError(self._message(other)) from None
                    log.warning(
                        "%s: taking over the lock of process %s on %s, which is gone.",
                        self.path.parent,
                        other.get("pid"),
                        other.get("host"),
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                atexit.register(self.release)
                return
            raise ResultsLockedError(self._message(self.holder()))
        finally:
            tmp.unlink()

    def holder(self) -> dict:
        """What the lock file says (pid, host, token, since); empty when there is none."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """Remove the lock if this process took it (a worker that shares its opener's lock leaves it)."""
        if self.holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    @staticmethod
    def _holder_is_my_run(other: dict) -> bool:
        """Whether the holder that has this process's token is its run: this process, or (same host) one of its
        ancestors (the opener of the workers); a token inherited from elsewhere (a sibling started by the same
        parent, a shell that exported it) does not pass while its holder lives. On another host ancestry cannot be
        checked, and the token is trusted."""
        import psutil

        if other.get("host") != platform.node() or other.get("pid") == os.getpid():
            return True
        try:
            ancestors = {p.pid for p in psutil.Process().parents()}
        except psutil.Error:
            return True
        return other.get("pid") in ancestors

    @staticmethod
    def _stale(other: dict) -> bool:
        """The lock's process is gone: same host and no such pid (or our own pid, left by an earlier process)."""
        if other.get("host") != platform.node() or not isinstance(other.get("pid"), int):
            return False
        if other["pid"] == os.getpid():
            return True
        try:
            os.kill(other["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def _message(self, other: dict) -> str:
        return (
            f"{self.path.parent} is in use by another run: process {other.get('pid')} on host "
            f"{other.get('host')}, since {other.get('since')}. Wait for it to finish or stop it; two runs on one "
            f"folder would train the same folds. If that process is an idle Jupyter kernel whose run was "
            f"interrupted, restart that kernel; if it no longer exists (e.g. killed on another machine), "
            f"delete {self.path}."
        )


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
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
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


def stored_path(path: str, study: Path) -> str:
    """How a path is written into a study's files: relative to the study folder (POSIX) when it is inside it, so
    that the results folder can move to another disk or machine; anything else (a hub id, a folder elsewhere)
    as given.

    Args:
        path: a path or hub id.
        study: the study folder.
    """
    try:
        return Path(path).resolve().relative_to(Path(study).resolve()).as_posix() if Path(path).exists() else path
    except ValueError:
        return path


def located(path: str, study: Path) -> str:
    """The folder a stored path names, as this process can open it: a path stored relative to the study folder
    (:func:`stored_path`), or an absolute one from a run made before that folder moved (found under the study
    folder by its part below the study's name); anything else as given.

    Args:
        path: a path as stored in a run's config.
        study: the study folder.
    """
    study = Path(study)
    p = Path(path)
    if not p.is_absolute() and (study / p).exists():
        return str(study / p)
    if not p.exists() and study.name in p.parts[:-1]:
        below = p.parts[len(p.parts) - 1 - p.parts[::-1].index(study.name) :]
        if (study.joinpath(*below[1:])).exists():
            return str(study.joinpath(*below[1:]))
    return path


def same_source(old: dict, new: dict, study: Path | None = None) -> dict:
    """``old`` with its ``source`` replaced by ``new``'s when both name the same local folder: a run saved with a
    relative model path reopened with the absolute one, or a run saved with an absolute path inside its study
    folder (before paths were stored relative to it) reopened after the folder moved.

    Args:
        old: a saved identity.
        new: the identity of this process.
        study: the study folder that relative sources are stored against.
    """
    a, b = old.get("source"), new.get("source")
    if a == b or not isinstance(a, str) or not isinstance(b, str):
        return old
    a_dir, b_dir = (Path(located(x, study)) if study is not None else Path(x) for x in (a, b))
    if a_dir.is_dir() and a_dir.resolve() == b_dir.resolve():
        return old | {"source": b}
    return old


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file so that an interrupted run never leaves half a file.

    The temporary name is unique (several processes may write the same file, e.g. config.json), and it
    is in the same folder, so that the final rename is atomic. The file gets the usual mode (0666 less the
    umask, as ``open`` gives), so that others sharing the folder can read it.

    Args:
        path: the file to write.
        write: writes the content to the path it is given (the temporary file).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    with writing():
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode as open() gives, unlike mkstemp
    try:
        with writing():
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class ModelResults:
    """The finished (or, from :func:`read_folds`, partial) results of one model."""

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
    def cross_fitted(self) -> bool:
        """Whether the calibrations are cross-fitted (two or more folds; see ``nblib.calibration``)."""
        return len(self.folds) >= 2

    @cached_property
    def calibrations(self) -> dict[int, Calibration]:
        """Each fold's calibration (``nblib.calibration``): its validation temperature, then (with two or more
        folds) class biases fitted on the other folds' out-of-fold outputs. A fold without a temperature (runs
        made before calibration, TF-IDF + LR) has ``T = 1``."""
        temperatures = {k: c.temperature for k, c in self.validation_calibrations.items()}
        if self.cross_fitted:
            gold, folds = self.predictions["gold"].to_numpy(), self.predictions["fold"].to_numpy()
            return cross_fitted(self.probs, gold, folds, temperatures)
        return self.validation_calibrations

    @property
    def validation_calibrations(self) -> dict[int, Calibration]:
        """The temperature each fold's model fitted on its validation part, by fold (folds without one left out)."""
        fitted = self.metrics.set_index("fold").get("temperature", pd.Series(dtype=float)).dropna()
        return {int(k): Calibration(float(t), None, f"fold {k}'s validation part") for k, t in fitted.items()}

    @cached_property
    def calibrated_probs(self) -> np.ndarray:
        """Out-of-fold class probabilities with each fold's calibration applied (:attr:`calibrations`).

        ``probs`` (and ``predictions.csv``) stay the raw ones, as do the reported scores."""
        return apply_per_fold(self.probs, self.predictions["fold"].to_numpy(), self.calibrations)

    @property
    def temperature_scaled_probs(self) -> np.ndarray:
        """Out-of-fold class probabilities with each fold's validation temperature only (no class biases)."""
        return apply_per_fold(self.probs, self.predictions["fold"].to_numpy(), self.validation_calibrations)

    def pooled_calibration(self) -> Calibration:
        """The final model's calibration, which no held-out part can give: the median of the folds' temperatures
        and the class biases fitted on all out-of-fold outputs (each scaled by its fold's temperature)."""
        temps = [c.temperature for c in self.validation_calibrations.values()]
        bias = fit_class_bias(self.temperature_scaled_probs, self.predictions["gold"].to_numpy())
        where = (
            f"temperature: the median of folds' validation temperatures; class biases: the out-of-fold outputs "
            f"of folds {', '.join(str(k) for k in self.folds)}, {len(self.predictions)} texts"
        )
        return Calibration(float(np.median(temps)) if temps else 1.0, tuple(float(b) for b in bias), where)


class RunFolder:
    """The files of one model folder (``models/<run>/``), whether or not its run is finished."""

    def __init__(self, path: str | Path):
        """Args:
        path: the model folder.
        """
        self.path = Path(path)
        self.name = self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def final_dir(self) -> Path:
        """The model trained on all labelled texts (BERT runs with ``train_final``)."""
        return self.path / "final"

    @property
    def launch_file(self) -> Path:
        """The settings that worker processes and torchrun read."""
        return self.path / "launch.json"

    @property
    def log_dir(self) -> Path:
        """Logs of worker processes."""
        return self.path / "logs"

    def fold_model_dir(self, k: int) -> Path:
        """The saved model of fold ``k``.

        Args:
            k: the fold.
        """
        return self.path / "fold_models" / f"fold_{k}"

    def _fold_file(self, k: int, suffix: str) -> Path:
        return self.path / "folds" / f"fold_{k}{suffix}"

    def fold_done(self, k: int) -> bool:
        """Whether fold ``k`` has saved results.

        Args:
            k: the fold.
        """
        return self._fold_file(k, ".json").exists()

    def done_folds(self) -> list[int]:
        """The folds with saved results, in order."""
        return sorted(int(p.stem.removeprefix("fold_")) for p in (self.path / "folds").glob("fold_*.json"))

    def best_epochs(self) -> list[int]:
        """The epoch kept in each finished fold (neural models)."""
        return [int(json.loads(self._fold_file(k, ".json").read_text())["best_epoch"]) for k in self.done_folds()]

    def saved_models(self) -> list[Path]:
        """Every completely saved model of this run (:func:`unfinished_model`): the fold models, then the final model."""
        return [p for p in [*self.fold_model_dirs(), self.final_dir] if unfinished_model(p) is None]

    def fold_model_dirs(self) -> list[Path]:
        """Every fold model folder of this run, finished or not, by fold."""
        found = [p for p in (self.path / "fold_models").glob("fold_*") if p.name.removeprefix("fold_").isdigit()]
        return sorted(found, key=lambda p: int(p.name.removeprefix("fold_")))

    def saved_config(self) -> dict:
        """The ``config.json`` of the run (its settings, seed, folds hash, data fingerprint, label names)."""
        return json.loads(self.config_file.read_text())

    def is_finished(self) -> bool:
        """Whether the combined files of a finished run exist."""
        return (self.path / "metrics.csv").exists()


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
            old = same_source(json.loads(self.config_file.read_text()), self.config, study.path)
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
            write_atomic(self._fold_file(k, "_history.csv"), lambda p: write_table(history.assign(fold=k), p))
        write_atomic(self._fold_file(k, ".csv"), lambda p: write_table(table, p))
        metrics = {"fold": k, **fold_metrics(gold, pred, self.data.num_labels), **(extra or {})}
        # the .json marks the fold as done, so it is written last
        write_atomic(self._fold_file(k, ".json"), lambda p: p.write_text(json.dumps(metrics, indent=2, default=float)))
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


def saved_model_label(model_dir: str | Path) -> str:
    """A short name for a saved model, for file names: ``<run>`` for a final model, ``<run>_fold_<k>`` for a fold's,
    ``<run>_folds`` for a run folder (its fold ensemble).

    Args:
        model_dir: a saved model folder (``final``, ``fold_models/fold_<k>``, a run folder, or any other folder).
    """
    path = Path(model_dir).resolve()
    if (path / "fold_models").is_dir():
        return f"{path.name}_folds"
    if path.name == "final":
        return path.parent.name
    if path.parent.name == "fold_models":
        return f"{path.parents[1].name}_{path.name}"
    return path.name


def run_of_saved_model(model_dir: str | Path) -> Path:
    """The run folder (``models/<run>``) that holds a saved model; any other folder is returned as it is.

    Args:
        model_dir: a saved model folder (``<run>/final`` or ``<run>/fold_models/fold_<k>``).
    """
    path = Path(model_dir)
    if path.name == "final":
        return path.parent
    if path.parent.name == "fold_models":
        return path.parents[1]
    return path


def _is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "folds").is_dir()


def done_marker(model_dir: str | Path) -> Path | None:
    """The file whose presence marks a saved model as completely written, by where the model lies.

    ``<run>/final`` → its ``training.json``; ``<run>/fold_models/fold_<k>`` → the fold's results
    ``<run>/folds/fold_<k>.json`` (written after the fold model); ``<study>/encoders/<name>`` (a TAPT encoder)
    → its ``tapt.json``; None for a model folder saved anywhere else (nothing marks it; its files are checked).

    Args:
        model_dir: a model folder.
    """
    path = Path(model_dir)
    if path.name == "final" and _is_run_folder(path.parent):
        return path / FINAL_DONE
    if path.parent.name == "fold_models" and path.name.removeprefix("fold_").isdigit():
        return RunFolder(path.parents[1])._fold_file(int(path.name.removeprefix("fold_")), ".json")
    if path.parent.name == "encoders" and path.name != TINY_RANDOM:
        return path / TAPT_DONE
    return None


def unfinished_model(model_dir: str | Path) -> str | None:
    """Why ``model_dir`` is not a completely saved model, with what to do; None when it is one.

    The one test of "finished" for every lookup of a saved model (final and fold models, self-training teachers,
    TAPT encoders): the folder has a ``config.json`` and its :func:`done_marker`. A model whose save was
    interrupted (weights cut short, no marker) is never taken for a finished one.

    Args:
        model_dir: a model folder.
    """
    path = Path(model_dir)
    if not path.is_dir():
        return f"{path} does not exist" + (" (it is a file)" if path.exists() else "")
    marker = done_marker(path)
    if not (path / "config.json").exists():
        if marker is None:
            return f"{path} holds no config.json: it is not a saved model. Pass the folder that save_pretrained() wrote"
        return f"{path} holds no config.json: the model was not saved there (yet)"
    if marker is None or marker.exists():
        return None
    what = {FINAL_DONE: "final model", TAPT_DONE: "TAPT encoder"}.get(marker.name, f"model of {path.name}")
    redo = {
        FINAL_DONE: "rerun 03_bert_cv with the same run_name: it trains the final model again",
        TAPT_DONE: "rerun the TAPT step (06_unlabelled) with the same settings: it resumes and saves it again",
    }.get(marker.name, f"rerun 03_bert_cv with the same run_name: it trains {path.name} again")
    return (
        f"{path} is not a completely saved {what}: {marker} is missing, and it is written last, when the save is "
        f"complete. Its training or saving was interrupted (or is still running); {redo}"
    )


def finished_model(model_dir: str | Path) -> Path:
    """``model_dir`` when it holds a completely saved model (:func:`unfinished_model`); else an error saying why.

    Args:
        model_dir: a model folder.

    Raises:
        ModelNotAvailableError: the folder is missing, not a saved model, or its save did not finish.
    """
    reason = unfinished_model(model_dir)
    if reason:
        raise ModelNotAvailableError(reason + ".")
    return Path(model_dir)


def read_folds(path: str | Path, folds: Iterable[int]) -> ModelResults:
    """The per-fold files of the given (finished) folds of one model folder, combined.

    Args:
        path: the model folder.
        folds: the folds to read.
    """
    run, folds = RunFolder(path), list(folds)
    predictions = (
        pd.concat([read_machine_table(run._fold_file(k, ".csv")) for k in folds])
        .sort_values("index")
        .reset_index(drop=True)
    )
    metrics = pd.DataFrame([json.loads(run._fold_file(k, ".json").read_text()) for k in folds])
    histories = [read_machine_table(p) for k in folds if (p := run._fold_file(k, "_history.csv")).exists()]
    history = pd.concat(histories, ignore_index=True) if histories else None
    return ModelResults(run.name, run.saved_config(), predictions, metrics, history)


def fold_hash(folds: np.ndarray) -> str:
    """A short hash of a fold assignment, stored with every run to tie it to its folds.

    Args:
        folds: fold id per text.
    """
    return hashlib.sha256(np.asarray(folds, dtype=np.int64).tobytes()).hexdigest()[:16]


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
