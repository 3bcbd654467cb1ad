"""Self-training: which pool texts join, from which teacher, and what is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nblib import analysis, bert, bert_cv, self_training
from nblib.self_training import PseudoLabelling
from nblib.settings import choices, from_params
from nblib.sheets import DataError


def test_threshold_keeps_exactly_the_confident_texts():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    chosen = self_training.select(probs, PseudoLabelling(pseudo_rule="threshold", pseudo_threshold=0.9))
    assert chosen.tolist() == [True, False, True, False]


def test_per_class_keeps_the_most_confident_share_of_every_predicted_class():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([5, 1, 0.3], size=400)  # class 0 dominates; class 2 is rare and less confident
    label, conf = probs.argmax(1), probs.max(1)
    chosen = self_training.select(probs, PseudoLabelling(pseudo_rule="per_class", pseudo_share=0.3))
    for c in np.unique(label):
        members = label == c
        assert chosen[members].sum() == int(np.floor(0.3 * members.sum()))
        if chosen[members].any() and (members & ~chosen).any():
            assert conf[members & chosen].min() >= conf[members & ~chosen].max()
    # the rare class is not crowded out, as it is by a threshold the majority class passes easily
    rare = np.bincount(label).argmin()
    assert chosen[label == rare].sum() >= 1
    with pytest.raises(ValueError, match="pseudo_share"):
        self_training.select(probs, PseudoLabelling(pseudo_share=1.5))
    with pytest.raises(ValueError, match="pseudo_rule"):
        self_training.select(probs, PseudoLabelling(pseudo_rule="top"))


def biased_teacher(study, name: str, folds: range) -> None:
    """A teacher run whose fold-k model always predicts class k (mod the number of classes)."""
    source = bert.model_source(bert.TINY_RANDOM, study)
    run = study.open_run(name, {"source": source})
    tokenizer = bert.load_tokenizer(source)
    for k in folds:
        model = bert.load_classifier(source, study.data.label_names)
        with torch.no_grad():
            model.classifier.bias.fill_(-20.0)
            model.classifier.bias[k % study.data.num_labels] = 20.0
        bert.save_checkpoint(model, tokenizer, run.fold_model_dir(k))
        (run.path / "folds" / f"fold_{k}.json").write_text("{}")  # the fold is finished
    run.lock.release()


def student(study, **settings) -> bert_cv.FineTuneJob:
    params = {"model": bert.TINY_RANDOM, "epochs": 1, "batch_size": 8, "max_len": 32, "device": "cpu"}
    cfg = from_params(bert_cv.FineTuneConfig, params | {"train_final": False, "run_name": "student"} | settings)
    return bert_cv.FineTuneJob(bert_cv.replace(cfg, study=study.settings), study)


@pytest.fixture
def pool_study(tiny_study, tiny_sheet, write_sheet):
    labelled = pd.read_csv(tiny_sheet(8))
    pool = pd.DataFrame({"Sentence": [*labelled["Sentence"][:4], "新评论甲", "新评论乙", "新评论乙", "新评论丙"]})
    return tiny_study(n_per_class=8, unlabelled_path=str(write_sheet(pool, "pool.csv")))


def test_fold_k_pseudo_labels_come_from_the_fold_k_teacher_only(pool_study):
    study = pool_study
    biased_teacher(study, "teacher", range(study.n_folds))
    job = student(study, teacher="teacher", pseudo_rule="threshold", pseudo_threshold=0.5)
    labelled = set(study.data.texts)
    for k in range(study.n_folds):
        pseudo = job.pseudo_labelled(k)
        table = pd.read_csv(job.run.path / "pseudo_labels" / f"fold_{k}.csv")
        assert table["teacher"].str.endswith(f"fold_models/fold_{k}").all()
        assert {item["labels"] for item in pseudo.items} == {k % study.data.num_labels}
        # pool texts that repeat labelled texts (test texts among them) never come back as training texts
        assert not set(table["text"]) & labelled and len(table) == 3  # 4 repeats and 1 in-pool repeat left out
    # a saved table of other pool texts is made again, not trusted
    path = job.run.path / "pseudo_labels" / "fold_0.csv"
    path.write_text("row,text,label,confidence,chosen,teacher\n1,别的,0,0.9,True,x\n")
    assert len(job.pseudo_labelled(0).items) == 3 and len(pd.read_csv(path)) == 3
    job.run_folds([0])
    metrics = job.fold_results(0).metrics
    assert int(metrics["pseudo_labelled"].iloc[0]) == 3


def test_a_missing_teacher_or_fold_model_or_pool_is_a_clear_error(pool_study, tiny_study):
    study = pool_study
    with pytest.raises(DataError, match="Teacher run 'nobody' not found"):
        student(study, teacher="nobody")
    biased_teacher(study, "partial", range(1))
    job = student(study, teacher="partial")
    with pytest.raises(DataError, match="no saved model for fold 1"):
        job.pseudo_labelled(1)
    (study.run_folder("partial").path / "folds" / "fold_0.json").unlink()  # saved, but its fold did not finish
    with pytest.raises(DataError, match="no saved model for fold 0"):
        job.pseudo_labelled(0)
    no_pool = tiny_study(n_per_class=8, results_dir=str(study.settings.results_dir))
    with pytest.raises(DataError, match="self-training needs unlabelled texts, but unlabelled_path is None"):
        student(no_pool, teacher="partial", run_name="student2")


def test_plain_runs_keep_their_identity():
    cfg = bert_cv.FineTuneConfig()
    assert "teacher" not in cfg.identity("x") and "pseudo_share" not in cfg.identity("x")
    assert bert_cv.replace(cfg, teacher="t").identity("x")["teacher"] == "t"


def test_gains_over_plain_are_paired(pool_study):
    from nblib.results import ModelResults

    gold = np.array([0, 1, 2] * 20)
    plain_pred, better = gold.copy(), gold.copy()
    plain_pred[:20] = (gold[:20] + 1) % 3  # plain wrong on 20 texts, the other model on none

    def res(name, pred):
        p = pd.DataFrame({"index": np.arange(60), "gold": gold, "pred": pred, "fold": np.arange(60) % 3})
        probs = np.eye(3)[pred]
        p[[f"prob_{i}" for i in range(3)]] = probs
        m = pd.DataFrame({"fold": range(3), "accuracy": [(pred == gold)[p.fold == f].mean() for f in range(3)]})
        m["macro_f1"] = m["accuracy"]
        return ModelResults(name, {}, p, m, None)

    table = analysis.gains_over(res("plain", plain_pred), {"better": res("better", better)}, n_boot=200)
    row = table.loc["better"]
    assert row["accuracy gain"] == pytest.approx(100 * 20 / 60, abs=0.01) and row["significant"]
    assert row["p (McNemar)"] < 1e-5
    same = analysis.gains_over(res("plain", plain_pred), {"same": res("same", plain_pred)}, n_boot=50)
    assert same.loc["same", "macro_f1 gain"] == 0 and not same.loc["same", "significant"]


def test_choices_parse_papermill_strings():
    assert choices("tapt,self", ["tapt", "self", "both"], "arm") == ["tapt", "self"]
    assert choices("0 2", [0, 1, 2], "fold") == [0, 2] and choices("[1]", [0, 1], "fold") == [1]
    assert choices(0, [0, 1], "fold") == [0]  # papermill's -p folds 0
    with pytest.raises(ValueError, match=r"Unknown arm\(s\) \['selff'\]"):
        choices("selff", ["tapt", "self"], "arm")


def test_config_of_run_gives_the_runs_own_settings_and_name(tiny_study):
    study = tiny_study(n_per_class=6)
    cfg = from_params(bert_cv.FineTuneConfig, {"model": bert.TINY_RANDOM, "epochs": 3, "lr": 0.002, "run_name": "mine"})
    job = bert_cv.FineTuneJob(bert_cv.replace(cfg, study=study.settings), study)
    job.run.lock.release()
    again = bert_cv.config_of_run(study, "mine", device="cpu")
    assert again.name == "mine" and again.train.epochs == 3 and again.train.lr == 0.002 and again.device == "cpu"
    assert again.identity(again.model) == cfg.identity(job.source)
    arm = bert_cv.config_of_run(study, "mine", run_name="mine_self", teacher="mine")
    assert arm.name == "mine_self" and arm.teacher == "mine" and arm.train.epochs == 3
    with pytest.raises(FileNotFoundError, match="run 03_bert_cv first"):
        bert_cv.config_of_run(study, "nobody")


def test_a_pool_of_labelled_texts_only_leaves_nothing_to_pseudo_label(tiny_study, tiny_sheet, write_sheet):
    labelled = pd.read_csv(tiny_sheet(8))
    study = tiny_study(n_per_class=8, unlabelled_path=str(write_sheet(labelled[["Sentence"]], "pool.csv")))
    pool = study.unseen_pool()
    assert pool.texts.empty and pool.repeats_labelled == len(labelled)
    with pytest.raises(DataError, match="self-training needs unlabelled texts, but .*pool.csv has no texts to use"):
        student(study, teacher="anyone")
