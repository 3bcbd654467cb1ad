"""Expected calibration error before and after calibration, per fold, on the public Weibo benchmark sheet.

    .venv/bin/python benchmarks/calibration.py --data PATH/labelled_8665.xlsx [--unit word|char]
    .venv/bin/python benchmarks/calibration.py --run results/<study>/models/<run>   # a finished run's folds

An MLP baseline (TF-IDF bag) and TF-IDF + LR, cross-validated in a fresh temporary folder. For each test fold
and for all out-of-fold texts together (fold "all"), ECE with 15 equal-width bins of the top-class probability
(``nblib.calibration.ECE_BINS``) and NLL of:

- ``raw``: the probabilities as the model gives them;
- ``validation T``: the temperature the fold's model fitted on its validation part (the MLP; LR is fitted on
  training + validation parts and has none);
- ``cross-fitted``: what the project uses (``ModelResults.calibrated_probs``): a temperature and one bias per
  class, fitted on the other folds' out-of-fold outputs.

``ECE floor`` is what perfectly calibrated probabilities would show on as many texts (labels drawn from the
cross-fitted probabilities themselves, mean of 20 draws): the ECE of a finite sample is never 0. With --run:
the same table for a finished run (e.g. a fine-tuned encoder of 03_bert_cv).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from nblib import baselines, calibration
from nblib.results import ModelResults, load_run
from nblib.study import open_study

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


def per_fold(res: ModelResults) -> pd.DataFrame:
    """ECE and NLL of each test fold (and of all) raw, with its validation temperature, and cross-fitted."""
    pred, gold = res.predictions, res.predictions["gold"].to_numpy()
    folds = pred["fold"].to_numpy()
    ways = {
        "raw": res.probs,
        "validation T": calibration.apply_per_fold(res.probs, folds, res.validation_calibrations),
        "cross-fitted": res.calibrated_probs,
    }
    rows = []
    for k in [*res.folds, "all"]:
        mask = folds == k if k != "all" else np.ones(len(pred), dtype=bool)
        row: dict = {"model": res.name, "fold": k}
        for way, probs in ways.items():
            row[f"ECE {way}"] = calibration.ece(probs[mask], gold[mask])
        for way, probs in ways.items():
            row[f"NLL {way}"] = calibration.nll(calibration.log_probs(probs[mask]), gold[mask])
        row["ECE floor"] = ece_floor(res.calibrated_probs[mask])
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=SHARED / "labelled_8665.xlsx", type=Path)
    ap.add_argument("--unit", default="word", choices=["word", "char"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--run", type=Path, default=None, help="a finished run's folder: its out-of-fold output instead")
    args = ap.parse_args()
    if args.run is not None:
        report(per_fold(load_run(args.run)))
        return
    if not args.data.exists():
        raise SystemExit(
            f"benchmark data not found at {args.data}: pass --data with the path of the SMP2020-EWECT sheet"
        )
    with tempfile.TemporaryDirectory() as tmp:
        study = open_study(args.data, n_folds=args.folds, results_dir=tmp, unlabelled_path=None)
        cfg = baselines.BaselineConfig(unit=args.unit)
        suite = baselines.BaselineSuite(study, cfg)
        tables = [per_fold(suite.run("mlp_tfidf")), per_fold(suite.run("lr_tfidf_char"))]
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
