"""Fine-tuning on tiny random encoders built from the data: each defect of the original code has a test."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

from conftest import tiny_data
from nblib import bert, bert_cv
from nblib import data as nbdata
from nblib.results import ResultsExistError

TEXTS = ["只此青绿的舞美绝了", "在看CCTV1典籍里的中国", "三刷🉑️👍", "徐霞客游记一包纸巾😭不够用"]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return str(bert.build_tiny_encoder(TEXTS * 3, tmp_path_factory.mktemp("enc") / "tiny", hidden=32))


def test_tiny_encoder_vocabulary_covers_the_text(tiny_encoder):
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    assert len(tok) > 30  # not the 5-token vocabulary of BertTokenizer(vocab_file=...)
    ids = tok("只此青绿 CCTV1 😭")["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids)[:4] == ["[CLS]", "只", "此", "青"]


def test_local_folder_and_clear_errors(tmp_path, tiny_encoder, monkeypatch):
    assert bert.resolve_model(tiny_encoder) == str(Path(tiny_encoder).resolve())
    with pytest.raises(bert.ModelNotAvailableError, match="does not exist"):
        bert.resolve_model(str(tmp_path / "no_such_model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(bert.ModelNotAvailableError, match="no config.json"):
        bert.resolve_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(bert.ModelNotAvailableError, match=r"(?s)bert-base-chinese.*save_pretrained.*pass its path"):
        bert.resolve_model("bert-base-chinese")


def test_batches_are_padded_dynamically_with_attention_masks(tiny_encoder):
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    ds = bert.Encoded(tok, ["好", "只此青绿的舞美绝了", "三刷"], max_len=100, labels=[0, 1, 0])
    batch = next(iter(bert.eval_loader(ds, bert.make_collator(tok, Accelerator(cpu=True)), 8)))
    assert batch["input_ids"].shape[1] == 11 < 100  # longest text + [CLS] + [SEP], not max_len
    assert batch["attention_mask"].sum(1).tolist() == [3, 4, 11]  # sorted by length; padding masked


def test_padding_does_not_change_predictions(tiny_encoder):
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    model = bert.load_classifier(tiny_encoder, ["a", "b"]).eval()
    alone = model(**tok(["好看"], return_tensors="pt")).logits
    batch = tok(["好看", "只此青绿的舞美绝了"], padding=True, return_tensors="pt")
    assert torch.allclose(model(**batch).logits[:1], alone, atol=1e-5)
    no_mask = model(input_ids=batch["input_ids"]).logits[:1]  # the original code's defect
    assert not torch.allclose(no_mask, alone, atol=1e-5)


def test_no_weight_decay_on_biases_and_layernorm(tiny_encoder):
    model = bert.load_classifier(tiny_encoder, ["a", "b"])
    decay, no_decay = bert.param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)] for p in decay["params"])


def test_new_head_can_get_its_own_learning_rate(tiny_encoder):
    model, new = bert.load_classifier_and_new(tiny_encoder, ["a", "b"])
    assert new == {"classifier.weight", "classifier.bias"}  # the tiny encoder has a pooler; only the head is new
    groups = bert.param_groups(model, 0.01, new, head_lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for g in groups if g.get("lr") == 1e-3 for p in g["params"]} == new
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(bert.param_groups(model, 0.01, new)) == 2 and all("lr" not in g for g in bert.param_groups(model, 0.01, new))


def test_checksum_ignores_a_pooler_the_checkpoint_lacks(tmp_path, tiny_encoder):
    no_pooler = tmp_path / "no_pooler"  # like multilingual-e5: an encoder saved without its pooler
    BertModel.from_pretrained(tiny_encoder, add_pooling_layer=False).save_pretrained(no_pooler)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(no_pooler)
    fresh = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        fresh.append(bert.load_classifier_and_new(str(no_pooler), ["a", "b"]))
    (m1, new1), (m2, new2) = fresh
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} <= new1
    assert bert.encoder_checksum(m1) != bert.encoder_checksum(m2)  # the random pooler differs per fold
    assert bert.encoder_checksum(m1, new1) == bert.encoder_checksum(m2, new2)


def test_fine_tuning_learns_a_separable_set(tmp_path, write_sheet):
    d = tiny_data(write_sheet, n_per_class=20)
    enc = str(bert.build_tiny_encoder(d.texts, tmp_path / "enc"))
    tok = AutoTokenizer.from_pretrained(enc)
    ds = bert.Encoded(tok, d.texts, 32, d.labels)
    idx = np.random.default_rng(0).permutation(len(d.texts))
    res = bert.fine_tune(enc, d.label_names, ds.subset(idx[:45]), ds.subset(idx[45:52]), ds.subset(idx[52:]),
                         bert.TrainSettings(epochs=6, batch_size=8, lr=3e-3, warmup_ratio=0.1), Accelerator(cpu=True),
                         tok, seed=0)
    assert res.history["train_loss"].iloc[-1] < res.history["train_loss"].iloc[0]
    assert (res.test_probs.argmax(1) == d.labels[idx[52:]]).mean() >= 0.75
    assert res.best_epoch == int(res.history.loc[res.history["val_macro_f1"].idxmax(), "epoch"])


def test_frozen_word_embeddings_stay_fixed_while_the_encoder_learns(tmp_path, write_sheet):
    d = tiny_data(write_sheet, n_per_class=8)
    enc = str(bert.build_tiny_encoder(d.texts, tmp_path / "enc"))
    tok = AutoTokenizer.from_pretrained(enc)
    ds = bert.Encoded(tok, d.texts, 32, d.labels)
    before = bert.load_classifier(enc, d.label_names)
    res = bert.fine_tune(enc, d.label_names, ds, None, None, bert.TrainSettings(epochs=1, batch_size=8, lr=1e-3,
                         freeze_embeddings=True), Accelerator(cpu=True), tok, seed=0)
    after = res.model
    assert torch.equal(after.get_input_embeddings().weight, before.get_input_embeddings().weight)
    assert not torch.allclose(after.bert.encoder.layer[0].output.dense.weight, before.bert.encoder.layer[0].output.dense.weight)
    assert after.get_input_embeddings().weight.requires_grad is False


def small_config(tmp_path, write_sheet, **kw) -> bert_cv.FineTuneConfig:
    d = tiny_data(write_sheet, n_per_class=8)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.csv"
    d.df.rename(columns={"text": "Sentence", "label": "Label"})[["Label", "Sentence"]].to_csv(path, index=False)
    return bert_cv.FineTuneConfig(data_path=str(path), results_dir=str(tmp_path / "res"), model=bert.TINY_RANDOM,
                                  n_folds=3, epochs=2, batch_size=8, lr=1e-3, max_len=32, device="cpu", **kw)


def test_cross_validation_fresh_model_per_fold_save_reload_and_resume(tmp_path, write_sheet):
    cfg = small_config(tmp_path, write_sheet)
    res = bert_cv.cross_validate(cfg)
    folder = next((tmp_path / "res").glob("tiny-*/models/bert_tiny-random"))
    assert len(list((folder / "environment").glob("*.json"))) == 1  # versions recorded once per session
    # every fold started from the same pretrained weights (the original code trained one model on across folds)
    source = next((tmp_path / "res").glob("tiny-*/encoders/tiny-random"))
    pretrained = bert.encoder_checksum(bert.load_classifier(str(source), ["a", "b", "c"]))
    assert np.allclose(res.metrics["encoder_checksum"], pretrained)
    trained = [bert.encoder_checksum(AutoModelForSequenceClassification.from_pretrained(folder / "fold_models" / f"fold_{k}"))
               for k in range(3)]
    assert len(set(np.round(trained, 6))) == 3 and pretrained not in trained
    # checkpoints: safetensors with tokenizer and label names, reloading into a plain model gives the saved predictions
    fold1 = folder / "fold_models" / "fold_1"
    assert (fold1 / "model.safetensors").exists() and not list(fold1.glob("*.bin"))
    model = AutoModelForSequenceClassification.from_pretrained(fold1).eval()
    assert model.config.id2label == {0: "0", 1: "1", 2: "2"}
    tok = AutoTokenizer.from_pretrained(fold1)
    test = res.predictions[res.predictions["fold"] == 1]
    with torch.no_grad():
        probs = torch.softmax(model(**tok(test["text"].tolist(), padding=True, return_tensors="pt")).logits, -1).numpy()
    assert np.allclose(probs, test[["prob_0", "prob_1", "prob_2"]].to_numpy(), atol=1e-4)
    assert (folder / "final" / "model.safetensors").exists()
    assert json.loads((folder / "final" / "training.json").read_text())["texts"] == 24
    assert set(res.history["fold"]) == {0, 1, 2} and set(res.history["epoch"]) == {1, 2}
    # rerun: finished folds are skipped (files untouched); other settings are refused
    stamp = (folder / "folds" / "fold_2.csv").stat().st_mtime_ns
    again = bert_cv.cross_validate(cfg)
    assert (folder / "folds" / "fold_2.csv").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.predictions, res.predictions)
    assert len(list((folder / "environment").glob("*.json"))) == 2
    with pytest.raises(ResultsExistError, match="lr"):
        bert_cv.cross_validate(replace(cfg, lr=5e-4))


def test_interrupted_run_resumes_the_missing_fold(tmp_path, write_sheet):
    cfg = small_config(tmp_path, write_sheet, train_final=False, save_fold_models=False)
    first = bert_cv.cross_validate(cfg)
    folder = next((tmp_path / "res").glob("tiny-*/models/bert_tiny-random"))
    for f in folder.glob("folds/fold_1*"):
        f.unlink()  # as if the run had stopped during fold 1
    (folder / "metrics.csv").unlink()
    stamp = (folder / "folds" / "fold_0.csv").stat().st_mtime_ns
    again = bert_cv.cross_validate(cfg)
    assert (folder / "folds" / "fold_0.csv").stat().st_mtime_ns == stamp and (folder / "folds" / "fold_1.json").exists()
    pd.testing.assert_frame_equal(again.metrics.drop(columns="seconds"), first.metrics.drop(columns="seconds"))


@pytest.mark.parametrize("parallel", ["ddp", "folds"])
def test_two_cpu_processes_give_the_same_results_format(tmp_path, write_sheet, parallel):
    single = bert_cv.cross_validate(small_config(tmp_path / "one", write_sheet, train_final=False, save_fold_models=False))
    two = bert_cv.cross_validate(small_config(tmp_path / "two", write_sheet, num_processes=2, parallel=parallel,
                                              train_final=parallel == "ddp", save_fold_models=False,
                                              freeze_embeddings=parallel == "ddp"))  # DDP skips frozen weights
    assert two.predictions.columns.tolist() == single.predictions.columns.tolist()
    assert (two.predictions[["index", "fold", "gold"]] == single.predictions[["index", "fold", "gold"]]).all().all()
    assert two.metrics.columns.tolist() == single.metrics.columns.tolist() and len(two.metrics) == 3
    assert np.allclose(two.probs.sum(axis=1), 1, atol=1e-4)
    assert set(two.metrics["processes"]) == {2 if parallel == "ddp" else 1}
    if parallel == "folds":  # same seed, same batches, one device each: the same numbers as one process
        assert np.allclose(two.probs, single.probs, atol=1e-4)
    logs = next((tmp_path / "two" / "res").glob("tiny-*/models/bert_tiny-random/logs"))
    assert list(logs.glob("*.log"))


def test_out_of_memory_retries_with_accumulation_then_advises(tmp_path, write_sheet, monkeypatch):
    calls = []

    def fake_fine_tune(settings, **kw):
        calls.append(settings.grad_accum)
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(bert, "fine_tune", fake_fine_tune)
    cfg = small_config(tmp_path, write_sheet)
    with pytest.raises(RuntimeError, match="max_len.*bf16.*grad_accum"):
        bert_cv._fine_tune_retrying(cfg, bert.TrainSettings(batch_size=8), Accelerator(cpu=True))
    assert calls == [1, 2, 4, 8]  # per-device batch 8 → 4 → 2 → 1, then the advice


WRITER = """
import sys, time
from pathlib import Path
from nblib.results import _write_atomic
path, me = Path(sys.argv[1]), sys.argv[2]
(path.parent / f"ready_{me}").touch()
while len(list(path.parent.glob("ready_*"))) < 2:
    time.sleep(0.01)
for i in range(1500):
    _write_atomic(path, lambda p: p.write_text(me * 1000))
"""


def test_atomic_writes_of_one_file_from_two_processes(tmp_path):
    target = tmp_path / "config.json"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), who], stderr=subprocess.PIPE, text=True)
             for who in "ab"]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["config.json", "ready_a", "ready_b"]  # no temporary left
