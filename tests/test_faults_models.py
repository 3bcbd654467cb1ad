"""Faults of model folders, run state and command-line arguments (issue 19): each ends in one message that names
the file or parameter and what to do, never in a wrong result or a traceback. See docs/faults.md."""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from nblib import bert, bert_cv, cli, layout, predict, self_training, tapt
from nblib.layout import RunFolder
from nblib.sheets import DataError

LABELS = ["节目制作", "文物典籍", "无关"]
TEXTS = ["只此青绿的舞美绝了", "文物", "三刷好看", "典籍里的中国"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return bert.build_tiny_encoder(TEXTS * 2, tmp_path_factory.mktemp("enc") / "enc", hidden=32)


@pytest.fixture(scope="module")
def model(encoder, tmp_path_factory) -> Path:
    """A complete saved classifier (not inside a run folder: nothing marks it, its files are checked)."""
    torch.manual_seed(0)
    clf = bert.load_classifier(str(encoder), LABELS)
    return bert.save_checkpoint(clf, bert.load_tokenizer(str(encoder)), tmp_path_factory.mktemp("m") / "model")


@pytest.fixture
def sheet(tmp_path) -> Path:
    path = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": TEXTS}).to_csv(path, index=False)
    return path


def copy_of(model: Path, to: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(model, to)
    for name in drop:
        (to / name).unlink()
    return to


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = predict.main([str(a) for a in args])
    return code, capsys.readouterr().err


def make_run(root: Path, name: str, encoder: Path, final_done: bool = True, fold_done: bool = True) -> Path:
    """A run folder as 03_bert_cv leaves it (config, folds/, fold_models/fold_0, final/), finished or not."""
    run = root / "models" / name
    (run / "folds").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": name, "n_folds": 1}))
    tok = bert.load_tokenizer(str(encoder))
    for folder in (run / "fold_models" / "fold_0", run / "final"):
        bert.save_checkpoint(bert.load_classifier(str(encoder), LABELS), tok, folder)
    if fold_done:
        (run / "folds" / "fold_0.json").write_text("{}")
    if final_done:
        (run / "final" / "training.json").write_text("{}")
    return run


# --- 1. tokenizer files ------------------------------------------------------------------------------------


def test_a_model_folder_without_its_tokenizer_files_is_refused_everywhere(tmp_path, model, sheet, capsys):
    bare = copy_of(model, tmp_path / "bare", drop=("tokenizer.json", "tokenizer_config.json"))
    code, err = run_cli(capsys, bare, sheet, tmp_path / "out.csv")
    assert code == 2 and not (tmp_path / "out.csv").exists()
    assert f"{bare} has no tokenizer files (none of tokenizer.json, vocab.txt" in err and "[UNK]" in err
    for load in (predict.load_model, bert.load_tokenizer, tapt.load_mlm):  # 05, 03's local folder, TAPT sources
        with pytest.raises(bert.ModelNotAvailableError, match="has no tokenizer files"):
            load(str(bare))
    with pytest.raises(bert.ModelNotAvailableError, match="has no tokenizer files"):  # a self-training teacher
        self_training.pseudo_labels(bare, pd.DataFrame({"text": TEXTS, "row": range(4)}), None, 32, "head", "cpu")


def test_a_vocabulary_of_special_tokens_only_is_refused(tmp_path, model):
    broken = copy_of(model, tmp_path / "broken", drop=("tokenizer.json",))
    (broken / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(bert.ModelNotAvailableError, match=r"has 5 tokens, all special.*\[UNK\]"):
        bert.load_tokenizer(str(broken))


def test_a_tokenizer_that_reads_the_texts_as_unk_is_refused(encoder, tmp_path, caplog):
    other = ["Quite other letters", "hello world"]
    large = bert.build_tiny_encoder(TEXTS, tmp_path / "large", hidden=16, layers=1, vocab_size=3000)
    tok = bert.load_tokenizer(str(large))
    with pytest.raises(bert.ModelNotAvailableError, match=rf"tokenizer of {large} reads \d+ of the \d+ tokens"):
        bert.Encoded(tok, other, 32, labels=[0, 1])  # 03, and predict's texts, teachers' pools
    with pytest.raises(bert.ModelNotAvailableError, match="vocabulary does not fit them"):
        tapt.token_groups(tok, other, 32, "char")  # TAPT's texts
    bert.Encoded(bert.load_tokenizer(str(encoder)), other, 32)  # a small (tiny-random) vocabulary: a warning
    assert "does not fit them" in caplog.text and "small test vocabulary" in caplog.text


# --- 2. damaged files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]), "model.safetensors is damaged"),
        (lambda f: f.write_bytes(b""), "model.safetensors is empty"),
        (lambda f: f.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":'), "model.safetensors is damaged"),
    ],
    ids=["half-written", "empty", "garbage"],
)
def test_damaged_weights_are_one_message(tmp_path, model, sheet, capsys, damage, expected):
    folder = copy_of(model, tmp_path / "m")
    damage(folder / "model.safetensors")
    code, err = run_cli(capsys, folder, sheet, tmp_path / "out.csv")
    assert code == 2 and expected in err and str(folder) in err
    assert "copy the complete model folder again" in err.lower() and "Traceback" not in err


def test_broken_config_and_calibration_are_one_message(tmp_path, model, sheet, capsys):
    folder = copy_of(model, tmp_path / "m")
    (folder / "config.json").write_text('{"model_type": "bert", "hidden')
    code, err = run_cli(capsys, folder, sheet, tmp_path / "out.csv")
    assert code == 2 and f"{folder / 'config.json'} is damaged: not valid JSON" in err
    shutil.copy(model / "config.json", folder / "config.json")
    (folder / "calibration.json").write_text('{"temperature": ')
    code, err = run_cli(capsys, folder, sheet, tmp_path / "out.csv")
    assert code == 2 and f"{folder / 'calibration.json'} is damaged" in err and "delete the file" in err
    (folder / "calibration.json").write_text('{"bias": [1, 2]}')  # valid JSON, no temperature
    assert run_cli(capsys, folder, sheet, tmp_path / "out.csv")[0] == 2


def test_a_folder_without_weights_is_one_message(tmp_path, model, sheet, capsys):
    folder = copy_of(model, tmp_path / "m", drop=("model.safetensors",))
    code, err = run_cli(capsys, folder, sheet, tmp_path / "out.csv")
    assert code == 2 and f"{folder} has no model weights (none of model.safetensors" in err


# --- 3. the done marker ------------------------------------------------------------------------------------


def test_a_half_written_final_model_is_never_taken_for_a_finished_one(tiny_study, encoder, capsys, sheet, tmp_path):
    study = tiny_study()
    good = make_run(study.path, "bert_old", encoder)
    half = make_run(study.path, "bert_new", encoder, final_done=False)  # killed while saving: no training.json
    weights = half / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert study.final_model() == good / "final"  # the newer, half-written one is left out
    with pytest.raises(layout.ModelNotAvailableError, match=r"bert_new/final is not a completely saved final model"):
        study.final_model("bert_new")
    assert RunFolder(half).saved_models() == [half / "fold_models" / "fold_0"]
    code, err = run_cli(capsys, half / "final", sheet, tmp_path / "out.csv")
    assert code == 2 and "training.json is missing" in err and "rerun 03_bert_cv with the same run_name" in err
    with pytest.raises(DataError, match="no .finished. final model"):  # a self-training teacher
        self_training.teacher_model(RunFolder(half), None)


def test_a_final_folder_with_only_its_config_is_a_message(tiny_study, encoder, sheet, tmp_path, capsys):
    study = tiny_study()
    run = make_run(study.path, "bert_x", encoder, final_done=False)
    for f in (run / "final").iterdir():
        if f.name != "config.json":
            f.unlink()
    with pytest.raises(FileNotFoundError, match=r"No final model.*training.json is missing"):
        study.final_model()
    code, err = run_cli(capsys, run / "final", sheet, tmp_path / "out.csv")
    assert code == 2 and "not a completely saved final model" in err
    (run / "final" / "training.json").write_text("{}")  # marked, but the files are gone: they are named
    code, err = run_cli(capsys, run / "final", sheet, tmp_path / "out.csv")
    assert code == 2 and "has no tokenizer files" in err


def test_unfinished_fold_models_and_tapt_encoders_are_refused(tmp_path, encoder, sheet, capsys):
    run = make_run(tmp_path, "bert_x", encoder, fold_done=False)
    code, err = run_cli(capsys, run, sheet, tmp_path / "out.csv", "--ensemble", "folds")
    assert code == 2 and "fold_0.json is missing" in err
    with pytest.raises(DataError, match="no saved model for fold 0"):
        self_training.teacher_model(RunFolder(run), 0)
    adapted = copy_of(encoder, tmp_path / "study" / "encoders" / "tapt_enc")  # TAPT killed while saving
    with pytest.raises(bert.ModelNotAvailableError, match=r"not a completely saved TAPT encoder.*tapt.json"):
        bert.load_tokenizer(str(adapted))  # 03 fine-tuning it
    (adapted / layout.TAPT_DONE).write_text("{}")
    assert len(bert.load_tokenizer(str(adapted))) > 5


# --- 8. numeric arguments ----------------------------------------------------------------------------------


def test_max_len_beyond_the_models_positions_is_refused_up_front(tmp_path, model, sheet, capsys):
    code, err = run_cli(capsys, model, sheet, tmp_path / "out.csv", "--max-len", "100000")
    assert (
        code == 2 and "--max-len 100000 is out of range" in err and "to 512, the model's max_position_embeddings" in err
    )
    assert not (tmp_path / "out.csv").exists()
    clf, tok = predict.load_model(model)
    with pytest.raises(DataError, match=r"max_len=600 is out of range.*to 512"):  # 05
        predict.predict_texts(clf, tok, TEXTS, max_len=600, progress=False)
    with pytest.raises(DataError, match=r"max_len=2 is out of range: give a whole number from 3"):
        predict.predict_texts(clf, tok, TEXTS, max_len=2, progress=False)
    with pytest.raises(DataError, match=r"batch_size=0 is out of range"):
        predict.predict_texts(clf, tok, TEXTS, batch_size=0, progress=False)


def test_max_len_is_checked_where_03_meets_its_model(tmp_path, tiny_sheet):
    cfg = bert_cv.from_params(
        bert_cv.FineTuneConfig,
        {"data_path": str(tiny_sheet()), "unlabelled_path": None, "results_dir": str(tmp_path / "res")}
        | {"model": bert.TINY_RANDOM, "max_len": 100000, "n_folds": 2},
    )
    with pytest.raises(DataError, match=r"max_len=100000 is out of range.*to 512"):
        bert_cv.FineTuneJob(cfg, bert_cv.open_study(cfg.study), write=False)


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--max-len", "0", "argument --max-len: 0 is out of range: give a whole number ≥ 1"),
        ("--batch-size", "0", "argument --batch-size: 0 is out of range"),
        ("--batch-size", "-3", "argument --batch-size: -3 is out of range"),
        ("--header-row", "0", "argument --header-row: 0 is out of range"),
        ("--max-len", "abc", "argument --max-len: 'abc' is not a whole number"),
    ],
)
def test_every_numeric_option_of_predict_is_checked_before_any_work(
    tmp_path, model, sheet, capsys, flag, value, expected
):
    with pytest.raises(SystemExit) as stop:
        predict.main([str(model), str(sheet), str(tmp_path / "out.csv"), flag, value])
    assert stop.value.code == 2 and expected in capsys.readouterr().err


def test_bert_cv_worker_checks_its_folds(tmp_path, tiny_sheet, capsys):
    cfg = bert_cv.from_params(bert_cv.FineTuneConfig, {"data_path": str(tiny_sheet()), "n_folds": 3})
    (tmp_path / "launch.json").write_text(json.dumps(bert_cv.to_params(cfg)))
    with pytest.raises(SystemExit):
        bert_cv.main(["--config", str(tmp_path / "launch.json"), "--folds", "1,7"])
    assert "argument --folds: fold(s) [7] out of range: this run has folds 0 to 2" in capsys.readouterr().err
    for value, expected in [
        ("-1", "-1 is out of range"),
        ("0,x", "'x' is not a whole number"),
    ]:
        with pytest.raises(SystemExit):
            bert_cv.main(["--config", str(tmp_path / "launch.json"), "--folds", value])
        assert f"argument --folds: {expected}" in capsys.readouterr().err


def test_cli_range_helpers():
    assert cli.int_in(1, 5)("5") == 5 and cli.positive_int("7") == 7 and cli.int_list()("0, 2") == [0, 2]
    assert cli.float_in(0, 1, low_open=True)("0.5") == 0.5
    for parse, text, words in [
        (cli.int_in(1, 5), "6", "from 1 to 5"),
        (cli.float_in(0, 1, low_open=True), "0", "> 0 and ≤ 1"),
        (cli.float_in(0), "nan", "≥ 0"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse(text)
    assert cli.sheet_choice("1") == 1 and cli.sheet_choice("数据") == "数据"


# --- unclear messages of the prediction command line --------------------------------------------------------


def test_sheet_given_as_a_number_selects_by_position(tmp_path, model, capsys):
    with pd.ExcelWriter(tmp_path / "in.xlsx") as w:
        pd.DataFrame({"x": [1]}).to_excel(w, sheet_name="notes", index=False)
        pd.DataFrame({"Sentence": TEXTS}).to_excel(w, sheet_name="texts", index=False)
    code, _ = run_cli(capsys, model, tmp_path / "in.xlsx", tmp_path / "out.csv", "--sheet", "1")
    assert code == 0 and pd.read_csv(tmp_path / "out.csv")["Sentence"].tolist() == TEXTS


def test_an_unwritable_output_is_refused_before_the_model_loads(tmp_path, model, sheet, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(predict, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code, err = run_cli(capsys, model, sheet, tmp_path / "afile" / "out.csv")
    assert code == 2 and f"{tmp_path / 'afile'} is a file, not a folder" in err

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    code, err = run_cli(capsys, model, sheet, tmp_path / "out.csv")
    assert code == 2 and f"Cannot write to {tmp_path} (Read-only file system)" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_an_error(tmp_path, model, sheet, capsys):
    code, err = run_cli(capsys, model, sheet, tmp_path / "out.csv", "--device", "cuda")
    assert code == 2 and "--device cuda, but PyTorch sees no CUDA GPU" in err
    clf, tok = predict.load_model(model)
    with pytest.raises(DataError, match="device=cuda, but PyTorch sees no CUDA GPU"):  # 05
        predict.predict_texts(clf, tok, TEXTS, device="cuda", progress=False)


def test_predict_help_gives_every_option_a_help_text_and_its_default(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    out = capsys.readouterr().out
    options = [
        "--column", "--sheet", "--header-row", "--encoding", "--batch-size", "--max-len",
        "--truncation", "--device", "--overwrite", "--ensemble",
    ]  # fmt: skip
    blocks = {o: out.split(f"  {o}")[1].split("\n  -")[0] for o in options}
    assert all("(default:" in b for b in blocks.values()), {o: b for o, b in blocks.items() if "(default:" not in b}
