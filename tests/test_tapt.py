"""Task-adaptive pretraining: masking, the saved encoder, resume, reuse, and bad input."""

from __future__ import annotations

import logging

import jieba
import numpy as np
import pandas as pd
import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from nblib import bert, bert_cv, hardware, tapt
from nblib.results import ResultsExistError
from nblib.settings import from_params
from nblib.sheets import DataError

TEXTS = [
    "只此青绿的舞蹈演员表演得非常好看",
    "国家宝藏让文物活了起来，历史人物也很有意思",
    "中国传统文化的精神一直传承到今天",
    "今天天气不错，出去吃饭了",
] * 8


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = bert.build_tiny_encoder(TEXTS, tmp_path_factory.mktemp("enc") / "tiny", seed=0)
    tok = bert.load_tokenizer(str(folder))
    assert tok.is_fast and tok.unk_token_id not in tok("文物历史")["input_ids"]
    return tok


def masked(tokenizer, masking: str, seed: int = 0, rate: float = 0.15):
    items = tapt.token_groups(tokenizer, TEXTS, 64, masking)
    batch = tapt._collate(tokenizer, None)(items)
    ids, labels = tapt.mask_tokens(
        batch["input_ids"].clone(),
        batch["groups"],
        rate,
        tokenizer.mask_token_id,
        len(tokenizer),
        tokenizer.all_special_ids,
        np.random.default_rng(seed),
    )
    return batch, ids, labels


@pytest.mark.parametrize("masking", ["char", "word"])
def test_masking_rate_and_special_tokens(tokenizer, masking):
    batch, ids, labels = masked(tokenizer, masking)
    original = batch["input_ids"]
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    chosen = labels != -100
    assert not (chosen & special).any(), "special tokens and padding are never predicted"
    assert (labels[chosen] == original[chosen]).all()
    real = (~special).sum(dim=1)
    budget = torch.clamp(torch.round(0.15 * real), min=1)
    assert (chosen.sum(dim=1) >= 1).all() and (chosen.sum(dim=1) <= budget + (masking == "word") * 4).all()
    assert 0.10 < chosen.sum() / real.sum() < 0.20
    # of the predicted tokens about 80% become the mask token; the unchosen ones are untouched
    assert (ids[~chosen] == original[~chosen]).all()
    share_masked = (ids[chosen] == tokenizer.mask_token_id).float().mean()
    assert 0.6 < share_masked < 0.95


def test_character_masking_predicts_exactly_the_budget(tokenizer):
    batch, _, labels = masked(tokenizer, "char")
    real = (~torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids))).sum(dim=1)
    assert ((labels != -100).sum(dim=1) == torch.clamp(torch.round(0.15 * real), min=1)).all()


def test_whole_words_are_masked_together(tokenizer):
    items = tapt.token_groups(tokenizer, TEXTS[:4], 64, "word")
    for text, item in zip(TEXTS[:4], items):
        groups = [g for g in item["groups"] if g >= 0]
        sizes = np.bincount(groups)
        words = [w for w in jieba.lcut(text)]
        assert sorted(sizes.tolist()) == sorted(len(w) for w in words), "one group per jieba word, one token per char"
    for seed in range(5):
        batch, _, labels = masked(tokenizer, "word", seed=seed)
        for g_row, l_row in zip(batch["groups"], labels):
            for g in g_row[g_row >= 0].unique():
                hit = l_row[g_row == g] != -100
                assert hit.all() or not hit.any(), "a word is predicted whole or not at all"


def tapt_config(study, **tapt_settings) -> tapt.TaptConfig:
    settings = {"tapt_epochs": 2, "tapt_batch_size": 8, "tapt_max_len": 32} | tapt_settings
    return tapt.TaptConfig(
        study=study.settings, model="tiny-random", tapt=from_params(tapt.TaptSettings, settings), device="cpu"
    )


def test_adapted_encoder_reloads_fine_tunes_and_is_reused(tiny_study, tiny_sheet, caplog):
    pool = pd.read_csv(tiny_sheet(6, name="pool.csv"))[["Sentence"]]
    pool.loc[len(pool)] = ["一条新的评论"]
    pool_path = tiny_sheet(1, name="x.csv").parent / "pool_only.csv"
    pool.to_csv(pool_path, index=False)
    study = tiny_study(n_per_class=8, unlabelled_path=str(pool_path))
    with caplog.at_level(logging.WARNING):
        res = tapt.adapt(tapt_config(study), study, progress=False)
    assert "has no masked-language-model head" in caplog.text and res.info["new_head"] is True
    # pool texts that repeat labelled texts are counted and left out
    assert res.info["texts"]["pool"] + res.info["texts"]["pool_repeats_labelled"] == len(pool)
    assert res.info["texts"]["labelled"] == len(study.data.texts) and res.info["texts"]["pool"] >= 1
    assert list(res.probe["epoch"]) == [0, 1, 2] and np.isfinite(res.probe["probe_loss"]).all()
    assert (res.path / "model.safetensors").exists() and (res.path / tapt.HEAD_FILE).exists()
    assert not (res.path / "checkpoint").exists()
    # the adapted weights are what was saved, and the head comes back with them
    mlm, new = tapt.load_mlm(str(res.path))
    assert new is False
    head = load_file(str(res.path / tapt.HEAD_FILE))
    assert all(torch.equal(mlm.state_dict()[k], v) for k, v in head.items())
    # 03 takes the folder as its model: one fold fine-tunes from the adapted encoder
    cfg = from_params(
        bert_cv.FineTuneConfig, {"model": str(res.path), "epochs": 1, "batch_size": 8, "max_len": 32, "device": "cpu"}
    )
    job = bert_cv.FineTuneJob(bert_cv.replace(cfg, study=study.settings, train_final=False), study)
    job.run_folds([0])
    fold = job.fold_results(0)
    assert 0 <= fold.metrics["accuracy"].iloc[0] <= 1 and len(fold.predictions) > 0
    adapted = bert.load_classifier(str(res.path), study.data.label_names)
    base = load_file(str(res.path / "model.safetensors"))
    key = next(k for k in base if "encoder.layer.0.attention" in k and k.endswith("weight"))
    assert torch.equal(adapted.state_dict()[f"bert.{key}"], base[key])
    # a rerun reuses it; other settings under the same name are refused
    stamp = (res.path / tapt.INFO_FILE).stat().st_mtime
    assert tapt.adapt(tapt_config(study), study, progress=False).info == res.info
    assert (res.path / tapt.INFO_FILE).stat().st_mtime == stamp
    with pytest.raises(ResultsExistError, match="mask_rate"):
        tapt.adapt(tapt_config(study, mask_rate=0.3), study, progress=False)


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_encoder(tiny_study, monkeypatch):
    study = tiny_study(n_per_class=8)
    whole = tapt.adapt(tapt_config(study, tapt_name="whole"), study, progress=False)
    real = tapt._checkpoint

    def stop_after_first(*args, **kwargs):
        real(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(tapt, "_checkpoint", stop_after_first)
    cfg = tapt_config(study, tapt_name="resumed", save_every=2)
    with pytest.raises(Interrupted):
        tapt.adapt(cfg, study, progress=False)
    folder = study.folder("encoders") / "resumed"
    assert (folder / "checkpoint" / "state.json").exists() and not (folder / tapt.INFO_FILE).exists()
    monkeypatch.setattr(tapt, "_checkpoint", real)
    resumed = tapt.adapt(cfg, study, progress=False)
    a, b = load_file(str(whole.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed.probe["probe_loss"].round(6).tolist() == whole.probe["probe_loss"].round(6).tolist()


def test_without_a_pool_tapt_reads_the_labelled_texts_and_says_so(tiny_study, caplog):
    study = tiny_study(n_per_class=6)
    with caplog.at_level(logging.WARNING):
        texts, counts = tapt.mlm_texts(study)
    assert "TAPT reads the 18 labelled texts only" in caplog.text
    assert texts == list(study.data.texts) and counts["pool"] == 0


def test_a_pool_column_that_does_not_exist_is_named(tiny_study, tiny_sheet):
    study = tiny_study(n_per_class=6, unlabelled_path=str(tiny_sheet(2, name="pool.csv")), unlabelled_text_col="评论")
    with pytest.raises(DataError, match="评论"):
        tapt.mlm_texts(study)


def test_an_unknown_masking_is_refused(tokenizer):
    with pytest.raises(ValueError, match="masking='chars'"):
        tapt.token_groups(tokenizer, TEXTS[:1], 32, "chars")


def test_two_cpu_processes_adapt_together(tiny_study):
    study = tiny_study(n_per_class=8)
    cfg = bert_cv.replace(tapt_config(study, tapt_epochs=1), num_processes=2)
    res = tapt.adapt(cfg, study, progress=False)
    assert (res.path / "model.safetensors").exists() and (res.path / "tapt.log").exists()
    assert res.info["settings"]["num_processes"] == 2 and np.isfinite(res.probe["probe_loss"]).all()
    assert "2 process(es)" in (res.path / "tapt.log").read_text()


@pytest.fixture
def fresh_hardware_state():
    """accelerate's process-wide state and PyTorch's TF32 switches, restored after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision, tf32", [("bf16", True), ("fp32", False)])
def test_tapt_follows_fine_tunings_precision_rules(
    tiny_study, monkeypatch, caplog, fresh_hardware_state, precision, tf32
):
    monkeypatch.setattr(hardware, "cpu_bf16_native", lambda: False)  # a CPU that only emulates bf16
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    study = tiny_study(n_per_class=4)
    cfg = bert_cv.replace(tapt_config(study, tapt_epochs=1), precision=precision)
    with caplog.at_level(logging.WARNING):
        res = tapt.adapt(cfg, study, progress=False)
    assert ("precision='bf16' on a CPU without native bf16" in caplog.text) == (precision == "bf16")
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert res.info["identity"]["precision"] == precision


def test_tapt_learning_rate_warms_up_and_decays_linearly_per_optimizer_step(tiny_study, monkeypatch):
    study = tiny_study(n_per_class=8)  # 24 texts, batches of 8: 3 steps per epoch, 6 in all
    schedule, made = tapt.get_linear_schedule_with_warmup, []
    step, lrs = bert.clip_and_step, []
    monkeypatch.setattr(tapt, "get_linear_schedule_with_warmup", lambda *a: made.append(a[1:]) or schedule(*a))
    monkeypatch.setattr(
        bert,
        "clip_and_step",
        lambda model, optimizer, *a, **k: (
            lrs.append(optimizer.param_groups[0]["lr"]) or step(model, optimizer, *a, **k)
        ),
    )
    tapt.adapt(tapt_config(study, tapt_lr=1e-3, tapt_warmup_ratio=0.34), study, progress=False)
    assert made == [(2, 6)]  # int(0.34 × 6) warm-up steps
    # the former tapt._warmup_linear: step / warmup while warming up, then (total - step) / (total - warmup)
    expected = [1e-3 * f for f in (0, 1 / 2, 1, 3 / 4, 2 / 4, 1 / 4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=0)
