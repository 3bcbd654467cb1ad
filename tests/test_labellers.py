"""05's labellers (nblib.labellers): a finished LLM run of 07 reopened to label new texts and feed the class shares,
local and through the API, and its bad input; a saved BERT model behind the same interface."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import DEMO_LABELLED, DEMO_UNLABELLED, TINY_WORDS
from llm_server import ChatServer

from nblib import baselines, labellers, llm, shares_pool
from nblib.calibration import Calibration
from nblib.codebook import Codebook
from nblib.layout import ModelNotAvailableError
from nblib.llm_api import ApiBackend, ApiError
from nblib.settings import PredictSettings
from nblib.sheets import DataError

KEY_ENV = "NBLIB_TEST_LABELLER_KEY"
KEY = "sk-test-labeller-5b1e9d0c7a2f4e8b"  # must appear in no file
NEW = ["", "舞美灯光都好看", "青铜文物真美", "   "]


@pytest.fixture
def llm_run(tiny_study):
    """A finished 1-shot run of the tiny random causal LM on a 3-fold tiny study: (study, run name, backend)."""
    study = tiny_study(n_per_class=6)
    codebook = Codebook.from_study(study)
    backend = llm.LocalBackend(llm.local_model(study, "tiny-random", codebook), device="cpu", batch_size=8)
    prompt = llm.render_prompt(codebook)
    res = llm.run_llm_folds(study, backend, prompt, k=1)
    return study, res.name, backend


def test_an_llm_run_labels_new_texts_with_its_final_prompt_calibrated_like_a_final_model(llm_run):
    study, name, backend = llm_run
    saved = json.loads((study.run_folder(name).path / "backend.json").read_text())
    assert saved == {"backend": "local", "model": backend.source, "chat": backend.chat, "dtype": "float32"}
    labeller = labellers.open_llm_run(study, name, device="cpu")
    assert labeller.label == name and labeller.names == ["0", "1", "2"] and labeller.k_shot == 1
    # the final prompt: one example per class from all labelled texts, fixed by the seed
    assert sorted(c for _, c in labeller.prompt.examples) == [0, 1, 2]
    assert {t for t, _ in labeller.prompt.examples} <= set(study.data.texts)
    everything = np.arange(len(study.data.texts))
    drawn = llm.draw_examples(study.data.texts, study.data.labels, everything, 1, study.settings.seed)
    assert labeller.prompt.examples == tuple((t, c) for _, t, c in drawn)
    out = labeller.predict_texts(NEW, progress=False)
    assert list(out.columns) == ["pred_id", "pred_label", "prob_0", "prob_1", "prob_2"]
    assert out["pred_id"].isna().tolist() == [True, False, False, True] and out["pred_label"][0] == ""
    raw = backend.score(labeller.prompt, NEW[1:3]).probs
    cal = study.run(name).pooled_calibration()
    assert cal.bias is not None and labeller.calibration == cal  # class biases fitted on the out-of-fold outputs
    assert cal.temperature == 1 and "temperature: 1, the folds fitted none" in labeller.describe()
    np.testing.assert_allclose(out.loc[1:2, ["prob_0", "prob_1", "prob_2"]].to_numpy(), cal.apply(raw), atol=1e-6)
    assert out.loc[1:2, "pred_id"].tolist() == cal.apply(raw).argmax(1).tolist()


def test_an_llm_run_labels_a_sheet_and_its_out_of_fold_errors_feed_the_class_shares(llm_run, tmp_path):
    study, name, _ = llm_run
    labeller = labellers.open_llm_run(study, name, device="cpu")
    pool = [f"{w}{i}" for i in range(5) for ws in TINY_WORDS.values() for w in ws]
    pd.DataFrame({"Sentence": pool, "show": ["A", "B"] * (len(pool) // 2) + ["A"] * (len(pool) % 2)}).to_excel(
        tmp_path / "pool.xlsx", index=False
    )
    table = labeller.predict_file(tmp_path / "pool.xlsx", tmp_path / "out.xlsx", column="Sentence")
    written = pd.read_excel(tmp_path / "out.xlsx")
    assert len(written) == len(pool) and list(written.columns[-5:]) == [
        "pred_id",
        "pred_label",
        "prob_0",
        "prob_1",
        "prob_2",
    ]
    record = json.loads((tmp_path / "out.xlsx.prompt.json").read_text())
    assert record["prompt"]["examples"] == [list(e) for e in labeller.prompt.examples]
    run = shares_pool.run_results(labeller.run_dir)
    got = shares_pool.pool_from_table(table, run.config["label_names"], run.predictions["text"], "Sentence", "show")
    assert got.probs.shape == (len(pool), 3) and set(got.groups) == {"A", "B"}
    with pytest.raises(FileExistsError):  # never overwritten
        labeller.predict_file(tmp_path / "pool.xlsx", tmp_path / "out.xlsx", column="Sentence")


def test_an_api_run_is_reopened_with_its_settings_the_key_from_the_environment_and_its_cache(
    tiny_study, tmp_path, monkeypatch
):
    study = tiny_study(n_per_class=6)
    codebook = Codebook.from_study(study)
    model = llm.local_model(study, "tiny-random", codebook)
    monkeypatch.setenv(KEY_ENV, KEY)
    with ChatServer(model, name="tiny-qwen", key=KEY) as server:
        api = ApiBackend(
            server.base_url,
            "tiny-qwen",
            KEY_ENV,
            cache_dir=study.path / "llm_cache",
            top_logprobs=len(server.tokenizer),
            max_tokens=2,
        )
        res = llm.run_llm_folds(study, api, llm.render_prompt(codebook), k=0)
        saved = json.loads((study.run_folder(res.name).path / "backend.json").read_text())
        assert (
            saved["base_url"] == server.base_url
            and saved["key_env"] == KEY_ENV
            and saved["top_logprobs"] == len(server.tokenizer)
        )
        labeller = labellers.open_llm_run(study, res.name)
        assert isinstance(labeller.backend, ApiBackend) and labeller.backend.settings() == api.settings()
        first = labeller.predict_texts(NEW[1:3])
        sent = server.requests
        again = labellers.open_llm_run(study, res.name).predict_texts(NEW[1:3])
        assert server.requests == sent  # a rerun is served from the study's cache
        pd.testing.assert_frame_equal(first, again)
        assert first["pred_id"].notna().all()
    files = [p for p in study.path.rglob("*") if p.is_file()]
    assert not [p for p in files if KEY.encode() in p.read_bytes()]
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ApiError, match=f"No API key: the environment variable {KEY_ENV}"):
        labellers.open_llm_run(study, res.name)


def test_bad_llm_runs_end_in_one_message(llm_run, tiny_study):
    study, name, _ = llm_run
    with pytest.raises(DataError, match=rf"No run 'llm_nope'.*LLM runs there: \['{name}'\]"):
        labellers.open_llm_run(study, "llm_nope")
    suite = baselines.BaselineSuite(study, baselines.BaselineConfig())
    suite.run("lr_tfidf_char")
    with pytest.raises(DataError, match="is not an LLM run of 07_llm"):
        labellers.open_llm_run(study, suite.run_name("lr_tfidf_char"))
    unfinished = llm.run_llm_folds(study, _Fixed(), llm.render_prompt(Codebook.from_study(study)), 0, which=[0])
    assert unfinished is None
    with pytest.raises(DataError, match=r"not finished \(folds done: \[0\]\): run 07_llm to the end"):
        labellers.open_llm_run(
            study, "llm_fixed_0shot_" + llm.render_prompt(Codebook.from_study(study)).fingerprint()[:8]
        )
    prompt_file = study.run_folder(name).path / "prompt.json"
    kept = prompt_file.read_text()
    prompt_file.write_text(kept.replace("类别", "分类"))
    with pytest.raises(DataError, match="is not the prompt .* was run with .*it was edited"):
        labellers.open_llm_run(study, name)
    prompt_file.write_text(kept)
    settings = study.run_folder(name).path / "backend.json"
    record = json.loads(settings.read_text())
    moved = record["model"] + "_moved"
    shutil.move(record["model"], moved)
    with pytest.raises(ModelNotAvailableError, match="put the model there again, or write where it lies now"):
        labellers.open_llm_run(study, name)
    shutil.move(moved, record["model"])
    settings.unlink()
    with pytest.raises(DataError, match="has no backend.json .*rerun 07_llm with the same settings"):
        labellers.open_llm_run(study, name)
    with pytest.raises(DataError, match="llm_run='x' and bert_run= are both given"):
        labellers.open_labeller(study, PredictSettings(llm_run="x", bert_run="bert_y"))
    with pytest.raises(DataError, match="llm_run='x' and model_dir= are both given"):
        labellers.open_labeller(study, PredictSettings(llm_run="x", model_dir="m"))
    with pytest.raises(DataError, match=r"max_len=64, ensemble='folds' apply to a BERT model, not to llm_run='x'"):
        labellers.open_labeller(study, PredictSettings(llm_run="x", max_len=64, ensemble="folds"))
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="device=cuda, but PyTorch sees no CUDA GPU"):
            labellers.open_llm_run(study, name, device="cuda")


@pytest.mark.parametrize(
    "damage, file",
    [
        (lambda r: "{not json", "backend.json"),
        (lambda r: json.dumps({**json.loads(r), "model": 5}), "backend.json"),
        (lambda r: json.dumps({k: v for k, v in json.loads(r).items() if k != "chat"}), "backend.json"),
        (lambda r: json.dumps({k: v for k, v in json.loads(r).items() if k != "verbalizations"}), "prompt.json"),
        (lambda r: "[1, 2]", "prompt.json"),
    ],
)
def test_a_damaged_run_record_is_one_message_naming_it(llm_run, damage, file):
    study, name, _ = llm_run
    path = study.run_folder(name).path / file
    path.write_text(damage(path.read_text()))
    with pytest.raises(DataError, match=rf"{file} is damaged .*rerun 07_llm with the run's settings"):
        labellers.open_llm_run(study, name, device="cpu")


def test_texts_the_backend_could_not_score_keep_their_rows_without_a_label(tmp_path, caplog):
    class Partial:
        name = "partial"

        def score(self, prompt, texts):
            probs = np.tile([0.6, 0.3, 0.1], (len(texts), 1))
            probs[0] = np.nan  # the first non-empty text: no valid answer
            return llm.Scores(probs, invalid=1)

        def settings(self) -> dict:
            return {"backend": "partial"}

    cal = Calibration(1.0, (0.0, 1.0, 0.0))
    labeller = labellers.LlmLabeller(tmp_path, Partial(), llm.Prompt("x"), ["a", "b", "c"], cal, 0)
    out = labeller.predict_texts(["", "一", "二", "  "])
    assert out["pred_id"].isna().tolist() == [True, True, False, True] and out["pred_label"].tolist()[:2] == ["", ""]
    np.testing.assert_allclose(
        out.loc[2, ["prob_a", "prob_b", "prob_c"]].to_numpy(float), cal.apply(np.array([[0.6, 0.3, 0.1]]))[0]
    )
    assert out.loc[2, "pred_label"] == "b"  # the class biases move the label
    assert "1 text(s) got no valid answer from partial" in caplog.text and "2 empty text(s)" in caplog.text


class _Fixed:
    """A backend that gives every text the same probabilities."""

    name = "fixed"
    DECISIVE = ("backend",)

    def score(self, prompt: llm.Prompt, texts) -> llm.Scores:
        return llm.Scores(np.tile([0.5, 0.3, 0.2], (len(texts), 1)))

    def settings(self) -> dict:
        return {"backend": "fixed"}


def test_05_labels_the_pool_and_estimates_shares_with_an_llm_run(run_notebook, tmp_path):
    """The demo study's pool labelled by a finished tiny-random LLM run instead of BERT, in 05 itself."""
    from nblib.study import open_study

    results = tmp_path / "results"
    study = open_study(str(DEMO_LABELLED), results_dir=str(results), unlabelled_path=str(DEMO_UNLABELLED))
    codebook = Codebook.from_study(study)
    backend = llm.LocalBackend(llm.local_model(study, "tiny-random", codebook), device="cpu", batch_size=32)
    res = llm.run_llm_folds(study, backend, llm.render_prompt(codebook), k=0)
    nb = run_notebook(
        "05_predict.ipynb",
        study=str(DEMO_LABELLED.parent / "demo_study.yaml"),
        results_dir=str(results),
        fig_dir=str(tmp_path / "figures"),
        llm_run=res.name,
        device="cpu",
        n_boot=20,
        shift_repeats=1,
        coverage_boot=10,
        n_to_label=10,
        al_start=60,
        al_batch=30,
        al_rounds=1,
        al_seeds=1,
    )
    out = next((study.path / "predictions").glob(f"demo_unlabelled_{res.name}.xlsx"))
    labelled = pd.read_excel(out)
    probs = labelled.filter(like="prob_")
    assert len(labelled) == len(pd.read_excel(DEMO_UNLABELLED)) and list(probs.columns) == [
        f"prob_{n}" for n in study.data.label_names
    ]
    scored = probs.notna().all(axis=1)
    assert scored.mean() > 0.95 and np.allclose(probs[scored].sum(axis=1), 1)
    assert (labelled.loc[scored, "pred_id"] == probs[scored].to_numpy().argmax(1)).all()
    assert (study.path / "predictions" / f"demo_unlabelled_{res.name}.xlsx.prompt.json").exists()
    shares = pd.read_csv(study.path / "predictions" / f"demo_unlabelled_{res.name}_shares.csv")
    assert shares["headline"].any() and shares["share"].between(0, 1).all()
    assert any(f"error rates from the out-of-fold predictions of {res.name}" in str(c.get("outputs")) for c in nb.cells)
