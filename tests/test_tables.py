"""Tables for machines and for the paper (nblib.tables): CSV, LaTeX (booktabs) and Markdown from one call."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nblib import tables
from nblib.results import ModelResults
from nblib.sheets import read_machine_table


def fake_run(name: str, gold: np.ndarray, pred: np.ndarray) -> ModelResults:
    """Out-of-fold results of a made-up model with these predictions."""
    n = len(gold)
    folds = np.arange(n) % 5
    right = pred == gold
    metrics = pd.DataFrame(
        [
            {"fold": k, "accuracy": right[folds == k].mean(), "macro_f1": right[folds == k].mean() - 0.01}
            | {f"f1_{c}": right[(folds == k) & (gold == c)].mean() for c in range(3)}
            for k in range(5)
        ]
    )
    probs = np.eye(3)[pred] * 0.7 + 0.1
    predictions = pd.DataFrame({"index": range(n), "fold": folds, "gold": gold, "pred": pred})
    predictions[["prob_0", "prob_1", "prob_2"]] = probs
    return ModelResults(name, {}, predictions, metrics, None)


def runs():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 500)
    best = np.where(rng.random(500) < 0.9, gold, (gold + 1) % 3)
    close = best.copy()
    close[np.flatnonzero(best == gold)[:3]] = (gold[np.flatnonzero(best == gold)[:3]] + 2) % 3  # 3 more errors
    weak = np.where(rng.random(500) < 0.6, gold, (gold + 1) % 3)
    return {name: fake_run(name, gold, pred) for name, pred in [("weak_model", weak), ("best", best), ("close", close)]}


def test_save_table_writes_csv_latex_and_markdown(tmp_path):
    table = pd.DataFrame({"model": ["a_b", "c"], "score": ["0.9 ± 0.1", "0.5 ± 0.2"], "p": [1.3e-8, 0.25]})
    table = table.set_index("model")
    table.attrs["bold"] = {("a_b", "score")}
    paths = tables.save_table(table, tmp_path, "t", note="50% of all & more")
    assert [p.name for p in paths] == ["t.csv", "t.tex", "t.md"]
    csv = read_machine_table(paths[0], text_columns=("model", "score"))
    assert csv["score"].tolist() == ["0.9 ± 0.1", "0.5 ± 0.2"]  # bold is not in the CSV
    assert csv["p"].tolist() == [1.3e-8, 0.25]
    tex = paths[1].read_text()
    for part in (r"\toprule", r"\midrule", r"\bottomrule", r"a\_b", r"\textbf{0.9 $\pm$ 0.1}", "1.3 $\\times$ 10⁻⁸"):
        assert part in tex, part
    assert r"50\% of all \& more" in tex
    md = paths[2].read_text().splitlines()
    assert md[:3] == ["| model | score | p |", "|---|---|---|", "| a\\_b | **0.9 ± 0.1** | 1.3 × 10⁻⁸ |"]
    assert md[3] == "| c | 0.5 ± 0.2 | 0.250 |"
    assert md[-1] == "50% of all & more"


def test_model_comparison_bold_best_and_dagger_where_mcnemar_is_significant():
    table = tables.model_comparison(runs(), columns=["accuracy", "macro_f1"])
    assert list(table.index) == ["best", "close", "weak_model†"]  # best first; only the weak one differs
    bold = tables.bold_cells(table)
    assert bold.loc["best", "accuracy"] and not bold.loc["close", "accuracy"] and not bold["p (McNemar vs. best)"].any()
    assert table.loc["best", "p (McNemar vs. best)"] == ""
    assert float(table.loc["close", "p (McNemar vs. best)"]) > 0.05
    assert "× 10⁻" in table.loc["weak_model†", "p (McNemar vs. best)"]  # < 0.001, written as a paper writes it
    r = runs()["best"].metrics["accuracy"]
    assert table.loc["best", "accuracy"] == f"{r.mean():.3f} ± {r.std():.3f}"  # no marks in the text
    assert "McNemar" in table.attrs["note"] and "best" in table.attrs["note"]
    html = tables.styled(table).to_html()  # as 04 shows it: bold cells bold, no ** marks
    bold_rule = html.split("</style>")[0]  # one CSS rule lists the bold cells
    assert bold_rule.count("_row0_col") == 2 and "_row1_" not in bold_rule and "font-weight: bold" in bold_rule
    assert "**" not in html and "× 10⁻" in html


def test_per_class_marks_the_best_model_per_class():
    table = tables.per_class(runs(), ["舞美", "文物", "文化"])
    assert list(table.index) == ["舞美", "文物", "文化"] and list(table.columns) == ["weak_model", "best", "close"]
    bold = tables.bold_cells(table)
    assert bold.sum(axis=1).ge(1).all() and not bold["weak_model"].any()
    assert not table.map(lambda c: "*" in c).any().any()


def test_class_shares_formats_share_and_interval_in_percent_and_marks_small_groups(tmp_path):
    long = pd.DataFrame(
        {
            "group": ["", "", "A", "A"],
            "class": ["x", "x", "x", "x"],
            "method": ["CC", "ACC", "CC", "ACC"],
            "share": [0.312, 0.3, 0.5, 0.45],
            "lower": [0.29, 0.25, 0.2, 0.1],
            "upper": [0.335, 0.35, 0.8, 0.9],
            "texts": [400, 400, 12, 12],
            "small": [False, False, True, True],
        }
    )
    table = tables.class_shares(long)
    assert list(table.columns) == ["CC (%)", "ACC (%)"]
    assert table.loc[("whole pool (n = 400)", "x"), "CC (%)"] == "31.2 [29.0, 33.5]"
    assert table.loc[("A (n = 12, too few)", "x"), "ACC (%)"] == "45.0 [10.0, 90.0]"
    md = tables.save_table(table, tmp_path, "shares")[2].read_text()
    assert "| whole pool (n = 400) | x | 31.2 [29.0, 33.5] | 30.0 [25.0, 35.0] |" in md


HOSTILE = [
    "**not bold**",
    "a_b",
    "50%",
    "R&D",
    "#1",
    "$5",
    r"C:\path",
    "a|b",
    "line\rbreak",
    "two\nlines",
    "😭🉑️",
    "=1+1",
]


def test_save_table_keeps_texts_exactly_in_the_csv_and_escapes_them_for_latex_and_markdown(tmp_path):
    table = pd.DataFrame({"text": HOSTILE, "confidence": np.linspace(0.5, 0.9, len(HOSTILE))})
    csv, tex, md = tables.save_table(table, tmp_path, "errors")
    assert read_machine_table(csv)["text"].tolist() == HOSTILE  # round-trips exactly, ** and CR included
    latex = tex.read_text()
    assert r"\textbf" not in latex  # a text with ** is not set bold
    for part in (r"**not bold**", r"a\_b", r"50\%", r"R\&D", r"\#1", r"\$5", r"C:\textbackslash{}path", "line break"):
        assert part in latex, part
    lines = md.read_text().splitlines()
    assert len(lines) == 2 + len(HOSTILE)  # CR and LF do not split a row
    cells = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]]
    assert cells[:3] == [r"\*\*not bold\*\*", r"a\_b", "50%"]
    assert cells[7:10] == [r"a\|b", "line<br>break", "two<br>lines"] and cells[10] == "😭🉑️"
    assert cells[6] == r"C:\\path"


def test_bold_is_a_cell_property_not_a_text_edit(tmp_path):
    table = pd.DataFrame({"a": ["x_1", "**y**"], "b": ["1", "2"]})
    table.attrs["bold"] = {(0, "a")}
    _, tex, md = tables.save_table(table, tmp_path, "b")
    assert r"\textbf{x\_1}" in tex.read_text() and r"\textbf{**y**}" not in tex.read_text()
    assert "| **x\\_1** | 1 |" in md.read_text() and "| \\*\\*y\\*\\* | 2 |" in md.read_text()
    html = tables.styled(table).to_html()
    assert html.count("font-weight: bold") == 1


def test_format_p():
    assert tables.format_p(3.193958e-07) == "3.2 × 10⁻⁷"
    assert tables.format_p(0.0321) == "0.032" and tables.format_p(1.0) == "1.000"
    assert tables.format_p(float("nan")) == "" and tables.format_p(0.0) == "< 10⁻³⁰⁰"
    assert tables.format_p(1.2e-12) == "1.2 × 10⁻¹²"


def test_tex_and_markdown_show_display_names_and_the_csv_keeps_ids(tmp_path):
    table = pd.DataFrame(
        {"macro_f1": [0.8, 0.7], "p-value (exact McNemar)": [np.nan, 2e-5]},
        index=pd.Index(["bert_tiny-random", "lr_tfidf_char†"], name="model"),
    )
    csv, tex, md = tables.save_table(table, tmp_path, "names", display_names={"bert_tiny-random": "Our BERT"})
    machine = read_machine_table(csv, text_columns=("model",))
    assert machine["model"].tolist() == ["bert_tiny-random", "lr_tfidf_char†"]
    assert list(machine.columns) == ["model", "macro_f1", "p-value (exact McNemar)"]
    lines = md.read_text().splitlines()
    assert lines[0] == "| model | Macro-F1 | p-value (exact McNemar) |"
    assert lines[2:] == ["| Our BERT | 0.800 |  |", "| TF-IDF (char 1–3) + LR† | 0.700 | 2.0 × 10⁻⁵ |"]
    assert r"TF-IDF (char 1–3) + LR\textsuperscript{\dag}" in tex.read_text()
