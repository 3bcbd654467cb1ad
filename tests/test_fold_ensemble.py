"""Prediction by the fold ensemble: the mean of a run's fold models' calibrated probabilities."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from nblib import bert, calibration, layout, predict

LABELS = ["节目制作", "文物典籍", "无关"]
TEXTS = ["只此青绿的舞美绝了", "文物", "三刷🉑️👍", "典籍里的中国"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as 03_bert_cv leaves it: config, folds/, two fold models (one calibrated) and a final model."""
    run = tmp_path_factory.mktemp("res") / "models" / "bert_tiny"
    enc = bert.build_tiny_encoder(TEXTS * 2, run.parent.parent / "enc", hidden=32)
    tok = bert.load_tokenizer(str(enc))
    (run / "folds").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "bert_tiny", "n_folds": 2}))
    for k, folder in enumerate([run / "fold_models" / "fold_0", run / "fold_models" / "fold_1", run / "final"]):
        torch.manual_seed(k)  # a different head per model
        bert.save_checkpoint(bert.load_classifier(str(enc), LABELS), tok, folder)
    calibration.save_calibration(
        run / "fold_models" / "fold_1", calibration.Calibration(0.5, (0.3, 0.0, -0.3), "a test")
    )
    for k in range(2):  # the marks of finished folds and final model (nblib.layout.done_marker)
        (run / "folds" / f"fold_{k}.json").write_text("{}")
    (run / "final" / "training.json").write_text("{}")
    return run


def probs(model_dir, **kw) -> np.ndarray:
    model, tok = predict.load_model(model_dir, **kw)
    return predict.predict_texts(model, tok, TEXTS, progress=False).filter(like="prob_").to_numpy()


def test_the_ensemble_is_the_mean_of_the_fold_models_calibrated_probabilities(run_dir, tmp_path):
    folds = [probs(run_dir / "fold_models" / f"fold_{k}") for k in range(2)]
    assert not np.allclose(folds[0], folds[1])
    ensemble = probs(run_dir, ensemble="folds")
    assert np.allclose(ensemble, (folds[0] + folds[1]) / 2, atol=1e-5)
    # the command line gives the same, labelled with the ensemble's most probable class
    pd.DataFrame({"Sentence": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    args = [str(run_dir), str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--ensemble", "folds"]
    assert predict.main(args) == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert np.allclose(out[[f"prob_{n}" for n in LABELS]].to_numpy(), ensemble, atol=1e-5)
    assert out["pred_label"].tolist() == [LABELS[i] for i in ensemble.argmax(1)]


def test_a_saved_model_with_ensemble_folds_is_refused_with_the_run_named(run_dir, tmp_path, capsys):
    pd.DataFrame({"Sentence": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    for model in [run_dir / "final", run_dir / "fold_models" / "fold_0"]:
        assert predict.main([str(model), str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), "--ensemble", "folds"]) == 2
        err = capsys.readouterr().err
        assert f"pass the run's results folder ({run_dir})" in err and "--ensemble final to use this" in err
    with pytest.raises(bert.ModelNotAvailableError, match=r"ensemble=folds averages .* ensemble=final to use"):
        predict.load_model(run_dir / "final", ensemble="folds")
    with pytest.raises(ValueError, match=r"ensemble='mean' is not one of"):
        predict.load_model(run_dir, ensemble="mean")
    # without --ensemble folds the run folder is refused as before, now naming the ensemble too
    assert predict.main([str(run_dir), str(tmp_path / "in.csv"), str(tmp_path / "o.csv")]) == 2
    assert "--ensemble folds" in capsys.readouterr().err


def test_a_run_without_all_its_fold_models_names_the_setting_that_saves_them(tmp_path, run_dir):
    run = tmp_path / "models" / "bert_x"
    (run / "folds").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "bert_x", "n_folds": 2}))
    with pytest.raises(bert.ModelNotAvailableError, match=r"0 fold model\(s\) of 2 folds.*save_fold_models=True"):
        predict.load_model(run, ensemble="folds")
    (run / "fold_models").mkdir()
    (run / "fold_models" / "fold_0").symlink_to(run_dir / "fold_models" / "fold_0")
    with pytest.raises(bert.ModelNotAvailableError, match=r"fold_0 is not a completely saved .*fold_0.json is missing"):
        predict.load_model(run, ensemble="folds")  # saved, but its fold did not finish
    (run / "folds" / "fold_0.json").write_text("{}")
    with pytest.raises(bert.ModelNotAvailableError, match=r"1 fold model\(s\) of 2 folds"):
        predict.load_model(run, ensemble="folds")
    with pytest.raises(bert.ModelNotAvailableError, match="not the results folder of a run"):
        predict.load_model(tmp_path, ensemble="folds")


def test_the_ensembles_file_label_names_the_run_and_its_folds(run_dir):
    assert layout.saved_model_label(run_dir) == "bert_tiny_folds"
    assert layout.saved_model_label(run_dir / "final") == "bert_tiny"
