"""Temperature scaling, expected calibration error, and where the temperatures are fitted and applied."""

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


def test_apply_temperature_takes_one_per_row_and_handles_zero_probabilities():
    probs = np.array([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]])
    out = calibration.apply_temperature(probs, np.array([2.0, 1.0]))
    assert np.allclose(out[1], probs[1]) and np.allclose(out.sum(1), 1)
    assert np.allclose(out[0, :2], softmax(np.log([0.7, 0.3]) / 2)[:2], atol=1e-5)
    assert calibration.fit_temperature(np.empty((0, 3)), np.empty(0, dtype=int)) == 1.0
    assert calibration.fit_temperature(None, np.array([0, 1])) == 1.0  # trained without a validation part


def results_with_folds(temperatures: dict | None) -> ModelResults:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    pred = pd.DataFrame({"index": range(4), "fold": [0, 1, 0, 1], "gold": [0, 1, 0, 1], "pred": probs.argmax(1)})
    pred[["prob_0", "prob_1"]] = probs
    metrics = pd.DataFrame({"fold": [0, 1]})
    if temperatures is not None:
        metrics["temperature"] = [temperatures.get(0), temperatures.get(1)]
    return ModelResults("m", {}, pred, metrics, None)


def test_calibrated_out_of_fold_probabilities_apply_each_folds_temperature():
    res = results_with_folds({0: 2.0, 1: 0.5})
    assert res.temperatures.tolist() == [2.0, 0.5, 2.0, 0.5]
    expected = calibration.apply_temperature(res.probs, np.array([2.0, 0.5, 2.0, 0.5]))
    assert np.allclose(res.calibrated_probs, expected)
    assert res.calibrated_probs[0, 0] < 0.9 and res.calibrated_probs[1, 0] > 0.8  # softened, sharpened
    assert np.allclose(res.probs[:, 0], [0.9, 0.8, 0.6, 0.3])  # the raw ones are kept
    # folds without a temperature (older runs, TF-IDF + LR) are left as they are
    assert np.allclose(results_with_folds(None).calibrated_probs, res.probs)
    assert results_with_folds({0: 2.0}).temperatures.tolist() == [2.0, 1.0, 2.0, 1.0]


def test_a_saved_models_calibration_is_applied_by_predict(tmp_path, caplog):
    enc = bert.build_tiny_encoder(["文物古籍", "舞美灯光", "文化精神"], tmp_path / "enc", hidden=32)
    saved = bert.save_checkpoint(
        bert.load_classifier(str(enc), ["a", "b", "c"]), bert.load_tokenizer(str(enc)), tmp_path / "m"
    )
    texts = ["文物", "舞美灯光", "精神"]
    with caplog.at_level("INFO"):
        raw = predict.predict_texts(*predict.load_model(saved), texts, progress=False).filter(like="prob_").to_numpy()
    assert "no calibration.json: temperature 1" in caplog.text
    calibration.save_temperature(saved, 0.05, "a test")
    model, tok = predict.load_model(saved)
    scaled = predict.predict_texts(model, tok, texts, progress=False).filter(like="prob_").to_numpy()
    assert np.allclose(scaled, calibration.apply_temperature(raw, 0.05), atol=1e-4)
    assert scaled.max(1).min() > raw.max(1).max()  # T < 1 sharpens every row
    assert json.loads((saved / "calibration.json").read_text())["fitted_on"] == "a test"


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
    assert calibration.load_temperature(job.run.fold_model_dir(0)) == pytest.approx(t)
    job.train_final()
    saved = json.loads((job.run.final_dir / "calibration.json").read_text())
    assert saved["temperature"] == pytest.approx(t) and "median" in saved["fitted_on"]
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
    lr = suite.run("lr_tfidf_char")
    assert "temperature" not in lr.metrics and (lr.temperatures == 1).all()
    assert np.allclose(lr.calibrated_probs, lr.probs)


def test_calibration_table_reports_each_model_before_and_after():
    fitted, plain = results_with_folds({0: 2.0, 1: 2.0}), results_with_folds(None)
    table = calibration.calibration_table({"fitted": fitted, "plain": plain})
    assert table.loc["fitted", "fitted"] == "per fold" and table.loc["plain", "fitted"] == "no (T = 1)"
    assert table.loc["fitted", "temperature"] == 2.0 and table.loc["plain", "temperature"] == 1.0
    gold = fitted.predictions["gold"].to_numpy()
    assert table.loc["fitted", "ECE after"] == pytest.approx(calibration.ece(fitted.calibrated_probs, gold))
    assert table.loc["plain", "ECE after"] == table.loc["plain", "ECE before"]
    assert table.loc["fitted", "NLL before"] == pytest.approx(-np.log([0.9, 0.2, 0.6, 0.7]).mean())
