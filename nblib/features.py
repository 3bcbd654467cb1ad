"""Text representations for the classic baselines.

- bags of units (one-hot = binary presence, term frequency, TF-IDF), vocabulary fitted on the training part only;
- character n-gram TF-IDF on raw text (the classical reference);
- word2vec vectors trained with gensim on texts only (unsupervised), averaged per text;
- integer sequences for the LSTM, with an embedding matrix initialised from word2vec.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from gensim.models import KeyedVectors, Word2Vec
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

BagKind = Literal["onehot", "tf", "tfidf"]
PAD, UNK = 0, 1


def _identity(tokens: list[str]) -> list[str]:
    return tokens


def bag_vectorizer(kind: BagKind, min_df: int = 2, max_features: int | None = 20000) -> CountVectorizer:
    """A vectorizer over pre-tokenized texts: one-hot (binary), term frequency, or TF-IDF.

    Args:
        kind: ``"onehot"``, ``"tf"`` or ``"tfidf"`` (sublinear term frequency).
        min_df: the fewest texts a unit must occur in.
        max_features: keep at most this many most frequent units (None: all).

    Returns:
        An unfitted vectorizer whose input is one list of tokens per text.
    """
    if kind == "tfidf":
        return TfidfVectorizer(analyzer=_identity, min_df=min_df, max_features=max_features, sublinear_tf=True)
    if kind in ("onehot", "tf"):
        return CountVectorizer(analyzer=_identity, min_df=min_df, max_features=max_features, binary=kind == "onehot")
    raise ValueError(f"kind must be 'onehot', 'tf' or 'tfidf', not {kind!r}")


def char_ngram_tfidf(
    ngram_range: tuple[int, int] = (1, 3), min_df: int = 2, max_features: int | None = 200_000
) -> TfidfVectorizer:
    """TF-IDF of character n-grams of the raw text (the usual strong linear baseline for Chinese).

    Args:
        ngram_range: the smallest and largest n.
        min_df: the fewest texts an n-gram must occur in.
        max_features: keep at most this many most frequent n-grams (None: all).

    Returns:
        An unfitted vectorizer (sublinear term frequency) whose input is raw texts.
    """
    return TfidfVectorizer(
        analyzer="char", ngram_range=ngram_range, min_df=min_df, max_features=max_features, sublinear_tf=True
    )


def _stable_hash(token: str) -> int:
    # gensim seeds each word's initial vector with hash(); Python's str hash changes per process
    return int.from_bytes(hashlib.md5(token.encode()).digest()[:4], "little")


def train_word2vec(
    token_lists: Sequence[list[str]],
    dim: int = 100,
    window: int = 5,
    min_count: int = 2,
    epochs: int = 10,
    seed: int = 42,
) -> KeyedVectors:
    """Skip-gram word2vec on texts alone (no labels); single worker so that it is reproducible.

    Args:
        token_lists: the tokenized texts.
        dim: vector size.
        window: context window on each side.
        min_count: the fewest occurrences a unit needs to get a vector.
        epochs: passes over the texts.
        seed: training seed.

    Returns:
        The trained word vectors.
    """
    model = Word2Vec(
        sentences=list(token_lists),
        vector_size=dim,
        window=window,
        min_count=min_count,
        sg=1,
        epochs=epochs,
        seed=seed,
        workers=1,
        hashfxn=_stable_hash,
    )
    return model.wv


def mean_vectors(token_lists: Sequence[list[str]], wv: KeyedVectors) -> np.ndarray:
    """The average word2vec vector of each text's known units (zeros when none is known).

    Args:
        token_lists: the tokenized texts.
        wv: word vectors from :func:`train_word2vec`.

    Returns:
        A float32 array, one row per text, ``wv.vector_size`` columns.
    """
    out = np.zeros((len(token_lists), wv.vector_size), dtype=np.float32)
    for i, tokens in enumerate(token_lists):
        known = [t for t in tokens if t in wv.key_to_index]
        if known:
            out[i] = wv[known].mean(axis=0)
    return out


class Vocab:
    """Unit-to-id map built from training texts; id 0 is padding, id 1 unknown.

    Args:
        token_lists: the tokenized training texts.
        min_count: the fewest occurrences a unit needs to be kept.
        max_size: keep at most this many most frequent units besides padding and unknown (None: all).
    """

    def __init__(self, token_lists: Sequence[list[str]], min_count: int = 1, max_size: int | None = 50000) -> None:
        counts = Counter(t for tokens in token_lists for t in tokens)
        kept = [t for t, c in counts.most_common(max_size) if c >= min_count]
        self.itos = ["<pad>", "<unk>"] + kept
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, token_lists: Sequence[list[str]], max_units: int) -> list[list[int]]:
        """Ids of each text, cut to ``max_units`` (an empty text becomes a single unknown id).

        Args:
            token_lists: the tokenized texts.
            max_units: the most ids kept per text.
        """
        return [[self.stoi.get(t, UNK) for t in tokens[:max_units]] or [UNK] for tokens in token_lists]

    def embedding_matrix(self, wv: KeyedVectors, seed: int = 0) -> tuple[np.ndarray, float]:
        """Embedding init: word2vec vectors where known, small random vectors elsewhere; returns (matrix, coverage).

        Args:
            wv: word vectors from :func:`train_word2vec`.
            seed: seed of the random vectors (normal, sd 0.1; the padding row is zeros).

        Returns:
            ``(matrix, coverage)``: a float32 array of ``len(self)`` × ``wv.vector_size``, and the share of units
            (padding and unknown not counted) that have a word2vec vector.
        """
        rng = np.random.default_rng(seed)
        matrix = rng.normal(0, 0.1, (len(self), wv.vector_size)).astype(np.float32)
        matrix[PAD] = 0
        known = [i for i, t in enumerate(self.itos) if t in wv.key_to_index]
        matrix[known] = wv[[self.itos[i] for i in known]]
        return matrix, len(known) / max(1, len(self) - 2)


def preview(
    x: np.ndarray | sp.spmatrix, columns: Sequence[str], texts: Sequence[str], rows: Sequence[int], top: int = 6
) -> pd.DataFrame:
    """What a feature matrix holds for a few texts: the text, its number of non-zero features, the largest ones.

    Args:
        x: the feature matrix (one row per text).
        columns: the name of each column (unit).
        texts: every text, in the rows' order.
        rows: the rows to show.
        top: how many of the largest features to list per text.

    Returns:
        One row per entry of ``rows``, columns ``text``, ``non-zero``, ``largest`` ("unit value, …").
    """
    out = []
    for i in rows:
        row = np.asarray(x[i].todense()).ravel() if sp.issparse(x) else np.asarray(x[i])
        largest = [j for j in np.argsort(-row, kind="stable")[:top] if row[j] != 0]
        out.append(
            {
                "text": texts[i],
                "non-zero": int((row != 0).sum()),
                "largest": ", ".join(f"{columns[j]} {row[j]:.2f}" for j in largest),
            }
        )
    return pd.DataFrame(out, index=pd.Index(rows, name="row of data.df"))
