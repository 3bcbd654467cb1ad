"""Figures for a paper: one style, Chinese glyphs that render, saved under stable names."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import font_manager

log = logging.getLogger(__name__)
FORMATS = ("png", "pdf")


def setup_style() -> str:
    """Seaborn paper style with a CJK font (bundled Noto Sans CJK); returns the font name."""
    import cvttf_NotoSansCJK_Regular as noto

    path = noto.get_TTF_path()
    font_manager.fontManager.addfont(path)
    name = font_manager.FontProperties(fname=path).get_name()
    sns.set_theme(context="paper", style="whitegrid", font=name, font_scale=1.2)
    plt.rcParams.update({"axes.unicode_minus": False, "figure.dpi": 100, "savefig.dpi": 300,
                         "savefig.bbox": "tight", "pdf.fonttype": 42})
    return name


def save(fig: plt.Figure, name: str, fig_dir: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save a figure as ``fig_dir/name.png`` (300 dpi) and ``.pdf``; returns the paths."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = [fig_dir / f"{name}.{ext}" for ext in formats]
    for p in paths:
        fig.savefig(p)
    log.info("Saved figure %s", ", ".join(map(str, paths)))
    return paths


def class_counts(table: pd.DataFrame, title: str = "Class distribution") -> plt.Figure:
    """Bar chart of texts per class, annotated with count and share (input: ``LabelledData.label_table()``)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [f"{i} {n}" if str(i) != str(n) else str(n) for i, n in zip(table["id"], table["name"])]
    sns.barplot(x=names, y=table["count"].to_numpy(), ax=ax, color=sns.color_palette()[0])
    for i, (c, s) in enumerate(zip(table["count"], table["share"])):
        ax.annotate(f"{c}\n({s:.0%})", (i, c), ha="center", va="bottom", fontsize=9)
    ax.set(xlabel="Class", ylabel="Texts", title=title)
    ax.margins(y=0.2)
    return fig


def lengths_by_class(lengths: pd.DataFrame, title: str = "Text length by class") -> plt.Figure:
    """Box plots of length in characters and in words per class (columns: class, characters, words)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, col in zip(axes, ["characters", "words"]):
        sns.boxplot(data=lengths, x="class", y=col, ax=ax, color=sns.color_palette()[0], fliersize=2)
        ax.set(xlabel="Class", ylabel=f"Length ({col})")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def top_terms(terms: pd.DataFrame, unit_label: str, title: str | None = None) -> plt.Figure:
    """Horizontal bars of the most characteristic terms per class (columns: class, term, score)."""
    classes = list(dict.fromkeys(terms["class"]))
    fig, axes = plt.subplots(1, len(classes), figsize=(3.0 * len(classes), 3.8), squeeze=False)
    for ax, cls in zip(axes[0], classes):
        part = terms[terms["class"] == cls]
        sns.barplot(data=part, y="term", x="score", ax=ax, color=sns.color_palette()[0], orient="h")
        ax.set(title=str(cls), xlabel="χ² score", ylabel="")
    fig.suptitle(title or f"Most characteristic {unit_label} per class")
    fig.tight_layout()
    return fig


def length_comparison(groups: dict[str, Sequence[int]], unit: str = "characters",
                      title: str = "Labelled vs. unlabelled text length") -> plt.Figure:
    """Overlaid length histograms (density, so that groups of different size compare)."""
    long = pd.concat([pd.DataFrame({"length": v, "set": k}) for k, v in groups.items()], ignore_index=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    upper = max(1, int(np.percentile(long["length"], 99)))
    sns.histplot(data=long, x="length", hue="set", stat="density", common_norm=False, element="step",
                 bins=np.linspace(0, upper, 40), ax=ax)
    ax.set(xlabel=f"Length ({unit}, up to the 99th percentile)", ylabel="Density", title=title)
    return fig
