"""cleanlab's label issues on out-of-fold probabilities: flipped labels of a synthetic study are found."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nblib import label_issues
from nblib.results import ModelResults

NAMES = ["x", "y", "z"]


def model(name: str, truth: np.ndarray, gold: np.ndarray, seed: int, temperature: float | None = None) -> ModelResults:
    """Out-of-fold results of a model that learnt the true classes (about 85% right), scored against ``gold``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(truth), 3))
    logits[np.arange(len(truth)), truth] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = pd.DataFrame(
        {
            "index": range(len(truth)),
            "row": np.arange(len(truth)) + 2,
            "fold": np.arange(len(truth)) % 2,
            "text": [f"text {i}" for i in range(len(truth))],
            "gold": gold,
            "pred": probs.argmax(1),
        }
    )
    pred[[f"prob_{j}" for j in range(3)]] = probs
    metrics = pd.DataFrame({"fold": [0, 1]} | ({"temperature": [temperature] * 2} if temperature else {}))
    return ModelResults(name, {}, pred, metrics, None)


@pytest.fixture
def study():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 600)
    gold, flipped = truth.copy(), rng.choice(600, 30, replace=False)
    gold[flipped] = (truth[flipped] + rng.integers(1, 3, 30)) % 3
    runs = {f"m{s}": model(f"m{s}", truth, gold, s, temperature=1.5 if s == 2 else None) for s in range(3)}
    return runs, truth, gold, set(flipped)


def test_flipped_labels_are_found_and_ranked_first(study):
    runs, truth, gold, flipped = study
    one = label_issues.find_label_issues(runs, NAMES, ["m0"])
    found = set(one["row"] - 2)
    assert len(found & flipped) >= 0.7 * len(flipped) and len(found & flipped) >= 0.5 * len(found)
    top = one.head(10)["row"].to_numpy() - 2
    assert np.mean([i in flipped for i in top]) >= 0.9  # the most suspect first
    assert (one["p(given)"].diff().dropna() >= -1e-9).all()  # self-confidence, lowest first
    assert (one["label quality"] == one["p(given)"]).all()
    i = top[0]
    assert one.loc[0, "given label"] == NAMES[gold[i]] and one.loc[0, "suggested label"] == NAMES[truth[i]]
    assert one.loc[0, "text"] == f"text {i}" and one.loc[0, "models rejecting it"] in {"2 of 3", "3 of 3"}
    # the ensemble of three models (independent errors) raises fewer false alarms than any one of them
    ens = label_issues.find_label_issues(runs, NAMES, list(runs))
    assert len(set(ens["row"] - 2) & flipped) >= 0.8 * len(flipped)
    precision = [
        len(set(t["row"] - 2) & flipped) / len(t)
        for t in [ens] + [label_issues.find_label_issues(runs, NAMES, [m]) for m in runs]
    ]
    assert precision[0] > max(precision[1:])


def test_the_ensemble_averages_calibrated_probabilities(study):
    runs = study[0]
    mean = label_issues.mean_probs(runs, list(runs))
    assert np.allclose(mean, np.mean([r.calibrated_probs for r in runs.values()], axis=0))
    assert not np.allclose(runs["m2"].calibrated_probs, runs["m2"].probs)  # m2's temperature is applied


def test_bad_model_choices_are_named(study):
    runs = study[0]
    with pytest.raises(ValueError, match=r"models=\['nope'\]: \['nope'\] not among"):
        label_issues.mean_probs(runs, ["nope"])
    with pytest.raises(ValueError, match="none"):
        label_issues.mean_probs(runs, [])
    shuffled = ModelResults("s", {}, runs["m1"].predictions.iloc[::-1], runs["m1"].metrics, None)
    with pytest.raises(ValueError, match="not predictions of the same texts"):
        label_issues.mean_probs({"m0": runs["m0"], "s": shuffled}, ["m0", "s"])
