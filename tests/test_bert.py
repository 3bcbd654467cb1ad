"""Fine-tuning on tiny random encoders built from the data: each defect of the original code has a test."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from helpers import DEMO_LABELLED, ROOT, tiny_fold, write_tiny_sheet
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

from nblib import bert, bert_cv, hardware, results
from nblib.data import LabelledData, load_labelled
from nblib.results import ResultsExistError
from nblib.settings import from_params, to_params
from nblib.study import open_study


def tiny_data(folder: Path, n_per_class: int) -> LabelledData:
    return load_labelled(write_tiny_sheet(folder, n_per_class))


def make_config(**params) -> bert_cv.FineTuneConfig:
    """The settings from flat parameters, as 03_bert_cv builds them."""
    return from_params(bert_cv.FineTuneConfig, {"unlabelled_path": None} | params)


def with_params(cfg: bert_cv.FineTuneConfig, **params) -> bert_cv.FineTuneConfig:
    return from_params(bert_cv.FineTuneConfig, to_params(cfg) | params)


def cross_validate(cfg: bert_cv.FineTuneConfig):
    """What 03_bert_cv does: open the study, then every fold and the final model."""
    return bert_cv.FineTuneJob(cfg, open_study(cfg.study)).cross_validate()


TEXTS = ["只此青绿的舞美绝了", "在看CCTV1典籍里的中国", "三刷🉑️👍", "徐霞客游记一包纸巾😭不够用"]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts without accelerate's process-wide state, so that no test depends on which ran before
    (accelerate refuses an Accelerator whose device or mixed precision differs from an earlier one's)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


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
    with pytest.raises(
        bert.ModelNotAvailableError, match=r"(?s)bert-base-chinese.*HF_HUB_OFFLINE is set.*pass the folder"
    ):
        bert.resolve_model("bert-base-chinese")


def test_an_unreachable_hub_fails_at_once_with_the_ways_to_get_the_model(tmp_path):
    """With the hub blocked (HF_ENDPOINT at a closed local port), no retry loop: the message within seconds."""
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import time\nfrom nblib import bert\nt = time.perf_counter()\n"
        "try:\n    bert.resolve_model('bert-base-chinese')\n"
        "except bert.ModelNotAvailableError as e:\n    print(e)\n"
        "print(f'seconds={time.perf_counter() - t:.1f}')\n"
    )
    env = os.environ | {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert float(out.rsplit("seconds=", 1)[1]) < 5, out  # it was 23 s of "Retrying in 8s [Retry 5/5]"
    assert f"127.0.0.1:{port} cannot be reached" in out
    for way in (
        "HF_ENDPOINT=https://hf-mirror.com hf download",
        "modelscope download --model",
        "BERT_MODEL=",
        "-p model",
    ):
        assert way in out, (way, out)


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
    assert len(bert.param_groups(model, 0.01, new)) == 2 and all(
        "lr" not in g for g in bert.param_groups(model, 0.01, new)
    )


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
    d = tiny_data(tmp_path, n_per_class=20)
    enc = str(bert.build_tiny_encoder(d.texts, tmp_path / "enc"))
    tok = AutoTokenizer.from_pretrained(enc)
    ds = bert.Encoded(tok, d.texts, 32, d.labels)
    idx = np.random.default_rng(0).permutation(len(d.texts))
    res = bert.fine_tune(
        enc,
        d.label_names,
        ds.subset(idx[:45]),
        ds.subset(idx[45:52]),
        ds.subset(idx[52:]),
        bert.TrainSettings(epochs=6, batch_size=8, lr=3e-3, warmup_ratio=0.1),
        Accelerator(cpu=True),
        tok,
        seed=0,
        select_on="val_macro_f1",
    )
    assert res.history["train_loss"].iloc[-1] < res.history["train_loss"].iloc[0]
    assert (res.test_probs.argmax(1) == d.labels[idx[52:]]).mean() >= 0.75
    ranked = res.history.sort_values(["val_macro_f1", "val_loss"], ascending=[False, True], kind="stable")
    assert res.best_epoch == ranked["epoch"].iloc[0]  # best macro-F1, ties to the lower loss (the shared rule)


def test_frozen_word_embeddings_stay_fixed_while_the_encoder_learns(tmp_path, write_sheet):
    d = tiny_data(tmp_path, n_per_class=8)
    enc = str(bert.build_tiny_encoder(d.texts, tmp_path / "enc"))
    tok = AutoTokenizer.from_pretrained(enc)
    ds = bert.Encoded(tok, d.texts, 32, d.labels)
    before = bert.load_classifier(enc, d.label_names)
    res = bert.fine_tune(
        enc,
        d.label_names,
        ds,
        None,
        None,
        bert.TrainSettings(epochs=1, batch_size=8, lr=1e-3, freeze_embeddings=True),
        Accelerator(cpu=True),
        tok,
        seed=0,
        select_on="val_macro_f1",
    )
    after = res.model
    assert torch.equal(after.get_input_embeddings().weight, before.get_input_embeddings().weight)
    assert not torch.allclose(
        after.bert.encoder.layer[0].output.dense.weight, before.bert.encoder.layer[0].output.dense.weight
    )
    assert after.get_input_embeddings().weight.requires_grad is False


def small_config(tmp_path, write_sheet, **kw) -> bert_cv.FineTuneConfig:
    path = write_tiny_sheet(tmp_path, 8)
    return make_config(
        data_path=str(path),
        results_dir=str(tmp_path / "res"),
        model=bert.TINY_RANDOM,
        n_folds=3,
        epochs=2,
        batch_size=8,
        lr=1e-3,
        max_len=32,
        device="cpu",
        **kw,
    )


def test_cross_validation_fresh_model_per_fold_save_reload_and_resume(tmp_path, write_sheet):
    cfg = small_config(tmp_path, write_sheet)
    res = cross_validate(cfg)
    folder = next((tmp_path / "res").glob("tiny-*/models/bert_tiny-random"))
    assert len(list((folder / "environment").glob("*.json"))) == 1  # versions recorded once per session
    # every fold started from the same pretrained weights (the original code trained one model on across folds)
    source = next((tmp_path / "res").glob("tiny-*/encoders/tiny-random"))
    pretrained = bert.encoder_checksum(bert.load_classifier(str(source), ["a", "b", "c"]))
    assert np.allclose(res.metrics["encoder_checksum"], pretrained)
    trained = [
        bert.encoder_checksum(AutoModelForSequenceClassification.from_pretrained(folder / "fold_models" / f"fold_{k}"))
        for k in range(3)
    ]
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
    again = cross_validate(cfg)
    assert (folder / "folds" / "fold_2.csv").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.predictions, res.predictions)
    assert len(list((folder / "environment").glob("*.json"))) == 2
    with pytest.raises(ResultsExistError, match="lr"):
        cross_validate(with_params(cfg, lr=5e-4))


def test_interrupted_run_resumes_the_missing_fold(tmp_path, write_sheet):
    cfg = small_config(tmp_path, write_sheet, train_final=False, save_fold_models=False)
    first = cross_validate(cfg)
    folder = next((tmp_path / "res").glob("tiny-*/models/bert_tiny-random"))
    for f in folder.glob("folds/fold_1*"):
        f.unlink()  # as if the run had stopped during fold 1
    (folder / "metrics.csv").unlink()
    stamp = (folder / "folds" / "fold_0.csv").stat().st_mtime_ns
    again = cross_validate(cfg)
    assert (folder / "folds" / "fold_0.csv").stat().st_mtime_ns == stamp and (folder / "folds" / "fold_1.json").exists()
    pd.testing.assert_frame_equal(again.metrics.drop(columns="seconds"), first.metrics.drop(columns="seconds"))


@pytest.mark.parametrize("parallel", ["ddp", "folds"])
def test_two_cpu_processes_give_the_same_results_format(tmp_path, write_sheet, parallel):
    single = cross_validate(small_config(tmp_path / "one", write_sheet, train_final=False, save_fold_models=False))
    two = cross_validate(
        small_config(
            tmp_path / "two",
            write_sheet,
            num_processes=2,
            parallel=parallel,
            train_final=parallel == "ddp",
            save_fold_models=False,
            freeze_embeddings=parallel == "ddp",
        )
    )  # DDP skips frozen weights
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
        bert_cv._fine_tune_retrying(cfg, bert.TrainSettings(batch_size=8))
    assert calls == [1, 2, 4, 8]  # per-device batch 8 → 4 → 2 → 1, then the advice


# --- GPU and multi-process paths, checked on the CPU: mocked devices, CPU bf16 autocast, real subprocesses ---


def fake_gpus(monkeypatch, capability: tuple[int, int], count: int = 2) -> None:
    """Make torch report ``count`` CUDA GPUs of this compute capability."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # true with emulation even on a V100


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)])
def test_cpu_runs_fp32_unless_asked_and_bf16_is_native_only_with_the_instructions(
    monkeypatch, avx512_bf16, amx, native
):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert hardware.cpu_bf16_native() is native
    assert make_config(data_path="x.csv", device="cpu").resolved_precision() == "fp32"
    assert make_config(data_path="x.csv", device="cpu", precision="bf16").resolved_precision() == "bf16"


@pytest.mark.parametrize(
    "capability, precision", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_auto_precision_follows_the_compute_capability(monkeypatch, capability, precision):
    fake_gpus(monkeypatch, capability)
    assert make_config(data_path="x.csv").resolved_precision() == precision
    assert hardware.gpu_precision() == precision


@pytest.fixture
def tf32_switches():
    """PyTorch's process-wide TF32 switches, restored after the test (monkeypatch cannot restore them)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision, mixed, tf32", [("auto", "fp16", True), ("fp32", "no", False)])
def test_precision_is_decided_on_the_ranks_gpu_after_the_device_is_set(
    monkeypatch, tf32_switches, precision, mixed, tf32
):
    events = []

    class RankState:  # accelerate's PartialState under torchrun: sets this rank's GPU
        def __init__(self, cpu):
            events.append("device set")
            self.device = torch.device("cuda", 3)

    fake_gpus(monkeypatch, (7, 0), count=4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: events.append(device) or (7, 0))
    monkeypatch.setattr(hardware, "PartialState", RankState)
    monkeypatch.setattr(hardware, "Accelerator", lambda **kw: kw)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    made = hardware.make_accelerator(make_config(data_path="x.csv", device="cuda", precision=precision))
    assert made == {"cpu": False, "mixed_precision": mixed}
    assert events == (["device set", torch.device("cuda", 3)] if precision == "auto" else ["device set"])
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32  # no TF32 in fp32


def test_cuda_asked_for_without_cuda_is_an_error(tmp_path, write_sheet, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device='cuda'.*no CUDA GPU"):
        cross_validate(with_params(small_config(tmp_path, write_sheet), device="cuda"))


@pytest.mark.parametrize("visible", ["4,5", "GPU-8f6e0d3a-1b2c,GPU-77aa01bc-9d9e"])
def test_fold_workers_use_the_gpus_this_process_was_given(tmp_path, monkeypatch, visible):
    fake_gpus(monkeypatch, (8, 0), count=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    started = []
    monkeypatch.setattr(hardware, "_run_logged", started.extend)
    cfg = make_config(data_path="x.csv")
    hardware.launch_fold_workers(cfg, "nblib.bert_cv", tmp_path / "launch.json", [0, 1, 2, 3, 4], 2, tmp_path)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env, _ in started] == visible.split(",")
    workers = [json.loads((tmp_path / f"worker_{i}.json").read_text()) for i in range(2)]
    assert [cmd[cmd.index("--folds") + 1] for cmd, _, _ in started] == ["0,2,4", "1,3"]
    assert {(w["device"], w["precision"]) for w in workers} == {("cuda", "bf16")}  # no silent CPU run, one precision
    # more workers than GPUs: several folds side by side on one GPU, round-robin, CPU threads shared out
    started.clear()
    hardware.launch_fold_workers(cfg, "nblib.bert_cv", tmp_path / "launch.json", [0, 1, 2, 3, 4], 3, tmp_path)
    gpus = visible.split(",")
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env, _ in started] == [gpus[0], gpus[1], gpus[0]]
    assert [cmd[cmd.index("--folds") + 1] for cmd, _, _ in started] == ["0,3", "1,4", "2"]
    assert all(int(env["OMP_NUM_THREADS"]) >= 1 for _, env, _ in started)


def test_ddp_needs_a_gpu_per_process_and_the_final_model_uses_one_process_per_gpu(tmp_path, write_sheet, monkeypatch):
    fake_gpus(monkeypatch, (9, 0), count=1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "H100 (fake)")
    launched = []
    monkeypatch.setattr(hardware, "launch_torchrun", lambda *a, **k: launched.append(a))
    with pytest.raises(ValueError, match="num_processes=2 with parallel='ddp' needs one GPU per process, but 1"):
        cross_validate(with_params(small_config(tmp_path, write_sheet), device="cuda", num_processes=2, parallel="ddp"))
    assert not launched
    # two fold workers share the one GPU; the final model is then trained by one process, not a 2-process DDP
    cfg = with_params(small_config(tmp_path, write_sheet), device="cuda", num_processes=2, parallel="folds")
    workers, finals = [], []
    monkeypatch.setattr(hardware, "launch_fold_workers", lambda *a: workers.append(a[4]))
    monkeypatch.setattr(bert_cv.FineTuneJob, "train_final", lambda self: finals.append(1))
    monkeypatch.setattr(results.ModelRun, "finish", lambda self: None)
    bert_cv.FineTuneJob(cfg, open_study(cfg.study)).cross_validate()
    assert workers == [2] and finals == [1] and not launched
    # auto, more processes than pending folds (3) on one GPU: still folds side by side, never a DDP error
    cfg = with_params(small_config(tmp_path / "auto", write_sheet), device="cuda", num_processes=4)
    bert_cv.FineTuneJob(cfg, open_study(cfg.study)).cross_validate()
    assert workers == [2, 4] and not launched


def fold_inputs(tmp_path, write_sheet) -> dict:
    """The keyword arguments of bert.fine_tune for a tiny fold: 12 training texts, 6 test texts, no validation."""
    return tiny_fold(tmp_path, 6, n_train=12, n_val=0) | {"select_on": "val_macro_f1"}


def run_out_of_memory(module, args):
    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


class LoadSpy:
    """Wraps bert.load_classifier_and_new: weak references to the models loaded, how many earlier ones were still
    alive at each load, and optionally an out-of-memory error in the first model's first forward pass."""

    def __init__(self, monkeypatch, oom_first: bool = False):
        self.refs, self.alive_at_load = [], []
        real = bert.load_classifier_and_new

        def load(source, label_names):
            self.alive_at_load.append(sum(r() is not None for r in self.refs))
            model, new = real(source, label_names)
            if oom_first and not self.refs:
                model.register_forward_pre_hook(run_out_of_memory)
            self.refs.append(weakref.ref(model))
            return model, new

        monkeypatch.setattr(bert, "load_classifier_and_new", load)


def test_earlier_and_failed_models_are_freed_before_the_next_one_loads(tmp_path, write_sheet, monkeypatch):
    kw = fold_inputs(tmp_path, write_sheet)
    spy = LoadSpy(monkeypatch, oom_first=True)
    # CPU bf16 autocast: accelerate's forward wrapper puts each model in a reference cycle, as on a GPU
    cfg = make_config(data_path="x.csv", device="cpu", precision="bf16")
    settings = bert.TrainSettings(epochs=1, batch_size=4, lr=1e-3)
    for fold in range(2):  # as run_in_process does: the fold's result is dropped before the next fold
        res, settings = bert_cv._fine_tune_retrying(cfg, settings, seed=fold, **kw)
        assert res.model is spy.refs[-1]()
        del res
    assert spy.alive_at_load == [0, 0, 0]  # the try that ran out of memory, fold 0's retry, fold 1
    assert settings.grad_accum == 2


def test_a_fold_retried_after_out_of_memory_is_reseeded(tmp_path, write_sheet, monkeypatch):
    kw = fold_inputs(tmp_path, write_sheet)
    cfg = make_config(data_path="x.csv", device="cpu")
    settings = bert.TrainSettings(epochs=1, batch_size=4, lr=1e-3)
    direct, _ = bert_cv._fine_tune_retrying(cfg, replace(settings, grad_accum=2), seed=3, **kw)
    LoadSpy(monkeypatch, oom_first=True)
    retried, fitted = bert_cv._fine_tune_retrying(cfg, settings, seed=3, **kw)
    assert fitted.grad_accum == 2
    np.testing.assert_array_equal(retried.test_probs, direct.test_probs)


def test_a_batch_halved_after_out_of_memory_stays_halved_and_each_try_gets_a_fresh_accelerator(
    tmp_path, write_sheet, monkeypatch
):
    tries = []

    def fake_fine_tune(settings, accelerator, test, **kw):
        tries.append((settings.grad_accum, accelerator))
        if settings.grad_accum < 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return bert.FoldResult(np.full((len(test), 3), 1 / 3), pd.DataFrame({"epoch": [1]}), 1, None, 0.0)

    monkeypatch.setattr(bert, "fine_tune", fake_fine_tune)
    cross_validate(small_config(tmp_path, write_sheet, train_final=False, save_fold_models=False))
    assert [g for g, _ in tries] == [1, 2, 4, 4, 4]  # fold 0 finds what fits; folds 1 and 2 start there
    assert len({id(a) for _, a in tries}) == 5  # no fp16 loss-scale state carried from one model to the next


@pytest.mark.parametrize("init_scale, steps", [(float("inf"), 0), (1.0, 3)])
def test_the_schedule_does_not_advance_on_steps_the_loss_scaler_skipped(
    tmp_path, write_sheet, monkeypatch, init_scale, steps
):
    kw = fold_inputs(tmp_path, write_sheet)
    schedulers = []
    real = bert.get_linear_schedule_with_warmup
    monkeypatch.setattr(
        bert, "get_linear_schedule_with_warmup", lambda *a: schedulers.append(real(*a)) or schedulers[-1]
    )
    accelerator = Accelerator(cpu=True)
    # fp16 loss scaling as on a GPU (accelerate makes it only there); an infinite scale overflows every step
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    res = bert.fine_tune(
        settings=bert.TrainSettings(epochs=1, batch_size=4, lr=1e-3), accelerator=accelerator, seed=0, **kw
    )
    assert schedulers[0].last_epoch == steps  # 3 optimizer steps, as many scheduler steps as were taken
    assert (bert.encoder_checksum(res.model) == res.encoder_checksum) == (steps == 0)


def test_a_batch_that_does_not_divide_evenly_is_an_error(tmp_path, write_sheet, monkeypatch):
    kw = fold_inputs(tmp_path, write_sheet)
    with pytest.raises(ValueError, match="batch_size 8 is not a multiple of processes × grad_accum"):
        bert.fine_tune(
            settings=bert.TrainSettings(epochs=1, batch_size=8, grad_accum=3),
            accelerator=Accelerator(cpu=True),
            seed=0,
            **kw,
        )
    monkeypatch.setattr(hardware, "launch_torchrun", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="multiple of processes × grad_accum \\(3 × 1"):
        cross_validate(small_config(tmp_path, write_sheet, num_processes=3, parallel="ddp"))


WRITER = """
import sys, time
from pathlib import Path
from nblib.files import write_atomic
path, me = Path(sys.argv[1]), sys.argv[2]
(path.parent / f"ready_{me}").touch()
while len(list(path.parent.glob("ready_*"))) < 2:
    time.sleep(0.01)
for i in range(1500):
    write_atomic(path, lambda p: p.write_text(me * 1000))
"""


def test_atomic_writes_of_one_file_from_two_processes(tmp_path):
    target = tmp_path / "config.json"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(target), who], stderr=subprocess.PIPE, text=True)
        for who in "ab"
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["config.json", "ready_a", "ready_b"]  # no temporary left


PARENT = """
import os, signal, sys, time
from pathlib import Path
from nblib import hardware
signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the test runner ignores SIGINT
d = Path(sys.argv[1])
worker = "import os, sys, time; Path = __import__('pathlib').Path; Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(300)"
try:
    hardware._run_logged([([sys.executable, "-c", worker, str(d / f"worker_{i}.pid")], dict(os.environ),
                          d / f"worker_{i}.log") for i in range(2)])
except KeyboardInterrupt:
    time.sleep(300)  # the parent lives on: only its clean-up can have stopped the workers
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the death signal is Linux's prctl")
def test_fold_workers_do_not_outlive_an_interrupted_or_killed_parent(tmp_path):
    parents, workers = {}, {}
    try:
        for how in (signal.SIGINT, signal.SIGKILL):
            (tmp_path / how.name).mkdir()
            parents[how] = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / how.name)])
        for how, parent in parents.items():
            files = [tmp_path / how.name / f"worker_{i}.pid" for i in range(2)]
            assert wait_until(lambda: all(f.exists() and f.read_text() for f in files)), "workers did not start"
            workers[how] = [int(f.read_text()) for f in files]
            os.kill(parent.pid, how)
        for how, pids in workers.items():
            assert wait_until(lambda: not any(map(running, pids)), 30), (
                f"workers outlived a parent stopped by {how.name}"
            )
        assert parents[signal.SIGINT].poll() is None  # stopped by the parent's clean-up, not by its death
    finally:
        for pid in [p for pids in workers.values() for p in pids if running(p)] + [p.pid for p in parents.values()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for parent in parents.values():
            parent.wait()


def test_write_launch_makes_paths_absolute_and_trains_nothing(tmp_path, write_sheet, monkeypatch):
    cfg = small_config(tmp_path, write_sheet)
    bert.build_tiny_encoder(TEXTS, tmp_path / "models" / "enc")
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"Sentence": ["新标注的一条评论"], "Label": [1]}).to_csv(tmp_path / "annotated.csv", index=False)
    cfg = with_params(
        cfg, data_path="tiny.csv", results_dir="res", model="models/enc", extra_labelled_paths="annotated.csv"
    )
    path = bert_cv.FineTuneJob(cfg, open_study(cfg.study), write=False).write_launch()
    launch = from_params(bert_cv.FineTuneConfig, json.loads(path.read_text()))
    root = tmp_path.resolve()
    assert (launch.study.data_path, launch.study.results_dir, launch.model) == (
        str(root / "tiny.csv"),
        str(root / "res"),
        str(root / "models" / "enc"),
    )
    assert launch.study.extra_labelled_paths == [str(root / "annotated.csv")]
    assert path.parent.name == "bert_enc" and sorted(f.name for f in path.parent.iterdir()) == ["launch.json"]


def test_each_machine_of_a_multi_node_run_records_its_environment(tmp_path, write_sheet, monkeypatch):
    class NodeLeader:  # local rank 0 on the second machine of a torchrun job
        is_main_process, is_local_main_process, num_processes = False, True, 8

        def __init__(self, **kw):
            pass

        def wait_for_everyone(self):
            pass

    cfg = small_config(tmp_path, write_sheet)
    launch = bert_cv.FineTuneJob(cfg, open_study(cfg.study), write=False).write_launch()
    monkeypatch.setattr(bert_cv, "PartialState", NodeLeader)
    bert_cv.main(["--config", str(launch), "--folds", ""])
    folder = next((tmp_path / "res").glob("tiny-*/models/bert_tiny-random"))
    recorded = list((folder / "environment").glob("*.json"))
    assert len(recorded) == 1 and json.loads(recorded[0].read_text())["versions"]["torch"] == torch.__version__
    assert not (folder / "config.json").exists()  # results are still written by the main process only


def test_throughput_benchmark_runs_two_precisions_in_one_process(tiny_encoder, capsys):
    spec = importlib.util.spec_from_file_location("bert_throughput", ROOT / "benchmarks" / "bert_throughput.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    Accelerator(cpu=True)  # an Accelerator made earlier in this process
    for precision in ("fp32", "bf16"):  # CPU bf16 autocast stands in for a GPU's mixed precision
        benchmark.main(
            [
                "--cpu",
                "--model",
                tiny_encoder,
                "--precision",
                precision,
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--data",
                str(DEMO_LABELLED),
            ]
        )
    out = capsys.readouterr().out
    assert "nblib precision: fp32" in out and "nblib precision: bf16" in out
    assert len(re.findall(r"original\s+[\d.]+ texts/s\n\s+nblib\s+[\d.]+ texts/s\s+[\d.]+x the original", out)) == 2
