"""Self-training with pseudo-labels, inside the cross-validation: for fold k the teacher is fold k's model.

For fold k, the teacher run's fold-k model (trained without fold k's test texts) labels the unlabelled pool
(its distinct texts that are not labelled texts: a labelled test text never comes back as a pseudo-labelled
training text); the confidently labelled pool texts join fold k's training texts, and a fresh student is
trained on them and tested on fold k. Nothing of fold k's test texts reaches its own pseudo-labels, and the
teacher's final all-data model is used only for the student's final model, never inside the CV.

Which pool texts join (``pseudo_rule``), by the teacher's calibrated probabilities:

- ``"per_class"``: for each class, the most confident ``pseudo_share`` of the pool texts the teacher assigns to
  it, so that rare classes are not crowded out by the confident majority class;
- ``"threshold"``: every text whose top probability is at least ``pseudo_threshold``.

A fine-tuning run becomes self-training by naming its teacher (``FineTuneConfig.teacher``, a run of the same
study and folds saved with ``save_fold_models=True``); :class:`nblib.bert_cv.FineTuneJob` does the rest. The pseudo-labels
of every fold are written to ``<run>/pseudo_labels/fold_<k>.csv`` (``final.csv`` for the final model).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from transformers import PreTrainedTokenizerBase

from .bert import Encoded
from .files import write_atomic
from .folds import fold_hash
from .layout import RunFolder, unfinished_model
from .predict import load_model, predict_texts
from .settings import setting
from .sheets import DataError, read_machine_table, write_table
from .study import Study

log = logging.getLogger(__name__)
PseudoRule = Literal["per_class", "threshold"]
PSEUDO_RULES = ("per_class", "threshold")


@dataclass
class PseudoLabelling:
    """Which pool texts the teacher's pseudo-labels add (06's parameters; used when a run has a ``teacher``)."""

    pseudo_rule: PseudoRule = setting(
        "per_class", "per_class: top share per predicted class; threshold: confidence cut"
    )
    pseudo_share: float = setting(
        0.5, "per_class: share of each class's pool texts kept, most confident first", gt=0, le=1
    )
    pseudo_threshold: float = setting(0.9, "threshold: the least calibrated confidence kept", ge=0, le=1)

    def check(self) -> None:
        """A clear error for a rule or number out of range."""
        if self.pseudo_rule not in PSEUDO_RULES:
            raise ValueError(f"pseudo_rule={self.pseudo_rule!r}: choose one of {PSEUDO_RULES}.")
        if not 0 < self.pseudo_share <= 1:
            raise ValueError(f"pseudo_share={self.pseudo_share}: a share of each class's pool texts, in (0, 1].")
        if not 0 <= self.pseudo_threshold <= 1:
            raise ValueError(f"pseudo_threshold={self.pseudo_threshold}: a probability, in [0, 1].")


def select(probs: np.ndarray, settings: PseudoLabelling) -> np.ndarray:
    """Which pool texts get a pseudo-label (their label is the teacher's most probable class).

    Args:
        probs: the teacher's calibrated probabilities, one row per pool text.
        settings: the rule and its number.

    Returns:
        A boolean mask over the pool texts.
    """
    settings.check()
    confidence, label = probs.max(axis=1), probs.argmax(axis=1)
    if settings.pseudo_rule == "threshold":
        return confidence >= settings.pseudo_threshold
    chosen = np.zeros(len(probs), dtype=bool)
    for c in np.unique(label):
        members = np.flatnonzero(label == c)
        keep = int(np.floor(settings.pseudo_share * len(members)))
        chosen[members[np.argsort(-confidence[members], kind="stable")[:keep]]] = True
    return chosen


def check_teacher(teacher: RunFolder, folds: np.ndarray) -> None:
    """A clear error unless ``teacher`` is a run of this study on these folds.

    Args:
        teacher: the teacher run's folder.
        folds: the study's folds.
    """
    if not teacher.config_file.exists():
        raise DataError(
            f"Teacher run '{teacher.name}' not found in {teacher.path.parent}: run 03_bert_cv first (its run_name), "
            f"with save_fold_models=True."
        )
    if teacher.saved_config().get("folds_sha") != fold_hash(folds):
        raise DataError(f"Teacher run '{teacher.name}' was run on other folds than this study's.")


def teacher_model(teacher: RunFolder, k: int | None) -> Path:
    """The teacher's model for fold ``k`` (None: its final model, for the student's final model); a clear error
    when it was not saved, or its fold (or final model) is not finished.

    Args:
        teacher: the teacher run's folder.
        k: the fold, or None.
    """
    model = teacher.final_dir if k is None else teacher.fold_model_dir(k)
    why = unfinished_model(model)
    if why is not None:
        if k is None:
            raise DataError(
                f"Teacher run '{teacher.name}' has no (finished) final model to label the pool for the student's final "
                f"model: set train_final=False, or train the teacher with train_final=True ({why})."
            )
        raise DataError(
            f"Teacher run '{teacher.name}' has no saved model for fold {k} (or its save did not finish): the fold-k "
            f"model labels the pool for fold k. Run that fold of the teacher first, with save_fold_models=True ({why})."
        )
    return model


def pseudo_labels(
    model_dir: Path,
    pool: pd.DataFrame,
    settings: PseudoLabelling,
    max_len: int,
    truncation: str,
    device: str,
) -> pd.DataFrame:
    """The teacher's labels of the pool texts, and which of them join the student's training texts.

    Args:
        model_dir: the teacher's model (fold k's for fold k).
        pool: the pool texts (``text``, ``row``).
        settings: the selection rule.
        max_len: tokens per text.
        truncation: what a cut text keeps.
        device: "auto", "cpu" or "cuda".

    Returns:
        Columns ``row``, ``text``, ``label`` (id), ``confidence``, ``chosen``, one row per pool text.
    """
    model, tokenizer = load_model(model_dir)
    pred = predict_texts(model, tokenizer, pool["text"].tolist(), max_len=max_len, device=device, truncation=truncation)
    probs = pred.filter(like="prob_").to_numpy(dtype=float)
    out = pd.DataFrame({"row": pool["row"].to_numpy(), "text": pool["text"].to_numpy()})
    out["label"], out["confidence"] = probs.argmax(axis=1), probs.max(axis=1)
    out["chosen"] = select(probs, settings)
    out["teacher"] = str(model_dir)
    return out


def load_or_make(
    path: Path, teacher_model: Path, pool: pd.DataFrame, settings: PseudoLabelling, **predict_kw: object
) -> pd.DataFrame:
    """The pseudo-labels saved at ``path``, or the teacher's, computed and saved there (atomically).

    Under several processes, the main one computes and writes and the others wait, then read the same file: every
    process trains on the same texts.

    Args:
        path: ``<run>/pseudo_labels/<fold>.csv``.
        teacher_model: the teacher's model for this fold.
        pool: the pool texts.
        settings: the selection rule.
        **predict_kw: ``max_len``, ``truncation``, ``device`` (see :func:`pseudo_labels`).
    """
    state = PartialState()
    table = _saved(path, pool) if state.is_main_process else None
    if state.is_main_process and table is None:
        table = pseudo_labels(teacher_model, pool, settings, **predict_kw)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda p: write_table(table, p))
        chosen = table[table["chosen"]]
        log.info(
            "%s: %d of %d pool texts pseudo-labelled by %s (per class %s)",
            path.stem,
            len(chosen),
            len(table),
            teacher_model,
            chosen["label"].value_counts().sort_index().to_dict(),
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the teacher's memory, before the student (or a fold worker) needs it
    state.wait_for_everyone()
    return table if table is not None else _read(path)


class Teacher:
    """A self-training run's teacher: its run, the pool its models label, and the pseudo-labelled training texts.

    Args:
        study: the student's study (the teacher must be a run of it, on its folds).
        name: the teacher run's folder name.
        settings: which pool texts the pseudo-labels add.
    """

    def __init__(self, study: Study, name: str, settings: PseudoLabelling) -> None:
        settings.check()
        self.settings = settings
        self.pool = study.unseen_pool(required_by="self-training").texts
        self.run = study.run_folder(name)
        check_teacher(self.run, study.folds)
        self.pool_encoded: Encoded | None = None

    @property
    def pool_sha(self) -> str:
        """A fingerprint of the pool texts, part of the student run's identity."""
        return hashlib.sha256("\n".join(self.pool["text"]).encode()).hexdigest()[:16]

    def encode_pool(self, tokenizer: PreTrainedTokenizerBase, max_len: int, truncation: str) -> None:
        """Tokenize the pool texts once, as the student reads them (and the teacher's models are asked with them).

        Args:
            tokenizer: the student's tokenizer.
            max_len: tokens per text.
            truncation: what a cut text keeps.
        """
        self.max_len, self.truncation = max_len, truncation
        self.pool_encoded = Encoded(tokenizer, self.pool["text"], max_len, truncation=truncation)

    def pseudo_labelled(self, k: int | None, folder: Path, device: str) -> Encoded:
        """The pool texts the teacher's fold-k model labels confidently, with those labels, as training texts for
        fold ``k`` (None: the teacher's final model, for the final model); saved in ``folder`` (:func:`load_or_make`).

        Args:
            k: the fold (None: the final model).
            folder: the student run's ``pseudo_labels/`` folder.
            device: where the teacher predicts ("cpu" or "cuda").
        """
        if self.pool_encoded is None:
            raise RuntimeError("Teacher.encode_pool must be called before pseudo_labelled.")
        table = load_or_make(
            folder / f"{'final' if k is None else f'fold_{k}'}.csv",
            teacher_model(self.run, k),
            self.pool,
            self.settings,
            max_len=self.max_len,
            truncation=self.truncation,
            device=device,
        )
        chosen = np.flatnonzero(table["chosen"].to_numpy(dtype=bool))
        return self.pool_encoded.subset(chosen).with_labels(table["label"].to_numpy()[chosen])


def _read(path: Path) -> pd.DataFrame:
    return read_machine_table(path, text_columns=("text", "teacher"))


def _saved(path: Path, pool: pd.DataFrame) -> pd.DataFrame | None:
    """The pseudo-labels at ``path`` when they are of exactly these pool texts (else None: made again, and said)."""
    if not path.exists():
        return None
    table = _read(path)
    if len(table) == len(pool) and (table["text"].to_numpy() == pool["text"].to_numpy()).all():
        return table
    log.warning("%s was made for other pool texts: made again.", path)
    return None


def summary(run: RunFolder, label_names: list[str]) -> pd.DataFrame:
    """Pseudo-labels per fold and class of a self-training run: texts chosen and their mean confidence.

    Args:
        run: the student run's folder.
        label_names: the class names.
    """
    rows = []
    for f in sorted((run.path / "pseudo_labels").glob("*.csv")):
        t = _read(f)
        chosen = t[t["chosen"]]
        row = {
            "fold": f.stem,
            "pool texts": len(t),
            "chosen": len(chosen),
            "mean confidence": chosen["confidence"].mean(),
        }
        row |= {name: int((chosen["label"] == c).sum()) for c, name in enumerate(label_names)}
        rows.append(row)
    return pd.DataFrame(rows)
