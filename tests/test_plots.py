"""Figures ready for a paper (nblib.plots): the Simplified-Chinese font, legends clear of the data, display names,
full ranges, no empty buckets, a compact per-fold grid and a deterministic order of tied terms."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib import font_manager, ft2font

from nblib import plots


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def right_of_axes(fig, ax) -> bool:
    fig.canvas.draw()
    return ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


def test_the_figures_use_the_simplified_chinese_face(tmp_path):
    name = plots.setup_style()
    assert name == "Noto Sans CJK SC"
    path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
    assert ft2font.FT2Font(path, face_index=path.face_index).family_name.endswith(" SC")
    fig, ax = plt.subplots()
    ax.set_title("写真 舞美 文物")
    pdf = plots.save(fig, "font", tmp_path, formats=("pdf",))[0]
    embedded = set(re.findall(rb"/BaseFont\s*/(?:[A-Z]{6}\+)?([^\s/]+)", pdf.read_bytes()))
    assert b"NotoSansCJKsc-Regular" in embedded and not any(b"tc-" in f or b"jp-" in f for f in embedded)


def per_fold(rng) -> dict[str, pd.DataFrame]:
    return {
        name: pd.DataFrame({"accuracy": rng.uniform(lo, lo + 0.05, 5), "macro_f1": rng.uniform(lo, lo + 0.05, 5)})
        for name, lo in [("lr_tfidf_char", 0.8), ("bert_tiny-random", 0.85), ("mlp_tfidf_word", 0.7)]
    }


def test_model_comparison_shows_display_names_with_the_legend_outside():
    fig = plots.model_comparison(per_fold(np.random.default_rng(0)))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "BERT (tiny-random)",
        "TF-IDF (char 1–3) + LR",
        "MLP (TF-IDF, words)",
    ]
    assert legend_texts(fig) == ["Accuracy", "Macro-F1"]
    assert right_of_axes(fig, ax)


def test_per_class_bars_keep_the_class_order_and_the_legend_outside():
    table = pd.DataFrame(
        {
            "class": ["文物", "节目", "文物", "节目"],
            "f1": [0.5, 0.6, 0.7, 0.8],
            "model": ["a_x", "a_x", "bert_b", "bert_b"],
        }
    )
    fig = plots.per_class_scores(table, label_names=["节目", "文物", "无关"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["节目", "文物"]  # label order, only classes present
    assert legend_texts(fig) == ["a_x", "BERT (b)"] and right_of_axes(fig, ax)


def test_learning_curves_have_no_bare_fold_number_in_the_legend():
    history = pd.DataFrame(
        {"fold": 0, "epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95]}
        | {"val_macro_f1": [0.3, 0.5, 0.45]}
    )
    fig = plots.learning_curves(history, "t", best_epochs={0: 2})
    texts = legend_texts(fig)
    assert "0" not in texts and "fold 0" in texts
    assert {"Training loss", "Validation loss", "epoch kept"} <= set(texts)
    assert "train_loss" not in texts


def test_reliability_diagram_shows_points_at_one_whole():
    curve = pd.DataFrame(
        {"lower": [0.8, 0.9], "upper": [0.9, 1.0], "confidence": [0.85, 0.99], "accuracy": [0.9, 1.0], "texts": [5, 9]}
    )
    ax = plots.reliability_diagram({"raw": curve}).axes[0]
    assert ax.get_ylim()[1] > 1.0 and ax.get_xlim()[1] > 1.0


def test_accuracy_by_length_labels_each_bucket_with_its_n_and_drops_empty_ones():
    buckets = pd.Categorical(["0–9", "10–19", "0–9", "10–19"], categories=["0–9", "10–19", "80+"])
    table = pd.DataFrame(
        {"bucket": buckets, "accuracy": [0.5, 1.0, 0.6, 0.9], "texts": [40, 2, 40, 2], "model": ["a", "a", "b", "b"]}
    )
    fig = plots.accuracy_by_length(table)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["0–9\n(n = 40)", "10–19\n(n = 2)"]  # no "80+"


def test_per_fold_confusion_matrices_are_a_compact_grid_with_one_colour_bar(tmp_path):
    rng = np.random.default_rng(0)
    cms = [rng.integers(0, 50, (4, 4)) for _ in range(5)]
    fig = plots.confusion_grid(cms, ["节目", "文物", "文化", "无关"], "per fold", [f"fold {f}" for f in range(5)])
    png = plots.save(fig, "grid", tmp_path, formats=("png",))[0]
    height, width = plt.imread(png).shape[:2]
    assert height < 2500 and width < 4500, (height, width)  # was 7,084 px tall as one row per fold
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles[0] == f"fold 0 (n = {cms[0].sum()})"


def test_tied_terms_are_ordered_by_term():
    terms = pd.DataFrame({"class": "a", "term": ["乙", "甲", "丙"], "score": [2.0, 2.0, 3.0]})
    fig = plots.top_terms(terms, "characters")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["丙", "乙", "甲"]
