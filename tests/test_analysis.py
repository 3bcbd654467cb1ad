"""The paired statistics of 04_error_analysis: the bootstrap resamples the same texts for every model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nblib import analysis
from nblib.results import ModelResults


def results_of(name: str, gold: np.ndarray, pred: np.ndarray) -> ModelResults:
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    table = pd.DataFrame(
        {
            "index": range(len(gold)),
            "row": np.arange(len(gold)) + 2,
            "fold": 0,
            "text": [f"t{i}" for i in range(len(gold))],
            "gold": gold,
            "pred": pred,
        }
    )
    return ModelResults(
        name,
        {},
        pd.concat([table, pd.DataFrame(probs, columns=["prob_0", "prob_1", "prob_2"])], axis=1),
        pd.DataFrame(),
        None,
    )


def test_bootstrap_resamples_the_same_texts_for_every_model():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.7, gold, (gold + 1) % 3)
    twin_a, twin_b = results_of("a", gold, pred), results_of("b", gold, pred.copy())
    other = results_of("c", gold, np.where(rng.random(200) < 0.5, gold, (gold + 2) % 3))
    ci = analysis.bootstrap_ci({"a": twin_a, "c": other, "b": twin_b}, n_boot=300, seed=0)
    # identical predictions on identically resampled texts: identical intervals (resampled separately, they differ)
    assert ci.loc["a"].tolist() == ci.loc["b"].tolist()
    assert ci.loc["a", "accuracy CI"] != ci.loc["c", "accuracy CI"]
    lo, hi = map(float, ci.loc["a", "accuracy CI"].strip("[]").split(", "))
    assert lo < ci.loc["a", "accuracy"] < hi and hi - lo < 0.2
    assert ci.index.tolist() == ["a", "b", "c"]  # best macro-F1 first
