"""nblib.metrics and nblib.eda pinned by hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nblib import eda, metrics
from nblib.data import load_labelled


def test_per_class_scores_by_hand():
    # class a: predicted 3×, right 2× (precision 2/3); 4 gold a, 2 found (recall 1/2)
    gold = ["a", "a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "c", "a", "b", "c"]
    ids = {"a": 0, "b": 1, "c": 2}
    table = metrics.per_class_scores([ids[g] for g in gold], [ids[p] for p in pred], ["a", "b", "c"])
    assert table.index.tolist() == ["a", "b", "c"] and table.columns.tolist() == [
        "precision",
        "recall",
        "f1",
        "support",
    ]
    assert table.loc["a", "precision"] == pytest.approx(2 / 3) and table.loc["a", "recall"] == pytest.approx(1 / 2)
    assert table.loc["a", "f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert table.loc["b", "precision"] == pytest.approx(1 / 2) and table.loc["b", "recall"] == pytest.approx(1 / 2)
    assert table.loc["c", "precision"] == pytest.approx(1 / 2) and table.loc["c", "recall"] == 1.0
    assert table["support"].tolist() == [4, 2, 1]


def test_fold_metrics_by_hand():
    m = metrics.fold_metrics([0, 0, 0, 0, 1, 1, 2], [0, 0, 1, 2, 0, 1, 2], 4)  # class 3 never occurs
    assert m["accuracy"] == pytest.approx(4 / 7)
    f1 = [4 / 7, 1 / 2, 2 / 3, 0.0]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["weighted_f1"] == pytest.approx((4 * f1[0] + 2 * f1[1] + f1[2]) / 7)
    assert (m["precision_0"], m["recall_0"], m["support_0"]) == (pytest.approx(2 / 3), 0.5, 4)
    assert m["support_3"] == 0 and isinstance(m["support_0"], int)


def test_per_class_over_folds_averages_each_metric():
    per_fold = pd.DataFrame(
        {
            "precision_0": [1.0, 0.5],
            "recall_0": [0.2, 0.4],
            "f1_0": [0.3, 0.5],
            "precision_1": [0.0, 1.0],
            "recall_1": [1.0, 1.0],
            "f1_1": [0.0, 1.0],
        }
    )
    table = metrics.per_class_over_folds(per_fold, ["x", "y"])
    assert table.to_dict("index") == {
        "x": {"precision": 0.75, "recall": 0.3, "f1": 0.4},
        "y": {"precision": 0.5, "recall": 1.0, "f1": 0.5},
    }
    long = metrics.per_class_long({"m": per_fold}, ["x", "y"])
    assert long.columns.tolist() == ["class", "precision", "recall", "f1", "model"] and long["model"].eq("m").all()


def test_mean_std_table_sorts_by_the_first_metric():
    per_fold = {
        "weak": pd.DataFrame({"accuracy": [0.5, 0.7], "macro_f1": [0.4, 0.4], "weighted_f1": [0.5, 0.5]}),
        "strong": pd.DataFrame({"accuracy": [0.9, 0.9], "macro_f1": [0.8, 0.9], "weighted_f1": [0.9, 0.9]}),
    }
    table = metrics.mean_std_table(per_fold)
    assert table.index.tolist() == ["strong", "weak"]
    assert table.loc["weak", "accuracy"] == "0.600 ± 0.141" and table.loc["strong", "macro_f1"] == "0.850 ± 0.071"


def test_validation_scores_and_the_selection_rule():
    s = metrics.validation_scores(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1]]))
    assert s["val_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.6, 0.1])))
    assert s["val_accuracy"] == pytest.approx(2 / 3) and s["val_macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    a, b = {"val_macro_f1": 0.7, "val_loss": 0.9}, {"val_macro_f1": 0.6, "val_loss": 0.5}
    assert metrics.improves(a, b, "val_macro_f1") and not metrics.improves(b, a, "val_macro_f1")
    assert metrics.improves(b, a, "val_loss") and not metrics.improves(a, b, "val_loss")
    tie = {"val_macro_f1": 0.7, "val_loss": 0.8}
    assert metrics.improves(tie, a, "val_macro_f1") and not metrics.improves(a, a, "val_macro_f1")
    assert metrics.improves(a, None, "val_loss")


def test_characteristic_terms_of_a_toy_sheet(tmp_path):
    """'灯光' marks class A; '文物' marks class B; '好' is everywhere; '的' is frequent in B but more so in A."""
    texts_a = ["灯光好的的", "灯光真好的", "灯光美的", "灯光绝了的", "舞台好"]
    texts_b = ["文物好的", "文物真美", "文物古老", "好看的", "青铜好"]
    path = tmp_path / "toy.csv"
    pd.DataFrame({"Label": ["A"] * 5 + ["B"] * 5, "Sentence": texts_a + texts_b}).to_csv(path, index=False)
    terms = eda.characteristic_terms(load_labelled(path), unit="char", top=3, min_count=3)
    by_class = {c: g["term"].tolist() for c, g in terms.groupby("class")}
    assert set(by_class["A"][:2]) == {"灯", "光"} and set(by_class["B"]) == {"文", "物"}
    # a term more frequent outside a class is never listed for it: '的' is in 5 A-texts but only 2 B-texts
    assert "的" not in by_class["B"] and "好" not in by_class["B"]
    row = terms[(terms["class"] == "A") & (terms["term"] == "灯")].iloc[0]
    assert (row["texts in class"], row["texts elsewhere"]) == (4, 0)
