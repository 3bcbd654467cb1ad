"""Human agreement: κ and α on hand-computed cases, bootstrap intervals, matching by text, the study table, and
the annotator workbook's blind checks (written, hidden, read back, not fed onward)."""

from __future__ import annotations

import numpy as np
import openpyxl
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from test_active_learning import fill, probs_for

from nblib import active_learning as al
from nblib import agreement as ag
from nblib import tables
from nblib.baselines import BaselineConfig, BaselineSuite
from nblib.data import load_labelled
from nblib.sheets import DataError, read_machine_table, read_sheet


def from_table(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Two raters' labels with the given contingency table (rows: rater a's class, columns: rater b's)."""
    pairs = [(i, j) for i, row in enumerate(table) for j, n in enumerate(row) for _ in range(n)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def test_kappa_of_a_two_by_two_table():
    # a: 25 yes / 25 no; b: 30 yes / 20 no; they agree on 20 + 15 = 35 of 50
    a, b = from_table([[20, 5], [10, 15]])
    # p_o = 35/50 = 0.7; p_e = (25·30 + 25·20) / 50² = 1250/2500 = 0.5; κ = (0.7 − 0.5) / (1 − 0.5) = 0.4
    assert ag.cohen_kappa(a, b) == pytest.approx(0.4)
    # labels as the sheet writes them (numbers, floats, texts) give the same κ; a missing label drops its pair
    assert ag.cohen_kappa(list(a) + [None], [float(x) for x in b] + [1]) == pytest.approx(0.4)
    assert ag.cohen_kappa(np.where(a, "是", "否"), np.where(b, "是", "否")) == pytest.approx(0.4)


def test_alpha_of_krippendorffs_two_coder_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", A: two observers, binary, no missing
    obs1 = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    obs2 = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    # coincidences: five 0-0 units give o00 = 10, one 1-1 unit o11 = 2, four mixed units o01 = o10 = 4;
    # n0 = 14, n1 = 6, n.. = 20; α = 1 − (n.. − 1) · o01 / (n0 · n1) = 1 − 19 · 4 / 84 = 8/84 = 0.095
    assert ag.krippendorff_alpha(np.array([obs1, obs2])) == pytest.approx(8 / 84)
    table = ag.agreement_table({"a": obs1, "b": obs2}, "a", ["no", "yes"], n_boot=50)
    assert table.loc[("b", "a", "overall"), "alpha"] == pytest.approx(8 / 84)


def test_alpha_of_krippendorffs_four_coder_example_with_missing():
    # the same paper, C: four observers, nominal, missing values; α = 0.743
    nan = np.nan
    ratings = np.array(
        [
            [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
            [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
        ]
    )
    assert ag.krippendorff_alpha(ratings) == pytest.approx(0.743, abs=5e-4)


def test_perfect_agreement_is_one_and_undefined_is_nan():
    labels = [0, 1, 2, 2, 1, 0, 1]
    table = ag.agreement_table({"gold": labels, "copy": labels}, "gold", ["a", "b", "c"], n_boot=100)
    assert (table[["kappa", "alpha", "kappa_lower", "kappa_upper", "alpha_lower", "alpha_upper"]] == 1).all().all()
    # one category only: κ and α are 0/0, never a number
    assert np.isnan(ag.cohen_kappa([1, 1, 1], [1, 1, 1])) and np.isnan(ag.krippendorff_alpha(np.ones((2, 3))))
    unused = ag.agreement_table({"g": [0, 1, 0, 1], "r": [0, 1, 1, 1]}, "g", ["a", "b", "never used"], n_boot=20)
    assert np.isnan(unused.loc[("r", "g", "never used"), "kappa"])
    assert tables.agreement(unused).loc[("r", "g", "never used"), "κ [95% CI]"] == "n/a"


def test_per_class_numbers_are_one_vs_rest():
    a = [0, 0, 1, 1, 2, 2]
    b = [0, 1, 1, 1, 2, 0]
    table = ag.agreement_table({"a": a, "b": b}, "a", ["c0", "c1", "c2"], n_boot=50)
    # class c0 or not: a = 110000, b = 100001: both 1, a only 1, b only 1, neither 3;
    # p_o = 4/6, p_e = (2/6)(2/6) + (4/6)(4/6) = 20/36, κ = (24/36 − 20/36) / (16/36) = 0.25
    assert table.loc[("b", "a", "c0"), "kappa"] == pytest.approx(0.25)
    for k, name in enumerate(["c0", "c1", "c2"]):
        x, y = np.equal(a, k), np.equal(b, k)
        assert table.loc[("b", "a", name), "kappa"] == pytest.approx(cohen_kappa_score(x, y))
        assert table.loc[("b", "a", name), "alpha"] == pytest.approx(ag.krippendorff_alpha(np.vstack([x, y])))
    assert table.loc[("b", "a", "overall"), "kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert table["texts"].eq(6).all() and table["missing"].eq(0).all()


def test_intervals_contain_the_estimate_are_seeded_and_match_the_library_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, 200)
    b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 3, 200)).astype(float)
    b[:7] = np.nan  # seven texts the rater left without a label
    table = ag.agreement_table({"gold": a, "rater": b}, "gold", ["x", "y", "z"], n_boot=300, seed=3)
    assert (table["kappa_lower"] < table["kappa"]).all() and (table["kappa"] < table["kappa_upper"]).all()
    assert (table["alpha_lower"] < table["alpha"]).all() and (table["alpha"] < table["alpha_upper"]).all()
    assert table["texts"].eq(193).all() and table["missing"].eq(7).all()
    again = ag.agreement_table({"gold": a, "rater": b}, "gold", ["x", "y", "z"], n_boot=300, seed=3)
    other = ag.agreement_table({"gold": a, "rater": b}, "gold", ["x", "y", "z"], n_boot=300, seed=4)
    pd.testing.assert_frame_equal(table, again)
    assert not np.allclose(table["kappa_lower"], other["kappa_lower"])
    # the table's fast replicates (contingency tables) equal the libraries' on the same resamples
    keep = ~np.isnan(b)
    pair = np.vstack([a[keep], b[keep]])
    lo, hi = ag.interval(lambda r: ag.cohen_kappa(r[0], r[1]), pair, n_boot=300, seed=3)
    assert (lo, hi) == pytest.approx(tuple(table.loc[("rater", "gold", "overall"), ["kappa_lower", "kappa_upper"]]))
    lo, hi = ag.interval(ag.krippendorff_alpha, pair, n_boot=300, seed=3)
    assert (lo, hi) == pytest.approx(tuple(table.loc[("rater", "gold", "overall"), ["alpha_lower", "alpha_upper"]]))
    assert ag.interval(ag.krippendorff_alpha, pair, n_boot=100, seed=0) == ag.interval(
        ag.krippendorff_alpha, pair, n_boot=100, seed=0
    )


def test_bad_columns_are_named():
    with pytest.raises(ValueError, match="column 'r': \\['7'\\] are not class ids 0…2"):
        ag.agreement_table({"g": [0, 1], "r": [0, 7]}, "g", ["a", "b", "c"])
    with pytest.raises(ValueError, match="lengths differ"):
        ag.agreement_table({"g": [0, 1], "r": [0]}, "g", ["a", "b"])
    with pytest.raises(ValueError, match="reference 'x' is not one of the columns"):
        ag.agreement_table({"g": [0, 1]}, "x", ["a", "b"])


def test_matching_by_text_counts_duplicates_and_unmatched():
    left = pd.DataFrame(
        {
            "text": ["好看", "好看", "文物", "文物", "精神", "只在左边", None, "无标签"],
            "label": [0, 0, 1, 2, 2, 1, 0, None],
        }
    )
    right = pd.DataFrame(
        {"text": ["\ufeff好看 ", "文物", "精神", "精神", "只在右边", 123], "label": [0, 1, 2, 1, 0, 1]}
    )
    m = ag.match_by_text(left, right, names=("gold", "coder"))
    # 好看 (written with a byte-order mark and spaces on the right) matches; 文物 conflicts on the left and
    # 精神 on the right, so both are left out
    assert m["text"].tolist() == ["好看"] and m["gold"].tolist() == [0] and m["coder"].tolist() == [0]
    counts = m.attrs["counts"]
    assert counts["gold"] == {
        "rows": 8,
        "without text or label": 2,
        "duplicates merged": 1,
        "conflicting texts": 1,
        "unmatched texts": 2,  # 精神 (conflicting on the right) and 只在左边
    }
    assert counts["coder"]["conflicting texts"] == 1 and counts["coder"]["unmatched texts"] == 3  # 文物, 只在右边, 123
    assert counts["matched texts"] == 1
    sentence = ag.describe_match(m)
    assert sentence.startswith("1 texts in both") and "1 duplicate rows merged" in sentence


def test_without_a_second_coder_the_table_says_so():
    labels, model = [0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1, 1]
    table = ag.agreement_table({"labels": labels, "bert": model}, "labels", ["a", "b"], n_boot=50)
    assert ag.NO_SECOND_CODER in table.attrs["note"] and ag.summary(table).startswith(ag.NO_SECOND_CODER)
    assert "bert vs. labels: κ = 0.333" in ag.summary(table)  # p_o = 4/6, p_e = 1/2: κ = (2/3 − 1/2) / (1/2)
    paper = tables.agreement(table)
    assert ag.NO_SECOND_CODER in paper.attrs["note"]
    human = ag.agreement_table(
        {"labels": labels, "coder": labels, "bert": model}, "labels", ["a", "b"], n_boot=50, coders=["coder"]
    )
    assert ag.NO_SECOND_CODER not in human.attrs["note"] and "ceiling for the models): coder" in human.attrs["note"]
    assert not ag.summary(human).startswith("No second coder")


def test_paper_table_renders_csv_latex_markdown(tmp_path):
    table = ag.agreement_table({"labels": [0, 1, 1, 0], "lr_tfidf_char": [0, 1, 1, 1]}, "labels", ["a", "b"])
    paper = tables.agreement(table)
    csv, tex, md = tables.save_table(paper, tmp_path, "agreement")
    back = read_machine_table(csv)
    assert list(back.columns) == ["rater", "reference", "class", "texts", "κ [95% CI]", "α [95% CI]"]
    assert back["κ [95% CI]"].iloc[0] == f"{table['kappa'].iloc[0]:.3f} [{table['kappa_lower'].iloc[0]:.3f}, " + (
        f"{table['kappa_upper'].iloc[0]:.3f}]"
    )
    assert "TF-IDF" in tex.read_text() and "\\toprule" in tex.read_text()  # display names, booktabs
    assert md.read_text().startswith("| rater | reference | class | texts |") and ag.NO_SECOND_CODER in md.read_text()


@pytest.fixture
def lr_study(tiny_study):
    study = tiny_study()
    run = BaselineSuite(study, BaselineConfig(unit="char", min_df=1)).run("lr_tfidf_char")
    return study, run


def test_study_agreement_with_a_second_coder(tmp_path, lr_study):
    study, run = lr_study
    data = study.data
    texts, values = data.texts[:10], [data.label_values[y] for y in data.labels[:10]]
    values[0] = data.label_values[(data.labels[0] + 1) % 3]  # the coder disagrees once
    coder = pd.DataFrame({"Sentence": [*texts, "一条没标过的评论", texts[3]], "Label": [*values, 0, None]})
    path = tmp_path / "coder.csv"
    coder.to_csv(path, index=False)
    table = ag.study_agreement(study, coder_sheet=path, runs={"lr_tfidf_char": run}, n_boot=50)
    assert list(table.index.get_level_values("rater").unique()) == ["second coder", "lr_tfidf_char"]
    human = table.loc[("second coder", "labels", "overall")]
    assert human["texts"] == 10 and human["kappa"] == pytest.approx(
        cohen_kappa_score(data.labels[:10], [data.label_values.index(v) for v in values])
    )
    model = table.loc[("lr_tfidf_char", "labels", "overall")]
    assert model["texts"] == len(set(data.texts))
    gold = dict(zip(data.texts, data.labels))
    assert model["kappa"] == pytest.approx(
        cohen_kappa_score([gold[t] for t in run.predictions["text"]], run.predictions["pred"])
    )
    assert table.loc[("lr_tfidf_char", "second coder", "overall"), "texts"] == 10  # the model against the coder
    assert "1 texts not in the other" in table.attrs["matches"]["second coder"]  # the unlabelled text
    assert ag.NO_SECOND_CODER not in ag.summary(table)
    alone = ag.study_agreement(study, runs={"lr_tfidf_char": run}, n_boot=20)
    assert ag.summary(alone).startswith(ag.NO_SECOND_CODER)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"Sentence": [texts[0]], "Label": ["文化"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="not in the label table"):
        ag.study_agreement(study, coder_sheet=bad, runs={}, n_boot=20)


NEW = ["舞美灯光", "青铜器上的铭文", "文化自信的表达", "这集一般般", "古籍修复不易", "传承之美"]


def blind_workbook(tmp_path, study, run, share=0.5, **kwargs):
    batch = al.rank_for_labelling(NEW, probs_for(np.linspace(0.9, 0.4, len(NEW))), n=len(NEW))
    mixed = al.mix_blind_checks(batch, study.data, share, seed=1, oof=run)
    path = al.write_annotator_sheet(mixed, tmp_path / "to_label.xlsx", study.data, **kwargs)
    return batch, mixed, path


def test_blind_checks_are_mixed_in_unmarked_with_a_hidden_record(tmp_path, lr_study):
    study, run = lr_study
    data = study.data
    codebook = pd.DataFrame(
        {"Label": [0, 1, 2], "Name": ["a", "b", "c"], "Description": ["", "", ""]}
        | {c: ["", "", ""] for c in ("Include", "Exclude", "Examples")}
    )
    batch, mixed, path = blind_workbook(tmp_path, study, run, instructions=codebook)
    checks = mixed[mixed["check"]]
    assert len(checks) == 6 and len(mixed) == 12  # share 0.5 of the rows: 6 checks to 6 new texts
    assert set(checks["text"]) <= set(data.texts) and not set(checks["text"]) & set(NEW)
    assert mixed["check"].tolist() != [False] * 6 + [True] * 6  # shuffled among the chosen texts
    # the coder's workbook: no sheet and no column that tells a check from a new text
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Sheet", "labels", "instructions"]
    visible = read_sheet(path, ["Sentence", "Label"]).df
    assert list(visible.columns) == ["item", "Sentence", "guess", "guess_name", "Label"]
    assert visible["Sentence"].tolist() == mixed["text"].tolist() and visible["item"].tolist() == list(range(1, 13))
    assert read_sheet(path, ["Label", "Name"], sheet="instructions").df.columns.tolist()[:3] == [
        "Label",
        "Name",
        "Description",
    ]
    # the checks' guesses are the run's out-of-fold guesses, not the final model's
    oof = dict(zip(run.predictions["text"], run.calibrated_probs.argmax(axis=1)))
    shown = dict(zip(visible["Sentence"], visible["guess"]))
    assert all(shown[t] == data.label_values[oof[t]] for t in checks["text"])
    # the hidden record, next to the workbook
    record = read_machine_table(al.blind_record_path(path))
    assert al.blind_record_path(path).name == "to_label_blind_record.csv"
    assert record["item"].tolist() == visible["item"].tolist() and record["text"].tolist() == mixed["text"].tolist()
    assert record["check"].tolist() == mixed["check"].tolist()
    gold = dict(zip(data.texts, data.labels))
    assert record.loc[record["check"], "original_label"].tolist() == [
        data.label_values[gold[t]] for t in record.loc[record["check"], "text"]
    ]
    assert record.loc[~record["check"], "rank"].tolist() == [
        batch.set_index("text")["rank"][t] for t in record.loc[~record["check"], "text"]
    ]
    with pytest.raises(FileExistsError, match="never overwritten"):
        al.write_annotator_sheet(mixed, path, data)


def test_blind_share_is_respected_and_checked(tmp_path, lr_study):
    study, run = lr_study
    batch = al.rank_for_labelling(NEW, probs_for(np.linspace(0.9, 0.4, len(NEW))), n=len(NEW))
    for share, checks in [(0.0, 0), (0.25, 2), (0.5, 6), (0.75, 18)]:
        mixed = al.mix_blind_checks(batch, study.data, share, oof=run)
        assert mixed["check"].sum() == checks and len(mixed) == len(NEW) + checks  # round(share · 6 / (1 − share))
    plain = al.mix_blind_checks(batch, study.data, 0.0)
    assert plain["text"].tolist() == batch["text"].tolist()  # no check: the batch in its order
    with pytest.raises(DataError, match="blind_share = 0.9 asks for 54 labelled texts .* lower blind_share"):
        al.mix_blind_checks(batch, study.data, 0.9)
    with pytest.raises(DataError, match="blind_share = 1 is out of range"):
        al.mix_blind_checks(batch, study.data, 1)
    # checks without out-of-fold guesses: the sheet is written without guesses, or refused with what to do
    blind = al.mix_blind_checks(batch, study.data, 0.5)
    with pytest.raises(DataError, match="out-of-fold .*show_guesses=False"):
        al.write_annotator_sheet(blind, tmp_path / "a.xlsx", study.data)
    path = al.write_annotator_sheet(blind, tmp_path / "b.xlsx", study.data, guesses=False)
    assert list(read_sheet(path, ["Sentence", "Label"]).df.columns) == ["item", "Sentence", "Label"]
    assert read_machine_table(al.blind_record_path(path))["guess_from"].eq("not shown").all()


def test_returned_sheet_gives_agreement_and_only_new_labels(tmp_path, lr_study, tiny_sheet):
    study, run = lr_study
    data = study.data
    _, mixed, path = blind_workbook(tmp_path, study, run)
    checks = mixed[mixed["check"]]
    gold = dict(zip(data.texts, data.labels))
    coder = {t: data.label_values[gold[t]] for t in checks["text"]}
    first, second = checks["text"].iloc[0], checks["text"].iloc[1]
    coder[first] = data.label_values[(gold[first] + 1) % 3]  # the coder disagrees on one check
    del coder[second]  # and leaves another empty
    new = {NEW[0]: 0, NEW[1]: 1, NEW[2]: 2}  # three of the six new texts labelled
    fill(path, coder | new)
    back = al.returned_sheet(path, data, n_boot=100)
    assert back.new["text"].tolist() == [t for t in mixed["text"] if t in new]
    assert back.checks["coder"].isna().sum() == 1 and len(back.checks) == 6
    labelled = back.checks.dropna()
    expected = cohen_kappa_score(labelled["original"].astype(int), labelled["coder"].astype(int))
    overall = back.agreement.loc[("coder", "original labels", "overall")]
    assert overall["kappa"] == pytest.approx(expected) and overall["texts"] == 5 and overall["missing"] == 1
    assert back.summary.startswith("to_label.xlsx: 3 new labels; the coder labelled 5 of 6 blind checks; coder vs.")
    # passed on as extra labelled rows, the checks are skipped (the original labels stand), the new rows added
    more = load_labelled(tiny_sheet(), extra_labelled_paths=[path])
    added = more.df[more.df["source"] == path.name]
    assert dict(zip(added["text"], added["label"])) == new and len(more.df) == len(data.df) + 3
    skipped = (
        more.report.to_frame()
        .set_index("problem")
        .loc["to_label.xlsx: text already labelled (a blind check, or a repeat)"]
    )
    assert skipped["rows"] == 5 and skipped["action"].startswith("skipped")
    assert dict(zip(more.df["text"], more.df["label"]))[first] == gold[first]
    # a renamed file: its record is named, or the message says what to pass
    renamed = path.rename(tmp_path / "filled_by_coder.xlsx")
    with pytest.raises(DataError, match="No blind record filled_by_coder_blind_record.csv .* pass record="):
        al.returned_sheet(renamed, data)
    again = al.returned_sheet(renamed, data, record=tmp_path / "to_label_blind_record.csv", n_boot=100)
    pd.testing.assert_frame_equal(again.agreement, back.agreement)
