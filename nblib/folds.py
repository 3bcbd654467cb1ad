"""Cross-validation folds: made once per study, saved next to its results, and split into train/validation/test.

Folds are stratified by label with a fixed seed, and identical texts always share a fold (a duplicate in
both train and test would inflate every score). Inside each fold's training part a validation part is set
aside for model selection; the test fold is only predicted, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .data import DataError, LabelledData
from .files import writing
from .sheets import read_machine_table, write_table

log = logging.getLogger(__name__)


def fold_hash(folds: np.ndarray) -> str:
    """A short hash of a fold assignment, stored with every run to tie it to its folds.

    Args:
        folds: fold id per text.
    """
    return hashlib.sha256(np.asarray(folds, dtype=np.int64).tobytes()).hexdigest()[:16]


def make_folds(data: LabelledData, n_splits: int = 5, seed: int = 42) -> np.ndarray:
    """Stratified k-fold assignment in which identical texts always share a fold.

    Args:
        data: the labelled texts.
        n_splits: number of folds.
        seed: shuffling seed of the splitter.

    Returns:
        The fold id (0..n_splits-1) of every row of ``data.df``.
    """
    groups = data.df["text"].to_numpy()
    per_class = data.df.drop_duplicates("text")["label"].value_counts()
    small = per_class[per_class < n_splits]
    if len(small):
        detail = ", ".join(f"{data.label_names[i]!r}: {n}" for i, n in small.items())
        raise DataError(
            f"Class(es) with fewer distinct texts than folds ({n_splits}): {detail}. "
            f"Use fewer folds (n_folds), add examples, or merge these classes in the sheet."
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.empty(len(groups), dtype=int)
    for k, (_, test) in enumerate(splitter.split(groups, data.labels, groups)):
        folds[test] = k
    return folds


def save_folds(path: str | Path, data: LabelledData, folds: np.ndarray, n_splits: int, seed: int) -> None:
    """Write the fold of every text (sheet row, label, text, fold) and a ``.json`` of metadata beside it.

    The two files are one pair: the ``.json`` records what the folds were made from and a hash of the fold
    column (``folds_sha``), which :func:`load_folds` checks.

    Args:
        path: the ``.csv`` to write.
        data: the labelled texts the folds belong to.
        folds: fold id per text, from :func:`make_folds`.
        n_splits: number of folds (recorded).
        seed: splitter seed (recorded).
    """
    path = Path(path)
    table = data.df[["row", "label", "text"]].assign(fold=folds)
    meta = {
        "n_splits": n_splits,
        "seed": seed,
        "data": data.source,
        "fingerprint": data.fingerprint(),
        "n": len(table),
        "folds_sha": fold_hash(folds),
    }
    with writing():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_table(table, path)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))  # last: the pair is whole


def _remake_advice(path: Path) -> str:
    return (
        f"Delete both {path.name} and {path.with_suffix('.json').name} (in {path.parent}) to make the folds "
        f"again: for the same data, n_folds and seed they come out the same, and finished runs stay valid."
    )


def load_folds(path: str | Path, data: LabelledData) -> np.ndarray:
    """Read saved folds and check that they belong to exactly this data and were not changed since.

    Args:
        path: a ``.csv`` written by :func:`save_folds`.
        data: the labelled texts they must belong to.

    Returns:
        The fold id of every row of ``data.df``.

    Raises:
        DataError: the ``.json`` of the pair is missing or damaged, the ``.csv`` cannot be read or its fold
            column was edited, or the folds belong to other data; the message says how to remake them.
    """
    path = Path(path)
    meta_file = path.with_suffix(".json")
    try:
        meta = json.loads(meta_file.read_text())
        n_splits, made_for, n = int(meta["n_splits"]), meta["data"], meta["n"]
    except FileNotFoundError:
        raise DataError(
            f"The folds file {path} has lost its partner {meta_file.name}, which records what the folds were "
            f"made from (deleted?). {_remake_advice(path)}"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{meta_file} is damaged ({type(e).__name__}: {e}). {_remake_advice(path)}") from None
    try:
        table = read_machine_table(path)
        texts, assigned = table["text"].tolist(), table["fold"].to_numpy()
    except (DataError, OSError, KeyError) as e:
        raise DataError(f"{path} cannot be read as a folds file ({e}). {_remake_advice(path)}") from None
    if meta["fingerprint"] != data.fingerprint() or texts != data.texts:
        raise DataError(
            f"The folds in {path} were made for different data ({made_for}, {n} texts). "
            f"Delete the file and {meta_file.name} to make new folds."
        )
    valid = assigned.dtype.kind in "iu" and set(assigned.tolist()) == set(range(n_splits))
    if not valid or meta.get("folds_sha", fold_hash(assigned)) != fold_hash(assigned):
        raise DataError(
            f"The fold column of {path} was changed after the folds were made: it no longer matches "
            f"{meta_file.name} ({n_splits} folds, numbered 0 to {n_splits - 1}). Folds are not edited by hand: runs "
            f"on other folds would not be comparable (to use other folds, change n_folds or seed). Put the file "
            f"back as it was, or: {_remake_advice(path)}"
        )
    return assigned


def load_or_make_folds(data: LabelledData, path: str | Path, n_splits: int = 5, seed: int = 42) -> np.ndarray:
    """The folds at ``path`` if saved there before, else made with :func:`make_folds` and saved there.

    Args:
        data: the labelled texts.
        path: the folds file of the study (``nblib.layout.folds_file``).
        n_splits: number of folds.
        seed: splitter seed.

    Returns:
        The fold id of every row of ``data.df``.
    """
    path = Path(path)
    if path.exists():
        log.info("Folds read from %s.", path)
        return load_folds(path, data)
    if path.with_suffix(".json").exists():
        log.warning("%s is missing: the folds are made again beside %s.", path, path.with_suffix(".json").name)
    folds = make_folds(data, n_splits, seed)
    save_folds(path, data, folds, n_splits, seed)
    log.info("Folds made (%d-fold, seed %d) and saved to %s.", n_splits, seed, path)
    return folds


@dataclass
class FoldSplit:
    """Indices into ``LabelledData.df`` for one fold: fit on ``train``, select on ``val``, score ``test`` once."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int


def validation_split(
    train: np.ndarray, data: LabelledData, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into a fitting and a validation part, stratified, identical texts kept together.

    The validation part is for model selection only; it never touches the test fold.

    Args:
        train: indices into ``data.df`` of the training folds.
        data: the labelled texts.
        fraction: share of ``train`` set aside (tiny classes get a larger share, so each is present).
        seed: splitter seed.

    Returns:
        ``(fit, val)`` indices into ``data.df``.
    """
    counts = np.bincount(data.labels[train])
    n_splits = max(2, min(round(1 / fraction), counts[counts > 0].min()))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fit, val = next(splitter.split(train, data.labels[train], data.df["text"].to_numpy()[train]))
    return train[fit], train[val]


def split_fold(data: LabelledData, folds: np.ndarray, k: int, val_fraction: float, seed: int) -> FoldSplit:
    """The train/validation/test indices of fold ``k``.

    Args:
        data: the labelled texts.
        folds: fold id per text.
        k: the test fold.
        val_fraction: share of the training folds used for validation.
        seed: the study seed; fold ``k`` uses ``seed + k`` for its split and its training.

    Returns:
        The fold's :class:`FoldSplit`.
    """
    test = np.flatnonzero(folds == k)
    train, val = validation_split(np.flatnonzero(folds != k), data, val_fraction, seed + k)
    return FoldSplit(k, train, val, test, seed + k)
