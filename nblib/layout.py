"""Where every file of a study lives, and which file marks a saved model complete: known here and nowhere else.

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
            run.lock               the process (pid, host) writing this folder now (nblib.run_lock)

``index`` is the position of the text in ``LabelledData.df``, ``row`` its row in the sheet, ``gold``
and ``pred`` label ids (``LabelledData.label_names`` gives the names). Probabilities sum to one.

Paths inside the study folder (a run's encoder: the tiny random BERT, a TAPT encoder) are stored relative to it
(:func:`stored_path`), so that a results folder can move to another disk or machine; a folder that cannot be
written is one :class:`nblib.files.ResultsFolderError`.

A saved model (a fold's, the final one, a TAPT encoder) is complete when its *done marker* exists
(:func:`done_marker`), written last; :func:`unfinished_model` is the one test of that for every lookup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .files import writing

if TYPE_CHECKING:
    from .data import LabelledData


class ModelNotAvailableError(RuntimeError):
    """A model cannot be used: not a local folder nor downloadable from here, or its folder is half-written or
    damaged (also known as ``nblib.bert.ModelNotAvailableError``)."""


TINY_RANDOM = "tiny-random"  # the smoke-test encoder's folder under <study>/encoders (nblib.bert.build_tiny_encoder)
FINAL_DONE = "training.json"  # written last into <run>/final by nblib.bert_cv: the final model is completely saved
TAPT_DONE = "tapt.json"  # written last into <study>/encoders/<name> by nblib.tapt: the adapted encoder is saved


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
    relative model path reopened with the absolute one, or a run whose config holds an absolute path inside its
    study folder reopened after the folder moved.

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

    def fold_file(self, k: int, suffix: str) -> Path:
        """A file of fold ``k`` in ``folds/``: ``.csv`` (its out-of-fold predictions), ``.json`` (its metrics, the
        mark that it is done), ``_history.csv`` (its per-epoch curves).

        Args:
            k: the fold.
            suffix: which file.
        """
        return self.path / "folds" / f"fold_{k}{suffix}"

    def fold_done(self, k: int) -> bool:
        """Whether fold ``k`` has saved results.

        Args:
            k: the fold.
        """
        return self.fold_file(k, ".json").exists()

    def done_folds(self) -> list[int]:
        """The folds with saved results, in order."""
        return sorted(int(p.stem.removeprefix("fold_")) for p in (self.path / "folds").glob("fold_*.json"))

    def best_epochs(self) -> list[int]:
        """The epoch kept in each finished fold (neural models)."""
        return [int(json.loads(self.fold_file(k, ".json").read_text())["best_epoch"]) for k in self.done_folds()]

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
        return RunFolder(path.parents[1]).fold_file(int(path.name.removeprefix("fold_")), ".json")
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
