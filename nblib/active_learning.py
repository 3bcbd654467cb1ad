"""What to label next: rank unlabelled texts for annotation, write the annotator sheet, and show that it pays.

Ranking (:func:`rank_for_labelling`), from probabilities given by the caller (the final model's, calibrated
with their saved calibration):

1. uncertainty of each text (:func:`uncertainty`): ``margin`` = 1 − (p₁ − p₂), one minus the gap between the
   two likeliest classes ("breaking ties", Luo et al. 2005), or ``entropy`` of the probabilities divided by
   log K (both in [0, 1], 1 = most uncertain);
2. candidates: the ``candidates_per_pick`` × n most uncertain texts, leaving out empty texts, texts already
   labelled and exact repeats of a more uncertain text;
3. near-duplicates: a candidate whose character 1–3-gram TF-IDF vector has cosine similarity ≥
   ``near_duplicate`` with a more uncertain candidate is dropped (Weibo repeats slogans and reposts);
4. diversity: k-means with n clusters over the candidates' TF-IDF vectors, and the most uncertain text of
   each cluster ("diverse mini-batch" selection, Zhdanov 2019), so that a batch is not n variants of one
   comment; clusters left empty by k-means are filled with the next most uncertain candidates.

Why this is written here and not taken from an active-learning library (small-text 1.4.1 and
modAL-python 0.4.2.1 were checked): small-text's query strategies (``BreakingTies``, ``PredictionEntropy``,
``EmbeddingKMeans``) score a small-text classifier on a small-text dataset (``clf.predict_proba(dataset)``),
so they cannot take the probabilities of the fine-tuned model given from outside, and ``EmbeddingKMeans``
clusters the whole pool regardless of uncertainty with an unseeded k-means (not reproducible). modAL's
ranked batch mode needs its ``ActiveLearner`` holding the whole labelled matrix, recomputes the distances to
every labelled text for each pick, and pins skorch 0.9.0 (2020). What is left is a few lines on numpy and
scikit-learn (TF-IDF, nearest neighbours, k-means), so neither library is a dependency.

The annotator sheet (:func:`write_annotator_sheet`) has the study's text and label columns, so that the
filled sheet is read back by :func:`nblib.data.load_labelled` (``extra_labelled_paths``) as extra labelled
rows. :func:`mix_blind_checks` mixes a share of already-labelled texts in blind (recorded in a separate file,
:func:`blind_record_path`), and :func:`returned_sheet` measures the coder's agreement with their original
labels on them (see docs/agreement.md); their rows never come back as new labels. :func:`simulate_learning_curve` shows on labelled data, with TF-IDF + logistic regression, how many
labels the strategy saves against random choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

from . import features
from .agreement import agreement_table, match_by_text
from .agreement import summary as agreement_summary
from .data import LABEL_SHEET, LabelledData, LoadReport, annotated_rows
from .results import ModelResults
from .settings import setting
from .sheets import DataError, clean_text, write_table

log = logging.getLogger(__name__)
Measure = Literal["margin", "entropy"]
STRATEGIES = ("random", "uncertain", "uncertain+diverse")  # what the simulation compares
BLIND_RECORD = "_blind_record.csv"  # suffix of the hidden record of an annotator workbook's blind checks
INSTRUCTIONS_SHEET = "instructions"  # the annotator workbook's codebook sheet


@dataclass
class ActiveLearningSettings:
    """What to label next (05_predict): the annotator sheet, and the simulated learning curve that tests it."""

    n_to_label: int = setting(50, "texts in the annotator sheet", ge=1)
    blind_share: float = setting(0.0, "share of the sheet's rows that are labelled texts mixed in blind", ge=0, lt=1)
    show_guesses: bool = setting(True, "show the model's guess in the annotator sheet (False: coder not anchored)")
    uncertainty: Measure = setting("margin", "margin (gap between the two likeliest classes) or entropy")
    al_start: int = setting(100, "simulated learning curve: labelled texts at the start", ge=2)
    al_batch: int = setting(50, "texts added per round", ge=1)
    al_rounds: int = setting(6, "rounds of adding al_batch texts", ge=1)
    al_seeds: int = setting(3, "repetitions, each with its own test part and start", ge=1)
    al_test_fraction: float = setting(
        0.25, "held-out share of the labelled texts, where macro-F1 is measured", gt=0, lt=1
    )


def uncertainty(probs: np.ndarray, measure: Measure = "margin") -> np.ndarray:
    """How unsure each row of class probabilities is, in [0, 1] (1: most unsure; NaN rows stay NaN).

    Args:
        probs: one row of class probabilities per text (n × K, K ≥ 2).
        measure: ``"margin"``: 1 − (p₁ − p₂) of the two likeliest classes; ``"entropy"``: entropy / log K.
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be one row of at least two class probabilities per text, not shape {p.shape}")
    if measure == "margin":
        top = np.sort(p, axis=1)[:, -2:]
        return 1.0 - (top[:, 1] - top[:, 0])
    if measure == "entropy":
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        return np.where(np.isnan(p).any(axis=1), np.nan, -terms.sum(axis=1) / np.log(p.shape[1]))
    raise ValueError(f"uncertainty must be 'margin' or 'entropy', not {measure!r}")


def rank_for_labelling(
    texts: Sequence[str],
    probs: np.ndarray,
    n: int,
    measure: Measure = "margin",
    labelled_texts: Sequence[str] = (),
    candidates_per_pick: int = 5,
    near_duplicate: float = 0.9,
    seed: int = 0,
) -> pd.DataFrame:
    """The ``n`` texts most worth labelling next: uncertain, and unlike each other (see the module docstring).

    Args:
        texts: the unlabelled texts.
        probs: their class probabilities (n_texts × K), e.g. the ``prob_<class>`` columns of a prediction.
        n: how many to choose.
        measure: ``"margin"`` or ``"entropy"`` (see :func:`uncertainty`).
        labelled_texts: texts that already have a label; never chosen again.
        candidates_per_pick: the most uncertain ``candidates_per_pick × n`` texts are clustered into ``n``.
        near_duplicate: cosine similarity (character n-gram TF-IDF) from which a less uncertain text counts
            as a near-duplicate of a more uncertain one and is dropped.
        seed: for k-means.

    Returns:
        One row per chosen text, most uncertain first: ``rank`` (1…), ``position`` (its index in ``texts``),
        ``text``, ``guess`` (the likeliest class id), ``guess_prob`` (its probability), ``uncertainty``.
    """
    probs = np.asarray(probs, dtype=float)
    if len(texts) != len(probs):
        raise ValueError(f"{len(texts)} texts but {len(probs)} rows of probabilities")
    if n < 1:
        raise ValueError(f"n (n_to_label) must be at least 1, not {n}")
    cleaned = pd.Series(["" if t is None or t != t else clean_text(t) for t in texts], dtype=object)
    score = uncertainty(probs, measure)
    eligible = (
        ~np.isnan(score)
        & cleaned.ne("").to_numpy()
        & ~cleaned.duplicated().to_numpy()
        & ~cleaned.isin({clean_text(t) for t in labelled_texts}).to_numpy()
    )
    order = np.flatnonzero(eligible)[np.argsort(-score[eligible], kind="stable")]
    candidates = order[: n * max(candidates_per_pick, 1)]
    vectors = features.char_ngram_tfidf(min_df=1).fit_transform(cleaned.iloc[candidates]) if len(candidates) else None
    if len(candidates) > 1:
        keep = _not_near_duplicates(vectors, near_duplicate)
        log.debug("%d near-duplicate candidates dropped (cosine ≥ %.2f).", int((~keep).sum()), near_duplicate)
        candidates, vectors = candidates[keep], vectors[keep]
    picked = candidates if len(candidates) <= n else _most_uncertain_per_cluster(candidates, vectors, n, seed)
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(picked) + 1),
            "position": picked,
            "text": cleaned.iloc[picked].to_numpy(),
            "guess": probs[picked].argmax(axis=1) if len(picked) else np.array([], dtype=int),
            "guess_prob": probs[picked].max(axis=1) if len(picked) else np.array([]),
            "uncertainty": score[picked],
        }
    )


def _not_near_duplicates(vectors, threshold: float) -> np.ndarray:
    """Which rows to keep (in order): a row within cosine ``threshold`` of an earlier kept row is dropped."""
    near = NearestNeighbors(radius=1.0 - threshold, metric="cosine").fit(vectors).radius_neighbors(vectors)[1]
    keep = np.ones(vectors.shape[0], dtype=bool)
    for i, neighbours in enumerate(near):
        if keep[i]:
            keep[neighbours[neighbours > i]] = False
    return keep


def _most_uncertain_per_cluster(candidates: np.ndarray, vectors, n: int, seed: int) -> np.ndarray:
    """``n`` of the candidates (given most uncertain first): the first of each k-means cluster, topped up in order."""
    clusters = KMeans(n_clusters=n, random_state=seed, n_init=1).fit_predict(vectors)
    first = np.sort(np.unique(clusters, return_index=True)[1])
    rest = np.setdiff1d(np.arange(len(candidates)), first)[: n - len(first)]
    return candidates[np.sort(np.concatenate([first, rest]))]


def blind_record_path(sheet: str | Path) -> Path:
    """The hidden record of an annotator workbook's blind checks: ``<workbook>_blind_record.csv`` next to it.

    Args:
        sheet: the annotator workbook (.xlsx).
    """
    sheet = Path(sheet)
    return sheet.with_name(f"{sheet.stem}{BLIND_RECORD}")


def mix_blind_checks(
    batch: pd.DataFrame,
    data: LabelledData,
    share: float,
    seed: int = 0,
    oof: ModelResults | None = None,
) -> pd.DataFrame:
    """Mix already-labelled texts into a batch to label, blind: every row shuffled, the checks not marked.

    ``round(share × n / (1 − share))`` distinct labelled texts are drawn at random (seeded), so that they are
    ``share`` of the ``n + checks`` rows; none is a text of the batch. Their model guess comes from ``oof``, the
    run's out-of-fold predictions (calibrated): the final model has been trained on them, so its guesses
    would be near-certain and right, and give the checks away.

    Args:
        batch: the output of :func:`rank_for_labelling`.
        data: the study's labelled data (the checks are drawn from it).
        share: the checks' share of the rows, in [0, 1); 0 gives the batch in its order, with no check.
        seed: the seed of the draw and of the shuffle.
        oof: the run whose out-of-fold predictions give the checks' guesses; None: the checks have no guess
            (write the sheet with ``guesses=False``).

    Returns:
        The rows in the order the coder sees them: ``item`` (1…), the batch's columns (``rank`` NaN for a check),
        ``check`` (True for a check) and ``label`` (a check's class id in the labelled sheet, else NaN).
    """
    if not 0 <= share < 1:
        raise DataError(f"blind_share = {share} is out of range: it must be >= 0 and < 1.")
    n_checks = int(round(share * len(batch) / (1 - share)))
    candidates = data.df.drop_duplicates("text")
    candidates = candidates[~candidates["text"].isin(set(batch["text"]))]
    if n_checks > len(candidates):
        raise DataError(
            f"blind_share = {share} asks for {n_checks} labelled texts among {len(batch)} new ones, but the study has "
            f"{len(candidates)} distinct labelled texts: lower blind_share."
        )
    rng = np.random.default_rng(seed)
    checks = candidates.iloc[np.sort(rng.choice(len(candidates), n_checks, replace=False))]
    guess, guess_prob = np.full(n_checks, np.nan), np.full(n_checks, np.nan)
    if oof is not None and n_checks:
        probs = pd.DataFrame(oof.calibrated_probs, index=oof.predictions["text"].to_numpy())
        probs = probs[~probs.index.duplicated()].reindex(checks["text"]).to_numpy()
        guess, guess_prob = np.argmax(np.nan_to_num(probs, nan=-1), axis=1), probs.max(axis=1)
        guess = np.where(np.isnan(guess_prob), np.nan, guess)
    mixed = pd.concat(
        [
            batch.assign(check=False, label=np.nan),
            pd.DataFrame(
                {
                    "rank": np.nan,
                    "position": np.nan,
                    "text": checks["text"].to_numpy(),
                    "guess": guess,
                    "guess_prob": guess_prob,
                    "check": True,
                    "label": checks["label"].to_numpy(),
                }
            ),
        ],
        ignore_index=True,
    )
    if n_checks:
        mixed = mixed.iloc[rng.permutation(len(mixed))].reset_index(drop=True)
    mixed.insert(0, "item", range(1, len(mixed) + 1))
    return mixed.astype({"check": bool})


def write_annotator_sheet(
    batch: pd.DataFrame,
    path: str | Path,
    data: LabelledData,
    text_col: str = "Sentence",
    label_col: str = "Label",
    guesses: bool = True,
    instructions: pd.DataFrame | None = None,
) -> Path:
    """Write the chosen texts as an .xlsx for the annotator, with the label table as a second sheet.

    The first sheet has ``rank``, the text (column ``text_col``), the model's ``guess`` (as the label is
    written in the labelled sheet) with ``guess_name`` and ``guess_probability``, and an empty ``label_col``
    to fill in; the sheet ``labels`` lists ``Label``, ``Name``, ``Description`` of every class, and the sheet
    ``instructions`` the codebook when one is given. Filled in, it goes back into the study through
    ``extra_labelled_paths`` (rows left empty are skipped). Written by :func:`nblib.sheets.write_table`
    (formula-safe); an existing file is never replaced.

    With blind checks (a batch from :func:`mix_blind_checks` with ``check`` rows) nothing in the sheet tells
    them apart: ``item`` (the row's number) replaces ``rank``, and ``guess_probability`` is left out (the chosen
    texts are the uncertain ones, so low probabilities would mark them). Which rows are checks, with their
    labels, goes to a separate file the coder does not get, :func:`blind_record_path`; :func:`returned_sheet`
    reads both back.

    Args:
        batch: the output of :func:`rank_for_labelling` (or of :func:`mix_blind_checks`).
        path: the .xlsx to write.
        data: the study's labelled data (its label values, names and descriptions).
        text_col: the study's text column name.
        label_col: the study's label column name.
        guesses: False: no guess columns (the coder is not anchored by the model).
        instructions: the codebook as a table (``Codebook.to_frame()``), written as the sheet ``instructions``.

    Returns:
        The path written.
    """
    path = Path(path)
    mixed = "check" in batch and bool(batch["check"].any())
    record = blind_record_path(path)
    for target in (path, record) if mixed else (path,):
        if target.exists():
            raise FileExistsError(
                f"{target} exists: choose another file name (an annotator sheet is never overwritten)."
            )
    if path.suffix.lower() != ".xlsx":
        raise DataError(f"Cannot write {path.name}: an annotator sheet is an .xlsx (it holds the label table too).")
    if guesses and batch["guess"].isna().any():
        raise DataError(
            f"{int(batch['guess'].isna().sum())} rows have no model guess (blind checks need the run's out-of-fold "
            f"predictions: mix_blind_checks(..., oof=run)); or write the sheet without guesses (guesses=False; in 05: show_guesses=False)."
        )
    sheet = pd.DataFrame({"item": batch["item"]} if mixed else {"rank": batch["rank"]}).reset_index(drop=True)
    sheet[text_col] = batch["text"].to_numpy()
    if guesses:
        sheet["guess"] = [data.label_values[int(g)] for g in batch["guess"]]
        sheet["guess_name"] = [data.label_names[int(g)] for g in batch["guess"]]
        if not mixed:
            sheet["guess_probability"] = batch["guess_prob"].round(3).to_numpy()
    sheet[label_col] = None
    table = data.label_table()
    labels = pd.DataFrame(
        {"Label": table["value in sheet"], "Name": table["name"], "Description": table["description"]}
    )
    more = {LABEL_SHEET: labels} | ({INSTRUCTIONS_SHEET: instructions} if instructions is not None else {})
    written = write_table(sheet, path, more_sheets=more)
    if mixed:
        checks = batch["check"].to_numpy(bool)
        label = batch["label"].to_numpy()
        write_table(
            pd.DataFrame(
                {
                    "item": batch["item"].to_numpy(),
                    "text": batch["text"].to_numpy(),
                    "check": checks,
                    "original_label": [data.label_values[int(y)] if c else None for y, c in zip(label, checks)],
                    "original_name": [data.label_names[int(y)] if c else None for y, c in zip(label, checks)],
                    "rank": batch["rank"].to_numpy(),
                    "guess_from": np.where(checks, "out-of-fold", "model") if guesses else "not shown",
                }
            ),
            record,
        )
        log.info(
            "%d blind checks among %d rows; which ones: %s (keep it from the coder)", checks.sum(), len(batch), record
        )
    return written


@dataclass
class ReturnedSheet:
    """A filled annotator sheet read back: the coder's agreement on the blind checks, and the new labels."""

    agreement: pd.DataFrame  # nblib.agreement.agreement_table: the coder against the original labels
    checks: pd.DataFrame  # per check text: text, original (class id), coder (class id; NaN: left empty)
    new: pd.DataFrame  # the labelled rows that are not checks: text, label_value, row (what goes onward)
    summary: str  # one sentence


def returned_sheet(
    path: str | Path,
    data: LabelledData,
    record: str | Path | None = None,
    text_col: str = "Sentence",
    label_col: str = "Label",
    n_boot: int = 1000,
    seed: int = 0,
) -> ReturnedSheet:
    """Read a filled annotator sheet with blind checks: the coder's κ and α against the original labels (with
    bootstrap intervals, :mod:`nblib.agreement`) on the checks, and only the genuinely new labelled rows.

    The checks are found by text (a coder may sort the sheet); passing the filled sheet as
    ``extra_labelled_paths`` adds its new rows only, as :func:`nblib.data.load_labelled` skips texts that are
    already labelled.

    Args:
        path: the filled workbook.
        data: the study's labelled data (the label values the labels must be among).
        record: its hidden record (None: :func:`blind_record_path` of ``path``; give it when the file was renamed).
        text_col: the sheet's text column.
        label_col: the sheet's label column.
        n_boot: bootstrap replicates.
        seed: their seed.
    """
    path = Path(path)
    record = blind_record_path(path) if record is None else Path(record)
    if not record.exists():
        raise DataError(
            f"No blind record {record.name} next to {path.name}: pass record= the *{BLIND_RECORD} file written with "
            f"the workbook (it says which rows are checks)."
        )
    known = set(data.label_values)
    report = LoadReport(path.name)
    coded = annotated_rows(path, text_col, label_col, known, report)
    original = annotated_rows(record, "text", "original_label", known, LoadReport(record.name))
    ids = {v: i for i, v in enumerate(data.label_values)}
    original = original.assign(original=original["label_value"].map(ids))
    coded = coded.assign(coder=coded["label_value"].map(ids))
    matched = match_by_text(original, coded, "text", ("original", "coder"), ("original", "coder"))
    checks = original[["text", "original"]].merge(matched[["text", "coder"]], on="text", how="left")
    agreement = agreement_table(
        {"original labels": checks["original"], "coder": checks["coder"]},
        "original labels",
        data.label_names,
        n_boot,
        seed,
        coders=["coder"],
    )
    new = coded.loc[~coded["text"].isin(set(original["text"])), ["text", "label_value", "row"]]
    done = int(checks["coder"].notna().sum())
    summary = f"{path.name}: {len(new)} new labels; the coder labelled {done} of {len(checks)} blind checks" + (
        f"; {agreement_summary(agreement)}" if done else "."
    )
    log.info(summary)
    return ReturnedSheet(agreement, checks, new.reset_index(drop=True), summary)


def simulate_learning_curve(
    texts: Sequence[str],
    labels: Sequence[int],
    settings: ActiveLearningSettings,
    seed: int = 0,
    strategies: Sequence[str] = STRATEGIES,
    lr_C: float = 10.0,
) -> pd.DataFrame:
    """A simulated annotation campaign on labelled data: macro-F1 against the number of labels, per strategy.

    For each of ``settings.al_seeds`` repetitions: a stratified test part (``al_test_fraction``) is held out;
    the rest is the pool, whose labels are revealed only when a text is chosen. Starting from ``al_start``
    random texts (the same for every strategy), each round fits TF-IDF character 1–3-grams + logistic
    regression on the texts labelled so far, scores macro-F1 on the test part, and adds ``al_batch`` texts
    chosen by the strategy: ``random``, ``uncertain`` (the most uncertain, ``settings.uncertainty``) or
    ``uncertain+diverse`` (:func:`rank_for_labelling`). The TF-IDF vocabulary is fitted once per repetition
    on the pool's texts (no labels: as one would on the unlabelled pool). The regression is solved with
    ``saga`` (the same model as the baselines' lbfgs, faster on sparse TF-IDF).

    Args:
        texts: the labelled texts.
        labels: their class ids (0…K−1).
        settings: start, batch, rounds, repetitions, test share and uncertainty measure.
        seed: the first repetition's seed (repetition r uses seed + r).
        strategies: which of ``STRATEGIES`` to run.
        lr_C: inverse regularisation of the logistic regression (as ``BaselineConfig.lr_C``).

    Returns:
        Columns ``strategy``, ``seed``, ``labels`` (texts labelled), ``macro_f1``; one row per round.

    Raises:
        DataError: the data cannot hold the start plus every round outside the test part (the message names
            the parameters to lower).
    """
    s, texts, labels = settings, np.asarray([clean_text(t) for t in texts], dtype=object), np.asarray(labels)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"Unknown strategies {unknown}; choose from {STRATEGIES}.")
    n_pool = len(texts) - int(np.ceil(s.al_test_fraction * len(texts)))
    needed = s.al_start + s.al_rounds * s.al_batch
    if needed > n_pool:
        raise DataError(
            f"The simulation needs al_start + al_rounds × al_batch = {s.al_start} + {s.al_rounds} × {s.al_batch} = "
            f"{needed} labelled texts outside the test part, but there are {n_pool} (of {len(texts)}, "
            f"al_test_fraction={s.al_test_fraction}): lower al_start, al_rounds or al_batch."
        )
    k, rows = int(labels.max()) + 1, []
    for r in range(s.al_seeds):
        pool, test = train_test_split(
            np.arange(len(texts)), test_size=s.al_test_fraction, stratify=labels, random_state=seed + r
        )
        x = features.char_ngram_tfidf().fit(texts[pool]).transform(texts)
        start = np.random.default_rng(seed + r).choice(pool, s.al_start, replace=False)
        for strategy in strategies:
            chosen = list(start)
            for _ in range(s.al_rounds + 1):
                clf = LogisticRegression(C=lr_C, solver="saga", max_iter=1000, random_state=seed + r)
                clf = clf.fit(x[chosen], labels[chosen])
                f1 = f1_score(labels[test], clf.predict(x[test]), labels=range(k), average="macro", zero_division=0)
                rows.append({"strategy": strategy, "seed": seed + r, "labels": len(chosen), "macro_f1": f1})
                if len(chosen) < needed:
                    chosen += _next_batch(strategy, clf, x, texts, chosen, pool, k, s, seed + r).tolist()
        log.info("repetition %d of %d done", r + 1, s.al_seeds)
    return pd.DataFrame(rows)


def _next_batch(
    strategy: str,
    clf: LogisticRegression,
    x,
    texts: np.ndarray,
    chosen: list[int],
    pool: np.ndarray,
    k: int,
    s: ActiveLearningSettings,
    seed: int,
) -> np.ndarray:
    """The indices of the next ``s.al_batch`` texts of the pool chosen by ``strategy``."""
    left = np.setdiff1d(pool, chosen)
    if strategy == "random":
        return np.random.default_rng([seed, len(chosen)]).choice(left, s.al_batch, replace=False)
    probs = np.zeros((len(left), k))
    probs[:, clf.classes_] = clf.predict_proba(x[left])  # classes not seen yet get probability 0
    if strategy == "uncertain":
        return left[np.argsort(-uncertainty(probs, s.uncertainty), kind="stable")[: s.al_batch]]
    batch = rank_for_labelling(texts[left], probs, s.al_batch, s.uncertainty, texts[chosen], seed=seed)
    picked = left[batch["position"].to_numpy()]
    if len(picked) < s.al_batch:  # the pool ran short of distinct texts: top up with the most uncertain
        others = np.setdiff1d(left, picked)
        extra = others[np.argsort(-uncertainty(probs[np.isin(left, others)], s.uncertainty), kind="stable")]
        picked = np.concatenate([picked, extra[: s.al_batch - len(picked)]])
    return picked


def labels_saved(curve: pd.DataFrame, reference: str = "random") -> pd.DataFrame:
    """How many labels each strategy needs to reach the macro-F1 that ``reference`` reaches with all of its labels.

    Args:
        curve: the output of :func:`simulate_learning_curve`.
        reference: the strategy whose final mean macro-F1 is the target.

    Returns:
        One row per strategy: ``final_macro_f1`` and ``sd`` (at the most labels), ``target`` (the reference's
        final mean), ``labels_to_target`` (linear interpolation of the mean curve between rounds; NaN when
        the target is never reached) and ``labels_saved`` (share of the reference's labels saved).
    """
    mean = curve.groupby(["strategy", "labels"])["macro_f1"].agg(["mean", "std"]).reset_index()
    budget = mean["labels"].max()
    target = mean.loc[(mean["strategy"] == reference) & (mean["labels"] == budget), "mean"].item()
    rows = []
    for strategy, m in mean.groupby("strategy", sort=False):
        n, f1 = m["labels"].to_numpy(), m["mean"].to_numpy()
        reached = np.flatnonzero(f1 >= target)
        if not len(reached):
            at = np.nan
        elif reached[0] == 0:
            at = float(n[0])
        else:
            i = reached[0]  # interpolate between the round before and the first round at or above the target
            at = float(n[i - 1] + (target - f1[i - 1]) / (f1[i] - f1[i - 1]) * (n[i] - n[i - 1]))
        rows.append(
            {
                "strategy": strategy,
                "final_macro_f1": f1[-1],
                "sd": m["std"].to_numpy()[-1],
                "target": target,
                "labels_to_target": at,
                "labels_saved": 1 - at / budget,
            }
        )
    return pd.DataFrame(rows).set_index("strategy").loc[[s for s in STRATEGIES if s in set(mean["strategy"])]]
