"""Temperature scaling with class biases, expected calibration error, and where calibrations are fitted and applied."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from accelerate.state import AcceleratorState
from scipy.special import softmax

from nblib import baselines, bert, bert_cv, calibration, predict
from nblib.results import ModelResults
from nblib.settings import from_params
from nblib.study import open_study


def synthetic(n: int = 20_000, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from their softmax: probabilities that are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, k))
    labels = np.array([rng.choice(k, p=p) for p in softmax(logits, axis=1)])
    return logits, labels


def test_temperature_of_an_overconfident_model_is_above_one_and_lowers_nll_and_ece():
    logits, labels = synthetic()
    overconfident = 3 * logits  # the same ranking, three times too sure
    t = calibration.fit_temperature(overconfident[:5000], labels[:5000])
    assert 2.6 < t < 3.4
    raw, scaled = softmax(overconfident[5000:], axis=1), softmax(overconfident[5000:] / t, axis=1)
    held_out = labels[5000:]
    assert calibration.ece(raw, held_out) > 0.1 and calibration.ece(scaled, held_out) < 0.02
    assert calibration.nll(overconfident[5000:], held_out, t) < calibration.nll(overconfident[5000:], held_out) - 0.3
    assert (scaled.argmax(1) == raw.argmax(1)).all()  # the predicted class never changes
    # fitted on log-probabilities instead of logits: the same temperature
    assert calibration.fit_temperature(np.log(softmax(overconfident[:5000], axis=1)), labels[:5000]) == pytest.approx(t)
    # an underconfident model gets T < 1
    assert calibration.fit_temperature(logits[:5000] / 2, labels[:5000]) < 0.6


def test_ece_of_calibrated_probabilities_is_near_zero_and_ece_is_computed_by_hand():
    logits, labels = synthetic()
    assert calibration.ece(softmax(logits, axis=1), labels) < 0.015
    assert calibration.fit_temperature(logits, labels) == pytest.approx(1, abs=0.05)
    # four texts: two at 0.9 (one right), two at 0.6 (both right); bins of width 1/15
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    gold = np.array([0, 1, 1, 1])
    table = calibration.reliability(probs, gold)
    assert table["texts"].tolist() == [2, 2] and table["accuracy"].tolist() == [1.0, 0.5]
    assert table["confidence"].tolist() == pytest.approx([0.6, 0.9])
    assert table["lower"].tolist() == pytest.approx([8 / 15, 13 / 15])
    assert calibration.ece(probs, gold) == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)


def test_calibration_applies_temperature_then_biases_and_handles_zero_probabilities():
    probs = np.array([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]])
    out = calibration.Calibration(2.0).apply(probs)
    assert np.allclose(out.sum(1), 1) and np.allclose(out[0, :2], softmax(np.log([0.7, 0.3]) / 2)[:2], atol=1e-5)
    biased = calibration.Calibration(2.0, (1.0, 0.0, 0.0)).apply(probs)
    assert np.allclose(biased[1], softmax(np.log(probs[1]) / 2 + [1, 0, 0]))
    assert np.allclose(calibration.Calibration().apply(probs[1:]), probs[1:])
    per_fold = calibration.apply_per_fold(probs, np.array([0, 1]), {0: calibration.Calibration(2.0)})
    assert np.allclose(per_fold, [out[0], probs[1]])  # a fold without a calibration is left as it is
    assert calibration.fit_temperature(np.empty((0, 3)), np.empty(0, dtype=int)) == 1.0
    assert calibration.fit_temperature(None, np.array([0, 1])) == 1.0  # trained without a validation part


def skewed(n: int = 30_000, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model that over-predicts class 0 and under-predicts class 3 (class biases), the labels, five folds."""
    logits, labels = synthetic(n, seed=seed)
    model = softmax(logits + np.array([0.8, 0.0, 0.0, -0.8]), axis=1)
    return model, labels, np.arange(n) % 5


def test_class_biases_undo_a_class_skew_that_a_temperature_cannot():
    probs, labels, _ = skewed()
    bias = calibration.fit_class_bias(probs[:10_000], labels[:10_000])
    assert bias == pytest.approx(np.array([-0.8, 0, 0, 0.8]), abs=0.1)
    t = calibration.fit_temperature(calibration.log_probs(probs[:10_000]), labels[:10_000])
    held_out, gold = probs[10_000:], labels[10_000:]
    by_t, by_b = calibration.Calibration(t).apply(held_out), calibration.Calibration(1.0, tuple(bias)).apply(held_out)
    assert calibration.ece(by_b, gold) < calibration.ece(by_t, gold) / 2
    nll_t, nll_b = (calibration.nll(calibration.log_probs(p), gold) for p in (by_t, by_b))
    assert nll_b < nll_t - 0.05
    shares = np.bincount(gold) / len(gold)  # the mean probabilities (PCC) match the class shares only with biases
    assert np.abs(by_b.mean(0) - shares).max() < 0.02 < 0.1 < np.abs(by_t.mean(0) - shares).max()
    # a class without any held-out text keeps a finite bias
    some = labels[:200] != 3
    assert np.isfinite(calibration.fit_class_bias(probs[:200][some], labels[:200][some])).all()


def test_cross_fitted_biases_of_a_fold_never_use_that_folds_labels():
    probs, labels, folds = skewed(10_000)
    cals = calibration.cross_fitted(probs, labels, folds, {0: 2.0})
    assert sorted(cals) == [0, 1, 2, 3, 4]
    assert cals[0].temperature == 2.0 and cals[1].temperature == 1.0  # each fold keeps its own temperature
    assert "folds 1, 2, 3, 4, 8000 texts" in cals[0].fitted_on
    changed = labels.copy()
    changed[folds == 0] = 0
    again = calibration.cross_fitted(probs, changed, folds, {0: 2.0})
    assert again[0].bias == pytest.approx(cals[0].bias)  # fold 0's labels changed, its biases did not
    assert again[1].bias != pytest.approx(cals[1].bias)
    with pytest.raises(ValueError, match="at least two folds"):
        calibration.cross_fitted(probs[folds == 0], labels[folds == 0], folds[folds == 0], {})


def results_with_folds(temperatures: dict | None, folds: tuple = (0, 1, 0, 1)) -> ModelResults:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])[: len(folds)]
    gold = [0, 1, 0, 1][: len(folds)]
    pred = pd.DataFrame({"index": range(len(folds)), "fold": folds, "gold": gold, "pred": probs.argmax(1)})
    pred[["prob_0", "prob_1"]] = probs
    metrics = pd.DataFrame({"fold": sorted(set(folds))})
    if temperatures is not None:
        metrics["temperature"] = [temperatures.get(k) for k in metrics["fold"]]
    return ModelResults("m", {}, pred, metrics, None)


def test_one_fold_takes_its_validation_temperature_and_two_folds_add_cross_fitted_biases():
    one = results_with_folds({0: 2.0}, folds=(0, 0))
    assert not one.cross_fitted
    assert one.calibrations == {0: calibration.Calibration(2.0, None, "fold 0's validation part")}
    assert np.allclose(one.calibrated_probs, calibration.Calibration(2.0).apply(one.probs))
    assert np.allclose(one.probs[:, 0], [0.9, 0.8])  # the raw ones are kept
    two = results_with_folds({0: 2.0, 1: 0.5})
    assert two.cross_fitted and two.calibrations[1].temperature == 0.5 and two.calibrations[0].bias is not None
    scaled = two.temperature_scaled_probs
    assert np.allclose(scaled[[0, 2]], calibration.Calibration(2.0).apply(two.probs[[0, 2]]))
    bias_0 = calibration.fit_class_bias(scaled[[1, 3]], [1, 1])  # fold 0's biases: fold 1's texts only
    assert two.calibrations[0].bias == pytest.approx(bias_0)
    assert np.allclose(two.calibrated_probs[[0, 2]], two.calibrations[0].apply(two.probs[[0, 2]]))
    # folds without a temperature (older runs, TF-IDF + LR) get T = 1, and biases all the same
    plain = results_with_folds(None)
    assert {c.temperature for c in plain.calibrations.values()} == {1.0} and plain.calibrations[0].bias is not None
    assert results_with_folds(None, folds=(0, 0)).calibrations == {}
    final = two.pooled_calibration()
    assert final.temperature == pytest.approx(np.median([2.0, 0.5]))
    assert final.bias == pytest.approx(calibration.fit_class_bias(scaled, [0, 1, 0, 1]))


def test_a_saved_models_calibration_is_applied_by_predict(tmp_path, caplog):
    enc = bert.build_tiny_encoder(["文物古籍", "舞美灯光", "文化精神"], tmp_path / "enc", hidden=32)
    saved = bert.save_checkpoint(
        bert.load_classifier(str(enc), ["a", "b", "c"]), bert.load_tokenizer(str(enc)), tmp_path / "m"
    )
    texts = ["文物", "舞美灯光", "精神"]
    with caplog.at_level("INFO"):
        raw = predict.predict_texts(*predict.load_model(saved), texts, progress=False).filter(like="prob_").to_numpy()
    assert "no calibration.json: its probabilities are not calibrated" in caplog.text
    cal = calibration.Calibration(0.05, (2.0, 0.0, -2.0), "a test")
    calibration.save_calibration(saved, cal)
    assert calibration.load_calibration(saved) == cal
    model, tok = predict.load_model(saved)
    scaled = predict.predict_texts(model, tok, texts, progress=False).filter(like="prob_").to_numpy()
    assert np.allclose(scaled, cal.apply(raw), atol=1e-4)
    assert scaled.max(1).min() > raw.max(1).max()  # T < 1 sharpens every row
    # a file written before class biases existed holds a temperature only
    (saved / "calibration.json").write_text(json.dumps({"temperature": 0.5, "fitted_on": "old"}))
    assert calibration.load_calibration(saved) == calibration.Calibration(0.5, None, "old")


@pytest.fixture
def spy(monkeypatch):
    """Record the labels and the number of logit rows every temperature is fitted on."""
    calls = []
    fit = calibration.fit_temperature

    def recording(logits, labels):
        calls.append((len(logits), np.asarray(labels).copy()))
        return fit(logits, labels)

    monkeypatch.setattr(calibration, "fit_temperature", recording)
    return calls


def test_bert_fold_temperature_is_fitted_on_validation_texts_only_and_saved_with_each_model(tmp_path, spy, tiny_sheet):
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = from_params(
        bert_cv.FineTuneConfig,
        {
            "data_path": str(tiny_sheet(8)),
            "unlabelled_path": None,
            "results_dir": str(tmp_path / "res"),
            "model": bert.TINY_RANDOM,
            "n_folds": 3,
            "epochs": 1,
            "batch_size": 8,
            "max_len": 32,
            "device": "cpu",
        },
    )
    study = open_study(cfg.study)
    job = bert_cv.FineTuneJob(cfg, study)
    job.run_folds([0])
    split = study.split(0, cfg.selection.val_fraction)
    assert len(spy) == 1 and spy[0][0] == len(split.val) and (spy[0][1] == study.data.labels[split.val]).all()
    assert not set(split.val) & set(split.test)
    t = job.fold_results(0).metrics["temperature"].item()
    assert calibration.load_calibration(job.run.fold_model_dir(0)) == calibration.Calibration(
        t, None, f"fold 0's validation part, {len(split.val)} texts"
    )
    job.train_final()  # one fold finished: its temperature, and biases fitted on its out-of-fold texts
    saved = calibration.load_calibration(job.run.final_dir)
    assert saved.temperature == pytest.approx(t) and "median" in saved.fitted_on
    assert len(saved.bias) == len(study.data.label_names)
    job.run_folds([1, 2])
    job.save_calibrations()  # every fold finished: the fold models get their cross-fitted calibrations
    cross = bert_cv.read_folds(job.run.path, [0, 1, 2]).calibrations
    assert cross[0].temperature == t and cross[0].bias is not None
    assert [calibration.load_calibration(job.run.fold_model_dir(k)) for k in range(3)] == [cross[k] for k in range(3)]
    AcceleratorState._reset_state(reset_partial_state=True)


def test_neural_baselines_fit_their_temperature_on_validation_texts_and_lr_keeps_one(tiny_study, spy):
    study = tiny_study()
    cfg = baselines.BaselineConfig(
        unit="char", min_df=1, epochs=3, mlp_hidden=16, n_jobs=1
    )  # the spy sees this process
    suite = baselines.BaselineSuite(study, cfg)
    res = suite.run("mlp_tf")
    vals = [study.split(k, cfg.selection.val_fraction).val for k in range(3)]
    assert [n for n, _ in spy] == [len(v) for v in vals]
    assert all((labels == study.data.labels[v]).all() for (_, labels), v in zip(spy, vals))
    assert (res.metrics["temperature"] > 0).all() and len(set(res.metrics["temperature"])) == 3
    lr = suite.run("lr_tfidf_char")  # fitted on training + validation parts: no temperature, biases all the same
    assert "temperature" not in lr.metrics and {c.temperature for c in lr.calibrations.values()} == {1.0}
    assert all(c.bias is not None for c in lr.calibrations.values())


def test_calibration_table_reports_each_model_before_and_after():
    fitted, plain = results_with_folds({0: 2.0, 1: 2.0}), results_with_folds(None, folds=(0, 0))
    one = results_with_folds({0: 2.0}, folds=(0, 0))
    table = calibration.calibration_table({"fitted": fitted, "plain": plain, "one": one})
    assert table.loc["fitted", "calibration"] == "temperature + class biases (cross-fitted)"
    assert (
        table.loc["plain", "calibration"] == "none"
        and table.loc["one", "calibration"] == "temperature (validation part)"
    )
    assert table.loc["fitted", "temperature"] == 2.0 and table.loc["plain", "temperature"] == 1.0
    assert 0 <= table.loc["fitted", "top class changed"] <= 1 and table.loc["one", "top class changed"] == 0
    gold = fitted.predictions["gold"].to_numpy()
    assert table.loc["fitted", "ECE after"] == pytest.approx(calibration.ece(fitted.calibrated_probs, gold))
    assert table.loc["plain", "ECE after"] == table.loc["plain", "ECE before"]
    assert table.loc["fitted", "NLL before"] == pytest.approx(-np.log([0.9, 0.2, 0.6, 0.7]).mean())
