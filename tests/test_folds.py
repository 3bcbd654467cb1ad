"""nblib.folds: stratified, reproducible, duplicates together, saved and checked; train/validation/test splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import balanced, sheet

from nblib import data as nbdata
from nblib import folds, layout
from nblib.data import DataError


def test_folds_are_stratified_and_reproducible(write_sheet):
    d = nbdata.load_labelled(write_sheet(balanced(10)))
    f1, f2 = folds.make_folds(d, 5, seed=1), folds.make_folds(d, 5, seed=1)
    assert (f1 == f2).all()
    assert pd.crosstab(f1, d.labels).to_numpy().tolist() == [[2, 2, 2]] * 5
    assert not (folds.make_folds(d, 5, seed=2) == f1).all()


def test_identical_texts_share_a_fold(write_sheet):
    df = balanced(10)
    df = pd.concat([df, df.iloc[[0, 0, 11, 25]]], ignore_index=True)
    d = nbdata.load_labelled(write_sheet(df))
    assigned = folds.make_folds(d, 5, seed=0)
    assert d.df.assign(fold=assigned).groupby("text")["fold"].nunique().max() == 1


def test_class_smaller_than_folds_is_an_error(write_sheet):
    df = pd.concat([balanced(10, (0, 1)), sheet(["少", "少", "很少"], [2, 2, 2])], ignore_index=True)
    d = nbdata.load_labelled(write_sheet(df))
    with pytest.raises(DataError, match=r"fewer distinct texts than folds \(5\): '2': 2"):
        folds.make_folds(d, 5)


def test_folds_saved_and_read_back(tmp_path, write_sheet):
    d = nbdata.load_labelled(write_sheet(balanced(10)))
    path = layout.folds_file(layout.study_path(tmp_path / "results", d), 5, 3)
    assigned = folds.load_or_make_folds(d, path, 5, 3)
    assert path.exists() and path.with_suffix(".json").exists()
    saved = pd.read_csv(path)
    assert saved.columns.tolist() == ["row", "label", "text", "fold"] and (saved["fold"] == assigned).all()
    assert path.parent.name.startswith("sheet-") and path.name == "folds_k5_seed3.csv"
    assert (folds.load_or_make_folds(d, path, 5, 3) == assigned).all()


def test_folds_of_other_data_are_refused(tmp_path, write_sheet):
    d1 = nbdata.load_labelled(write_sheet(balanced(10)))
    folds.save_folds(tmp_path / "f.csv", d1, folds.make_folds(d1, 5), 5, 42)
    d2 = nbdata.load_labelled(write_sheet(balanced(10, (0, 1, 3)), "other.xlsx"))
    with pytest.raises(DataError, match="made for different data"):
        folds.load_folds(tmp_path / "f.csv", d2)
    assert layout.study_path("r", d1) != layout.study_path("r", d2)


def test_validation_split_is_disjoint_from_test(tiny_data):
    d = tiny_data()
    assigned = folds.make_folds(d, 3, seed=0)
    for k in range(3):
        s = folds.split_fold(d, assigned, k, val_fraction=0.2, seed=0)
        assert set(s.train).isdisjoint(s.val) and set(s.train).isdisjoint(s.test) and set(s.val).isdisjoint(s.test)
        assert sorted(np.concatenate([s.train, s.val, s.test])) == list(range(len(d.df)))
        assert set(s.test) == set(np.flatnonzero(assigned == k))
        assert set(d.labels[s.val]) == {0, 1, 2}
        assert s.seed == k and abs(len(s.val) - 0.2 * (len(s.train) + len(s.val))) <= 3
