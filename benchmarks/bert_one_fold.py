"""One fold of BERT fine-tuning against TF-IDF + LR on the same fold (a quick check with a real encoder).

    .venv/bin/python benchmarks/bert_one_fold.py --data PATH/labelled_8665.xlsx --model models/e5-small --epochs 2 [--fold 0]

Trains on the training folds of fold k only (validation part for the best epoch), predicts fold k, and
prints both models' scores on it, with an exact McNemar test of the paired difference (same texts).
Results go to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import typing
from pathlib import Path

from nblib import analysis, baselines, bert_cv, hardware, results
from nblib.settings import from_params
from nblib.study import open_study

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "weibo_emotion" / "labelled_8665.xlsx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=SHARED, type=Path)
    ap.add_argument("--model", required=True, help="hub id or local folder")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--head-lr", type=float, default=None)
    ap.add_argument("--freeze-embeddings", action="store_true")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=typing.get_args(hardware.Precision))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = from_params(
            bert_cv.FineTuneConfig,
            dict(
                data_path=str(args.data),
                unlabelled_path=None,
                results_dir=tmp,
                model=args.model,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                head_lr=args.head_lr,
                freeze_embeddings=args.freeze_embeddings,
                max_len=args.max_len,
                device=args.device,
                precision=args.precision,
                train_final=False,
                save_fold_models=False,
            ),
        )
        study = open_study(cfg.study)
        start = time.perf_counter()
        bert_cv.FineTuneJob(cfg, study).run_folds([args.fold])
        seconds = time.perf_counter() - start
        baselines.BaselineSuite(study, baselines.BaselineConfig()).run("lr_tfidf_char")
        b, lr = (results.read_folds(study.run_folder(name).path, [args.fold]) for name in (cfg.name, "lr_tfidf_char"))
        test = analysis.mcnemar(lr, b)
        b, lr = b.metrics.iloc[0], lr.metrics.iloc[0]
    print(
        f"fold {args.fold}: {cfg.name} ({args.epochs} epochs, best {b['best_epoch']}, {cfg.resolved_precision()}, "
        f"{seconds:.0f} s): "
        f"accuracy {b['accuracy']:.3f}, macro-F1 {b['macro_f1']:.3f}"
    )
    print(f"fold {args.fold}: TF-IDF char 1-3-grams + LR: accuracy {lr['accuracy']:.3f}, macro-F1 {lr['macro_f1']:.3f}")
    print(
        f"paired: only TF-IDF right on {test['only lr_tfidf_char right']} texts, only {cfg.name} right on "
        f"{test['only this model right']}; exact McNemar p = {test['p-value (exact McNemar)']:.2g}"
    )


if __name__ == "__main__":
    main()
