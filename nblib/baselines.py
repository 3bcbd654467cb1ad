"""Classic baselines on the shared folds: MLPs on bags of units / averaged word2vec, a BiLSTM, TF-IDF + LR.

Every model is trained from scratch for each fold on the training part, early-stopped on a
validation part taken from the training folds, and asked once for the test fold's probabilities.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import calibration, features, settings
from .cv import FoldOutput, run_folds
from .folds import FoldSplit
from .metrics import improves, validation_scores
from .results import ModelResults
from .settings import ModelSelection, SelectOn, choices, runtime, setting
from .study import Study
from .text import Unit, tokenize_all

log = logging.getLogger(__name__)

MODELS = ["mlp_onehot", "mlp_tf", "mlp_tfidf", "mlp_word2vec", "lstm_word2vec", "lstm_random", "lr_tfidf_char"]


def model_list(models: str | Iterable[str]) -> list[str]:
    """The baselines to run, checked against ``MODELS``. Takes a list, or the string papermill passes for
    ``-p models ...``: one name, names separated by commas, or a JSON list (``'["mlp_tf", "lr_tfidf_char"]'``)."""
    return choices(models, MODELS, "baseline")


@dataclass
class BaselineChoice:
    """Which baselines 02_baselines trains."""

    models: list[str] | str = setting(
        default_factory=lambda: list(MODELS), help="the baselines to train: a list, or -p models mlp_tf,lr_tfidf_char"
    )


@dataclass
class BaselineConfig:
    """Every setting of the baselines (the notebook's parameters), written to each model's config.json."""

    unit: Unit = setting("word", "text units for the bags, word2vec and the LSTM: char, or word (jieba)")
    min_df: int = setting(2, "a unit must occur in this many training texts to enter a bag", ge=1)
    max_features: int = setting(20000, "the most units in a bag (the most frequent)", ge=1)
    w2v_dim: int = setting(100, "word2vec vector size", ge=1)
    w2v_window: int = setting(5, "word2vec context window", ge=1)
    w2v_epochs: int = setting(10, "word2vec training epochs", ge=1)
    w2v_min_count: int = setting(2, "word2vec: a unit must occur this often", ge=1)
    mlp_hidden: int = setting(256, "hidden units of the MLPs", ge=1)
    lstm_hidden: int = setting(64, "hidden units of the LSTMs", ge=1)
    lstm_max_units: int = setting(128, "units per text read by the LSTM (longer texts are cut)", ge=1)
    dropout: float = setting(0.3, "dropout of the MLPs and LSTMs", ge=0, lt=1)
    epochs: int = setting(20, "upper bound; early stopping on the validation part decides", ge=1)
    patience: int = setting(2, "stop after this many epochs without a better validation score", ge=1)
    batch_size: int = setting(128, "texts per optimizer step", ge=1)
    lr: float = setting(2e-3, "learning rate of the MLPs and LSTMs (Adam)", gt=0)
    weight_decay: float = setting(1e-4, "weight decay of the MLPs and LSTMs", ge=0)
    lr_C: float = setting(10.0, "inverse regularisation of the logistic regression", gt=0)
    ngram_max: int = setting(3, "character n-grams 1..ngram_max for TF-IDF + LR", ge=1)
    selection: ModelSelection = field(default_factory=ModelSelection)
    n_jobs: int | Literal["auto"] = runtime(
        "auto", "folds trained side by side, one process each; auto: one per CPU core", ge=1
    )

    def parallelism(self, folds: int) -> tuple[int, int]:
        """The folds trained side by side, and the PyTorch threads of each fold.

        The threads depend only on the machine and the number of folds, never on ``n_jobs``, so that a fold
        gives the same numbers whether it runs alone, side by side with others, or in a resumed run.

        Args:
            folds: the study's number of folds.
        """
        cpus = os.cpu_count() or 1
        if self.n_jobs != "auto" and (not isinstance(self.n_jobs, int) or self.n_jobs < 1):
            raise ValueError(f"n_jobs={self.n_jobs!r}: give a number of processes (1 or more), or 'auto'.")
        n_jobs = min(cpus, folds) if self.n_jobs == "auto" else self.n_jobs
        return n_jobs, max(1, cpus // min(cpus, folds))


# --- models ---------------------------------------------------------------------------------------


class MLP(nn.Module):
    """One hidden layer; accepts dense or sparse (COO) input.

    Args:
        in_dim: number of input features.
        hidden: size of the hidden layer.
        num_labels: number of classes.
        dropout: dropout probability after the hidden layer.
    """

    def __init__(self, in_dim: int, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch.

        Args:
            x: the feature matrix, dense or sparse (COO).
        """
        h = torch.sparse.mm(x, self.hidden.weight.t()) + self.hidden.bias if x.is_sparse else self.hidden(x)
        return self.out(h)


class LSTMClassifier(nn.Module):
    """Embedding → BiLSTM → mean and max pooling over real units → linear.

    The BiLSTM is two one-directional LSTMs; the backward one reads each text reversed within its own length,
    so padding enters neither direction (the same function as a packed bidirectional LSTM) while both run
    PyTorch's fused kernel on the padded batch (oneDNN on CPU, cuDNN on GPU): faster to train on CPU than a
    packed sequence, whose backward pass copies the whole batch at every position (benchmarks/README.md).

    Args:
        vocab_size: number of unit ids, padding included.
        emb_dim: embedding size.
        hidden: LSTM hidden size per direction.
        num_labels: number of classes.
        dropout: dropout probability on the embeddings and the pooled output.
        pretrained: initial embedding weights (``vocab_size`` × ``emb_dim``), or None for random ones.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int,
        hidden: int,
        num_labels: int,
        dropout: float,
        pretrained: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=features.PAD)
        if pretrained is not None:
            self.embedding.weight.data.copy_(torch.from_numpy(pretrained))
        self.forward_lstm = nn.LSTM(emb_dim, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(emb_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(4 * hidden, num_labels)

    def states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The BiLSTM's output at every position (forward and backward halves concatenated).

        Args:
            x: embedded units, one row per text, padded at the end.
            lengths: the number of real units of each row.
        """
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        # position t of a reversed text is position length-1-t of the text; padding stays at the end
        reverse = torch.where(positions < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - positions, positions)
        reverse = reverse.unsqueeze(-1)
        fwd, _ = self.forward_lstm(x)
        bwd, _ = self.backward_lstm(x.gather(1, reverse.expand_as(x)))
        return torch.cat([fwd, bwd.gather(1, reverse.expand_as(bwd))], dim=-1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits for a batch.

        Args:
            ids: unit ids, one row per text, padded at the end.
            lengths: the number of real units of each row.
        """
        out = self.states(self.dropout(self.embedding(ids)), lengths)
        real = (torch.arange(ids.shape[1], device=ids.device) < lengths.unsqueeze(1)).unsqueeze(-1)
        mean = (out * real).sum(1) / lengths.unsqueeze(-1).clamp(min=1)
        maxed = out.masked_fill(~real, float("-inf")).max(1).values
        return self.out(self.dropout(torch.cat([mean, maxed], dim=-1)))


# --- batching -------------------------------------------------------------------------------------


def _loader(n: int, collate: Callable, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(
        range(n),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )


def matrix_loader(
    x: np.ndarray | sp.spmatrix, y: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """Batches ((features,), labels) from a dense array or a sparse matrix (sent as sparse tensors).

    Args:
        x: the feature matrix, one row per text.
        y: label ids, one per row of ``x``.
        batch_size: rows per batch.
        shuffle: shuffle the rows.
        seed: seed of the shuffling.
    """
    x = x.tocsr() if sp.issparse(x) else np.asarray(x, dtype=np.float32)

    def collate(idx: list[int]):
        part = x[idx]
        if sp.issparse(part):
            coo = part.tocoo()
            indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
            t = torch.sparse_coo_tensor(
                indices, torch.from_numpy(coo.data.astype(np.float32)), coo.shape, check_invariants=False
            )  # scipy already made them valid
        else:
            t = torch.from_numpy(part)
        return (t,), torch.as_tensor(y[idx], dtype=torch.long)

    return _loader(len(y), collate, batch_size, shuffle, seed)


def sequence_loader(
    seqs: list[list[int]], y: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """Batches ((ids, lengths), labels) of texts of similar length, each padded only to its own longest text.

    The BiLSTM steps through a batch one position at a time, so a batch costs as many steps as its longest
    text: training batches are shuffled groups of similar length (transformers' ``LengthGroupedSampler``, as
    for BERT), evaluation batches run in length order and :func:`predict_proba` restores the order of ``seqs``.

    Args:
        seqs: unit ids of each text.
        y: label ids, one per text.
        batch_size: texts per batch.
        shuffle: training batches (shuffled) rather than evaluation batches (in length order).
        seed: seed of the shuffling.
    """
    lengths = [len(s) for s in seqs]
    if shuffle:
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = np.argsort(lengths, kind="stable").tolist()

    def collate(idx: list[int]):
        ids = pad_sequence([torch.tensor(seqs[i]) for i in idx], batch_first=True, padding_value=features.PAD)
        return (ids, torch.tensor([lengths[i] for i in idx])), torch.as_tensor(y[idx], dtype=torch.long)

    return DataLoader(range(len(y)), batch_size=batch_size, sampler=sampler, collate_fn=collate)


# --- training -------------------------------------------------------------------------------------


@torch.no_grad()
def predict_proba(model: nn.Module, batches: Iterable) -> np.ndarray:
    """Class probabilities of every text, in the order of the texts the batches were made from.

    Args:
        model: the trained model.
        batches: ``((inputs…), labels)`` batches (from :func:`matrix_loader` or :func:`sequence_loader`).
    """
    model.eval()
    probs = torch.cat([torch.softmax(model(*inputs), -1) for inputs, _ in batches]).numpy()
    order = batches.sampler if isinstance(batches, DataLoader) and isinstance(batches.sampler, list) else None
    if order is None:
        return probs
    out = np.empty_like(probs)
    out[order] = probs  # evaluation batches of sequence_loader run in length order
    return out


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer) -> float:
    """One pass over the training batches (cross-entropy, backward, step); the mean training loss.

    Args:
        model: the model.
        batches: shuffled training batches ``((inputs…), labels)``.
        optimizer: the optimizer of ``model``'s parameters.
    """
    model.train()
    total, count = 0.0, 0
    for inputs, y in batches:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(*inputs), y)
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(y), count + len(y)
    return total / count


class BestEpoch:
    """Early stopping: keeps a copy of the weights of the best epoch so far by the validation score
    (:func:`nblib.metrics.improves`), says when ``patience`` epochs passed without a better one, puts them back.

    Args:
        select_on: the validation score that decides the best epoch.
        patience: stop after this many epochs without a better validation score.
    """

    def __init__(self, select_on: SelectOn, patience: int) -> None:
        self.select_on, self.patience = select_on, patience
        self.scores: dict[str, float] | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.epoch = 0

    def stop_after(self, epoch: int, scores: dict[str, float], model: nn.Module) -> bool:
        """Record an epoch's validation scores (copying the weights when they are the best so far); whether to stop.

        Args:
            epoch: the epoch just trained (from 1).
            scores: its :func:`nblib.metrics.validation_scores`.
            model: the model, with this epoch's weights.
        """
        if improves(scores, self.scores, self.select_on):
            self.scores, self.state, self.epoch = scores, copy.deepcopy(model.state_dict()), epoch
            return False
        return epoch - self.epoch >= self.patience

    def restore(self, model: nn.Module) -> nn.Module:
        """Put the best epoch's weights back into ``model``; returns it.

        Args:
            model: the model that was trained.
        """
        model.load_state_dict(self.state)
        return model


def train_early_stopping(
    model: nn.Module,
    train: DataLoader,
    val: DataLoader,
    y_val: np.ndarray,
    epochs: int,
    lr: float,
    weight_decay: float,
    patience: int,
    select_on: SelectOn,
) -> tuple[nn.Module, pd.DataFrame, int]:
    """AdamW training, scoring the validation part after each epoch and keeping the best epoch's weights.

    Args:
        model: a freshly initialised model.
        train: shuffled training batches ``((inputs…), labels)``.
        val: validation batches, in the order of ``y_val``.
        y_val: gold label ids of the validation part.
        epochs: the most epochs to train.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        patience: stop after this many epochs without a better validation score.
        select_on: the validation score that decides the best epoch (:func:`nblib.metrics.improves`).

    Returns:
        The model with the best epoch's weights, the per-epoch curves, and the best epoch.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, rows = BestEpoch(select_on, patience), []
    for epoch in range(1, epochs + 1):
        train_loss = train_one_epoch(model, train, optimizer)
        scores = validation_scores(y_val, predict_proba(model, val))
        rows.append({"epoch": epoch, "train_loss": train_loss, **scores})
        if best.stop_after(epoch, scores, model):
            break
    return best.restore(model), pd.DataFrame(rows), best.epoch


# --- one fold of each kind of model ---------------------------------------------------------------


@dataclass
class FoldModel:
    """A fresh model for one fold, a function that makes its batches for given text indices, and extras."""

    model: nn.Module
    batches: Callable[[np.ndarray, bool], DataLoader]
    extra: dict


class BaselineSuite:
    """Runs the baselines on one study and its folds, sharing the tokenization and the word2vec vectors."""

    def __init__(self, study: Study, config: BaselineConfig):
        """Args:
        study: the study (data, folds, unlabelled pool for word2vec).
        config: every baseline setting.
        """
        self.study, self.data, self.cfg = study, study.data, config
        self.tokens = tokenize_all(self.data.texts, config.unit)
        self.unlabelled_tokens = tokenize_all(study.pool["text"], config.unit)
        self._wv, self._mean_vectors = None, None

    @property
    def word2vec(self) -> features.KeyedVectors:
        """word2vec trained once on the labelled texts plus the unlabelled pool (texts only, no labels)."""
        if self._wv is None:
            c = self.cfg
            self._wv = features.train_word2vec(
                self.tokens + self.unlabelled_tokens,
                c.w2v_dim,
                c.w2v_window,
                c.w2v_min_count,
                c.w2v_epochs,
                self.study.settings.seed,
            )
            log.info(
                "word2vec: %d %s units, trained on %d texts (%d unlabelled).",
                len(self._wv),
                c.unit,
                len(self.tokens) + len(self.unlabelled_tokens),
                len(self.unlabelled_tokens),
            )
        return self._wv

    @property
    def mean_vectors(self) -> np.ndarray:
        """Every labelled text as the average word2vec vector of its units (computed once)."""
        if self._mean_vectors is None:
            self._mean_vectors = features.mean_vectors(self.tokens, self.word2vec)
        return self._mean_vectors

    def run(self, name: str) -> ModelResults:
        """Cross-validate one baseline on every fold; resumes a finished or interrupted run.

        Args:
            name: one of ``MODELS``.
        """
        if name not in MODELS:
            raise ValueError(f"Unknown baseline {name!r}; choose from {MODELS}.")
        cfg = settings.identity(self.cfg)
        if name == "lr_tfidf_char":
            cfg["unit"] = f"char 1-{self.cfg.ngram_max}-grams"
        if "word2vec" in name:
            cfg["word2vec_texts"] = {"labelled": len(self.tokens), "unlabelled": len(self.unlabelled_tokens)}
        run = self.study.open_run(self.run_name(name), cfg)
        fit = self._logistic_regression if name == "lr_tfidf_char" else self._neural(name)
        if "word2vec" in name:  # trained here, once, not in every fold's process
            _ = self.mean_vectors if name == "mlp_word2vec" else self.word2vec
        n_jobs, threads = self.cfg.parallelism(self.study.n_folds)
        run_folds(self.study, run, fit, self.cfg.selection.val_fraction, n_jobs=n_jobs, threads=threads)
        return run.finish()

    def run_name(self, name: str) -> str:
        """The results folder name of baseline ``name`` (the unit is part of it, except for TF-IDF + LR).

        Args:
            name: one of ``MODELS``.
        """
        return name if name == "lr_tfidf_char" else f"{name}_{self.cfg.unit}"

    def _logistic_regression(self, split: FoldSplit) -> FoldOutput:
        c, texts, y = self.cfg, np.array(self.data.texts, dtype=object), self.data.labels
        vec = features.char_ngram_tfidf((1, c.ngram_max), c.min_df)
        # LR needs no early stopping: it is fitted on training + validation parts together, so it has no held-out
        # part to fit a temperature on either (T = 1; ModelResults.calibrated_probs adds its cross-fitted class biases)
        train = np.concatenate([split.train, split.val])
        clf = LogisticRegression(C=c.lr_C, max_iter=2000)
        clf.fit(vec.fit_transform(texts[train]), y[train])
        return FoldOutput(clf.predict_proba(vec.transform(texts[split.test])), {"features": len(vec.vocabulary_)})

    def _neural(self, name: str) -> Callable[[FoldSplit], FoldOutput]:
        def fit(split: FoldSplit) -> FoldOutput:
            c, y = self.cfg, self.data.labels
            built = self.build(name, split)
            model, history, best = train_early_stopping(
                built.model,
                built.batches(split.train, True),
                built.batches(split.val, False),
                y[split.val],
                c.epochs,
                c.lr,
                c.weight_decay,
                c.patience,
                c.selection.select_on,
            )
            probs = predict_proba(model, built.batches(split.test, False))
            val_logp = calibration.log_probs(predict_proba(model, built.batches(split.val, False)))
            extra = {"best_epoch": best, "epochs_run": len(history)}
            extra["temperature"] = calibration.fit_temperature(val_logp, y[split.val])
            return FoldOutput(probs, {**built.extra, **extra}, history)

        return fit

    def feature_matrix(self, kind: str, split: FoldSplit) -> tuple[np.ndarray | sp.csr_matrix, list[str]]:
        """The MLP input of every text for one fold, fitted on the fold's training part only.

        Args:
            kind: ``onehot``, ``tf``, ``tfidf`` (bags of units) or ``word2vec`` (averaged vectors, standardised).
            split: the fold.

        Returns:
            The matrix (one row per text of the study) and the name of each column.
        """
        if kind == "word2vec":
            x = self.mean_vectors
            x = StandardScaler().fit(x[split.train]).transform(x).astype(np.float32)
            return x, [f"w2v_{i}" for i in range(x.shape[1])]
        vec = features.bag_vectorizer(kind, self.cfg.min_df, self.cfg.max_features)
        vec.fit([self.tokens[i] for i in split.train])
        return vec.transform(self.tokens).astype(np.float32), vec.get_feature_names_out().tolist()

    def build(self, name: str, split: FoldSplit) -> FoldModel:
        """The fresh (untrained) model of baseline ``name`` for one fold, with its batches; its initial weights are
        seeded with the fold's seed (the same here as in :meth:`run`).

        Args:
            name: one of ``MODELS`` except ``lr_tfidf_char``.
            split: the fold.
        """
        torch.manual_seed(split.seed)
        c, y, k = self.cfg, self.data.labels, self.data.num_labels
        if name.startswith("mlp_"):
            x, columns = self.feature_matrix(name.removeprefix("mlp_"), split)
            model = MLP(x.shape[1], c.mlp_hidden, k, c.dropout)
            return FoldModel(
                model,
                lambda idx, shuffle: matrix_loader(x[idx], y[idx], c.batch_size, shuffle, split.seed),
                {"features": len(columns)},
            )
        vocab = features.Vocab([self.tokens[i] for i in split.train], min_count=1, max_size=c.max_features)
        seqs = vocab.encode(self.tokens, c.lstm_max_units)
        extra = {"vocab": len(vocab)}
        pretrained = None
        if name == "lstm_word2vec":
            pretrained, extra["word2vec_coverage"] = vocab.embedding_matrix(self.word2vec, split.seed)
        model = LSTMClassifier(len(vocab), c.w2v_dim, c.lstm_hidden, k, c.dropout, pretrained)
        return FoldModel(
            model,
            lambda idx, shuffle: sequence_loader([seqs[i] for i in idx], y[idx], c.batch_size, shuffle, split.seed),
            extra,
        )
