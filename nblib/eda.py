"""Descriptive statistics of a labelled sheet: lengths, duplicates, characteristic terms, examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.feature_selection import chi2

from .data import LabelledData
from .text import Unit, is_content, tokenize


def lengths(texts: list[str]) -> pd.DataFrame:
    """Length of each text in characters and in jieba words.

    Args:
        texts: the texts.

    Returns:
        One row per text, columns ``characters`` and ``words``.
    """
    return pd.DataFrame({"characters": [len(t) for t in texts], "words": [len(tokenize(t, "word")) for t in texts]})


def lengths_by_class(data: LabelledData) -> pd.DataFrame:
    """Per-text lengths with the class name (an ordered categorical, for tables and plots).

    Args:
        data: the labelled texts.

    Returns:
        One row per text of ``data.df``, columns ``characters``, ``words``, ``class``.
    """
    return lengths(data.texts).assign(**{"class": pd.Categorical(data.df["label_name"], categories=data.label_names)})


def length_summary(per_text: pd.DataFrame) -> pd.DataFrame:
    """Mean, median, 95th percentile and max length per class, in characters and words.

    Args:
        per_text: per-text lengths with their class (:func:`lengths_by_class`).

    Returns:
        One row per class, columns ``characters mean`` … ``words max`` (rounded to 1 digit).
    """

    def p95(s: pd.Series) -> float:
        return s.quantile(0.95)

    stats = per_text.groupby("class", observed=True)[["characters", "words"]].agg(["mean", "median", p95, "max"])
    stats.columns = [f"{unit} {stat}" for unit, stat in stats.columns]
    return stats.round(1)


def duplicates(data: LabelledData) -> pd.DataFrame:
    """Texts that occur more than once (kept, same label, same fold), most frequent first.

    Args:
        data: the labelled texts.

    Returns:
        Columns ``text``, ``copies``, ``label`` (class name), ``rows`` (sheet rows of the copies).
    """
    dup = data.df[data.df["text"].duplicated(keep=False)]
    return (
        dup.groupby("text")
        .agg(copies=("row", "size"), label=("label_name", "first"), rows=("row", list))
        .sort_values("copies", ascending=False)
        .reset_index()
    )


def characteristic_terms(data: LabelledData, unit: Unit = "word", top: int = 10, min_count: int = 3) -> pd.DataFrame:
    """The terms most associated with each class (χ² of presence, one class vs. the rest).

    Only terms more frequent in the class than outside it, seen in at least ``min_count`` texts,
    and not pure punctuation are ranked.

    Args:
        data: the labelled texts.
        unit: terms are characters (``"char"``) or jieba words (``"word"``).
        top: at most this many terms per class.
        min_count: the fewest texts a term must occur in.

    Returns:
        Columns ``class``, ``term``, ``score``, ``texts in class``, ``texts elsewhere``, best terms first per class.
    """
    vec = CountVectorizer(analyzer=lambda t: [w for w in set(tokenize(t, unit)) if is_content(w)], min_df=min_count)
    x = vec.fit_transform(data.texts)
    vocab = vec.get_feature_names_out()
    rows = []
    for k, name in enumerate(data.label_names):
        inside = data.labels == k
        scores, _ = chi2(x, inside)
        rate_in = np.asarray(x[inside].mean(axis=0)).ravel()
        rate_out = np.asarray(x[~inside].mean(axis=0)).ravel()
        scores = np.where(rate_in > rate_out, np.nan_to_num(scores), -1.0)
        for j in np.argsort(-scores, kind="stable")[:top]:  # ties by term (the vocabulary is sorted)
            if scores[j] > 0:
                rows.append(
                    {
                        "class": name,
                        "term": vocab[j],
                        "score": round(float(scores[j]), 2),
                        "texts in class": int(x[inside, j].sum()),
                        "texts elsewhere": int(x[~inside, j].sum()),
                    }
                )
    return pd.DataFrame(rows)


def examples(data: LabelledData, per_class: int = 3, seed: int = 0) -> pd.DataFrame:
    """A few random texts from each class.

    Args:
        data: the labelled texts.
        per_class: texts per class (all of a smaller class).
        seed: sampling seed.

    Returns:
        Columns ``class``, ``text``, ``row`` (sheet row).
    """
    rng = np.random.default_rng(seed)
    parts = [g.iloc[rng.permutation(len(g))[:per_class]] for _, g in data.df.groupby("label", sort=True)]
    table = pd.concat(parts)[["label_name", "text", "row"]].rename(columns={"label_name": "class"})
    return table.reset_index(drop=True)
