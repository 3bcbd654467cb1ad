"""The prediction command line and the error-analysis statistics."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_data
from nblib import analysis, bert, predict
from nblib.results import ModelResults


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny classifier saved the way 03_bert_cv saves one (save_pretrained with tokenizer and label names)."""
    folder = tmp_path_factory.mktemp("model")
    enc = bert.build_tiny_encoder(["只此青绿的舞美绝了", "文物", "三刷", "CCTV1"], folder / "enc")
    model = bert.load_classifier(str(enc), ["节目制作", "文物典籍", "文化精神", "无关"])
    return bert.save_checkpoint(model, bert.load_tokenizer(str(enc)), folder / "final")


def test_cli_labels_a_sheet_and_keeps_empty_rows(tmp_path, saved_model, capsys):
    texts = ["只此青绿的舞美绝了", None, "🧐🧐", "   ", "三刷🉑️👍", 123]
    pd.DataFrame({"评论": texts, "id": range(6)}).to_excel(tmp_path / "in.xlsx", index=False)
    code = predict.main([str(saved_model), str(tmp_path / "in.xlsx"), str(tmp_path / "out.xlsx"), "--column", "评论",
                         "--batch-size", "2"])
    assert code == 0
    out = pd.read_excel(tmp_path / "out.xlsx")
    assert out["id"].tolist() == list(range(6))  # every row kept, in order
    probs = out[[f"prob_{n}" for n in ["节目制作", "文物典籍", "文化精神", "无关"]]]
    assert out.loc[[1, 3], "pred_id"].isna().all() and probs.loc[[1, 3]].isna().all().all()
    filled = [0, 2, 4, 5]
    assert np.allclose(probs.loc[filled].sum(axis=1), 1, atol=1e-5)
    assert (out.loc[filled, "pred_id"] == probs.loc[filled].to_numpy().argmax(1)).all()
    assert set(out.loc[filled, "pred_label"]) <= {"节目制作", "文物典籍", "文化精神", "无关"}


def test_batching_and_order_do_not_change_predictions(saved_model):
    model, tok = predict.load_model(saved_model)
    texts = ["文物", "只此青绿的舞美绝了真的绝了", "三刷", "CCTV1 文物"]
    one = predict.predict_texts(model, tok, texts, batch_size=1, progress=False)
    many = predict.predict_texts(model, tok, texts[::-1], batch_size=4, progress=False).iloc[::-1].reset_index(drop=True)
    assert np.allclose(one.filter(like="prob_").to_numpy(), many.filter(like="prob_").to_numpy(), atol=1e-5)


def test_cli_bad_input(tmp_path, saved_model, capsys):
    pd.DataFrame({"Sentence": ["好"]}).to_excel(tmp_path / "in.xlsx", index=False)
    assert predict.main([str(tmp_path / "nope"), str(tmp_path / "in.xlsx"), str(tmp_path / "o.xlsx")]) == 2
    assert "No saved model" in capsys.readouterr().err
    assert predict.main([str(saved_model), str(tmp_path / "in.xlsx"), str(tmp_path / "o.xlsx"), "--column", "text"]) == 2
    assert "['text'] not found" in capsys.readouterr().err
    assert predict.main([str(saved_model), str(tmp_path / "missing.xlsx"), str(tmp_path / "o.xlsx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert predict.main([str(saved_model), str(tmp_path / "in.xlsx"), str(tmp_path / "in.xlsx")]) == 2
    assert "exists" in capsys.readouterr().err


def fake(name, gold, pred, conf=0.9, k=3):
    probs = np.full((len(gold), k), (1 - conf) / (k - 1))
    probs[np.arange(len(gold)), pred] = conf
    table = pd.DataFrame({"index": range(len(gold)), "row": np.arange(len(gold)) + 2, "fold": 0,
                          "text": [f"t{i}" * (i % 7 + 1) for i in range(len(gold))], "gold": gold, "pred": pred})
    table = pd.concat([table, pd.DataFrame(probs, columns=[f"prob_{j}" for j in range(k)])], axis=1)
    return ModelResults(name, {}, table, pd.DataFrame(), None)


def test_mcnemar_and_bootstrap():
    gold = np.array([0, 1, 2] * 20)
    good = fake("good", gold, gold)
    bad_pred = gold.copy()
    bad_pred[:15] = (gold[:15] + 1) % 3
    bad = fake("bad", gold, bad_pred)
    row = analysis.mcnemar(good, bad)
    assert row["only good right"] == 15 and row["only this model right"] == 0
    assert row["p-value (exact McNemar)"] == pytest.approx(2 * 0.5 ** 15)
    assert analysis.mcnemar(good, good)["p-value (exact McNemar)"] == 1.0
    ci = analysis.bootstrap_ci({"good": good, "bad": bad}, n_boot=200)
    assert ci.loc["good", "accuracy CI"] == "[1.000, 1.000]"
    lo, hi = map(float, ci.loc["bad", "accuracy CI"].strip("[]").split(", "))
    assert lo < 0.75 < hi


def test_label_noise_candidates_need_every_model_to_agree():
    gold = np.array([0, 1, 2, 0, 1, 2])
    a = fake("a", gold, np.array([1, 1, 2, 0, 1, 0]))
    b = fake("b", gold, np.array([1, 1, 2, 0, 1, 1]))
    noise = analysis.label_noise_candidates({"a": a, "b": b}, ["x", "y", "z"], min_confidence=0.7)
    assert noise["row"].tolist() == [2] and noise.loc[0, "predicted"] == "y" and noise.loc[0, "gold"] == "x"
    assert analysis.label_noise_candidates({"a": fake("a", gold, np.array([1, 1, 2, 0, 1, 0]), conf=0.5),
                                            "b": b}, ["x", "y", "z"], 0.7).empty
    pairs = analysis.confused_pairs(a, ["x", "y", "z"])
    assert set(zip(pairs["gold"], pairs["predicted"])) == {("x", "y"), ("z", "x")}
    by_len = analysis.accuracy_by_length({"a": a})
    assert by_len["texts"].sum() == 6
