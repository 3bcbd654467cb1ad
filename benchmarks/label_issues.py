"""Does cleanlab find wrong labels? Labels of the Weibo benchmark sheet flipped on purpose, then searched for.

    .venv/bin/python benchmarks/label_issues.py --data PATH/labelled_8665.xlsx [--flip 0.05] [--unit word|char]

A share ``--flip`` of the texts gets another class at random (written to a temporary copy of the sheet); three
cheap baselines (MLP on one-hot and on TF-IDF bags, TF-IDF + LR) are cross-validated on it, and
``nblib.label_issues.find_label_issues`` runs on the best model's and on the ensemble's calibrated out-of-fold
probabilities. Printed: texts flagged, how many of the flipped texts are among them (recall), what share
of the flagged texts were flipped (a lower bound of precision: the sheet has wrong labels of its own), and
that share among the first texts of the ranking (what an annotator reviewing from the top meets).
Also the former hand-written rule of 04 (every model predicts the same other class with probability
>= 0.7) and how many of its texts cleanlab flags too.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from nblib import baselines, label_issues
from nblib.sheets import read_sheet, write_table
from nblib.study import open_study

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "weibo_emotion"
MODELS = ["mlp_onehot", "mlp_tfidf", "lr_tfidf_char"]


def agreement_rule(runs: dict, min_confidence: float = 0.7) -> set[int]:
    """Sheet rows where every model predicts the same class, not the gold one, each with at least ``min_confidence``."""
    first = next(iter(runs.values())).predictions
    preds = np.stack([r.predictions["pred"].to_numpy() for r in runs.values()])
    conf = np.stack([r.probs.max(axis=1) for r in runs.values()])
    hit = (preds == preds[0]).all(0) & (preds[0] != first["gold"].to_numpy()) & (conf >= min_confidence).all(0)
    return set(first["row"].to_numpy()[hit])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=SHARED / "labelled_8665.xlsx", type=Path)
    ap.add_argument("--flip", type=float, default=0.05, help="share of the texts whose label is changed")
    ap.add_argument("--unit", default="word", choices=["word", "char"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(
            f"benchmark data not found at {args.data}: pass --data with the path of the SMP2020-EWECT sheet"
        )
    sheet = read_sheet(args.data, ["Label", "Sentence"]).df[["Label", "Sentence"]].reset_index(names="row")
    rng = np.random.default_rng(args.seed)
    classes = sorted(sheet["Label"].unique())
    flip = rng.choice(len(sheet), int(args.flip * len(sheet)), replace=False)
    sheet.loc[flip, "Label"] = [rng.choice([c for c in classes if c != sheet.at[i, "Label"]]) for i in flip]
    flipped = set(sheet.loc[flip, "row"])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_table(sheet.drop(columns="row"), Path(tmp) / "flipped.xlsx")  # sheet rows stay the same
        study = open_study(path, results_dir=tmp, unlabelled_path=None)
        flipped &= set(study.data.df["row"])  # a flip that made two copies of a text disagree is dropped on load
        print(f"{len(flipped)} of {len(study.data.df)} labels flipped")
        suite = baselines.BaselineSuite(study, baselines.BaselineConfig(unit=args.unit))
        runs = {}
        for name in MODELS:
            res = suite.run(name)
            runs[res.name] = res
        best = max(runs, key=lambda n: runs[n].metrics["macro_f1"].mean())
        rule = agreement_rule(runs)
        rows = []
        for label, models in {f"best ({best})": [best], "ensemble (3 models)": list(runs)}.items():
            ranked = label_issues.find_label_issues(runs, study.data.label_names, models)["row"].tolist()
            found = set(ranked)
            rows.append(
                {
                    "probabilities": label,
                    "flagged": len(found),
                    "flipped found": len(found & flipped),
                    "recall": len(found & flipped) / len(flipped),
                    "flagged that were flipped": len(found & flipped) / max(1, len(found)),
                    "of the first 100": len(set(ranked[:100]) & flipped) / 100,
                    f"of the first {len(rule)} (as many as the rule)": len(set(ranked[: len(rule)]) & flipped)
                    / max(1, len(rule)),
                    "rule texts also flagged": f"{len(rule & found)} of {len(rule)}",
                }
            )
    print(pd.DataFrame(rows).round(3).T.to_string(header=False))
    print(f"agreement rule: {len(rule)} texts, {len(rule & flipped)} of them flipped")


if __name__ == "__main__":
    main()
