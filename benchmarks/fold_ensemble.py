"""The fold ensemble against the final model on texts neither has seen (``nblib.predict --ensemble folds``).

    .venv/bin/python benchmarks/fold_ensemble.py --data PATH/labelled_8665.xlsx --model ENCODER [--folds 5 --epochs 2]

A stratified part of the sheet (``--held-out``, default 20%) is set aside; 03_bert_cv's cross-validation (fold
models saved) and final model run on the rest; then both the final model and the mean of the fold models'
calibrated probabilities label the held-out texts. Prints accuracy, macro-F1 and expected calibration error
of each. Results go to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from nblib import calibration, data, predict
from nblib.bert_cv import FineTuneConfig, FineTuneJob
from nblib.metrics import fold_metrics
from nblib.settings import from_params
from nblib.sheets import write_table
from nblib.study import open_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--model", required=True, help="encoder folder or hub id")
    ap.add_argument("--held-out", type=float, default=0.2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    sheet = data.load_labelled(args.data)
    train, test = train_test_split(
        np.arange(len(sheet.df)), test_size=args.held_out, stratify=sheet.labels, random_state=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "train.csv"
        write_table(sheet.df.iloc[train][["label", "text"]].set_axis(["Label", "Sentence"], axis=1), part)
        cfg = from_params(
            FineTuneConfig,
            {
                "data_path": str(part),
                "unlabelled_path": None,
                "results_dir": str(Path(tmp) / "results"),
                "n_folds": args.folds,
                "model": args.model,
                "epochs": args.epochs,
                "lr": args.lr,
                "precision": args.precision,
            },
        )
        start = time.perf_counter()
        job = FineTuneJob(cfg, open_study(cfg.study))
        job.cross_validate()
        print(f"{args.folds} folds + final model on {len(train)} texts: {time.perf_counter() - start:.0f} s")
        texts, gold = [sheet.texts[i] for i in test], sheet.labels[test]
        for name, folder, ensemble in [
            ("final model", job.run.final_dir, "final"),
            ("fold ensemble", job.run.path, "folds"),
        ]:
            model, tok = predict.load_model(folder, ensemble)
            probs = predict.predict_texts(model, tok, texts, progress=False).filter(like="prob_").to_numpy()
            m = fold_metrics(gold, probs.argmax(1), sheet.num_labels)
            print(
                f"{name:14s} on {len(test)} held-out texts: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, "
                f"ECE {calibration.ece(probs, gold):.3f}"
            )


if __name__ == "__main__":
    main()
