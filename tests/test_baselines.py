"""Feature builders, baseline models on tiny inputs, the CV loop and the results format."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from nblib import baselines, features, results
from nblib.text import tokenize, tokenize_all

# --- text units and features ---------------------------------------------------------------------


def test_tokenize_chars_and_words():
    assert tokenize("只此 青绿！", "char") == ["只", "此", "青", "绿", "！"]
    assert tokenize("只此青绿的舞美绝了", "word") == ["只", "此", "青绿", "的", "舞美", "绝", "了"]
    with pytest.raises(ValueError):
        tokenize("好", "sentence")


def test_bag_vectorizers_fit_on_training_texts_only():
    train = [["文物", "文物", "好"], ["文化", "好"]]
    test = [["文物", "从未见过"]]
    onehot = features.bag_vectorizer("onehot", min_df=1).fit(train)
    tf = features.bag_vectorizer("tf", min_df=1).fit(train)
    tfidf = features.bag_vectorizer("tfidf", min_df=1).fit(train)
    assert "从未见过" not in onehot.vocabulary_
    col = onehot.vocabulary_["文物"]
    assert onehot.transform(train)[0, col] == 1 and tf.transform(train)[0, col] == 2
    assert np.isclose(np.linalg.norm(tfidf.transform(test).toarray()), 1.0)
    assert features.bag_vectorizer("onehot", min_df=2).fit(train).vocabulary_.keys() == {"好"}


def test_char_ngrams():
    vec = features.char_ngram_tfidf((1, 3), min_df=1).fit(["只此青绿"])
    assert {"只", "只此", "只此青", "青绿"} <= set(vec.vocabulary_)


def test_word2vec_is_reproducible_and_averages():
    corpus = tokenize_all(["只此青绿的舞美绝了", "国家宝藏的文物好美", "只此青绿的灯光绝了"] * 20, "word")
    a, b = (
        features.train_word2vec(corpus, dim=16, min_count=1, epochs=3),
        features.train_word2vec(corpus, dim=16, min_count=1, epochs=3),
    )
    assert (
        np.allclose(a["绝"], b["绝"])
        if "绝" in a.key_to_index
        else np.allclose(a[a.index_to_key[0]], b[b.index_to_key[0]])
    )
    x = features.mean_vectors([corpus[0], ["从未见过"]], a)
    assert x.shape == (2, 16) and np.allclose(x[1], 0) and not np.allclose(x[0], 0)
    assert np.allclose(x[0], a[[t for t in corpus[0] if t in a.key_to_index]].mean(0))


def test_vocab_encoding_and_embedding_init():
    vocab = features.Vocab([["文", "物", "文"], ["好"]])
    assert vocab.itos[:3] == ["<pad>", "<unk>", "文"]
    assert vocab.encode([["文", "新", "好"], []], max_units=2) == [[2, 1], [1]]
    wv = features.train_word2vec([["文", "物", "好"]] * 10, dim=8, min_count=1, epochs=1)
    matrix, coverage = vocab.embedding_matrix(wv)
    assert matrix.shape == (len(vocab), 8) and np.allclose(matrix[0], 0) and coverage == 1.0
    assert np.allclose(matrix[vocab.stoi["物"]], wv["物"])


# --- models ---------------------------------------------------------------------------------------


def test_sparse_and_dense_mlp_agree():
    torch.manual_seed(0)
    mlp = baselines.MLP(6, 5, 3, dropout=0.0).eval()
    dense = torch.tensor([[1.0, 0, 0, 2, 0, 0], [0, 0, 3, 0, 0, 1]])
    assert torch.allclose(mlp(dense), mlp(dense.to_sparse()), atol=1e-6)


def test_lstm_ignores_padding():
    torch.manual_seed(0)
    model = baselines.LSTMClassifier(10, 8, 6, 3, dropout=0.0).eval()
    short = torch.tensor([[2, 3, 4]])
    padded = torch.tensor([[2, 3, 4, 0, 0, 0], [5, 6, 7, 8, 9, 2]])
    alone = model(short, torch.tensor([3]))
    in_batch = model(padded, torch.tensor([3, 6]))[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)


def test_lstm_is_a_packed_bidirectional_lstm():
    """Two one-directional LSTMs on the padded batch compute what nn.LSTM(bidirectional) computes on packed input."""
    torch.manual_seed(0)
    model = baselines.LSTMClassifier(10, 8, 6, 3, dropout=0.0).eval()
    packed_lstm = torch.nn.LSTM(8, 6, batch_first=True, bidirectional=True)
    for name, p in model.forward_lstm.named_parameters():
        getattr(packed_lstm, name).data.copy_(p)
        getattr(packed_lstm, name + "_reverse").data.copy_(getattr(model.backward_lstm, name))
    x, lengths = torch.randn(3, 7, 8), torch.tensor([7, 2, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_lstm(packed)[0], batch_first=True, total_length=7)
    got = model.states(x, lengths)
    for i, n in enumerate(lengths):
        assert torch.allclose(got[i, :n], expected[i, :n], atol=1e-5)


def test_length_ordered_evaluation_batches_come_back_in_text_order():
    torch.manual_seed(0)
    model = baselines.LSTMClassifier(12, 8, 6, 3, dropout=0.0).eval()
    seqs = [[2, 3, 4, 5, 6], [7], [8, 9], [2, 2, 2, 2, 2, 2, 2], [3, 4, 5]]
    y = np.array([0, 1, 2, 0, 1])
    loader = baselines.sequence_loader(seqs, y, batch_size=2)
    assert [len(seqs[i]) for i in loader.sampler] == sorted(len(s) for s in seqs)
    alone = np.concatenate([torch.softmax(model(torch.tensor([s]), torch.tensor([len(s)])), -1).detach() for s in seqs])
    assert np.allclose(baselines.predict_proba(model, loader), alone, atol=1e-5)
    batches = list(baselines.sequence_loader(seqs, y, batch_size=2, shuffle=True, seed=1))
    assert sorted(len(lengths) for (_, lengths), _ in batches) == [1, 2, 2]
    assert all(ids.shape[1] == lengths.max() for (ids, lengths), _ in batches)  # each padded to its own longest


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_models_fit_a_separable_set(kind):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    if kind == "mlp":
        x = rng.normal(0, 0.3, (120, 6)).astype(np.float32)
        x[np.arange(120), y] += 3
        model, loader = baselines.MLP(6, 16, 3, 0.1), lambda idx, s: baselines.matrix_loader(x[idx], y[idx], 16, s)
    else:
        seqs = [[2 + 3 * c + int(j) for j in rng.integers(0, 3, rng.integers(2, 8))] for c in y]
        model = baselines.LSTMClassifier(12, 8, 16, 3, 0.1)
        loader = lambda idx, s: baselines.sequence_loader([seqs[i] for i in idx], y[idx], 16, s)
    torch.manual_seed(0)
    idx = rng.permutation(120)
    train, val = idx[:90], idx[90:]
    model, history, best = baselines.train_early_stopping(
        model,
        loader(train, True),
        loader(val, False),
        y[val],
        epochs=30,
        lr=0.01,
        weight_decay=0.0,
        patience=5,
        select_on="val_macro_f1",
    )
    assert history["val_accuracy"].max() == 1.0
    ranked = history.sort_values(["val_macro_f1", "val_loss"], ascending=[False, True], kind="stable")
    assert best == ranked["epoch"].iloc[0]  # best macro-F1, ties to the lower loss
    assert (baselines.predict_proba(model, loader(val, False)).argmax(1) == y[val]).mean() == 1.0
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


# --- the CV loop and the results format ------------------------------------------------------------


@pytest.mark.parametrize(
    "select_on, kept, patience, epochs_run", [("val_macro_f1", 3, 5, 4), ("val_loss", 1, 5, 4), ("val_loss", 1, 2, 3)]
)
def test_early_stopping_keeps_the_epoch_the_selection_rule_picks(monkeypatch, select_on, kept, patience, epochs_run):
    """Validation loss is lowest after epoch 1, macro-F1 highest after epoch 3 (tied at 4): each rule keeps its own."""
    y_val = np.array([0, 1, 0, 1])
    confident_right = np.array([[0.99, 0.01], [0.01, 0.99], [0.01, 0.99], [0.01, 0.99]])
    scripted = [
        np.array([[0.6, 0.4]] * 4),  # macro-F1 0.33, loss 0.71
        np.array([[0.9, 0.1]] * 4),  # macro-F1 0.33, loss 1.20
        confident_right,  # macro-F1 0.73, loss 1.16
        confident_right,
    ]
    weights = []  # the model's weights after each epoch, to see which epoch was restored

    def fake_predict(model, batches):
        weights.append(model.hidden.weight.detach().clone())
        return scripted[len(weights) - 1]

    monkeypatch.setattr(baselines, "predict_proba", fake_predict)
    torch.manual_seed(0)
    x = np.eye(2, dtype=np.float32).repeat(4, axis=0)
    train = baselines.matrix_loader(x, np.array([0, 0, 0, 0, 1, 1, 1, 1]), 4, shuffle=True)
    model, history, best = baselines.train_early_stopping(
        baselines.MLP(2, 4, 2, 0.0),
        train,
        None,
        y_val,
        epochs=4,
        lr=0.1,
        weight_decay=0.0,
        patience=patience,
        select_on=select_on,
    )
    assert best == kept and len(history) == epochs_run
    assert history["val_macro_f1"].round(2).tolist()[:3] == [0.33, 0.33, 0.73]
    assert torch.equal(model.hidden.weight, weights[kept - 1])
    assert not torch.equal(weights[0], weights[2])


NAMES = {
    "lr_tfidf_char": ("lr_tfidf_char", False),
    "mlp_tf": ("mlp_tf_char", True),
    "mlp_word2vec": ("mlp_word2vec_char", True),
    "lstm_random": ("lstm_random_char", True),
}


@pytest.mark.parametrize("name", list(NAMES))
def test_each_baseline_writes_the_results_format(tiny_study, name):
    study = tiny_study()
    cfg = baselines.BaselineConfig(
        unit="char",
        min_df=1,
        epochs=15,
        patience=15,
        lr=0.01,
        w2v_dim=16,
        w2v_min_count=1,
        w2v_epochs=50,
        w2v_window=2,
        mlp_hidden=32,
        lstm_hidden=16,
    )
    res = baselines.BaselineSuite(study, cfg).run(name)
    folder_name, neural = NAMES[name]
    assert res.name == folder_name
    folder = study.path / "models" / folder_name
    for f in ["config.json", "predictions.csv", "metrics.csv"]:
        assert (folder / f).stat().st_size > 0
    pred = pd.read_csv(folder / "predictions.csv")
    assert pred.columns.tolist() == [
        "index",
        "row",
        "source",
        "fold",
        "text",
        "gold",
        "pred",
        "prob_0",
        "prob_1",
        "prob_2",
    ]
    assert set(pred["source"]) == set(study.data.df["source"]) == {"tiny.csv"}
    assert len(pred) == len(study.data.df) and (pred["fold"].to_numpy() == study.folds).all()
    assert np.allclose(pred[["prob_0", "prob_1", "prob_2"]].sum(axis=1), 1, atol=1e-5)
    m = pd.read_csv(folder / "metrics.csv")
    assert len(m) == 3 and {"accuracy", "macro_f1", "weighted_f1", "f1_0", "recall_2", "seconds"} <= set(m.columns)
    (env_file,) = (folder / "environment").glob("*.json")
    env = json.loads(env_file.read_text())
    assert env["versions"]["torch"] and env["python"]
    config = json.loads((folder / "config.json").read_text())
    assert config["data_fingerprint"] == study.data.fingerprint() and config["seed"] == 0
    assert config["select_on"] == "val_macro_f1" and config["val_fraction"] == 0.1
    assert (folder / "history.csv").exists() == neural and ("best_epoch" in m.columns) == neural
    assert m["accuracy"].mean() > 0.8, m  # each class is marked by its own words


def test_rerun_resumes_and_other_settings_refuse(tiny_study):
    study = tiny_study()
    cfg = baselines.BaselineConfig(unit="char", min_df=1)
    first = baselines.BaselineSuite(study, cfg).run("lr_tfidf_char")
    fold_file = study.path / "models" / "lr_tfidf_char" / "folds" / "fold_1.csv"
    fold_file.write_text(fold_file.read_text())  # same content; its mtime marks whether it is rewritten
    stamp = fold_file.stat().st_mtime_ns
    again = baselines.BaselineSuite(study, cfg).run("lr_tfidf_char")
    assert fold_file.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(first.metrics, again.metrics)
    assert len(list((fold_file.parents[1] / "environment").glob("*.json"))) == 2
    with pytest.raises(results.ResultsExistError, match="lr_C"):
        baselines.BaselineSuite(study, baselines.BaselineConfig(unit="char", min_df=1, lr_C=1.0)).run("lr_tfidf_char")


def test_study_lists_finished_models_of_its_folds(tiny_study):
    study = tiny_study()
    baselines.BaselineSuite(study, baselines.BaselineConfig(unit="char", min_df=1)).run("lr_tfidf_char")
    assert list(study.runs()) == ["lr_tfidf_char"] and study.unfinished_runs() == {}
    assert tiny_study(seed=1).runs() == {}  # same data, other folds
    assert list(tiny_study(seed=1).unfinished_runs()) == ["lr_tfidf_char"]
    table = study.comparison()
    assert table.index.tolist() == ["lr_tfidf_char"] and table.columns.tolist() == [
        "accuracy",
        "macro_f1",
        "weighted_f1",
    ]
    assert (study.path / "comparison.csv").exists()


def test_model_list_takes_what_papermill_passes():
    assert baselines.model_list(["mlp_tf", "lr_tfidf_char"]) == ["mlp_tf", "lr_tfidf_char"]
    assert baselines.model_list("lr_tfidf_char") == ["lr_tfidf_char"]  # -p models lr_tfidf_char
    assert baselines.model_list("mlp_tf, lr_tfidf_char") == ["mlp_tf", "lr_tfidf_char"]
    assert baselines.model_list('["mlp_tf", "lr_tfidf_char"]') == ["mlp_tf", "lr_tfidf_char"]
    with pytest.raises(ValueError, match=r"mlp_bert.*choose from"):
        baselines.model_list("mlp_tf,mlp_bert")
    with pytest.raises(ValueError, match="choose from"):
        baselines.model_list([])


@pytest.mark.parametrize("name", ["mlp_tf", "lstm_word2vec"])
def test_folds_side_by_side_give_the_numbers_of_folds_one_after_another(tiny_study, tmp_path, name):
    cfg = dict(unit="char", min_df=1, epochs=4, w2v_dim=8, w2v_min_count=1, mlp_hidden=16, lstm_hidden=8)
    one = baselines.BaselineSuite(tiny_study(), baselines.BaselineConfig(n_jobs=1, **cfg)).run(name)
    two_study = tiny_study(results_dir=str(tmp_path / "two"))
    assert baselines.BaselineConfig(n_jobs=2).parallelism(3)[0] == 2
    two = baselines.BaselineSuite(two_study, baselines.BaselineConfig(n_jobs=2, **cfg)).run(name)
    assert np.allclose(one.probs, two.probs, atol=1e-5)
    assert one.metrics.drop(columns="seconds").equals(two.metrics.drop(columns="seconds"))


def test_parallelism_gives_each_fold_the_same_threads_whatever_n_jobs(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert baselines.BaselineConfig().parallelism(5) == (5, 3)
    assert baselines.BaselineConfig(n_jobs=1).parallelism(5) == (1, 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert baselines.BaselineConfig().parallelism(5) == (2, 1) == baselines.BaselineConfig(n_jobs=2).parallelism(5)
    with pytest.raises(ValueError, match="n_jobs='two'"):
        baselines.BaselineConfig(n_jobs="two").parallelism(5)
