"""Class shares where the truth is known: TF-IDF + LR out of fold on the public Weibo benchmark sheet.

    .venv/bin/python benchmarks/shares.py --data PATH/labelled_8665.xlsx [--repeats 50] [--n-boot 200] [--text-bootstrap]
    .venv/bin/python benchmarks/shares.py --run results/<study>/models/<run>   # any finished run's out-of-fold output
    .venv/bin/python benchmarks/shares.py --model mlp_tfidf --headline-only [--pools 2] [--check-boot 60]

Cross-validates the TF-IDF char 1-3-gram + logistic regression baseline (5 folds, in a fresh temporary
folder), then, for every fold in turn, holds it out, resamples it so that its rarest class is twice and its
largest class half as frequent as in the training folds, and estimates its class shares from the other
folds' error rates (nblib.shares_check.shift_check): absolute error per class of the raw count (CC) and of the
adjusted estimates. Last, the coverage of the 95% bootstrap intervals over repeated shifted samples
(nblib.shares_check.coverage; target 90-97%): by default the bootstrap draws the training folds before their texts,
as nblib.headline.pool_headline does; --text-bootstrap draws texts only. With --run, the same on the out-of-fold
probabilities of a finished run instead, e.g. a fine-tuned encoder's from 03_bert_cv. Probabilities are
calibrated as a run calibrates them (nblib.calibration), without the held-out fold's labels; --raw leaves
them as the model gave them.

The headline (nblib.headline), evaluated nested: each fold in turn is the pool's source and is left out
entirely; the check that picks the method and its widening runs on the other folds only (at the pool's size);
then --pools shifted samples of the left-out fold (and as many unshifted ones) are estimated from the other
folds' error rates: error and coverage of the headline against every single method, the widening factors
used, and PPI's coverage with and without a shift. --model picks the baseline (default lr_tfidf_char).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nblib import baselines, headline, shares, shares_check
from nblib.results import load_run
from nblib.study import open_study

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "weibo_emotion"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=SHARED / "labelled_8665.xlsx", type=Path)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=50, help="shifted samples for the coverage (default: 50)")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates per sample (default: 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-bootstrap", action="store_true", help="resample out-of-fold texts only, not folds first")
    ap.add_argument("--raw", action="store_true", help="uncalibrated probabilities")
    ap.add_argument("--run", type=Path, default=None, help="a finished run's folder: use its out-of-fold output")
    ap.add_argument("--model", default="lr_tfidf_char", help="the baseline to cross-validate (without --run)")
    ap.add_argument("--headline-only", action="store_true", help="only the nested evaluation of the headline")
    ap.add_argument("--pools", type=int, default=2, help="pools per left-out fold and shift (default: 2)")
    ap.add_argument("--check-repeats", type=int, default=4, help="the inner check's samples (default: 4)")
    ap.add_argument("--check-boot", type=int, default=60, help="the inner check's replicates (default: 60)")
    ap.add_argument("--pool-boot", type=int, default=100, help="replicates per pool (default: 100)")
    args = ap.parse_args()
    if args.run is None and not args.data.exists():
        raise SystemExit(
            f"benchmark data not found at {args.data}: pass --data with the path of the SMP2020-EWECT sheet"
        )
    pd.set_option("display.width", 200)

    if args.run is not None:
        res = load_run(args.run)
        names = res.config["label_names"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            study = open_study(args.data, n_folds=args.folds, results_dir=tmp, unlabelled_path=None)
            start = time.perf_counter()
            res = baselines.BaselineSuite(study, baselines.BaselineConfig(unit="char")).run(args.model)
            print(f"{args.folds} folds: {time.perf_counter() - start:.0f} s")
        names = study.data.label_names
    print(f"{res.name}: macro-F1 {res.metrics['macro_f1'].mean():.3f}")
    probs = res.probs if args.raw else res.temperature_scaled_probs
    gold, folds = res.predictions["gold"].to_numpy(), res.predictions["fold"].to_numpy()
    args.folds = int(folds.max()) + 1
    if args.headline_only:
        evaluate_headline(probs, gold, folds, args)
        return

    start = time.perf_counter()
    checks = [
        shares_check.shift_check(probs, gold, folds, names, test_fold=k, seed=args.seed + k, calibrate=not args.raw)
        for k in range(args.folds)
    ]
    print("\nFold 0 held out and shifted (fractions; error = absolute error):")
    print(checks[0].round(3).to_string())
    errors = pd.DataFrame(
        {f"fold {k}": c.loc[:, [f"{m} error" for m in shares.METHODS]].mean() for k, c in enumerate(checks)}
    ).T
    errors.columns = list(shares.METHODS)
    errors.loc["mean"] = errors.mean()
    print("\nMean absolute error per class (percentage points), each fold held out and shifted in turn:")
    print((100 * errors).round(2).to_string())
    per_class = sum(c.drop(index="mean")[[f"{m} error" for m in shares.METHODS]] for c in checks) / len(checks)
    per_class.columns = list(shares.METHODS)
    print("\nAbsolute error per class (percentage points), mean over the held-out folds:")
    print((100 * per_class).round(2).to_string())
    print(f"({time.perf_counter() - start:.0f} s)")

    start = time.perf_counter()
    cover = shares_check.coverage(
        probs,
        gold,
        folds,
        args.repeats,
        args.n_boot,
        seed=args.seed,
        fold_bootstrap=not args.text_bootstrap,
        calibrate=not args.raw,
    )
    how = "texts only" if args.text_bootstrap else "folds, then texts"
    print(
        f"\nCoverage of the 95% intervals, {args.repeats} shifted samples × {len(names)} classes, "
        f"{args.n_boot} replicates drawing {how}:"
    )
    print(cover.round(3).to_string())
    print(f"({time.perf_counter() - start:.0f} s)")
    evaluate_headline(probs, gold, folds, args)


def evaluate_headline(probs: np.ndarray, gold: np.ndarray, folds: np.ndarray, args: argparse.Namespace) -> None:
    """Nested: each fold left out as the pool's source, the headline chosen and calibrated on the other folds."""
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows, choices = [], []
    for k in np.unique(folds):
        (tr_p, tr_y), (te_p, te_y), up, down = shares_check._held_out(probs, gold, folds, k, None, None, not args.raw)
        tr_f = folds[folds != k]
        size = len(
            shares_check.shifted_sample(te_y, up, down, np.random.default_rng(0))
        )  # a pool as large as the check's
        check = shares_check.coverage(
            tr_p, tr_y, tr_f, args.check_repeats, args.check_boot, seed=int(k), calibrate=False, texts=size
        )
        choice = headline.choose(check)
        choices.append({"left-out fold": int(k), "headline": choice.method, "factor": round(choice.factor, 2)})
        for shift in (2.0, 1.0):
            for _ in range(args.pools):
                idx = shares_check.shifted_sample(te_y, up, down, rng, shift, texts=size)
                truth = shares_check.shifted_prevalence(
                    np.bincount(te_y, minlength=probs.shape[1]).astype(float), up, down, shift
                )
                t = shares.shares(
                    tr_p, tr_y, te_p[idx], [str(c) for c in range(probs.shape[1])], n_boot=args.pool_boot,
                    seed=int(rng.integers(2**31)), oof_folds=tr_f, factors={choice.method: choice.factor},
                )  # fmt: skip
                t["truth"] = truth[t["class"].astype(int)]
                t["shift"] = "shifted" if shift > 1 else "not shifted"
                head = t[t["method"] == choice.method].assign(method="headline")
                rows += [t, head]
    long = pd.concat(rows, ignore_index=True)
    long["abs error"] = (long["share"] - long["truth"]).abs()
    long["covered"] = (long["lower"] <= long["truth"]) & (long["truth"] <= long["upper"])
    summary = long.pivot_table(index="method", columns="shift", values=["abs error", "covered"], aggfunc="mean")
    summary["abs error"] *= 100
    order = ["headline", *shares.METHODS]
    print(f"\nHeadline, nested: the check on the other folds picks the method; {args.pools} pools of {size} texts per")
    print(
        "left-out fold and shift; mean absolute error per class (percentage points) and coverage of the 95% intervals:"
    )
    print(summary.reindex(order).round(3).to_string())
    print(pd.DataFrame(choices).to_string(index=False))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
