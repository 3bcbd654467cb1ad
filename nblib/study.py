"""The study: one labelled sheet, its folds and its results folder, opened the same way by every notebook.

study = open_study("../data/my_sheet.xlsx", text_col="评论", n_folds=5)
study.data, study.folds          # the checked sheet and the fold of every text
study.split(0, val_fraction=0.1) # fold 0's train / validation / test indices
study.runs()                     # every finished model on these folds, by name
study.comparison()               # their mean ± sd table (also written to comparison.csv)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from . import layout, notebook, results
from .data import LabelledData, load_labelled, load_unlabelled
from .folds import FoldSplit, fold_hash, load_or_make_folds, split_fold
from .layout import RunFolder
from .metrics import mean_std_table
from .results import ModelResults, ModelRun
from .settings import StudySettings
from .sheets import DataError, write_table

log = logging.getLogger(__name__)


@dataclass
class UnseenPool:
    """The pool texts a model may learn from: distinct, none of them a labelled text."""

    texts: pd.DataFrame  # columns text, row (the sheet row)
    repeats_labelled: int  # pool texts left out because they repeat a labelled text
    repeats_pool: int  # pool texts left out because they repeat an earlier pool text


@dataclass
class Study:
    """A loaded labelled sheet with its folds and its study folder (see :mod:`nblib.layout` for the layout)."""

    settings: StudySettings
    data: LabelledData
    folds: np.ndarray
    path: Path

    def __post_init__(self) -> None:
        notebook.attach(self.path)  # a notebook's log file goes into the study folder (no-op outside notebooks)

    @property
    def n_folds(self) -> int:
        return self.settings.n_folds

    def split(self, k: int, val_fraction: float) -> FoldSplit:
        """The train / validation / test indices of fold ``k`` (validation taken from the training folds).

        Args:
            k: the test fold.
            val_fraction: share of the training folds used for validation.
        """
        return split_fold(self.data, self.folds, k, val_fraction, self.settings.seed)

    def check_folds(self, which: Sequence[int]) -> None:
        """Refuse fold numbers the study does not have (such a fold would test on no text and train on all).

        Args:
            which: fold numbers asked for.

        Raises:
            DataError: a fold outside 0 .. n_folds - 1; the message names it and the folds there are.
        """
        bad = [k for k in which if not 0 <= k < self.n_folds]
        if bad:
            raise DataError(f"fold(s) {bad} out of range: this run has folds 0 to {self.n_folds - 1}")

    @cached_property
    def pool(self) -> pd.DataFrame:
        """The unlabelled texts (columns ``text``, ``row``), empty when the study has no pool."""
        s = self.settings
        if not s.unlabelled_path:
            return pd.DataFrame({"text": pd.Series(dtype=str), "row": pd.Series(dtype=int)})
        return load_unlabelled(s.unlabelled_path, text_col=s.unlabelled_text_col)

    def unseen_pool(self, required_by: str | None = None) -> UnseenPool:
        """The pool's distinct texts that are not labelled texts (for TAPT and self-training), with the repeats
        counted (and logged once): a labelled text that comes back from the pool must not return as a
        pseudo-labelled training text of the fold that tests it.

        Args:
            required_by: what needs the pool (e.g. "self-training"): a missing or empty pool is then an error that
                says so; None: an empty result.
        """
        pool = self._unseen_pool
        if pool.texts.empty and required_by:
            self.require_pool(required_by, nonempty=True)
        return pool

    def require_pool(self, needed_by: str, alternative: str | None = None, nonempty: bool = False) -> None:
        """Stop with one message saying what to pass when the study names no unlabelled pool (``unlabelled_path``
        defaults to none: a study's own sheet never gets the demo's pool).

        Args:
            needed_by: what needs the pool, e.g. "06_unlabelled (TAPT and self-training)".
            alternative: a parameter that may name other texts instead (05's ``input_path``).
            nonempty: also stop when the pool has no usable text.

        Raises:
            DataError: no pool (or, with ``nonempty``, an empty one).
        """
        s = self.settings
        if s.unlabelled_path and not (nonempty and self._unseen_pool.texts.empty):
            return
        where = f"{s.unlabelled_path} has no texts to use" if s.unlabelled_path else "unlabelled_path is None"
        instead = f"Pass {alternative} (-p {alternative} my_texts.xlsx), or set" if alternative else "Set"
        raise DataError(
            f"{needed_by} needs unlabelled texts, but {where}. {instead} unlabelled_path (and unlabelled_text_col) "
            f"to a sheet of unlabelled comments: 'unlabelled_path: my_pool.xlsx' in the study file, or "
            f"-p unlabelled_path my_pool.xlsx."
        )

    @cached_property
    def _unseen_pool(self) -> UnseenPool:
        pool = self.pool
        repeats_labelled = pool["text"].isin(set(self.data.texts)).to_numpy()
        repeats_pool = pool["text"].duplicated().to_numpy() & ~repeats_labelled
        kept = ~repeats_labelled & ~repeats_pool
        if not kept.all():
            log.warning(
                "Pool: %d text(s) repeat labelled texts and %d repeat earlier pool texts; both left out "
                "(%d of %d pool texts kept).",
                repeats_labelled.sum(),
                repeats_pool.sum(),
                kept.sum(),
                len(pool),
            )
        return UnseenPool(pool[kept].reset_index(drop=True), int(repeats_labelled.sum()), int(repeats_pool.sum()))

    def folder(self, kind: Literal["encoders", "analysis", "predictions"]) -> Path:
        """A study-level folder (created): built encoders, 04's analysis tables, 05's labelled sheets.

        Args:
            kind: which folder.
        """
        return layout.study_subfolder(self.path, kind)

    def open_run(self, name: str, config: dict, write: bool = True) -> ModelRun:
        """Open (create or resume) the model folder ``models/<name>``.

        Args:
            name: the run's folder name.
            config: the settings that decide its results (a resumed run must have the same).
            write: False for processes of a distributed run that do not save.
        """
        return ModelRun(self, name, config, write)

    def run_folder(self, name: str) -> RunFolder:
        """The files of model folder ``models/<name>``, finished or not.

        Args:
            name: the run's folder name.
        """
        return RunFolder(self.path / "models" / name)

    def runs(self) -> dict[str, ModelResults]:
        """Every finished model of this study on these folds, by name."""
        sha = fold_hash(self.folds)
        finished = [RunFolder(p) for p in layout.run_paths(self.path)]
        return {
            run.name: results.load_run(run.path)
            for run in finished
            if run.is_finished() and run.saved_config().get("folds_sha") == sha
        }

    def run(self, name: str) -> ModelResults:
        """The finished model ``name``; an error that lists the finished ones when it is not.

        Args:
            name: the run's folder name.
        """
        runs = self.runs()
        if name not in runs:
            raise KeyError(
                f"No finished model '{name}' in {self.path / 'models'}; finished: {sorted(runs)}. "
                f"Run 02_baselines / 03_bert_cv first, or check the name."
            )
        return runs[name]

    def unfinished_runs(self) -> dict[str, str]:
        """Model folders of this study that :meth:`runs` leaves out, with the reason for each."""
        sha, out = fold_hash(self.folds), {}
        for path in layout.run_paths(self.path):
            run = RunFolder(path)
            if not run.is_finished():
                out[run.name] = (
                    f"only folds {run.done_folds()} of {self.n_folds} are done; rerun its notebook to finish it"
                )
            elif run.saved_config().get("folds_sha") != sha:
                out[run.name] = "it was run on other folds"
        return out

    def final_model(self, name: str | None = None) -> Path:
        """The folder of the model trained on all labelled texts by a BERT run of this study; only a completely
        saved one (:func:`nblib.layout.unfinished_model`).

        Args:
            name: the run's folder name (None: the newest run that has a finished final model).

        Raises:
            FileNotFoundError: no run (of that name) has a final model.
            layout.ModelNotAvailableError: the named run's final model is not completely saved.
        """
        finals = [RunFolder(p).final_dir for p in layout.run_paths(self.path) if name in (None, p.name)]
        finals = [f for f in finals if f.exists()]
        unfinished = {f: layout.unfinished_model(f) for f in finals}
        done = sorted((f for f, why in unfinished.items() if why is None), key=lambda f: f.stat().st_mtime)
        broken = [why for why in unfinished.values() if why is not None]
        if name is not None and broken:
            raise layout.ModelNotAvailableError(broken[0] + ".")
        if not done:
            raise FileNotFoundError(
                f"No final model {'of ' + name + ' ' if name else ''}under {self.path / 'models'}; "
                f"run 03_bert_cv with train_final=True first, or pass model_dir."
                + "".join(f" ({why})" for why in broken)
            )
        for why in broken:
            log.warning("Left out: %s.", why)
        return done[-1]

    def comparison(self, runs: dict[str, ModelResults] | None = None) -> pd.DataFrame:
        """Mean ± sd over folds of every finished model, best first; also written to ``comparison.csv``.

        Args:
            runs: the finished models, if already read with :meth:`runs` (default: read them).
        """
        runs = self.runs() if runs is None else runs
        table = mean_std_table({name: res.metrics for name, res in runs.items()})
        write_table(table.reset_index(), layout.comparison_file(self.path))
        return table


def open_study(data_path: str | Path | StudySettings, **settings: Any) -> Study:
    """Load and check the labelled sheet, and read (or make and save) its folds.

    Args:
        data_path: the labelled sheet, or complete :class:`~nblib.settings.StudySettings`.
        **settings: the other :class:`~nblib.settings.StudySettings` fields (``text_col``, ``label_col``,
            ``sheet``, ``header_row``, ``encoding``, ``label_table``, ``unlabelled_path``, ``unlabelled_text_col``,
            ``extra_labelled_paths``, ``n_folds``, ``seed``, ``results_dir``); defaults as declared there.

    Returns:
        The :class:`Study`.
    """
    s = data_path if isinstance(data_path, StudySettings) else StudySettings(data_path=str(data_path), **settings)
    data = load_labelled(
        s.data_path,
        text_col=s.text_col,
        label_col=s.label_col,
        sheet=s.sheet,
        label_table=s.label_table,
        header_row=s.header_row,
        encoding=s.encoding,
        extra_labelled_paths=s.extra_labelled_paths,
    )
    path = layout.study_path(s.results_dir, data)
    folds = load_or_make_folds(data, layout.folds_file(path, s.n_folds, s.seed), s.n_folds, s.seed)
    return Study(s, data, folds, path)


def main(argv: list[str] | None = None) -> int:
    """``python -m nblib.study init my_sheet.xlsx [-o my_study.yaml]``: write a first study file for a sheet.

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).
    """
    from .study_file import init

    parser = argparse.ArgumentParser(prog="python -m nblib.study", description="Study files (see docs/study-file.md).")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("init", help="write a first study file from a labelled sheet")
    p.add_argument("sheet_path", type=Path, help="the labelled sheet (.xlsx, .csv, .tsv)")
    p.add_argument("-o", "--out", type=Path, help="the study file to write (default: <sheet>_study.yaml beside it)")
    p.add_argument("--sheet", help="the sheet of an .xlsx, by name (default: the first)")
    p.add_argument("--header-row", type=int, default=1, help="the row that holds the column names (default: 1)")
    args = parser.parse_args(argv)
    if args.header_row < 1:
        parser.error(f"--header-row {args.header_row}: rows are numbered from 1, as in Excel.")
    try:
        init(args.sheet_path, args.out, args.sheet, args.header_row)
    except (DataError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
