"""The headline class shares (nblib.headline): on simulated pools whose shares are known, the method chosen on
the held-out shifted check, its calibrated intervals, the group differences and the sentence for the paper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import gaussian_task

from nblib import cli, headline, settings, shares, shares_check, shares_cli

TRAIN_PRIOR = np.array([0.5, 0.3, 0.15, 0.05])
# the check's kind of shift: the rarest class twice, the largest half as frequent
SHIFTED_PRIOR = shares_check.shifted_prevalence(TRAIN_PRIOR, up=3, down=0)
METHODS = ["CC", "PCC", "ACC", "EMQ"]  # two unadjusted (PCC-like), two adjusted (ACC-like); PACC is slow
PCC_LIKE, ACC_LIKE = {"CC", "PCC"}, {"ACC", "PACC", "EMQ"}


def simulated(n: int, prior, rng: np.random.Generator, sep: float):
    """Gold labels drawn from ``prior`` and the exact posteriors of a classifier calibrated under TRAIN_PRIOR."""
    return gaussian_task(n, prior, rng, sep, TRAIN_PRIOR)


CASES = {  # a weak classifier with few labels, a strong one with many
    "weak": dict(sep=0.8, labelled=1000, pool=300),
    "strong": dict(sep=1.8, labelled=6000, pool=600),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """A case, its labelled texts (probabilities, gold, folds) and the choice of the held-out shifted check."""
    cfg = CASES[request.param]
    rng = np.random.default_rng(11)
    probs, gold = simulated(cfg["labelled"], TRAIN_PRIOR, rng, cfg["sep"])
    folds = rng.permutation(np.arange(len(gold)) % 5)
    check = shares_check.coverage(
        probs, gold, folds, repeats=10, n_boot=40, methods=METHODS, seed=3, calibrate=False, texts=cfg["pool"]
    )
    return request.param, cfg, (probs, gold, folds), headline.choose(check)


def test_the_choice_switches_between_pcc_like_and_acc_like_methods_with_the_model(case):
    name, _, _, choice = case
    err = choice.check["mean abs error"]
    if name == "weak":  # the adjusted estimates swing with their noisy error rates
        assert choice.method in PCC_LIKE, choice.reason
        assert err["ACC"] > 1.3 * err["PCC"]
    else:  # the probability average keeps the model's pull towards the training shares
        assert choice.method in ACC_LIKE, choice.reason
        assert err["PCC"] > 1.3 * err[choice.method]
    assert choice.reason.startswith(f"{choice.method}: ") and "shifted held-out samples" in choice.reason
    assert f"×{choice.factor:.2f}" in choice.reason


@pytest.mark.parametrize("shifted", [True, False], ids=["prior shift", "no shift"])
def test_the_headline_intervals_hold_the_true_shares_of_new_pools(case, shifted):
    """Fresh pools from the population (never seen by the check): the calibrated intervals cover 90-97% under the
    check's kind of shift; without a shift at least 90% (a PCC-like choice is then conservative: its widening
    is for a bias that vanishes when nothing shifts)."""
    name, cfg, (probs, gold, folds), choice = case
    prior = SHIFTED_PRIOR if shifted else TRAIN_PRIOR
    covered = []
    for r in range(25):
        pool, _ = simulated(cfg["pool"], prior, np.random.default_rng(100 + r), cfg["sep"])
        t = shares.shares(
            probs, gold, pool, list("abcd"), methods=[choice.method], n_boot=40, seed=r, oof_folds=folds,
            factors={choice.method: choice.factor},
        )  # fmt: skip
        covered += list((t["lower"] <= prior) & (prior <= t["upper"]))
    coverage = np.mean(covered)
    if shifted or name == "strong":
        assert 0.90 <= coverage <= 0.97, (name, choice.method, choice.factor, coverage)
    else:
        assert coverage >= 0.90, (name, choice.method, choice.factor, coverage)


# --- intervals inside [0, 1], labelled; PPI; differences and the sentence --------------------------------


@pytest.fixture(scope="module")
def labelled():
    """Out-of-fold probabilities, gold labels and folds of 3,000 labelled texts of a strong classifier."""
    rng = np.random.default_rng(5)
    probs, gold = simulated(3000, TRAIN_PRIOR, rng, 1.8)
    return probs, gold, rng.permutation(np.arange(3000) % 5)


def test_intervals_are_clipped_to_0_1_said_so_and_cc_pcc_marked_sampling_only(labelled):
    """Issue 19.4: a rare class in a small pool gave CC intervals below 0 (the fold-draw widening pushed the
    percentile bound of 0 further down); bounds and estimates now stay in [0, 1] and the table marks them."""
    from nblib import tables

    probs, gold, folds = labelled
    pool, _ = simulated(40, TRAIN_PRIOR, np.random.default_rng(6), 1.8)
    t = shares.shares(probs, gold, pool, list("abcd"), methods=["CC", "PCC", "ACC"], n_boot=60, oof_folds=folds)
    assert t[["share", "lower", "upper"]].stack().between(0, 1).all()
    assert t["clipped"].any() and (t.loc[t["clipped"], "lower"] == 0).all()  # clipped at 0, not left below it
    kinds = t.groupby("method")["interval"].first().to_dict()
    assert kinds == {"CC": "sampling only", "PCC": "sampling only", "ACC": "bootstrap"}
    paper = tables.class_shares(t)
    assert list(paper.columns) == ["CC (%, sampling only)", "PCC (%, sampling only)", "ACC (%)"]
    clipped_row = t[t["clipped"]].iloc[0]
    cell = paper.loc[("whole pool (n = 40)", clipped_row["class"]), f"{clipped_row['method']} (%, sampling only)"]
    assert cell.startswith(f"{100 * clipped_row['share']:.1f} [0.0, ") and cell.endswith(tables.CLIPPED)
    assert "‡ interval clipped to [0, 100]" in paper.attrs["note"] and "CC: sampling only" in paper.attrs["note"]
    # a PCC calibrated as the headline carries its bias in the widening: no longer sampling-only
    calibrated = shares.shares(probs, gold, pool, list("abcd"), methods=["PCC"], n_boot=20, factors={"PCC": 2.5})
    assert (calibrated["interval"] == "sampling only × 2.50, calibrated on the held-out check").all()
    assert list(tables.class_shares(calibrated).columns) == ["PCC (%)"]


def test_ppi_is_ppi_pythons_mean_estimator_per_class_and_breaks_under_shift(labelled):
    from ppi_py import ppi_mean_ci, ppi_mean_pointestimate

    probs, gold, _ = labelled
    onehot = np.eye(4)[gold]
    for prior, ok in [(TRAIN_PRIOR, True), (SHIFTED_PRIOR, False)]:
        pool, y = simulated(4000, prior, np.random.default_rng(9), 1.8)
        t = shares.shares(probs, gold, pool, list("abcd"), methods=["PPI"], n_boot=0)
        np.testing.assert_allclose(t["share"], np.clip(ppi_mean_pointestimate(onehot, probs, pool), 0, 1))
        low, high = ppi_mean_ci(onehot, probs, pool, alpha=0.05)
        np.testing.assert_allclose(t["lower"], np.clip(low, 0, 1))
        np.testing.assert_allclose(t["upper"], np.clip(high, 0, 1))
        assert (t["interval"] == "PPI normal interval").all()
        held = ((t["lower"] <= prior) & (prior <= t["upper"])).all()
        assert held == ok, (prior, t)  # its assumption: labelled texts and pool from the same population


def test_group_differences_from_the_same_bootstrap_and_the_sentence_for_the_paper(labelled):
    probs, gold, folds = labelled
    a, _ = simulated(1500, SHIFTED_PRIOR, np.random.default_rng(10), 1.8)
    b, _ = simulated(1500, TRAIN_PRIOR, np.random.default_rng(11), 1.8)
    small, _ = simulated(10, TRAIN_PRIOR, np.random.default_rng(12), 1.8)
    pool, groups = np.vstack([a, b, small]), ["甲"] * 1500 + ["乙"] * 1500 + ["丙"] * 10
    choice = headline.Choice("EMQ", 1.2, "EMQ: test", pd.DataFrame())
    result = headline.headline_shares(
        probs, gold, pool, ["舞美", "文物", "文化", "无关"], choice, groups, ["CC", "EMQ"], n_boot=60, oof_folds=folds
    )
    assert set(result.paper["method"]) == {"EMQ"} and result.table["headline"].sum() == 4 * 4
    assert result.paper["interval"].iloc[0] == "bootstrap × 1.20, calibrated on the held-out check"
    d = result.differences
    assert list(d.columns) == headline.DIFF_COLUMNS and set(zip(d["group"], d["other"])) == {("乙", "甲")}  # not 丙
    row = d.set_index("class").loc["舞美"]  # 甲's largest class was halved, 乙's not
    paper = result.paper.set_index(["group", "class"])["share"]
    assert row["difference"] == pytest.approx(paper[("乙", "舞美")] - paper[("甲", "舞美")])
    assert row["lower"] > 0 and row["clear"] and row["lower"] <= row["difference"] <= row["upper"]
    sentence = headline.paper_sentence(result)
    whole = result.paper[result.paper["group"] == ""].sort_values("share", ascending=False).iloc[0]
    assert sentence.startswith(
        f"Of the 3,010 comments, an estimated {100 * whole['share']:.0f}% (95% CI {100 * whole['lower']:.0f}–"
    )
    assert "In group 丙 (10 comments, too few)" in sentence and "(Estimator: EMQ" in sentence
    assert (
        f"Group 乙 has more 舞美 than group 甲: difference {100 * row['difference']:.0f} points "
        f"[{100 * row['lower']:.0f}, {100 * row['upper']:.0f}]." in sentence
    )


# --- the command line (issue 19.8 and the header row) ---------------------------------------------------


@pytest.mark.parametrize(
    "flag, value, allowed",
    [
        ("--n-boot", "-5", "-5 is out of range: give a whole number ≥ 10"),
        ("--n-boot", "many", "'many' is not a whole number; give one ≥ 10"),
        ("--level", "1.5", "1.5 is out of range: give a number > 0 and < 1"),
        ("--check-repeats", "0", "0 is out of range: give a whole number ≥ 1"),
        ("--check-boot", "5", "5 is out of range: give a whole number ≥ 10"),
        ("--check-shift", "0.5", "0.5 is out of range: give a number ≥ 1"),
        ("--header-row", "0", "0 is out of range: give a whole number ≥ 1"),
        ("--min-group", "0", "0 is out of range: give a whole number ≥ 1"),
        ("--seed", "-1", "-1 is out of range: give a whole number ≥ 0"),
    ],
)
def test_every_numeric_option_is_checked_up_front_with_its_range(tmp_path, capsys, flag, value, allowed):
    with pytest.raises(SystemExit) as stop:
        shares_cli.main(["run", "pool.xlsx", str(tmp_path / "out.csv"), flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {allowed}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flag, setting", [("--n-boot", "n_boot"), ("--check-repeats", "shift_repeats"), ("--check-boot", "coverage_boot")]
)
def test_the_command_line_takes_range_default_and_help_from_the_notebook_setting(tmp_path, capsys, flag, setting):
    """An option that 05 has as a setting accepts what 05 accepts (n_boot ≥ 10, not ≥ 20), with 05's default."""
    field = settings.flat_fields(settings.PredictSettings)[setting]
    least = int(settings.range_of(field).ge)
    option = cli.from_setting(settings.PredictSettings, setting)
    assert option["default"] == field.default and option["help"] == f"{settings.help_of(field)} (≥ {least})"
    # the least value 05 accepts passes the command line's check; the missing run folder is what stops it
    assert shares_cli.main([str(tmp_path / "run"), "pool.xlsx", str(tmp_path / "o.csv"), flag, str(least)]) == 2
    err = capsys.readouterr().err
    assert "No run results in" in err and "argument" not in err


def test_the_header_row_advice_names_an_option_the_command_has(tmp_path, capsys, tiny_study):
    from nblib.sheets import write_table

    study = tiny_study()
    run = study.open_run("lr_test", {"model": "lr_test"})
    rng = np.random.default_rng(0)
    for k in range(study.n_folds):
        idx = np.flatnonzero(study.folds == k)
        run.save_fold(k, idx, np.eye(3)[study.data.labels[idx]] * 0.6 + rng.dirichlet([1, 1, 1], len(idx)) * 0.4)
    run.finish()
    names = study.data.label_names
    rows = [["Comments about the shows", "labelled", "by the", "model"], ["Sentence", *[f"prob_{n}" for n in names]]]
    rows += [[f"池中第{i}条", *rng.dirichlet([1, 1, 1])] for i in range(40)]
    sheet = write_table(pd.DataFrame(rows[1:], columns=rows[0]), tmp_path / "pool.csv")  # a title row above
    argv = [str(run.path), str(sheet), str(tmp_path / "s.csv"), "--methods", "CC", "PCC", "--n-boot", "20"]
    argv += ["--check-repeats", "2", "--check-boot", "20"]
    assert shares_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--header-row 2" in err and "header_row=" not in err
    assert shares_cli.main([*argv, "--header-row", "2"]) == 0
    assert "40 pool texts" in capsys.readouterr().out


def test_a_model_that_predicts_one_class_gets_no_uncalibratable_headline_and_no_empty_interval():
    """The demo's tiny random model predicts one class for everything: CC's and ACC's intervals have zero width
    around a wrong estimate, which no widening repairs; the choice skips them, and every interval is a number."""
    rng = np.random.default_rng(0)
    gold = rng.choice(4, 600, p=TRAIN_PRIOR)
    probs = np.tile([0.4, 0.3, 0.2, 0.1], (600, 1)) + rng.normal(0, 0.002, (600, 4))
    folds = rng.permutation(np.arange(600) % 5)
    check = shares_check.coverage(
        probs, gold, folds, repeats=3, n_boot=20, methods=["CC", "ACC", "PCC"], calibrate=False
    )
    assert not np.isfinite(check.loc["CC", "needed factor"])
    choice = headline.choose(check)
    assert not np.isfinite(check.loc["ACC", "needed factor"]) and check.loc["ACC", "mean abs error"] > 0
    assert choice.method == "PCC" and "methods whose intervals can be calibrated (not ACC, CC)" in choice.reason
    everything = headline.Choice("CC", float("inf"), "CC", check)
    result = headline.headline_shares(probs, gold, probs[:100], list("abcd"), everything, ["x"] * 50 + ["y"] * 50,
                                      ["CC"], n_boot=20, oof_folds=folds)  # fmt: skip
    assert result.table[["lower", "upper"]].notna().all().all()
    assert (result.paper["lower"] == 0).all() and (result.paper["upper"] == 1).all()
    assert result.differences[["lower", "upper"]].eq([-1, 1]).all().all()
