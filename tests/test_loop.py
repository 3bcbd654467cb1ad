"""The training loops in named steps, as 02 and 03 show them: called one by one they give exactly what the one call
gives (fine-tuning: also what ``job.run_folds`` saves), and the best epoch's weights are the ones kept."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from helpers import tiny_fold, write_tiny_sheet

from nblib import baselines, bert, bert_cv
from nblib.metrics import validation_scores
from nblib.settings import from_params
from nblib.study import open_study


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """No accelerate state carried from one test to the next (as in test_bert.py)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def fold(tmp_path) -> dict:
    """A tiny random BERT built from a tiny sheet, and a fold of it: 30 training, 6 validation, 9 test texts."""
    return tiny_fold(tmp_path, 15, n_train=30, n_val=6, hidden=32)


SETTINGS = bert.TrainSettings(epochs=3, batch_size=8, lr=1e-3)


def test_the_steps_one_by_one_give_exactly_what_fine_tune_gives(fold):
    whole = bert.fine_tune(
        settings=SETTINGS, accelerator=Accelerator(cpu=True), seed=5, select_on="val_macro_f1", desc="whole", **fold
    )
    ft = bert.prepare(settings=SETTINGS, accelerator=Accelerator(cpu=True), seed=5, **fold)
    fitted = bert.fit_epochs(ft, "val_macro_f1", "steps")
    probs = bert.predict_test(ft)
    steps = bert.fold_result(ft, fitted, probs)
    np.testing.assert_array_equal(steps.test_probs, whole.test_probs)
    np.testing.assert_array_equal(steps.val_logits, whole.val_logits)
    pd.testing.assert_frame_equal(steps.history, whole.history)
    assert steps.best_epoch == whole.best_epoch and steps.encoder_checksum == whole.encoder_checksum
    for (name, a), (_, b) in zip(steps.model.state_dict().items(), whole.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert len(whole.history) == 3 and whole.history["val_macro_f1"].notna().all()


def test_the_best_epochs_weights_are_put_back_before_the_test_texts_are_predicted(fold, monkeypatch):
    """The validation loss is scripted to be lowest after epoch 1; the test texts are the validation texts, so the
    test probabilities must be epoch 1's validation probabilities, not those of the last epoch's weights."""
    scored = []

    def scripted(gold, probs):
        scored.append(probs)
        return validation_scores(gold, probs) | {"val_loss": float(len(scored))}

    monkeypatch.setattr(bert, "validation_scores", scripted)
    fold["test"] = fold["val"]
    ft = bert.prepare(settings=SETTINGS, accelerator=Accelerator(cpu=True), seed=0, **fold)
    fitted = bert.fit_epochs(ft, "val_loss")
    probs = bert.predict_test(ft)
    assert fitted.best_epoch == 1 and fitted.history["val_loss"].tolist() == [1.0, 2.0, 3.0]
    assert not np.allclose(scored[0], scored[-1], atol=1e-4)  # the weights did change after epoch 1
    np.testing.assert_allclose(probs, scored[0], atol=1e-6)
    np.testing.assert_allclose(probs, bert.softmax(fitted.val_logits), atol=1e-6)


def make_job(tmp_path, name: str, **params) -> bert_cv.FineTuneJob:
    cfg = from_params(
        bert_cv.FineTuneConfig,
        dict(
            data_path=str(write_tiny_sheet(tmp_path, 8)),
            unlabelled_path=None,
            results_dir=str(tmp_path / name),
            model=bert.TINY_RANDOM,
            n_folds=3,
            epochs=2,
            batch_size=8,
            lr=1e-3,
            max_len=32,
            device="cpu",
            train_final=False,
        )
        | params,
    )
    return bert_cv.FineTuneJob(cfg, open_study(cfg.study))


def test_fold_zero_step_by_step_is_what_run_folds_trains_and_saves(tmp_path):
    """03's fold 0: the steps in view, saved with job.save_fold, give the files job.run_folds([0]) writes."""
    job = make_job(tmp_path, "steps")
    split = job.study.split(0, job.config.selection.val_fraction)
    train, val, test = job.fold_parts(split)
    ft = bert.prepare(
        job.source,
        job.study.data.label_names,
        train,
        val,
        test,
        job.settings,
        job.accelerator(),
        job.tokenizer,
        split.seed,
    )
    summary = ft.summary()
    assert summary["training texts"] == len(split.train) and summary["optimizer"].startswith("AdamW: ")
    fitted = bert.fit_epochs(ft, job.config.selection.select_on, "fold 0")
    probs = bert.predict_test(ft)
    job.save_fold(split, bert.fold_result(ft, fitted, probs), len(train), seconds=1.0)
    assert job.run.pending_folds() == [1, 2]  # cross_validate and a rerun resume after it

    AcceleratorState._reset_state(reset_partial_state=True)
    one_call = make_job(tmp_path, "one_call")
    one_call.run_folds([0])
    a, b = job.run.path / "folds", one_call.run.path / "folds"
    pd.testing.assert_frame_equal(pd.read_csv(a / "fold_0.csv"), pd.read_csv(b / "fold_0.csv"))
    mine, theirs = (json.loads((f / "fold_0.json").read_text()) for f in (a, b))
    assert mine.pop("seconds") == 1.0 and theirs.pop("seconds") > 0
    assert mine == theirs and mine["best_epoch"] in (1, 2)
    models = [r.path / "fold_models" / "fold_0" for r in (job.run, one_call.run)]
    assert (models[0] / "model.safetensors").read_bytes() == (models[1] / "model.safetensors").read_bytes()
    assert json.loads((models[0] / "calibration.json").read_text()) == json.loads(
        (models[1] / "calibration.json").read_text()
    )


@pytest.mark.parametrize("params, here", [({}, True), ({"num_processes": 2, "parallel": "folds"}, False)])
def test_03_trains_fold_0_in_view_only_where_the_job_trains_in_this_process(tmp_path, params, here):
    assert make_job(tmp_path, "where", **params).trains_here() is here


def test_out_of_memory_in_the_steps_gives_the_advice(tmp_path):
    job = make_job(tmp_path, "oom")
    with pytest.raises(RuntimeError, match=r"batch size 8 per device.*grad_accum.*job\.run_folds\(\[k\]\)"):
        with job.out_of_memory_advice():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


@pytest.mark.parametrize("select_on, patience", [("val_macro_f1", 2), ("val_loss", 1)])
def test_the_early_stopping_steps_one_by_one_give_exactly_what_the_one_call_gives(select_on, patience):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(0, 1.0, (90, 6)).astype(np.float32)
    x[np.arange(90), y] += 1
    train, val = np.arange(0, 90, 3).tolist() + np.arange(1, 90, 3).tolist(), np.arange(2, 90, 3)

    def run(steps: bool):
        torch.manual_seed(0)
        model = baselines.MLP(6, 16, 3, 0.2)
        batches = baselines.matrix_loader(x[train], y[train], 8, shuffle=True, seed=1)
        val_batches = baselines.matrix_loader(x[val], y[val], 8)
        if not steps:
            return baselines.train_early_stopping(
                model, batches, val_batches, y[val], 15, 0.05, 0.0, patience, select_on
            )
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
        best, rows = baselines.BestEpoch(select_on, patience), []
        for epoch in range(1, 16):
            loss = baselines.train_one_epoch(model, batches, optimizer)
            scores = validation_scores(y[val], baselines.predict_proba(model, val_batches))
            rows.append({"epoch": epoch, "train_loss": loss, **scores})
            if best.stop_after(epoch, scores, model):
                break
        return best.restore(model), pd.DataFrame(rows), best.epoch

    (m1, h1, e1), (m2, h2, e2) = run(steps=True), run(steps=False)
    pd.testing.assert_frame_equal(h1, h2)
    assert e1 == e2 and len(h1) < 15  # stopped early
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
