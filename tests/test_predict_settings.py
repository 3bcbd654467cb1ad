"""What a saved model carries for prediction (prediction.json), one PredictSettings for 05 and the command line,
max_len's default owned once, and the LSTM's units under their own name."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import re
import typing
from dataclasses import make_dataclass
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, write_tiny_sheet

from nblib import bert, bert_cv, cli, predict, settings, tapt
from nblib.baselines import BaselineConfig
from nblib.results import ResultsExistError
from nblib.settings import PredictSettings, SettingsError, StudySettings, from_params
from nblib.study_file import use_parameters

LABELS = ["节目制作", "文物典籍", "无关"]
LONG = "只此青绿的舞美绝了" * 22  # 198 characters: cut at 128 tokens, whole at 256
TEXTS = [LONG, "文物", "三刷"]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "nblib.predict"]


@pytest.fixture(scope="module")
def trained_at_256(tmp_path_factory):
    """A fold model and a final model that 03_bert_cv's job trained at max_len=256 (tiny random BERT, 1 epoch)."""
    from nblib.study import open_study

    tmp = tmp_path_factory.mktemp("run")
    study = open_study(write_tiny_sheet(tmp, 6, "tiny.csv"), n_folds=2, seed=0, results_dir=str(tmp / "res"))
    params = {"model": bert.TINY_RANDOM, "epochs": 1, "batch_size": 8, "max_len": 256, "device": "cpu"}
    cfg = from_params(bert_cv.FineTuneConfig, params | {"run_name": "long"})
    job = bert_cv.FineTuneJob(bert_cv.replace(cfg, study=study.settings), study)
    job.run_folds([0])
    job.train_final()
    return job.run


def test_03_writes_how_each_saved_model_reads_texts(trained_at_256):
    for folder in (trained_at_256.fold_model_dir(0), trained_at_256.final_dir):
        assert json.loads((folder / predict.RECORD_FILE).read_text()) == {"max_len": 256, "truncation": "head"}
        assert predict.load_record(folder) == predict.PredictionRecord(256, "head")


def test_a_model_trained_at_256_is_read_at_256_and_told_otherwise_warns(trained_at_256, tmp_path, caplog, capsys):
    model_dir = trained_at_256.final_dir
    pd.DataFrame({"Sentence": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    caplog.set_level(logging.INFO)
    out = predict.predict_file(model_dir, tmp_path / "in.csv", tmp_path / "a.csv")
    assert out["truncated"].tolist() == [False, False, False] and warnings_of(caplog) == []
    model, tok = predict.load_model(model_dir)
    assert model.record == predict.PredictionRecord(256, "head")
    assert predict.predict_texts(model, tok, TEXTS, progress=False)["truncated"].tolist() == [False, False, False]
    assert warnings_of(caplog) == []

    out = predict.predict_file(model_dir, tmp_path / "in.csv", tmp_path / "b.csv", max_len=128)
    assert out["truncated"].tolist() == [True, False, False]
    (warning,) = warnings_of(caplog)
    assert "max_len=128, but the model was trained with 256" in warning and "leave it unset" in warning
    caplog.clear()
    assert predict.main([str(model_dir), str(tmp_path / "in.csv"), str(tmp_path / "c.csv"), "--max-len", "128"]) == 0
    (warning,) = warnings_of(caplog)
    assert warning.startswith("--max-len 128, but the model was trained with 256")
    assert pd.read_csv(tmp_path / "c.csv")["truncated"].tolist() == [True, False, False]
    caplog.clear()
    predict.predict_texts(model, tok, TEXTS, truncation="head+tail", max_len=256, progress=False)
    (warning,) = warnings_of(caplog)  # max_len given as trained: no warning for it
    assert "truncation='head+tail', but the model was trained with 'head'" in warning
    predict.predict_texts(model, tok, TEXTS, truncation="head+tail", progress=False)
    assert len(warnings_of(caplog)) == 1  # once per model and value (05 passes it to every call)


def test_the_fold_ensemble_reads_as_its_fold_models(trained_at_256):
    model, _ = predict.load_model(trained_at_256.fold_model_dir(0))
    assert predict.reading(model) == (256, "head")
    assert predict.reading(model, 300, "head+tail") == (300, "head+tail")


@pytest.fixture(scope="module")
def old_model(tmp_path_factory):
    """A classifier saved as 03_bert_cv saved one before prediction.json existed."""
    folder = tmp_path_factory.mktemp("old")
    enc = bert.build_tiny_encoder(TEXTS, folder / "enc")
    model = bert.load_classifier(str(enc), LABELS)
    return bert.save_checkpoint(model, bert.load_tokenizer(str(enc)), folder / "final")


def test_a_model_without_the_record_warns_once_and_reads_with_the_old_defaults(old_model, caplog):
    caplog.set_level(logging.INFO)
    model, tok = predict.load_model(old_model)
    (warning,) = warnings_of(caplog)
    assert f"{old_model} has no prediction.json" in warning
    assert "max_len=128 and truncation='head', the defaults of its time" in warning
    assert model.record is None and predict.reading(model) == (settings.MAX_LEN, "head")
    out = predict.predict_texts(model, tok, TEXTS, progress=False)
    assert out["truncated"].tolist() == [True, False, False]
    predict.predict_texts(model, tok, TEXTS, max_len=256, progress=False)  # nothing to differ from: no warning
    assert len(warnings_of(caplog)) == 1


def test_a_damaged_record_is_one_message_naming_it(old_model, tmp_path):
    import shutil

    folder = Path(shutil.copytree(old_model, tmp_path / "final"))
    (folder / predict.RECORD_FILE).write_text('{"max_len": "long"}')
    with pytest.raises(bert.ModelNotAvailableError, match=r"prediction.json is damaged .*delete it to read texts"):
        predict.load_model(folder)


def test_predict_file_takes_its_options_by_keyword():
    params = list(inspect.signature(predict.predict_file).parameters.values())
    assert [p.name for p in params if p.kind is not p.KEYWORD_ONLY] == ["model_dir", "in_path", "out_path"]
    texts = inspect.signature(predict.predict_texts).parameters
    assert [p for p, v in texts.items() if v.kind is not v.KEYWORD_ONLY] == ["model", "tokenizer", "texts"]


def _rejects(ap: argparse.ArgumentParser, *args: str) -> bool:
    try:
        ap.parse_args(["m", "i", "o", *args])
    except SystemExit:
        return True
    return False


def test_cli_options_are_05s_settings_with_their_ranges(capsys):
    ap = predict.build_parser()
    fields, hints = settings.flat_fields(PredictSettings), typing.get_type_hints(PredictSettings)
    actions = {a.dest: a for a in ap._actions}
    for name, flag in predict.CLI_OPTIONS.items():
        f, action = fields[name], actions[name]
        assert (
            action.option_strings == [flag]
            and action.help.startswith(settings.help_of(f))
            and action.default == f.default
        )
        literal = [m for m in typing.get_args(hints[name]) or [hints[name]] if typing.get_origin(m) is typing.Literal]
        if literal:
            assert tuple(action.choices) == typing.get_args(literal[0])
        bounds = settings.range_of(f)
        if bounds is not None:  # the least value passes, one below is refused, with the settings' range in words
            assert ap.parse_args(["m", "i", "o", flag, str(int(bounds.ge))]).__dict__[name] == bounds.ge
            assert _rejects(ap, flag, str(int(bounds.ge) - 1))
            assert f"give a whole number ≥ {bounds.ge:g}" in capsys.readouterr().err
    header = settings.flat_fields(StudySettings)["header_row"]
    assert _rejects(ap, "--header-row", str(settings.range_of(header).ge - 1))
    assert not _rejects(ap, "--header-row", str(settings.range_of(header).ge))
    assert predict.DEVICES == typing.get_args(hints["device"]) and predict.ENSEMBLES == ("final", "folds")


def test_a_range_changed_in_the_settings_changes_the_command_line():
    narrower = make_dataclass("Narrower", [("batch_size", int, settings.setting(64, "texts per batch", ge=8))])
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", **cli.from_setting(narrower, "batch_size"))
    with pytest.raises(SystemExit):
        ap.parse_args(["--batch-size", "7"])
    assert ap.parse_args(["--batch-size", "8"]).batch_size == 8


def test_max_len_defaults_are_one_constant():
    assert bert_cv.FineTuneConfig().max_len == tapt.TaptSettings().tapt_max_len == settings.MAX_LEN == 128
    assert predict.OLD_RECORD.max_len == settings.MAX_LEN
    assert PredictSettings().max_len is None and PredictSettings().truncation is None  # as the model was trained
    written = [
        f"{p.name}:{i}"
        for p in sorted((ROOT / "nblib").glob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"max_len\w*\s*:[^=]*=\s*(setting\()?128\b", line)  # a default, not prose
    ]
    assert written == []


def test_the_lstm_units_have_their_own_name(tmp_path, capsys):
    assert "lstm_max_units" in settings.defaults(BaselineConfig) and "max_len" not in settings.defaults(BaselineConfig)
    study = tmp_path / "s.yaml"
    sheet = ROOT / "data" / "demo_labelled.xlsx"
    study.write_text(f"data_path: {sheet}\nmax_len: 64\n", encoding="utf-8")
    namespace = {"study": str(study), **settings.defaults(StudySettings), **settings.defaults(BaselineConfig)}
    use_parameters(namespace, "02_baselines")  # the file's max_len is BERT's now: said, not an error
    out = capsys.readouterr().out
    assert "max_len = 64 no longer applies to 02_baselines" in out and "now called lstm_max_units (128" in out
    assert namespace["lstm_max_units"] == 128
    with pytest.raises(SettingsError, match=r"max_len = 64 is no longer a parameter of 02_baselines: .*lstm_max_units"):
        use_parameters({**namespace, "study": None, "max_len": 64}, "02_baselines")  # -p max_len 64
    for notebook in ("03_bert_cv", "05_predict"):  # max_len stays BERT's: no note there
        use_parameters({"study": str(study)}, notebook)
        assert "no longer applies" not in capsys.readouterr().out
    demo = (ROOT / "data" / "demo_study.yaml").read_text(encoding="utf-8")
    assert not re.search(r"^max_len:", demo, re.M)


def test_a_baselines_run_saved_under_max_len_resumes_under_lstm_max_units(tiny_study):
    study = tiny_study()
    run = study.open_run("lstm_old", {"model": "lstm_old", "lstm_max_units": 128})
    run.lock.release()
    saved = json.loads(run.config_file.read_text())
    saved["max_len"] = saved.pop("lstm_max_units")  # as 02 wrote it before the rename
    run.config_file.write_text(json.dumps(saved))
    resumed = study.open_run("lstm_old", {"model": "lstm_old", "lstm_max_units": 128})
    assert json.loads(resumed.config_file.read_text())["lstm_max_units"] == 128
    resumed.lock.release()
    with pytest.raises(ResultsExistError, match="lstm_max_units"):  # a different value still refuses
        study.open_run("lstm_old", {"model": "lstm_old", "lstm_max_units": 64})
    bert = study.open_run("bert_x", {"model": "bert_x", "max_len": 128})  # BERT's max_len is not renamed
    bert.lock.release()
    with pytest.raises(ResultsExistError, match="max_len"):
        study.open_run("bert_x", {"model": "bert_x", "max_len": 64})
