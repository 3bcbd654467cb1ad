"""The LLM classifier (issue 21): codebook, prompts, the local backend's label scoring, runs on the folds, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_WORDS

from nblib import bert, llm
from nblib.bert import build_tiny_encoder
from nblib.codebook import Codebook, read_codebook
from nblib.layout import ModelNotAvailableError
from nblib.sheets import DataError

TEXTS = ["这个节目太好看了", "文物真美", "中华文化博大精深", "今天天气不错", "演员演得很好啊啊啊啊", "青铜器"]
NAMES = ["节目", "文物", "文化", "无关"]


@pytest.fixture(scope="module")
def codebook() -> Codebook:
    return Codebook.from_frame(
        pd.DataFrame(
            {
                "Label": [0, 1, 2, 3],
                "Name": NAMES,
                "Description": ["节目本身", "文物和古籍", "文化与精神", "与节目无关"],
                "Examples": ["舞美太美了|演员很用心", "", "", ""],
            }
        )
    )


@pytest.fixture(scope="module")
def backend(tmp_path_factory, codebook) -> llm.LocalBackend:
    words = codebook.to_frame().to_string() + "例子一二三四五六七舞美好"
    folder = llm.build_tiny_causal_lm(TEXTS, tmp_path_factory.mktemp("lm") / "tiny", extra_text=words, hidden=32)
    return llm.LocalBackend(str(folder), device="cpu", batch_size=2)


def brute_force(backend: llm.LocalBackend, prompt: llm.Prompt, texts: list[str]) -> np.ndarray:
    """Each (text, label) pair's answer log-likelihood from one plain forward pass of its whole sequence."""
    prefix, text_ids, answers = backend.encode(prompt, texts)
    out = np.empty((len(texts), len(answers)))
    for i, t in enumerate(text_ids):
        for c, a in enumerate(answers):
            with torch.no_grad():
                logits = backend.model(torch.tensor([prefix + t + a])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            start = len(prefix) + len(t) - 1
            out[i, c] = sum(logp[start + j, tok].item() for j, tok in enumerate(a))
    return out


@pytest.mark.parametrize("verbalize", ["label", "name"])
@pytest.mark.parametrize("chat", [True, False])
def test_label_log_likelihoods_equal_a_brute_force_forward_and_prefix_reuse_equals_naive(
    backend, codebook, verbalize, chat
):
    backend.chat = chat
    try:
        verbs = NAMES if verbalize == "name" else None
        prompt = llm.render_prompt(codebook, examples=[(TEXTS[0], 0), (TEXTS[1], 1)], verbalizations=verbs)
        texts = TEXTS[2:5]  # two batches, texts of different lengths (padding)
        answers = backend.encode(prompt, texts)[2]
        assert (max(map(len, answers)) > 1) == (verbalize == "name")  # names: several tokens per answer
        cached = backend.log_likelihoods(prompt, texts)
        naive = backend.log_likelihoods(prompt, texts, reuse_prefix=False)
        brute = brute_force(backend, prompt, texts)
        np.testing.assert_allclose(cached, brute, atol=1e-4)
        np.testing.assert_allclose(naive, brute, atol=1e-4)
        probs = bert.softmax(cached)
        np.testing.assert_allclose(probs, bert.softmax(naive), atol=1e-5)
        np.testing.assert_allclose(backend.score(prompt, texts).probs, probs, atol=1e-6)
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-9)
        assert not np.allclose(probs, probs[0])  # texts differ, so do their probabilities
    finally:
        backend.chat = True


def test_scores_count_every_texts_prompt_tokens(backend, codebook):
    prompt = llm.render_prompt(codebook)
    prefix, text_ids, answers = backend.encode(prompt, TEXTS)
    s = backend.score(prompt, TEXTS)
    assert s.tokens_in == len(TEXTS) * len(prefix) + sum(map(len, text_ids))
    assert s.tokens_out == len(TEXTS) * 4 and s.invalid == 0 and s.requests == 0 and s.cost is None


def test_chat_prompt_shows_instruction_examples_and_text(backend, codebook):
    prompt = llm.render_prompt(codebook, examples=[("舞美好", 0)])
    shown = backend.render(prompt, "青铜器")
    assert shown.index("编码手册") < shown.index("舞美好") < shown.index("青铜器")
    assert "0：节目。节目本身" in prompt.instruction and "「舞美太美了」" in prompt.instruction
    assert shown.endswith("<|im_start|>assistant\n")
    unknown = backend.tokenizer.unk_token_id
    assert unknown not in backend.encode(prompt, TEXTS)[0]  # the tiny vocabulary covers the template


def test_prompt_fingerprint_changes_with_what_decides_it(codebook):
    base = llm.render_prompt(codebook)
    assert base.fingerprint() == llm.render_prompt(codebook).fingerprint()
    others = [
        llm.render_prompt(codebook, template=llm.PARAPHRASES[1]),
        llm.render_prompt(codebook, examples=[("x", 1)]),
        llm.render_prompt(codebook, verbalizations=NAMES),
        llm.render_prompt(codebook, language="en"),
    ]
    assert len({p.fingerprint() for p in [base, *others]}) == 5


def test_prompt_longer_than_the_context_names_the_numbers_and_the_k_that_fits(backend, codebook):
    examples = [(t, c) for c in range(4) for t in (f"{NAMES[c]}例子一二三", f"{NAMES[c]}例子四五六七")]
    prompt = llm.render_prompt(codebook, examples=examples)
    zero, _, _ = backend.encode(prompt.with_examples([]), TEXTS)
    one, _, _ = backend.encode(prompt.with_examples(llm.first_per_class(examples, 1)), TEXTS)
    full, text_ids, _ = backend.encode(prompt, TEXTS)
    old, longest = backend.context, max(map(len, text_ids))
    backend.context = len(one) + longest + 1  # one example per class fits, two do not
    try:
        with pytest.raises(llm.PromptTooLongError) as e:
            backend.score(prompt, TEXTS)
    finally:
        backend.context = old
    msg = str(e.value)
    assert f"context of {len(one) + longest + 1} tokens" in msg and f"8 examples take {len(full)} tokens" in msg
    assert f"the longest text {longest} and the longest answer 1, {len(full) + longest + 1} in all" in msg
    assert "set k_shot=1" in msg and isinstance(e.value, DataError)
    assert len(zero) < len(one) < len(full)


def test_a_folder_that_is_not_a_causal_lm_is_refused_with_one_message(tmp_path):
    folder = build_tiny_encoder(TEXTS, tmp_path / "bert")
    with pytest.raises(ModelNotAvailableError, match="holds a 'bert' model .* not a causal language model"):
        llm.LocalBackend(str(folder), device="cpu")
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        llm.LocalBackend(str(tmp_path / "nothing"), device="cpu")


def test_a_label_without_a_name_is_refused(tmp_path):
    path = tmp_path / "codebook.csv"
    pd.DataFrame({"Label": [0, 1], "Name": ["节目", None], "Description": ["a", "b"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"label 1 \(row 2 of the table\) has no name"):
        read_codebook(path)


def test_codebook_files_round_trip_and_align_with_the_study(tmp_path, tiny_study):
    rows = [
        {"Label": 2, "Name": "文化", "Examples": ["文化自信", "民族精神"]},
        {"label": 0, "name": "节目", "description": "舞美与演员"},
        {"Label": 1, "Name": "文物"},
    ]
    yml = tmp_path / "codebook.yaml"
    import yaml

    yml.write_text(yaml.safe_dump({"codebook": rows}, allow_unicode=True), encoding="utf-8")
    book = read_codebook(yml)
    assert book.names == ["文化", "节目", "文物"] and book.entries[0].examples == ("文化自信", "民族精神")
    frame = book.to_frame()
    assert list(frame.columns) == ["Label", "Name", "Description", "Include", "Exclude", "Examples"]
    xlsx = tmp_path / "codebook.xlsx"
    frame.to_excel(xlsx, index=False)
    assert read_codebook(xlsx) == book
    study = tiny_study(n_per_class=4)
    assert llm.study_codebook(study, str(yml)).labels == [0, 1, 2]
    with pytest.raises(DataError, match=r"has no row for label\(s\) \[2\]"):
        Codebook(book.entries[1:]).for_data(study.data)


def test_examples_come_only_from_the_training_part_and_are_fixed_by_the_seed():
    texts = np.array([f"t{i}" for i in range(60)], dtype=object)
    labels = np.arange(60) % 3
    pool = np.arange(30)
    a = llm.draw_examples(texts, labels, pool, 2, seed=5)
    assert a == llm.draw_examples(texts, labels, pool, 2, seed=5) != llm.draw_examples(texts, labels, pool, 2, seed=6)
    assert all(i < 30 and labels[i] == c and texts[i] == t for i, t, c in a)
    assert sorted(np.bincount([c for _, _, c in a])) == [2, 2, 2]
    assert llm.draw_examples(texts, labels, pool, 0, seed=5) == []


class Counting:
    """A backend that counts its calls and answers from the texts' marker words (or refuses to be called)."""

    def __init__(self, refuse: bool = False, unscored: int = 0):
        self.name, self.calls, self.prompts, self.refuse, self.unscored = "stub", 0, [], refuse, unscored

    DECISIVE = ("backend",)

    def settings(self) -> dict:
        return {"backend": "stub"}

    def score(self, prompt: llm.Prompt, texts) -> llm.Scores:
        if self.refuse:
            raise AssertionError("a finished fold was scored again")
        self.calls += 1
        self.prompts.append(prompt)
        probs = np.full((len(texts), 3), 0.1)
        for i, t in enumerate(texts):
            probs[i, next(c for c, ws in TINY_WORDS.items() if any(w in t for w in ws))] = 0.8
        probs[: self.unscored] = np.nan  # texts the backend could not score
        return llm.Scores(
            probs, invalid=self.unscored, tokens_in=10 * len(texts), tokens_out=len(texts), seconds=0.5, requests=3
        )


def test_llm_run_on_the_folds_keeps_examples_out_of_each_test_fold_and_a_rerun_is_served_from_results(tiny_study):
    study = tiny_study(n_per_class=6)
    prompt = llm.render_prompt(Codebook.from_study(study), template="分类：{codebook}")
    stub = Counting()
    res = llm.run_llm_folds(study, stub, prompt, k=2, template="分类：{codebook}")
    assert stub.calls == 3 and len(res.predictions) == len(study.data.df)
    for fold in range(3):
        saved = json.loads((study.run_folder(res.name).path / "prompts" / f"fold_{fold}.json").read_text())
        test = set(np.flatnonzero(study.folds == fold))
        assert len(saved["examples"]) == 6 and not test & {i for i, _, _ in saved["examples"]}
        assert saved["prompt_sha"] == stub.prompts[fold].fingerprint()
        assert all(study.data.texts[i] == t and study.data.labels[i] == c for i, t, c in saved["examples"])
    m = res.metrics
    assert (m["invalid"] == 0).all() and (m["tokens_in"] == 10 * m["texts"]).all() and (m["requests"] == 3).all()
    assert json.loads((study.run_folder(res.name).path / "prompt.json").read_text())["template"] == "分类：{codebook}"
    assert json.loads((study.run_folder(res.name).path / "backend.json").read_text()) == {"backend": "stub"}
    config = json.loads((study.run_folder(res.name).path / "config.json").read_text())
    assert config["k_shot"] == 2 and config["prompt_sha"] == prompt.fingerprint() and config["llm"] == "stub"
    assert res.name == f"llm_stub_2shot_{prompt.fingerprint()[:8]}" and llm.per_1000_texts(res)[
        "seconds"
    ] == pytest.approx(1000 * 1.5 / 18)
    again = llm.run_llm_folds(study, Counting(refuse=True), prompt, k=2, template="分类：{codebook}")
    pd.testing.assert_frame_equal(again.predictions, res.predictions)
    named = llm.run_llm_folds(study, Counting(refuse=True), prompt, k=2, template="分类：{codebook}", which=[0, 2])
    pd.testing.assert_frame_equal(named.predictions, res.predictions)  # folds named but finished: kept, not rescored
    other = Counting(refuse=True)
    other.settings = lambda: {"backend": "other server"}
    with pytest.raises(DataError, match="was scored with other backend settings \\(backend: 'stub' recorded, 'other"):
        llm.run_llm_folds(study, other, prompt, k=2, template="分类：{codebook}")


def test_a_fold_with_texts_the_backend_could_not_score_is_not_saved_and_never_given_a_class(tiny_study):
    study = tiny_study(n_per_class=6)
    prompt = llm.render_prompt(Codebook.from_study(study), template="分类：{codebook}")
    with pytest.raises(llm.UnscoredTextsError, match=r"fold 0: 2 of \d+ texts got no valid answer"):
        llm.run_llm_folds(study, Counting(unscored=2), prompt, k=0, name="llm_unscored")
    assert study.run_folder("llm_unscored").done_folds() == []


def test_final_prompt_draws_from_all_labelled_texts_and_stability_gives_a_label_matrix(tiny_study, backend, codebook):
    study = tiny_study(n_per_class=4)
    prompt = llm.final_prompt(study, llm.render_prompt(Codebook.from_study(study)), k=2)
    assert len(prompt.examples) == 6 and {c for _, c in prompt.examples} == {0, 1, 2}
    labels = llm.stability_labels(backend, codebook, TEXTS, llm.PARAPHRASES[:3])
    assert labels.shape == (len(TEXTS), 3) and set(np.unique(labels)) <= {0, 1, 2, 3}


def test_a_hub_id_that_cannot_be_had_says_how_to_pass_a_folder_to_07(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as e:
        llm.LocalBackend("nobody-has/this-llm", device="cpu")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE is set" in msg and "make notebooks LLM_MODEL=$PWD/models/this-llm" in msg
    assert "-p llm_model /path/to/models/this-llm" in msg and "BERT_MODEL" not in msg


def test_texts_sharded_over_several_devices_give_the_same_probabilities(backend, codebook):
    sharded = llm.LocalBackend(backend.source, device=["cpu", "cpu"], batch_size=2)
    assert len(sharded.replicas) == 2 and sharded.replicas[1] is not sharded.model
    prompt = llm.render_prompt(codebook, examples=[(TEXTS[0], 0)])
    texts = TEXTS[:5]  # shards of 3 and 2 texts
    np.testing.assert_allclose(sharded.score(prompt, texts).probs, backend.score(prompt, texts).probs, atol=1e-6)


def test_batches_in_order_or_of_one_length():
    assert [list(b) for b in llm.batches([3, 1, 2, 5, 1], 2)] == [[0, 1], [2, 3], [4]]
    assert [list(b) for b in llm.batches([3, 1, 2, 1, 1, 3], 2, same_length=True)] == [[1, 3], [4], [2], [0, 5]]


def test_sliding_window_layers_give_the_brute_force_likelihoods_too(tmp_path, codebook):
    """Gemma 3 (e.g. 270M) mixes sliding-window layers, whose cache keeps the last tokens by slot: the prefix reuse
    must still equal a plain forward pass when the prompt is longer than the window and the texts' lengths differ."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = llm.build_tiny_causal_lm(TEXTS, tmp_path / "gemma", extra_text=codebook.to_frame().to_string())
    vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        pad_token_id=0,
    )
    Gemma3ForCausalLM(config).save_pretrained(folder)
    gemma = llm.LocalBackend(str(folder), device="cpu", batch_size=3)
    prompt = llm.render_prompt(codebook, examples=[(TEXTS[0], 0)], verbalizations=NAMES)
    assert len(gemma.encode(prompt, TEXTS)[0]) > 16
    np.testing.assert_allclose(gemma.log_likelihoods(prompt, TEXTS), brute_force(gemma, prompt, TEXTS), atol=1e-4)
