"""Wall time and scores of every baseline, 5-fold, on the benchmark sheet (../shared/datasets/weibo_emotion).

    .venv/bin/python benchmarks/baselines.py [--unit word|char] [--models mlp_tf lr_tfidf_char …]

Results go to a fresh temporary folder (nothing is resumed), so the times are of a full run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from nblib import baselines, data, metrics

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
        raise SystemExit(f"benchmark data not found at {args.data}")

    labelled = data.load_labelled(args.data)
    pool = data.load_unlabelled(args.unlabelled)["text"].tolist() if args.unlabelled.exists() else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folds = data.load_or_make_folds(labelled, tmp, args.folds, 42)
        start = time.perf_counter()
        suite = baselines.BaselineSuite(labelled, folds, baselines.BaselineConfig(unit=args.unit), tmp, pool)
        print(f"tokenization ({args.unit}) of {len(labelled.df) + len(pool or [])} texts: {time.perf_counter() - start:.1f} s")
        for name in args.models:
            start = time.perf_counter()
            res = suite.run(name)
            s = metrics.summarize(res.metrics)
            rows.append({"model": res.name, "wall s": round(time.perf_counter() - start, 1),
                         "accuracy": f"{s['accuracy mean']:.3f} ± {s['accuracy std']:.3f}",
                         "macro-F1": f"{s['macro_f1 mean']:.3f} ± {s['macro_f1 std']:.3f}"})
            print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
