"""Display names of models, metrics and methods (nblib.names), used by every figure and paper table."""

from __future__ import annotations

import pandas as pd

from nblib import baselines, names, shares


def test_known_ids_get_their_paper_names():
    assert names.display("lr_tfidf_char") == "TF-IDF (char 1–3) + LR"
    assert names.display("macro_f1") == "Macro-F1"
    assert names.display("train_loss") == "Training loss"
    assert names.display("val_loss") == "Validation loss"
    assert names.display("mlp_tfidf_word") == "MLP (TF-IDF, words)"
    assert names.display("lstm_word2vec_char") == "LSTM (word2vec, characters)"


def test_bert_runs_and_their_arms():
    assert names.display("bert_tiny-random") == "BERT (tiny-random)"
    assert names.display("bert_bert-base-chinese") == "BERT (bert-base-chinese)"
    assert names.display("bert_e5-small_tapt") == "BERT (e5-small) + TAPT"
    assert names.display("bert_e5-small_self") == "BERT (e5-small) + self-training"
    assert names.display("bert_e5-small_tapt_self") == "BERT (e5-small) + TAPT + self-training"


def test_share_methods_keep_their_standard_abbreviations():
    assert [names.display(m) for m in shares.METHODS] == list(shares.METHODS)


def test_every_baseline_has_a_name_and_unknown_ids_stay():
    assert all(names.display(m) != m for m in baselines.MODELS)
    assert names.display("my_model") == "my_model" and names.display(3) == "3"


def test_overrides_win():
    override = {"lr_tfidf_char": "Char TF-IDF LR", "macro_f1": "F1 (macro)"}
    assert names.display("lr_tfidf_char", override) == "Char TF-IDF LR"
    assert names.display("macro_f1", override) == "F1 (macro)"
    assert names.display("accuracy", override) == "Accuracy"


def test_rename_changes_index_and_columns_not_cells():
    table = pd.DataFrame({"macro_f1": ["accuracy"]}, index=pd.Index(["bert_x"], name="model"))
    out = names.rename(table)
    assert list(out.index) == ["BERT (x)"] and list(out.columns) == ["Macro-F1"]
    assert out.iloc[0, 0] == "accuracy"


def test_a_study_sets_its_names_once_for_every_figure_and_table():
    try:
        names.use({"bert_tiny-random": "Demo BERT"})
        assert names.display("bert_tiny-random") == "Demo BERT"
        assert names.display("bert_tiny-random", {"bert_tiny-random": "Mine"}) == "Mine"  # an explicit one wins
    finally:
        names.use(None)
    assert names.display("bert_tiny-random") == "BERT (tiny-random)"


def test_ids_inside_column_names():
    assert names.display_words("macro_f1 gain CI") == "Macro-F1 gain CI"
    assert names.display_words("only lr_tfidf_char right") == "only TF-IDF (char 1–3) + LR right"
    assert names.display_words("p (McNemar)") == "p (McNemar)" and names.display_words("train_loss") == "Training loss"
