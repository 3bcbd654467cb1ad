"""Wall time and scores of every baseline, 5-fold, on the public Weibo benchmark sheet (SMP2020-EWECT).

    .venv/bin/python benchmarks/baselines.py --data PATH/labelled_8665.xlsx [--unlabelled PATH/unlabelled_10000.xlsx]
        [--unit word|char] [--models mlp_tf lr_tfidf_char …]

Results go to a fresh temporary folder (nothing is resumed), so the times are of a full run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from nblib import baselines, metrics
from nblib.study import open_study

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "weibo_emotion"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=SHARED / "labelled_8665.xlsx", type=Path)
    ap.add_argument("--unlabelled", default=SHARED / "unlabelled_10000.xlsx", type=Path)
    ap.add_argument("--unit", default="word", choices=["word", "char"])
    ap.add_argument("--models", nargs="+", default=baselines.MODELS, choices=baselines.MODELS)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(
            f"benchmark data not found at {args.data}: pass --data with the path of the SMP2020-EWECT sheet"
        )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        study = open_study(
            args.data,
            n_folds=args.folds,
            results_dir=tmp,
            unlabelled_path=str(args.unlabelled) if args.unlabelled.exists() else None,
        )
        start = first = time.perf_counter()
        suite = baselines.BaselineSuite(study, baselines.BaselineConfig(unit=args.unit))
        print(
            f"tokenization ({args.unit}) of {len(study.data.df) + len(study.pool)} texts: "
            f"{time.perf_counter() - start:.1f} s"
        )
        for name in args.models:
            start = time.perf_counter()
            res = suite.run(name)
            s = metrics.summarize(res.metrics)
            rows.append(
                {
                    "model": res.name,
                    "wall s": round(time.perf_counter() - start, 1),
                    "accuracy": f"{s['accuracy mean']:.3f} ± {s['accuracy std']:.3f}",
                    "macro-F1": f"{s['macro_f1 mean']:.3f} ± {s['macro_f1 std']:.3f}",
                }
            )
            print(rows[-1], flush=True)
        total = time.perf_counter() - first
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"all {len(rows)} models, tokenization and word2vec included: {total:.0f} s")


if __name__ == "__main__":
    main()
