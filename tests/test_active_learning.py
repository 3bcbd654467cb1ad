"""What to label next: uncertainty ranking, the diversity step, the annotator sheet and its way back, the simulation."""

from __future__ import annotations

import numpy as np
import openpyxl
import pandas as pd
import pytest

from nblib import active_learning as al
from nblib import plots
from nblib.baselines import BaselineConfig, BaselineSuite
from nblib.data import DataError, load_labelled
from nblib.sheets import read_sheet

# texts an annotator sheet must keep as they are: formula starts and NA strings
TRICKY = ["=SUM(A1)", "+86 好看", "-_-|| 无语", "@央视 太美了", "NA", "普通的一句评论"]


def probs_for(uncertain: list[float]) -> np.ndarray:
    """Three-class probabilities whose margin-uncertainty is the given value per row (p1 − p2 = 1 − u)."""
    u = np.asarray(uncertain)
    p2 = u / 2 * 0.9
    p1 = p2 + (1 - u)
    return np.column_stack([p1, p2, 1 - p1 - p2])


def test_uncertainty_margin_and_entropy():
    p = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3], [np.nan] * 3])
    np.testing.assert_allclose(al.uncertainty(p, "margin")[:3], [1.0, 0.15, 1.0])
    h = al.uncertainty(p, "entropy")
    np.testing.assert_allclose(h[:3], [np.log(2) / np.log(3), -(0.9 * np.log(0.9) + 0.1 * np.log(0.05)) / np.log(3), 1])
    assert np.isnan(h[3]) and np.isnan(al.uncertainty(p, "margin")[3])
    with pytest.raises(ValueError, match="'margin' or 'entropy', not 'least'"):
        al.uncertainty(p, "least")


def test_ranking_picks_the_most_uncertain_and_skips_labelled_and_empty():
    texts = ["舞美绝了", "文物修复", "民族精神", "演员很好", "青铜器", "", "古籍之美", "已经标过的"]
    u = [0.2, 0.9, 0.5, 0.7, 0.1, 0.99, 0.6, 0.95]
    probs = probs_for(u)
    probs[2] = np.nan  # a text the model gave no probabilities
    batch = al.rank_for_labelling(texts, probs, n=3, labelled_texts=["已经标过的"], candidates_per_pick=1)
    assert batch["text"].tolist() == ["文物修复", "演员很好", "古籍之美"]
    assert batch["position"].tolist() == [1, 3, 6] and batch["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(batch["uncertainty"], [0.9, 0.7, 0.6])
    assert batch["guess"].tolist() == [0, 0, 0]
    np.testing.assert_allclose(batch["guess_prob"], probs[[1, 3, 6], 0])


def test_diversity_step_returns_no_duplicates():
    # the six most uncertain texts are one comment and its near-copies; then distinct comments
    copies = [
        "只此青绿的舞美太绝了我哭了",
        "只此青绿的舞美太绝了我哭了",
        "只此青绿的舞美太绝了我哭了！",
        "只此青绿的舞美太绝了我哭了！！",
    ]
    copies += ["只此青绿的舞美太绝了我哭了。", "只此青绿的舞美太绝了我哭了~"]
    others = ["国家宝藏里的青铜器", "典籍里的中国讲楚辞", "演员的台词功底很好", "传统文化的精神传承", "这集的灯光一般"]
    texts = copies + others
    u = np.linspace(0.99, 0.94, len(copies)).tolist() + np.linspace(0.9, 0.8, len(others)).tolist()
    batch = al.rank_for_labelling(texts, probs_for(u), n=4, seed=0)
    assert len(batch) == 4 and batch["position"].is_unique and batch["text"].is_unique
    assert sum(t.startswith("只此青绿") for t in batch["text"]) == 1  # one of the family, the most uncertain
    assert batch["position"].iloc[0] == 0
    # without the diversity step, the top four would all be copies
    assert all(texts[i].startswith("只此青绿") for i in np.argsort(-np.asarray(u))[:4])


def annotator_sheet(tmp_path, data) -> tuple:
    batch = al.rank_for_labelling(TRICKY, probs_for(np.linspace(0.9, 0.4, len(TRICKY))), n=len(TRICKY))
    path = al.write_annotator_sheet(batch, tmp_path / "to_label.xlsx", data)
    return batch, path


def test_annotator_sheet_round_trips(tmp_path, tiny_data):
    data = tiny_data()
    batch, path = annotator_sheet(tmp_path, data)
    assert openpyxl.load_workbook(path).sheetnames == ["Sheet", "labels"]
    back = read_sheet(path, ["Sentence", "Label"]).df
    assert back["Sentence"].tolist() == batch["text"].tolist() and sorted(back["Sentence"]) == sorted(TRICKY)
    assert back["Label"].isna().all()
    assert back["guess"].tolist() == [data.label_values[g] for g in batch["guess"]]
    assert back["guess_name"].tolist() == [data.label_names[g] for g in batch["guess"]]
    labels = read_sheet(path, ["Label", "Name"], sheet="labels").df
    assert labels["Label"].tolist() == data.label_values and labels["Name"].tolist() == data.label_names
    with pytest.raises(FileExistsError, match="never overwritten"):
        al.write_annotator_sheet(batch, path, data)


def fill(path, labels: dict[str, object]) -> None:
    """Type labels into the annotator sheet, as an annotator would in Excel (text -> label)."""
    wb = openpyxl.load_workbook(path)
    ws = wb.worksheets[0]
    header = [c.value for c in ws[1]]
    text_col, label_col = header.index("Sentence") + 1, header.index("Label") + 1
    for r in range(2, ws.max_row + 1):
        text = ws.cell(r, text_col).value
        if text in labels:
            ws.cell(r, label_col).value = labels[text]
    wb.save(path)


def test_filled_sheet_loads_back_as_extra_rows(tmp_path, tiny_sheet, tiny_study):
    sheet = tiny_sheet()
    data = load_labelled(sheet)
    _, path = annotator_sheet(tmp_path, data)
    fill(path, {"=SUM(A1)": 0, "@央视 太美了": "2", "NA": 1})  # three labelled, three left empty
    more = load_labelled(sheet, extra_labelled_paths=str(path))
    added = more.df[more.df["source"] == path.name]
    assert len(more.df) == len(data.df) + 3
    assert dict(zip(added["text"], added["label"])) == {"=SUM(A1)": 0, "@央视 太美了": 2, "NA": 1}
    assert (more.df.loc[more.df["source"] != path.name, "source"] == sheet.name).all()
    skipped = more.report.to_frame().set_index("problem").loc[f"{path.name}: label is missing"]
    assert skipped["rows"] == 3 and skipped["action"].startswith("skipped")
    assert more.fingerprint() != data.fingerprint()
    # through the study: a new study folder, with its own folds
    plain, extra = tiny_study(), tiny_study(extra_labelled_paths=[str(path)])
    assert extra.path != plain.path and len(extra.folds) == len(plain.folds) + 3
    # results say which sheet each row is in: an annotator sheet's rows do not pass for the main sheet's
    pred = BaselineSuite(extra, BaselineConfig(unit="char", min_df=1)).run("lr_tfidf_char").predictions
    from_annotator = pred[pred["source"] == path.name]
    assert sorted(from_annotator["text"]) == sorted(["=SUM(A1)", "@央视 太美了", "NA"])
    assert set(from_annotator["row"]) <= {2, 3, 4, 5, 6, 7}


def test_labels_not_in_the_label_table_are_an_error(tmp_path, tiny_sheet):
    sheet = tiny_sheet()
    _, path = annotator_sheet(tmp_path, load_labelled(sheet))
    fill(path, {"=SUM(A1)": 0, "+86 好看": 7, "NA": "文化"})
    with pytest.raises(DataError) as e:
        load_labelled(sheet, extra_labelled_paths=[path])
    message = str(e.value)
    assert "to_label.xlsx (extra_labelled_paths)" in message and "['7', '文化']" in message
    assert "sheet row(s) 3, 6" in message and "[0, 1, 2]" in message


def test_simulation_returns_a_curve_per_strategy_and_seed(tiny_data):
    data = tiny_data(30)
    s = al.ActiveLearningSettings(al_start=12, al_batch=10, al_rounds=2, al_seeds=2)
    curve = al.simulate_learning_curve(data.texts, data.labels, s, seed=5)
    assert len(curve) == len(al.STRATEGIES) * 2 * 3
    assert sorted(curve["seed"].unique()) == [5, 6]
    for _, one in curve.groupby(["strategy", "seed"]):
        assert one["labels"].tolist() == [12, 22, 32]
    assert curve["macro_f1"].between(0, 1).all() and curve["macro_f1"].max() > 0.5
    pd.testing.assert_frame_equal(curve, al.simulate_learning_curve(data.texts, data.labels, s, seed=5))  # seeded
    saved = al.labels_saved(curve)
    assert saved.index.tolist() == list(al.STRATEGIES)
    assert saved.loc["random", "labels_to_target"] <= 32
    fig = plots.active_learning_curves(curve, saved)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(legend) == 3 and all(t.split(" (")[0] in al.STRATEGIES for t in legend)
    assert fig.axes[0].lines[-1].get_ydata()[0] == pytest.approx(saved["target"].iloc[0])  # the target line
    with pytest.raises(DataError, match=r"12 \+ 7 × 10 = 82 .* there are 67 .*lower al_start, al_rounds or al_batch"):
        al.simulate_learning_curve(
            data.texts, data.labels, al.ActiveLearningSettings(al_start=12, al_batch=10, al_rounds=7)
        )


def test_labels_saved_interpolates_the_mean_curve():
    rows = [("random", 0, n, f) for n, f in [(100, 0.5), (200, 0.6), (300, 0.7)]]
    rows += [("uncertain", 0, n, f) for n, f in [(100, 0.55), (200, 0.75), (300, 0.8)]]
    rows += [("uncertain+diverse", 0, n, f) for n, f in [(100, 0.5), (200, 0.55), (300, 0.65)]]
    saved = al.labels_saved(pd.DataFrame(rows, columns=["strategy", "seed", "labels", "macro_f1"]))
    assert saved.loc["uncertain", "labels_to_target"] == pytest.approx(175)
    assert saved.loc["uncertain", "labels_saved"] == pytest.approx(1 - 175 / 300)
    assert saved.loc["random", "labels_saved"] == pytest.approx(0)
    assert np.isnan(saved.loc["uncertain+diverse", "labels_to_target"])
