"""Class shares of a pool (nblib.shares): the estimators on data whose truth is known, the intervals,
the validation on a shifted held-out fold, the command line and every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import gaussian_task

from nblib import headline, shares, shares_check, shares_cli, shares_pool
from nblib.sheets import DataError, read_machine_table, write_table

TRAIN_PRIOR = np.array([0.5, 0.3, 0.15, 0.05])
SHIFTED_PRIOR = np.array([0.25, 0.3, 0.2, 0.25])


@pytest.fixture(scope="module")
def labelled():
    """Out-of-fold probabilities, gold labels and folds of 4,000 labelled texts."""
    rng = np.random.default_rng(1)
    probs, gold = gaussian_task(4000, TRAIN_PRIOR, rng)
    return probs, gold, rng.permutation(np.arange(4000) % 5)


def test_adjusted_estimates_recover_shifted_shares_that_the_count_misses(labelled):
    probs, gold, _ = labelled
    pool, truth_y = gaussian_task(3000, SHIFTED_PRIOR, np.random.default_rng(2))
    truth = np.bincount(truth_y, minlength=4) / len(truth_y)
    est = shares.estimate(probs, gold, pool)
    assert list(est.index) == list(shares.METHODS)
    np.testing.assert_allclose(est.sum(axis=1), 1, atol=1e-6)
    error = (est - truth).abs().mean(axis=1)
    assert error["CC"] > 0.04  # the count is pulled towards the training shares
    for method in ("ACC", "PACC", "EMQ"):
        assert error[method] < 0.02, (method, error[method])
        assert error[method] < error["CC"] / 2
    # the unadjusted ones are exactly the count of predicted labels and the mean probability
    np.testing.assert_allclose(est.loc["CC"], np.bincount(pool.argmax(1), minlength=4) / len(pool))
    np.testing.assert_allclose(est.loc["PCC"], pool.mean(axis=0))


def test_shares_table_with_groups_intervals_and_small_groups(labelled):
    probs, gold, _ = labelled
    pool, _ = gaussian_task(200, SHIFTED_PRIOR, np.random.default_rng(3))
    groups = ["show A"] * 150 + ["show B"] * 40 + [None] * 10
    table = shares.shares(probs, gold, pool, list("abcd"), groups=groups, methods=["CC", "ACC"], n_boot=50)
    assert list(table.columns) == shares.COLUMNS
    assert len(table) == 4 * 4 * 2  # (whole pool + 3 groups) × classes × methods
    assert list(dict.fromkeys(table["group"])) == ["", "(missing)", "show A", "show B"]
    texts = table.groupby("group")["texts"].first()
    assert texts.to_dict() == {"": 200, "(missing)": 10, "show A": 150, "show B": 40}
    small = table.groupby("group")["small"].first()
    assert small.to_dict() == {"": False, "(missing)": True, "show A": False, "show B": False}
    assert (table["lower"] <= table["upper"]).all() and table[["share", "lower", "upper"]].stack().between(0, 1).all()
    covered = (table["lower"] <= table["share"] + 1e-9) & (table["share"] <= table["upper"] + 1e-9)
    assert covered.mean() > 0.9  # a percentile interval usually, not always, holds the point estimate
    whole = table[(table["group"] == "") & (table["method"] == "CC")]
    np.testing.assert_allclose(whole["share"], np.bincount(pool.argmax(1), minlength=4) / 200)


def test_intervals_include_the_uncertainty_of_the_error_rates(labelled):
    """Same pool, fewer out-of-fold texts: the adjusted intervals widen, the count's do not."""
    probs, gold, _ = labelled
    pool, _ = gaussian_task(2000, SHIFTED_PRIOR, np.random.default_rng(4))
    width = {}
    for n in (4000, 150):
        t = shares.shares(probs[:n], gold[:n], pool, list("abcd"), methods=["CC", "ACC"], n_boot=100)
        width[n] = (t["upper"] - t["lower"]).groupby(t["method"]).mean()
    assert width[150]["ACC"] > 1.5 * width[4000]["ACC"]
    assert width[150]["CC"] == pytest.approx(width[4000]["CC"], rel=0.25)


def test_drawing_folds_first_carries_the_differences_between_fold_models(labelled):
    """One fold model much weaker than the others: the intervals widen only when the bootstrap draws folds."""
    probs, gold, folds = labelled
    probs = probs.copy()
    weak, _ = gaussian_task(int((folds == 0).sum()), TRAIN_PRIOR, np.random.default_rng(7), sep=0.5)
    probs[folds == 0] = weak  # fold 0's model barely separates the classes
    pool, _ = gaussian_task(1000, SHIFTED_PRIOR, np.random.default_rng(8))
    width = {
        name: shares.shares(probs, gold, pool, list("abcd"), methods=["ACC"], n_boot=60, oof_folds=by_fold)
        .eval("upper - lower")
        .mean()
        for name, by_fold in [("texts", None), ("folds", folds)]
    }
    assert width["folds"] > 1.5 * width["texts"], width


def test_shifted_sample_doubles_one_class_and_halves_another():
    gold = np.repeat([0, 1, 2], [5000, 3000, 2000])
    target = shares_check.shifted_prevalence(np.bincount(gold).astype(float), up=2, down=0)
    np.testing.assert_allclose(target, np.array([0.25, 0.3, 0.4]) / 0.95)  # weights 0.5, 1, 2
    idx = shares_check.shifted_sample(gold, up=2, down=0, rng=np.random.default_rng(0))
    assert len(set(idx)) == len(idx)  # without replacement
    assert len(idx) == pytest.approx(0.7 * 2000 / target[2], abs=1)  # 70% of the largest possible sample
    np.testing.assert_allclose(np.bincount(gold[idx], minlength=3) / len(idx), target, atol=0.03)


def test_shift_check_adjusted_estimates_beat_the_count_on_a_shifted_held_out_fold(labelled):
    probs, gold, folds = labelled
    table = shares_check.shift_check(probs, gold, folds, list("abcd"), test_fold=0)
    assert list(table.index) == ["a", "b", "c", "d", "mean"]
    # the rarest class (d) doubled, the largest (a) halved, relative to the training folds
    assert table.loc["d", "true share"] > 1.6 * table.loc["d", "training share"]
    assert table.loc["a", "true share"] < 0.75 * table.loc["a", "training share"]
    errors = table.loc["mean", [f"{m} error" for m in shares.METHODS]]
    for method in ("ACC", "PACC", "EMQ"):
        assert errors[f"{method} error"] < errors["CC error"], errors
    assert table.attrs["texts"] > 100
    sentence = shares_check.describe_check(table)
    assert f"CC {100 * errors['CC error']:.1f}" in sentence and f"({table.attrs['texts']} texts)" in sentence


def test_the_shift_check_calibrates_without_the_held_out_folds_labels(labelled):
    probs, gold, folds = labelled
    changed = gold.copy()
    changed[folds == 0] = 0  # other labels in the held-out fold: its calibration and the others' stay the same
    (tr_p, _), (te_p, _), _, _ = shares_check._held_out(probs, gold, folds, 0, None, None, calibrate=True)
    (tr_q, _), (te_q, _), _, _ = shares_check._held_out(probs, changed, folds, 0, None, None, calibrate=True)
    np.testing.assert_allclose(te_p, te_q)
    np.testing.assert_allclose(tr_p, tr_q)
    (_, _), (raw, _), _, _ = shares_check._held_out(probs, gold, folds, 0, None, None, calibrate=False)
    np.testing.assert_allclose(raw, probs[folds == 0])
    assert not np.allclose(te_p, raw)  # class biases fitted on the other folds were added


def test_coverage_of_the_intervals_on_repeated_shifted_samples(labelled):
    probs, gold, folds = labelled
    cov = shares_check.coverage(probs, gold, folds, repeats=6, n_boot=60, methods=["CC", "ACC", "PACC"])
    assert list(cov.index) == ["CC", "ACC", "PACC"]
    assert (cov["samples"] == 6).all()
    assert cov.loc["ACC", "coverage"] >= 0.8 and cov.loc["PACC", "coverage"] >= 0.8
    assert cov.loc["CC", "coverage"] < cov.loc["ACC", "coverage"]  # the count's intervals miss its bias
    assert cov.loc["ACC", "mean abs error"] < cov.loc["CC", "mean abs error"]


# --- bad input ------------------------------------------------------------------------------------------


def predicted_table(probs, names, texts=None, **columns) -> pd.DataFrame:
    texts = texts if texts is not None else [f"池中第{i}条" for i in range(len(probs))]
    table = pd.DataFrame({"Sentence": texts, **columns})
    for j, name in enumerate(names):
        table[f"prob_{name}"] = probs[:, j]
    return table


def test_pool_class_columns_must_match_the_run():
    probs = np.full((3, 2), 0.5)
    with pytest.raises(DataError, match=r"do not match the run's classes.*prob_舞美.*prob_文物.*prob_其他"):
        shares_pool.pool_from_table(predicted_table(probs, ["舞美", "文物"]), ["舞美", "文物", "其他"], [], "Sentence")


def test_pool_missing_group_or_text_column_names_the_parameter():
    table = predicted_table(np.full((3, 2), 0.5), ["x", "y"])
    with pytest.raises(DataError, match="No column 'show'.*Set group_col="):
        shares_pool.pool_from_table(table, ["x", "y"], [], "Sentence", group_col="show")
    with pytest.raises(DataError, match="No column 'show'.*Set --group "):
        shares_pool.pool_from_table(table, ["x", "y"], [], "Sentence", group_col="show", names=shares.CLI_NAMES)
    with pytest.raises(DataError, match="No column '评论'.*Set input_col="):
        shares_pool.pool_from_table(table, ["x", "y"], [], "评论")


def test_pool_texts_that_repeat_labelled_texts_and_empty_rows_are_left_out(caplog):
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan], [0.6, 0.4]])
    table = predicted_table(probs, ["x", "y"], texts=["新的", " 标注过的 ", "", "另一条"], show=["A", "B", "A", "B"])
    pool = shares_pool.pool_from_table(table, ["x", "y"], ["标注过的", "别的"], "Sentence", group_col="show")
    assert (pool.repeated, pool.empty) == (1, 1)
    np.testing.assert_allclose(pool.probs, probs[[0, 3]])
    assert list(pool.groups) == ["A", "B"]
    assert "1 pool text(s) repeat labelled texts" in caplog.text


def test_methods_from_a_list_or_a_comma_string_and_unknown_ones_named_with_the_parameter():
    assert shares.check_methods("CC, ACC,EMQ") == ["CC", "ACC", "EMQ"]
    with pytest.raises(DataError, match="Unknown share method.*'XYZ'.*set shares_methods=to some of CC, ACC, PCC"):
        shares.check_methods(["CC", "XYZ"])
    with pytest.raises(DataError, match=r"\(none given\): set --methods to some of"):
        shares.check_methods("", shares.CLI_NAMES)


@pytest.fixture
def finished_run(tiny_study):
    """A finished run of the tiny study with made-up out-of-fold probabilities; returns (study, run folder)."""
    study = tiny_study()
    run = study.open_run("lr_test", {"model": "lr_test"})
    rng = np.random.default_rng(0)
    for k in range(study.n_folds):
        idx = np.flatnonzero(study.folds == k)
        probs = np.eye(3)[study.data.labels[idx]] * 0.6 + rng.dirichlet([1, 1, 1], len(idx)) * 0.4
        run.save_fold(k, idx, probs)
    run.finish()
    return study, run.path


def test_run_without_out_of_fold_predictions_says_what_to_run(tiny_study, tmp_path):
    study = tiny_study()
    run = study.open_run("bert_half", {"model": "bert_half"})
    run.save_fold(0, np.flatnonzero(study.folds == 0), np.full(((study.folds == 0).sum(), 3), 1 / 3))
    with pytest.raises(DataError, match=r"no out-of-fold predictions yet \(folds done: \[0\]\): run 03_bert_cv"):
        shares_pool.run_results(run.path)
    with pytest.raises(DataError, match="is a saved model; RUN_DIR must be its run's results folder"):
        shares_pool.run_results(run.path / "final", shares.CLI_NAMES)
    with pytest.raises(FileNotFoundError, match="No run results"):
        shares_pool.run_results(tmp_path / "nothing")


def test_command_line_writes_the_long_table(finished_run, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="nblib.shares_cli")
    study, run_dir = finished_run
    names = study.data.label_names
    rng = np.random.default_rng(5)
    probs = rng.dirichlet([1, 1, 1], 60)
    texts = [f"池中第{i}条" for i in range(58)] + list(study.data.df["text"][:2])  # two repeat labelled texts
    sheet = write_table(predicted_table(probs, names, texts, show=["A"] * 40 + ["B"] * 20), tmp_path / "pool.xlsx")
    out = tmp_path / "shares.csv"
    argv = [str(run_dir), str(sheet), str(out), "--group", "show", "--methods", "CC", "PACC", "--n-boot", "20"]
    argv += ["--check-repeats", "2", "--check-boot", "20"]
    assert shares_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "58 pool texts (2 repeating labelled texts and 0 empty left out)" in printed
    table = read_machine_table(out, text_columns=("group", "class", "method", "interval"))
    assert list(table.columns) == [*shares.COLUMNS, "headline"]
    assert len(table) == 3 * 3 * 2
    assert set(table["class"]) == set(names) and set(table["method"]) == {"CC", "PACC"}
    chosen = set(table.loc[table["headline"].astype(bool), "method"])
    assert len(chosen) == 1 and table["headline"].astype(bool).sum() == 9  # one method's rows of each group
    method = chosen.pop()
    assert f"(Estimator: {method}, chosen on shifted held-out folds" in printed
    assert f"headline: {method}: " in caplog.text and "shifted held-out samples" in caplog.text  # which and why
    differences = read_machine_table(tmp_path / "shares_differences.csv", text_columns=("group", "other", "class"))
    assert differences.empty and list(differences.columns) == headline.DIFF_COLUMNS  # B is too small to compare
    assert table.groupby("group")["texts"].first().to_dict() == {"": 58, "A": 40, "B": 18}
    assert table.groupby("group")["small"].first().to_dict() == {"": False, "A": False, "B": True}
    # an existing output, a missing group column and an unknown method stop with exit status 2 and a message
    assert shares_cli.main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert shares_cli.main([str(run_dir), str(sheet), str(tmp_path / "o.csv"), "--group", "节目"]) == 2
    assert "No column '节目' in the predicted sheet" in (err := capsys.readouterr().err) and "Set --group " in err
    assert shares_cli.main([str(run_dir), str(sheet), str(tmp_path / "o.csv"), "--methods", "ABC"]) == 2
    assert "set --methods to some of" in capsys.readouterr().err


def test_figure_has_one_panel_per_group_and_marks_small_groups(labelled):
    from nblib import plots

    probs, gold, _ = labelled
    pool, _ = gaussian_task(100, SHIFTED_PRIOR, np.random.default_rng(6))
    table = shares.shares(
        probs, gold, pool, list("abcd"), groups=["A"] * 80 + ["B"] * 20, methods=["CC", "ACC"], n_boot=10
    )
    fig = plots.class_shares(table)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [
        "whole pool (n = 100)",
        "A (n = 80)",
        "B (n = 20, too few for an interval)",
    ]
    assert [t.get_text() for t in panels[0].get_legend().get_texts()] == ["CC (sampling only)", "ACC"]
