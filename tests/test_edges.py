"""Edges of core rules that small mistakes would move unseen: orientation, ties, boundaries, the exact widening
factor, the median of an odd number of folds, per-fold validation seeds (issue 22's surviving mutations)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nblib import folds, metrics, shares
from nblib.data import DataError
from nblib.results import ModelResults


def test_confusion_rows_are_gold_and_columns_predicted():
    cm = metrics.confusion(gold=[0, 0, 0, 1], pred=[1, 1, 0, 1], num_labels=3)
    assert cm.tolist() == [[1, 2, 0], [0, 1, 0], [0, 0, 0]]  # gold 0 predicted as 1 twice: row 0, column 1


def test_an_equal_validation_loss_does_not_replace_the_kept_epoch():
    best = {"val_loss": 0.5, "val_macro_f1": 0.7}
    assert not metrics.improves({"val_loss": 0.5, "val_macro_f1": 0.9}, best, "val_loss")
    assert metrics.improves({"val_loss": 0.4999, "val_macro_f1": 0.1}, best, "val_loss")
    # on macro-F1 a tie goes to the lower loss, and a complete tie keeps the earlier epoch
    assert metrics.improves({"val_loss": 0.4, "val_macro_f1": 0.7}, best, "val_macro_f1")
    assert not metrics.improves(dict(best), best, "val_macro_f1")


def test_the_final_models_temperature_is_the_median_of_an_odd_number_of_folds():
    fold = np.repeat([0, 1, 2], 2)
    probs = np.tile([[0.7, 0.3], [0.4, 0.6]], (3, 1))
    pred = pd.DataFrame({"index": range(6), "fold": fold, "gold": [0, 1] * 3, "pred": probs.argmax(1)})
    pred[["prob_0", "prob_1"]] = probs
    res = ModelResults("m", {}, pred, pd.DataFrame({"fold": [0, 1, 2], "temperature": [0.5, 1.0, 4.0]}), None)
    assert res.pooled_calibration().temperature == pytest.approx(1.0)  # the mean would be 1.83


def test_bootstrap_intervals_are_widened_by_exactly_sqrt_g_over_g_minus_1():
    rng = np.random.default_rng(0)
    gold = np.repeat([0, 1], 60)
    probs = np.column_stack([np.where(gold == 0, 0.8, 0.3), np.where(gold == 0, 0.2, 0.7)])
    probs += rng.uniform(-0.05, 0.05, (len(gold), 1)) * [1, -1]
    pool = probs[rng.choice(len(gold), 40)]
    for g in (2, 3, 4):
        boot = shares.bootstrap(probs, gold, pool, None, ["ACC"], 50, 0, np.arange(len(gold)) % g)
        assert boot.spread == pytest.approx(np.sqrt(g / (g - 1)))
        low, high = boot.interval("", "ACC", 0.9)
        q_low, q_high = np.quantile(boot.boot[""][:, 0], [0.05, 0.95], axis=0)
        point = boot.point[""][0]
        assert low == pytest.approx(point + np.sqrt(g / (g - 1)) * (q_low - point))
        assert high == pytest.approx(point + np.sqrt(g / (g - 1)) * (q_high - point))
    assert shares.bootstrap(probs, gold, pool, None, ["ACC"], 20, 0, None).spread == 1.0  # texts only: no folds


def test_a_group_of_exactly_min_group_texts_is_not_small():
    rng = np.random.default_rng(1)
    gold = np.repeat([0, 1], 40)
    probs = np.column_stack([np.where(gold == 0, 0.8, 0.3), np.where(gold == 0, 0.2, 0.7)])
    pool = probs[rng.choice(len(gold), 9)]
    groups = ["a"] * 5 + ["b"] * 4
    table = shares.shares(probs, gold, pool, ["x", "y"], groups, ["CC"], n_boot=20, min_group=5)
    small = table.groupby("group")["small"].first()
    assert not small["a"] and small["b"]


def test_a_class_with_exactly_as_many_texts_as_folds_can_be_split(tiny_data):
    data = tiny_data(4)  # 4 distinct texts per class
    assert sorted(set(folds.make_folds(data, n_splits=4, seed=0))) == [0, 1, 2, 3]
    with pytest.raises(DataError, match="fewer distinct texts than folds"):
        folds.make_folds(data, n_splits=5, seed=0)


def test_each_folds_validation_part_is_drawn_with_its_own_seed(tiny_data):
    data = tiny_data(20)
    assignment = folds.make_folds(data, n_splits=3, seed=0)
    for k in range(3):
        split = folds.split_fold(data, assignment, k, val_fraction=0.2, seed=7)
        assert split.seed == 7 + k
        _, expected = folds.validation_split(np.flatnonzero(assignment != k), data, 0.2, 7 + k)
        assert sorted(split.val) == sorted(expected)
    # with the study's seed itself, some fold would get another validation part
    assert any(
        sorted(folds.split_fold(data, assignment, k, 0.2, 7).val)
        != sorted(folds.validation_split(np.flatnonzero(assignment != k), data, 0.2, 7)[1])
        for k in range(3)
    )


def test_a_fold_the_study_does_not_have_is_refused_before_any_training(tiny_study):
    from nblib import cv

    study = tiny_study(n_folds=3)
    run = study.open_run("m", {"model": "m"})
    with pytest.raises(DataError, match=r"fold\(s\) \[3\] out of range: this run has folds 0 to 2"):
        cv.run_folds(study, run, lambda split: pytest.fail("trained"), 0.2, which=[0, 3])
    assert run.pending_folds() == [0, 1, 2]  # nothing was saved
