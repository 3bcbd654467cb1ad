"""Expected calibration error before and after temperature scaling, per fold, on the public Weibo benchmark sheet.

    .venv/bin/python benchmarks/calibration.py --data PATH/labelled_8665.xlsx [--unit word|char]
    .venv/bin/python benchmarks/calibration.py --run results/<study>/models/<run>   # a finished run's folds

An MLP baseline (TF-IDF bag, its temperature fitted on each fold's validation part as 02 does) and TF-IDF + LR
(fitted on training + validation parts, so 02 leaves it at temperature 1; here a second LR fitted on the
training part alone gives a held-out temperature, to show what that extra fit would buy). ECE with 15
equal-width bins of the top-class probability (``nblib.calibration.ECE_BINS``), on each test fold and on all
out-of-fold texts together (fold "all"). ``ECE floor`` is what perfectly calibrated probabilities would show
on as many texts (labels drawn from the calibrated probabilities themselves, mean of 20 draws): the ECE of a
finite sample is never 0.
Results go to a fresh temporary folder. With --run: the same table for a finished run (e.g. a fine-tuned
encoder of 03_bert_cv, its temperatures fitted on each fold's validation part).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from nblib import baselines, calibration, features
from nblib.results import ModelResults, load_run
from nblib.study import Study, open_study

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "weibo_emotion"


def ece_floor(probs: np.ndarray, draws: int = 20, seed: int = 0) -> float:
    """The ECE that perfectly calibrated probabilities show on this many texts: labels drawn from ``probs`` itself."""
    rng = np.random.default_rng(seed)
    cumulative = probs.cumsum(axis=1)
    eces = []
    for _ in range(draws):
        drawn = np.minimum((rng.random((len(probs), 1)) > cumulative).sum(axis=1), probs.shape[1] - 1)
        eces.append(calibration.ece(probs, drawn))
    return float(np.mean(eces))


def per_fold(res: ModelResults, temperatures: np.ndarray, label: str) -> pd.DataFrame:
    """ECE and NLL of each test fold before and after the given per-text temperatures, and the ECE floor."""
    rows = []
    pred = res.predictions
    for k in [*sorted(pred["fold"].unique()), "all"]:
        mask = (pred["fold"] == k).to_numpy() if k != "all" else np.ones(len(pred), dtype=bool)
        row = calibration.calibration_report(res.probs[mask], pred["gold"].to_numpy()[mask], temperatures[mask])
        floor = ece_floor(calibration.apply_temperature(res.probs[mask], temperatures[mask]))
        rows.append({"model": label, "fold": k, **row, "ECE floor": floor})
    return pd.DataFrame(rows)


def lr_held_out_temperatures(study: Study, cfg: baselines.BaselineConfig) -> dict[int, float]:
    """Per fold: the temperature of an LR fitted on the training part alone, fitted on the validation part."""
    texts, y, out = np.array(study.data.texts, dtype=object), study.data.labels, {}
    for k in range(study.n_folds):
        split = study.split(k, cfg.selection.val_fraction)
        vec = features.char_ngram_tfidf((1, cfg.ngram_max), cfg.min_df)
        clf = LogisticRegression(C=cfg.lr_C, max_iter=2000).fit(vec.fit_transform(texts[split.train]), y[split.train])
        val = calibration.log_probs(clf.predict_proba(vec.transform(texts[split.val])))
        out[k] = calibration.fit_temperature(val, y[split.val])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=SHARED / "labelled_8665.xlsx", type=Path)
    ap.add_argument("--unit", default="word", choices=["word", "char"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--run", type=Path, default=None, help="a finished run's folder: its out-of-fold output instead")
    args = ap.parse_args()
    if args.run is not None:
        res = load_run(args.run)
        report(pd.DataFrame(per_fold(res, res.temperatures, res.name)))
        return
    if not args.data.exists():
        raise SystemExit(
            f"benchmark data not found at {args.data}: pass --data with the path of the SMP2020-EWECT sheet"
        )
    with tempfile.TemporaryDirectory() as tmp:
        study = open_study(args.data, n_folds=args.folds, results_dir=tmp, unlabelled_path=None)
        cfg = baselines.BaselineConfig(unit=args.unit)
        suite = baselines.BaselineSuite(study, cfg)
        mlp = suite.run("mlp_tfidf")
        lr = suite.run("lr_tfidf_char")
        held_out = lr_held_out_temperatures(study, cfg)
        lr_t = lr.predictions["fold"].map(held_out).to_numpy()
        tables = [
            per_fold(mlp, mlp.temperatures, mlp.name),
            per_fold(lr, lr_t, "lr_tfidf_char (T from a 2nd LR fit on the training part)"),
        ]
    report(pd.concat(tables, ignore_index=True))


def report(table: pd.DataFrame) -> None:
    """Print the per-fold table and its means over folds."""
    pd.set_option("display.width", 200)
    print(table.round(4).to_string(index=False))
    print("\nmean over folds:")
    folds = table[table["fold"] != "all"].drop(columns="fold")
    print(folds.groupby("model", sort=False).mean().round(4).to_string())


if __name__ == "__main__":
    main()
