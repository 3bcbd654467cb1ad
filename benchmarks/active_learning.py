"""Simulated annotation on the public Weibo benchmark sheet: how many labels choosing by uncertainty saves.

    .venv/bin/python benchmarks/active_learning.py --data PATH/labelled_8665.xlsx [--start 200] [--batch 200]
        [--rounds 10] [--seeds 3] [--measure margin|entropy] [--figure DIR]

Holds out a stratified test part, starts from --start random labelled texts, and adds --batch texts per
round chosen at random, by uncertainty alone, or by uncertainty with the diversity step
(nblib.active_learning.rank_for_labelling); TF-IDF character 1-3-grams + logistic regression, refitted each
round. Prints macro-F1 per number of labels (mean ± sd over seeds), and how many labels each strategy needs
to reach the macro-F1 that random choice reaches with the whole budget.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nblib import active_learning as al
from nblib import plots
from nblib.data import load_labelled

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "weibo_emotion"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=SHARED / "labelled_8665.xlsx", type=Path)
    ap.add_argument("--start", type=int, default=200, help="labelled texts at the start")
    ap.add_argument("--batch", type=int, default=200, help="texts added per round")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--measure", default="margin", choices=["margin", "entropy"])
    ap.add_argument("--figure", type=Path, default=None, help="folder to save the figure in (default: none)")
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(
            f"benchmark data not found at {args.data}: pass --data with the path of the SMP2020-EWECT sheet"
        )

    data = load_labelled(args.data)
    settings = al.ActiveLearningSettings(
        uncertainty=args.measure,
        al_start=args.start,
        al_batch=args.batch,
        al_rounds=args.rounds,
        al_seeds=args.seeds,
        al_test_fraction=args.test_fraction,
    )
    start = time.perf_counter()
    curve = al.simulate_learning_curve(data.texts, data.labels, settings)
    print(f"{len(data.df)} texts, {data.num_labels} classes, {args.seeds} seeds: {time.perf_counter() - start:.0f} s")
    table = curve.groupby(["labels", "strategy"])["macro_f1"].agg(["mean", "std"])
    shown = (table["mean"].map("{:.3f}".format) + " ± " + table["std"].map("{:.3f}".format)).unstack("strategy")
    print(shown[[s for s in al.STRATEGIES if s in shown.columns]].to_string())
    saved = al.labels_saved(curve)
    print(saved.round(3).to_string())
    if args.figure:
        plots.setup_style()
        print(plots.save(plots.active_learning_curves(curve, saved), "active_learning_weibo", args.figure))


if __name__ == "__main__":
    main()
