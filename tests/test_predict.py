"""The prediction command line and the error-analysis statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nblib import analysis, bert, predict
from nblib import data as nbdata
from nblib.results import ModelResults
from nblib.sheets import read_sheet


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
    code = predict.main(
        [
            str(saved_model),
            str(tmp_path / "in.xlsx"),
            str(tmp_path / "out.xlsx"),
            "--column",
            "评论",
            "--batch-size",
            "2",
        ]
    )
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
    many = (
        predict.predict_texts(model, tok, texts[::-1], batch_size=4, progress=False).iloc[::-1].reset_index(drop=True)
    )
    assert np.allclose(one.filter(like="prob_").to_numpy(), many.filter(like="prob_").to_numpy(), atol=1e-5)


def test_cli_bad_input(tmp_path, saved_model, capsys):
    pd.DataFrame({"Sentence": ["好"]}).to_excel(tmp_path / "in.xlsx", index=False)
    assert predict.main([str(tmp_path / "nope"), str(tmp_path / "in.xlsx"), str(tmp_path / "o.xlsx")]) == 2
    assert "No saved model" in capsys.readouterr().err
    assert (
        predict.main([str(saved_model), str(tmp_path / "in.xlsx"), str(tmp_path / "o.xlsx"), "--column", "text"]) == 2
    )
    assert "['text'] not found" in capsys.readouterr().err
    assert predict.main([str(saved_model), str(tmp_path / "missing.xlsx"), str(tmp_path / "o.xlsx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert predict.main([str(saved_model), str(tmp_path / "in.xlsx"), str(tmp_path / "in.xlsx")]) == 2
    assert "exists" in capsys.readouterr().err


def test_cli_errors_name_its_flags(tmp_path, saved_model, capsys):
    pd.DataFrame({"Sentence": ["好"]}).to_excel(tmp_path / "in.xlsx", index=False)
    assert (
        predict.main([str(saved_model), str(tmp_path / "in.xlsx"), str(tmp_path / "o.xlsx"), "--column", "text"]) == 2
    )
    err = capsys.readouterr().err
    assert "--column" in err and "text_col" not in err
    assert predict.main([str(saved_model), str(tmp_path / "in.xlsx"), str(tmp_path / "o.xlsx"), "--sheet", "x"]) == 2
    assert "Pass --sheet <name" in capsys.readouterr().err
    assert predict.main([str(saved_model), str(tmp_path / "in.xlsx"), str(tmp_path / "o.xls")]) == 2
    assert "suffix must be one of .xlsx, .csv, .tsv" in capsys.readouterr().err
    assert not (tmp_path / "o.xls").exists()


def test_cli_header_row_flag_is_suggested_and_used(tmp_path, saved_model, capsys):
    (tmp_path / "in.csv").write_text("评论导出\nSentence,id\n文物,1\n", encoding="utf-8")
    assert predict.main([str(saved_model), str(tmp_path / "in.csv"), str(tmp_path / "o.csv")]) == 2
    assert "pass --header-row 2" in capsys.readouterr().err
    assert predict.main([str(saved_model), str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), "--header-row", "2"]) == 0
    assert read_sheet(tmp_path / "o.csv", ["Sentence", "pred_label"]).df["Sentence"].tolist() == ["文物"]


def test_a_run_folder_is_refused_with_its_final_model_named(tmp_path, saved_model, capsys):
    run = tmp_path / "models" / "bert_x"
    (run / "folds").mkdir(parents=True)
    (run / "config.json").write_text('{"model": "bert_x", "n_folds": 5}')
    pd.DataFrame({"Sentence": ["好"]}).to_excel(tmp_path / "in.xlsx", index=False)
    assert predict.main([str(run), str(tmp_path / "in.xlsx"), str(tmp_path / "o.xlsx")]) == 2
    err = capsys.readouterr().err
    assert f"pass {run / 'final'}" in err and "Traceback" not in err
    with pytest.raises(bert.ModelNotAvailableError, match="not a saved model"):
        predict.load_model(run)


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_predictions_keep_formula_like_texts_as_text_and_mark_truncated_ones(tmp_path, saved_model, suffix):
    texts = ['=HYPERLINK("http://x","点")', "+1 文物", "-_-", "@CCTV1", "NA", "文物" * 40, "三刷"]
    pd.DataFrame({"Sentence": texts}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / f"out{suffix}"
    assert (
        predict.main(
            [str(saved_model), str(tmp_path / "in.csv"), str(out), "--max-len", "32", "--truncation", "head+tail"]
        )
        == 0
    )
    back = read_sheet(out, ["Sentence", "truncated"]).df
    assert back["Sentence"].tolist() == texts  # byte for byte, no formula, no NA guessing
    assert [str(v) for v in back["truncated"]] == ["False"] * 5 + ["True", "False"]
    assert back["pred_label"].notna().all()


def test_the_saved_model_labeller_gives_what_predict_texts_gives_and_checks_its_companions(tmp_path, saved_model):
    labeller = predict.open_saved_model(saved_model, batch_size=2, device="cpu")
    texts = ["只此青绿", "", "文物三刷"]
    expected = predict.predict_texts(*predict.load_model(saved_model), texts, progress=False)
    pd.testing.assert_frame_equal(labeller.predict_texts(texts, progress=False), expected)
    assert labeller.names == ["节目制作", "文物典籍", "文化精神", "无关"] and labeller.label == saved_model.parent.name
    assert labeller.columns() == list(expected.columns) and labeller.run_dir == saved_model.parent
    pd.DataFrame({"Sentence": texts}).to_csv(tmp_path / "in.csv", index=False)
    taken = tmp_path / "out.csv.note"
    taken.write_text("earlier")
    labeller.companions = lambda out: [taken]  # a kind that writes a file next to its sheet
    with pytest.raises(FileExistsError, match="out.csv.note.*choose another output file"):
        labeller.predict_file(tmp_path / "in.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists() and taken.read_text() == "earlier"


def test_predictions_do_not_mix_with_earlier_ones(tmp_path, saved_model):
    pd.DataFrame({"Sentence": ["好"], "pred_label": ["旧"]}).to_excel(tmp_path / "in.xlsx", index=False)
    with pytest.raises(nbdata.DataError, match=r"already has column\(s\) \['pred_label'\]"):
        predict.predict_file(saved_model, tmp_path / "in.xlsx", tmp_path / "o.xlsx")


def fake(name, gold, pred, conf=0.9, k=3):
    probs = np.full((len(gold), k), (1 - conf) / (k - 1))
    probs[np.arange(len(gold)), pred] = conf
    table = pd.DataFrame(
        {
            "index": range(len(gold)),
            "row": np.arange(len(gold)) + 2,
            "fold": 0,
            "text": [f"t{i}" * (i % 7 + 1) for i in range(len(gold))],
            "gold": gold,
            "pred": pred,
        }
    )
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
    assert row["p-value (exact McNemar)"] == pytest.approx(2 * 0.5**15)
    assert analysis.mcnemar(good, good)["p-value (exact McNemar)"] == 1.0
    ci = analysis.bootstrap_ci({"good": good, "bad": bad}, n_boot=200)
    assert ci.loc["good", "accuracy CI"] == "[1.000, 1.000]"
    lo, hi = map(float, ci.loc["bad", "accuracy CI"].strip("[]").split(", "))
    assert lo < 0.75 < hi


def test_confused_pairs_and_accuracy_by_length():
    gold = np.array([0, 1, 2, 0, 1, 2])
    a = fake("a", gold, np.array([1, 1, 2, 0, 1, 0]))
    pairs = analysis.confused_pairs(a, ["x", "y", "z"])
    assert set(zip(pairs["gold"], pairs["predicted"])) == {("x", "y"), ("z", "x")}
    by_len = analysis.accuracy_by_length({"a": a})
    assert by_len["texts"].sum() == 6
