"""Figures for a paper: one style, Chinese glyphs that render, saved under stable names."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import font_manager
from matplotlib.ticker import PercentFormatter

from .names import display

log = logging.getLogger(__name__)
FORMATS = ("png", "pdf")
# The Simplified-Chinese face of the Noto Sans CJK collection (the package ships JP, KR, SC, TC and HK faces in
# one .ttc): mainland glyph forms of 写, 真, 骨… (the TC face draws the Taiwanese ones).
CJK_FONT = "Noto Sans CJK SC"
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "frameon": False}


def cjk_font() -> str:
    """Register the bundled Noto Sans CJK collection with matplotlib and return the Simplified-Chinese face's name.

    Raises:
        RuntimeError: the collection has no face named :data:`CJK_FONT` (a broken font package).
    """
    import noto_cjk_sans_otc

    path = str(noto_cjk_sans_otc.FONT_PATH)
    font_manager.fontManager.addfont(path)  # every face of the .ttc
    faces = {f.name for f in font_manager.fontManager.ttflist if str(f.fname) == path}
    if CJK_FONT not in faces:
        raise RuntimeError(f"{path} has no face {CJK_FONT!r} (it has {sorted(faces)}): reinstall noto-cjk-sans-otc.")
    return CJK_FONT


def setup_style() -> str:
    """Seaborn paper style with the Simplified-Chinese face of the bundled Noto Sans CJK; returns the font name."""
    name = cjk_font()
    sns.set_theme(context="paper", style="whitegrid", font=name, font_scale=1.2)
    plt.rcParams.update(
        {
            "axes.unicode_minus": False,
            "figure.dpi": 100,
            "savefig.dpi": 300,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,
        }
    )
    return name


def save(fig: plt.Figure, name: str, fig_dir: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save a figure as ``fig_dir/name.png`` (300 dpi) and ``.pdf``; returns the paths.

    Args:
        fig: the figure.
        name: the file name without extension.
        fig_dir: the folder (created if missing).
        formats: the file extensions to write.
    """
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = [fig_dir / f"{name}.{ext}" for ext in formats]
    for p in paths:  # no creation date in PDFs, so that a rerun gives identical files
        fig.savefig(p, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    log.info("Saved figure %s", ", ".join(map(str, paths)))
    return paths


def class_counts(table: pd.DataFrame, title: str = "Class distribution") -> plt.Figure:
    """Bar chart of texts per class, annotated with count and share (input: ``LabelledData.label_table()``).

    Args:
        table: columns ``id``, ``name``, ``count``, ``share``.
        title: the figure title.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [f"{i} {n}" if str(i) != str(n) else str(n) for i, n in zip(table["id"], table["name"], strict=True)]
    sns.barplot(x=names, y=table["count"].to_numpy(), ax=ax, color=sns.color_palette()[0])
    for i, (c, s) in enumerate(zip(table["count"], table["share"], strict=True)):
        ax.annotate(f"{c}\n({s:.0%})", (i, c), ha="center", va="bottom", fontsize=9)
    ax.set(xlabel="Class", ylabel="Texts", title=title)
    ax.margins(y=0.2)
    return fig


def lengths_by_class(lengths: pd.DataFrame, title: str = "Text length by class") -> plt.Figure:
    """Box plots of length in characters and in words per class (columns: class, characters, words).

    Args:
        lengths: per-text lengths (``nblib.eda.lengths_by_class``).
        title: the figure title.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, col in zip(axes, ["characters", "words"], strict=True):
        sns.boxplot(data=lengths, x="class", y=col, ax=ax, color=sns.color_palette()[0], fliersize=2)
        ax.set(xlabel="Class", ylabel=f"Length ({col})")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def top_terms(terms: pd.DataFrame, unit_label: str, title: str | None = None, max_columns: int = 4) -> plt.Figure:
    """Horizontal bars of the most characteristic terms per class, in a grid of at most ``max_columns`` panels a row.

    Args:
        terms: columns ``class``, ``term``, ``score`` (``nblib.eda.characteristic_terms``).
        unit_label: what the terms are, for the title ("characters", "words").
        title: the figure title (default: "Most characteristic <unit_label> per class").
        max_columns: panels per row.
    """
    classes = list(dict.fromkeys(terms["class"]))
    ncols = min(len(classes), max_columns)
    nrows = -(-len(classes) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(classes) :]:
        ax.set_visible(False)
    for ax, cls in zip(axes.flat, classes, strict=False):  # the grid may have more panels than classes
        part = terms[terms["class"] == cls].sort_values(["score", "term"], ascending=[False, True])  # ties: by term
        sns.barplot(data=part, y="term", x="score", ax=ax, color=sns.color_palette()[0], orient="h")
        ax.set(title=str(cls), xlabel="χ² score", ylabel="")
    fig.suptitle(title or f"Most characteristic {unit_label} per class")
    fig.tight_layout()
    return fig


def length_comparison(
    groups: dict[str, Sequence[int]], unit: str = "characters", title: str = "Labelled vs. unlabelled text length"
) -> plt.Figure:
    """Overlaid length histograms (density, so that groups of different size compare).

    Args:
        groups: the text lengths of each set, by set name.
        unit: the length unit, for the axis label.
        title: the figure title.
    """
    long = pd.concat([pd.DataFrame({"length": v, "set": k}) for k, v in groups.items()], ignore_index=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    upper = max(1, int(np.percentile(long["length"], 99)))
    sns.histplot(
        data=long,
        x="length",
        hue="set",
        stat="density",
        common_norm=False,
        element="step",
        bins=np.linspace(0, upper, 40),
        ax=ax,
    )
    ax.set(xlabel=f"Length ({unit}, up to the 99th percentile)", ylabel="Density", title=title)
    sns.move_legend(ax, title="", **LEGEND_OUTSIDE)  # clear of the histograms
    return fig


def _tick_names(label_names: Sequence[str], max_len: int = 8) -> list[str]:
    return [n if len(n) <= max_len else n[: max_len - 1] + "…" for n in label_names]


def _row_normalised(cm: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix as shares of its gold class (a row without texts stays 0)."""
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)


def confusion_matrices(
    cms: np.ndarray | Sequence[np.ndarray],
    label_names: Sequence[str],
    title: str,
    row_titles: Sequence[str] | None = None,
) -> plt.Figure:
    """Counts and row-normalised (recall per gold class) confusion matrices side by side, one row per matrix.

    Args:
        cms: one K × K matrix of counts (rows: gold, columns: predicted), or several.
        label_names: the class names (long ones shortened on the axes).
        title: the figure title.
        row_titles: a title for each matrix (e.g. the model), or None.
    """
    cms = [cms] if isinstance(cms, np.ndarray) and cms.ndim == 2 else list(cms)
    k = len(label_names)
    size = max(4.0, 0.55 * k + 2.5)
    fig, axes = plt.subplots(len(cms), 2, figsize=(2 * size + 1, size * len(cms)), squeeze=False, layout="constrained")
    names = _tick_names(label_names)
    for r, cm in enumerate(cms):
        norm = _row_normalised(cm)
        for ax, mat, fmt, sub in [(axes[r, 0], cm, "d", "counts"), (axes[r, 1], norm, ".2f", "row-normalised")]:
            sns.heatmap(
                mat,
                annot=True,
                fmt=fmt,
                cmap="Blues",
                cbar=False,
                square=True,
                ax=ax,
                xticklabels=names,
                yticklabels=names,
                vmin=0,
                vmax=None if fmt == "d" else 1,
            )
            prefix = f"{row_titles[r]}: " if row_titles else ""
            ax.set(xlabel="Predicted", ylabel="Gold", title=prefix + sub)
            ax.tick_params(axis="x", rotation=45 if k > 4 else 0)
            ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title)  # constrained layout keeps it clear of the panel titles
    return fig


def confusion_grid(
    cms: Sequence[np.ndarray],
    label_names: Sequence[str],
    title: str,
    panel_titles: Sequence[str] | None = None,
    max_columns: int = 3,
) -> plt.Figure:
    """Several row-normalised confusion matrices (e.g. one per fold) as a compact grid with one shared colour bar.

    Args:
        cms: K × K matrices of counts (rows: gold, columns: predicted).
        label_names: the class names (long ones shortened on the axes).
        title: the figure title.
        panel_titles: a title per matrix (default "1", "2", …); each gets its number of texts appended.
        max_columns: panels per row.
    """
    cms = list(cms)
    k, names = len(label_names), _tick_names(label_names)
    ncols = min(len(cms), max_columns)
    nrows = -(-len(cms) // ncols)
    size = max(2.6, 0.45 * k + 1.6)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols + 1.2, size * nrows + 0.6), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(cms) :]:
        ax.set_visible(False)
    for i, (ax, cm) in enumerate(zip(axes.flat, cms, strict=False)):
        norm = _row_normalised(cm)
        sns.heatmap(
            norm,
            annot=True,
            fmt=".2f",
            annot_kws={"fontsize": 7 if k > 4 else 9},
            cmap="Blues",
            vmin=0,
            vmax=1,
            cbar=False,
            square=True,
            ax=ax,
            xticklabels=names if i // ncols == nrows - 1 or i + ncols >= len(cms) else False,
            yticklabels=names if i % ncols == 0 else False,
        )
        name = panel_titles[i] if panel_titles else str(i + 1)
        ax.set_title(f"{name} (n = {int(cm.sum())})", fontsize=10)
        ax.set(xlabel="Predicted" if i + ncols >= len(cms) else "", ylabel="Gold" if i % ncols == 0 else "")
        ax.tick_params(axis="x", rotation=45 if k > 4 else 0)
        ax.tick_params(axis="y", rotation=0)
    mappable = plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap="Blues")
    fig.colorbar(mappable, ax=axes, shrink=0.8, label="Share of the gold class (row-normalised)")
    fig.suptitle(title)
    return fig


def model_comparison(
    per_fold: dict[str, pd.DataFrame],
    columns: Sequence[str] = ("accuracy", "macro_f1"),
    title: str = "Cross-validated scores (mean ± sd over folds)",
    display_names: Mapping[str, str] | None = None,
) -> plt.Figure:
    """Grouped bars of each model's mean score with error bars of the standard deviation across folds.

    Args:
        per_fold: each model's per-fold metrics, by model name (id).
        columns: the metrics to show (models are sorted by the first).
        title: the figure title.
        display_names: overrides of the display names (:mod:`nblib.names`) of models and metrics.
    """
    long = pd.concat([m[list(columns)].assign(model=name) for name, m in per_fold.items()]).melt(
        id_vars="model", var_name="metric", value_name="score"
    )
    order = long[long["metric"] == columns[0]].groupby("model")["score"].mean().sort_values(ascending=False).index
    long = long.assign(model=long["model"].map(lambda n: display(n, display_names)))
    long["metric"] = long["metric"].map(lambda n: display(n, display_names))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(order) + 2), 4))
    sns.barplot(
        data=long,
        x="model",
        y="score",
        hue="metric",
        order=[display(n, display_names) for n in order],
        errorbar="sd",
        capsize=0.1,
        ax=ax,
    )
    ax.set(xlabel="", ylabel="Score", ylim=(0, 1), title=title)
    ax.tick_params(axis="x", rotation=30)
    plt.setp(ax.get_xticklabels(), ha="right")
    ax.legend(title="", **LEGEND_OUTSIDE)
    return fig


def grouped_bars(
    table: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    title: str,
    ylabel: str,
    order: Sequence[str] | None = None,
    display_names: Mapping[str, str] | None = None,
) -> plt.Figure:
    """Bars of ``y`` per ``x`` with one colour per ``hue`` (e.g. per-class F1 of several models), y in [0, 1];
    the legend right of the axes, clear of the bars.

    Args:
        table: the data in long form.
        x: the column on the x axis (its capitalised name is the axis label).
        y: the column of bar heights.
        hue: the column that sets the colour (ids, shown by their display names).
        title: the figure title.
        ylabel: the y-axis label.
        order: the x categories in this order (default: as they first occur); only those that occur are drawn.
        display_names: overrides of the display names (:mod:`nblib.names`) of the ``hue`` ids.
    """
    present = list(dict.fromkeys(table[x].astype(str)))
    order = [str(c) for c in order if str(c) in present] if order is not None else present
    data = table.assign(**{x: table[x].astype(str), hue: table[hue].map(lambda n: display(n, display_names))})
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(order) + 3), 4))
    sns.barplot(data=data, x=x, y=y, hue=hue, order=order, ax=ax)
    ax.set(xlabel=x.capitalize(), ylabel=ylabel, ylim=(0, 1), title=title)
    ax.legend(title="", fontsize=8, **LEGEND_OUTSIDE)
    return fig


def accuracy_by_length(
    table: pd.DataFrame,
    title: str = "Accuracy by text length (characters)",
    display_names: Mapping[str, str] | None = None,
) -> plt.Figure:
    """Accuracy of each model per length bucket, each bucket labelled with its number of texts; empty buckets
    are not drawn.

    Args:
        table: :func:`nblib.analysis.accuracy_by_length` (columns bucket, model, accuracy, texts).
        title: the figure title.
        display_names: overrides of the models' display names.
    """
    table = table[table["texts"] > 0]
    buckets = list(dict.fromkeys(table["bucket"].astype(str)))
    counts = table.groupby(table["bucket"].astype(str), observed=True)["texts"].first()
    labelled = {b: f"{b}\n(n = {counts[b]})" for b in buckets}
    data = table.assign(bucket=table["bucket"].astype(str).map(labelled))
    fig = grouped_bars(
        data, "bucket", "accuracy", "model", title, "Accuracy", [labelled[b] for b in buckets], display_names
    )
    fig.axes[0].set_xlabel("Length (characters)")
    return fig


def reliability_diagram(curves: dict[str, pd.DataFrame], title: str = "Reliability diagram") -> plt.Figure:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), texts per bin below.

    Args:
        curves: reliability tables (:func:`nblib.calibration.reliability`) by legend label, e.g. before and after
            calibration.
        title: the figure title.
    """
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for (name, table), colour in zip(curves.items(), sns.color_palette()):
        ax.plot(table["confidence"], table["accuracy"], marker="o", color=colour, label=name)
        counts.bar(
            (table["lower"] + table["upper"]) / 2,
            table["texts"],
            width=table["upper"] - table["lower"],
            color=colour,
            alpha=0.5,
        )
    ax.set(ylabel="Accuracy", xlim=(-0.02, 1.02), ylim=(-0.02, 1.05), title=title)  # points at 0 and 1 whole
    ax.legend(fontsize=8, loc="upper left")
    counts.set(xlabel="Confidence (top-class probability)", ylabel="Texts")
    return fig


def per_class_scores(
    table: pd.DataFrame,
    title: str = "Per-class F1 (mean over folds)",
    label_names: Sequence[str] | None = None,
    display_names: Mapping[str, str] | None = None,
) -> plt.Figure:
    """Grouped bars of per-class F1 for several models (columns: model, class, f1).

    Args:
        table: per-class scores in long form (``nblib.metrics.per_class_long``).
        title: the figure title.
        label_names: the classes in their order (by id), as in every table (default: as they occur).
        display_names: overrides of the models' display names.
    """
    return grouped_bars(table, "class", "f1", "model", title, "F1", label_names, display_names)


def learning_curves(history: pd.DataFrame, title: str, best_epochs: dict[int, int] | None = None) -> plt.Figure:
    """Training and validation loss, and validation macro-F1, per epoch; one line per fold.

    Args:
        history: one row per fold and epoch, columns ``fold``, ``epoch``, ``train_loss``, ``val_loss``,
            ``val_macro_f1``.
        title: the figure title.
        best_epochs: the epoch kept in each fold, marked by a dashed line (default: not marked).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    long = history.melt(
        id_vars=["fold", "epoch"], value_vars=["train_loss", "val_loss"], var_name="split", value_name="loss"
    )
    long["split"] = long["split"].map(display)
    folds = history.assign(fold=[f"fold {f}" for f in history["fold"]])  # a legend of "fold 0", not "0"
    sns.lineplot(data=long, x="epoch", y="loss", hue="split", units="fold", estimator=None, alpha=0.7, ax=axes[0])
    sns.lineplot(data=folds, x="epoch", y="val_macro_f1", hue="fold", palette="tab10", marker="o", ax=axes[1])
    axes[0].set(title="Loss", xlabel="Epoch", ylabel="Cross-entropy")
    axes[1].set(title=display("val_macro_f1"), xlabel="Epoch", ylabel=display("macro_f1"))
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
        for i, epoch in enumerate(sorted(set((best_epochs or {}).values()))):
            ax.axvline(epoch, color="grey", linestyle="--", linewidth=1, label="epoch kept" if i == 0 else None)
        ax.legend(title="", fontsize=8, **LEGEND_OUTSIDE)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def mlm_loss(history: pd.DataFrame, probe: pd.DataFrame, steps_per_epoch: int, title: str) -> plt.Figure:
    """Masked-language-model loss during TAPT: the training loss by step, and the loss on a fixed sample of texts
    with fixed masks before TAPT (epoch 0) and after each epoch.

    Args:
        history: ``step``, ``train_loss`` (from :attr:`nblib.tapt.TaptResult.history`).
        probe: ``epoch``, ``probe_loss`` (from :attr:`nblib.tapt.TaptResult.probe`).
        steps_per_epoch: optimizer steps per epoch (places the probe points).
        title: the figure title.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(history["step"], history["train_loss"], label="training batches", alpha=0.8)
    ax.plot(probe["epoch"] * steps_per_epoch, probe["probe_loss"], "o-", label="fixed sample, fixed masks")
    ax.set(xlabel="optimizer step", ylabel="MLM cross-entropy (masked tokens)", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def class_shares(table: pd.DataFrame, title: str = "Class shares of the pool (95% bootstrap intervals)") -> plt.Figure:
    """Estimated class shares with their intervals, one marker per method; one panel per group.

    Args:
        table: :func:`nblib.shares.shares` output (columns ``group``, ``class``, ``method``, ``share``,
            ``lower``, ``upper``, ``texts``, ``small``); the whole pool is group "" and groups marked ``small``
            get a warning in their panel title; methods whose ``interval`` is sampling-only say so in the
            legend. Pass the headline rows alone for the paper's figure.
        title: the figure title.
    """
    groups = list(dict.fromkeys(table["group"]))
    classes, methods = list(dict.fromkeys(table["class"])), list(dict.fromkeys(table["method"]))
    ncols = min(len(groups), 3)
    nrows = -(-len(groups) // ncols)
    width = max(5.0, 0.9 * len(classes) + 2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.8 * nrows), squeeze=False, sharey=True)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    markers, colours = "osD^vP*X", sns.color_palette(n_colors=len(methods))
    offsets = np.linspace(-0.3, 0.3, len(methods)) if len(methods) > 1 else [0.0]
    kinds = table.groupby("method", sort=False)["interval"].first() if "interval" in table else {}
    labels = {m: f"{m} (sampling only)" if kinds.get(m) == "sampling only" else m for m in methods}
    for ax, group in zip(axes.flat, groups, strict=False):
        part = table[table["group"] == group]
        for m, method in enumerate(methods):
            rows = part[part["method"] == method].set_index("class").reindex(classes)
            x = np.arange(len(classes)) + offsets[m]
            err = np.vstack([rows["share"] - rows["lower"], rows["upper"] - rows["share"]]).clip(min=0)
            ax.errorbar(
                x,
                rows["share"],
                yerr=None if np.isnan(err).all() else err,
                fmt=markers[m % len(markers)],
                color=colours[m],
                capsize=2,
                markersize=5,
                label=labels[method],
            )
        n, small = int(part["texts"].iloc[0]), bool(part["small"].iloc[0])
        name = group or "whole pool"
        if small:
            ax.set_title(f"{name} (n = {n}, too few for an interval)", color="firebrick")
        else:
            ax.set_title(f"{name} (n = {n})")
        ax.set_xticks(range(len(classes)), _tick_names(classes))
        ax.set(xlabel="Class", ylabel="Share")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.flat[0].legend(title="method", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def active_learning_curves(
    curve: pd.DataFrame, saved: pd.DataFrame | None = None, title: str = "Simulated annotation: macro-F1 vs. labels"
) -> plt.Figure:
    """Macro-F1 on the held-out part against the number of labelled texts, one line (mean ± sd) per strategy.

    Args:
        curve: ``nblib.active_learning.simulate_learning_curve`` (columns strategy, seed, labels, macro_f1).
        saved: ``nblib.active_learning.labels_saved``: the reference's final macro-F1 is drawn as a dashed
            line, where each strategy reaches it is marked, and the share of labels saved is in the legend
            (default: none of these).
        title: the figure title.
    """
    names = {s: s for s in curve["strategy"].unique()}
    if saved is not None:
        names |= {
            s: f"{s} ({row['labels_saved']:.0%} fewer labels)" for s, row in saved.iterrows() if row["labels_saved"] > 0
        }
    fig, ax = plt.subplots(figsize=(6.4, 4))
    data = curve.assign(strategy=curve["strategy"].map(names))
    sns.lineplot(data=data, x="labels", y="macro_f1", hue="strategy", errorbar="sd", marker="o", ax=ax)
    if saved is not None:
        ax.axhline(saved["target"].iloc[0], color="grey", linestyle="--", linewidth=1)
        reached = saved.dropna(subset=["labels_to_target"])
        ax.scatter(reached["labels_to_target"], reached["target"], color="black", marker="x", zorder=3)
    ax.set(xlabel="Labelled texts", ylabel="Macro-F1 (held-out part)", title=title)
    ax.legend(title="", fontsize=9, **LEGEND_OUTSIDE)
    return fig
