"""Zero-shot and k-shot LLM labelling on the study's folds, against TF-IDF + LR and finished runs, paired.

    .venv/bin/python benchmarks/llm_folds.py --data $WEIBO/labelled_8665.xlsx --model models/gemma3-270m \
        --results RESULTS --folds 0 --shots 0 2 --compare RESULTS/labelled_8665-a111acd7/models/bert_e5-small
    .venv/bin/python benchmarks/llm_folds.py ... --limit 200     # first: texts/s and macro-F1 on 200 test texts

The codebook defaults to ``benchmarks/weibo_emotion_codebook.csv`` (the six emotions of the Weibo sheet);
``--answers names`` makes each class's answer its name (e.g. 愤怒) instead of its label (0..5). Each k is a run
of the study (``nblib.llm.run_llm_folds``: k examples per class from the fold's training part), saved under
``--results`` and resumed from there. TF-IDF char 1-3-grams + LR runs on the same folds; each model is compared
with it by ``nblib.analysis.gains_over`` (pooled gain with a paired bootstrap interval, exact McNemar p).
With ``--limit N`` nothing is saved: each k scores the first N test texts of the first fold and prints texts/s
and scores, to see whether a whole fold fits the time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nblib import analysis, baselines, llm, results
from nblib.metrics import fold_metrics
from nblib.study import open_study

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets" / "weibo_emotion" / "labelled_8665.xlsx"


def on_texts(res: results.ModelResults, index: np.ndarray) -> results.ModelResults:
    """``res`` cut to the texts at ``index`` (study positions), with its metrics on those texts."""
    pred = res.predictions.set_index("index").loc[index].reset_index()
    metrics = pd.DataFrame([fold_metrics(pred["gold"], pred["pred"], len(res.prob_columns))])
    return results.ModelResults(res.name, res.config, pred, metrics, None)


def estimate(
    study, backend: llm.LocalBackend, prompt: llm.Prompt, shots: list[int], fold: int, limit: int
) -> dict[str, results.ModelResults]:
    """Score the first ``limit`` test texts of ``fold`` with each k's prompt (examples drawn as the fold runs draw
    them); print texts/s and return the predictions as results on those texts."""
    split = study.split(fold, 0.1)
    test = np.sort(split.test)[:limit]
    texts, gold = [study.data.texts[i] for i in test], study.data.labels[test]
    train = np.concatenate([split.train, split.val])
    out = {}
    for k in shots:
        drawn = llm.draw_examples(study.data.texts, study.data.labels, train, k, split.seed)
        start = time.perf_counter()
        scores = backend.score(prompt.with_examples([(t, c) for _, t, c in drawn]), texts)
        seconds = time.perf_counter() - start
        probs = llm.usable_probs(scores.probs)
        pred = probs.argmax(1)
        print(
            f"{k}-shot, fold {fold}, first {len(texts)} test texts: {len(texts) / seconds:.2f} texts/s ({seconds:.0f} s), "
            f"predicted classes {np.bincount(pred, minlength=probs.shape[1]).tolist()}",
            flush=True,
        )
        frame = pd.DataFrame({"index": test, "fold": fold, "gold": gold, "pred": pred})
        frame[[f"prob_{c}" for c in range(probs.shape[1])]] = probs
        metrics = pd.DataFrame([fold_metrics(gold, pred, probs.shape[1])])
        run = llm.run_name(backend, k, prompt)
        out[run] = results.ModelResults(run, {}, frame, metrics, None)
    return out


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=SHARED, type=Path)
    ap.add_argument("--model", required=True, help="causal LM folder or hub id")
    ap.add_argument("--results", required=True, type=Path, help="results folder (outside the repository)")
    ap.add_argument("--codebook", default=HERE / "weibo_emotion_codebook.csv", type=Path)
    ap.add_argument("--answers", choices=["labels", "names"], default="labels")
    ap.add_argument("--folds", type=int, nargs="+", default=[0])
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 2], help="examples per class, one run each")
    ap.add_argument("--compare", type=Path, nargs="*", default=[], help="finished model folders of the same study")
    ap.add_argument("--limit", type=int, default=None, help="estimate on this many test texts, save nothing")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    study = open_study(args.data, results_dir=str(args.results))
    study.check_folds(args.folds)
    codebook = llm.study_codebook(study, str(args.codebook))
    answers = codebook.names if args.answers == "names" else None
    prompt = llm.render_prompt(codebook, verbalizations=answers)
    backend = llm.LocalBackend(args.model, device=args.device, batch_size=args.batch_size)
    print(
        f"{backend.name} on {backend.device}, {backend.dtype}, chat template: {backend.chat}; answers {prompt.verbalizations}"
    )
    if args.limit:
        runs = estimate(study, backend, prompt, args.shots, args.folds[0], args.limit)
        folds = args.folds[:1]
    else:
        runs, folds = {}, args.folds
        for k in args.shots:
            name = llm.run_name(backend, k, prompt)
            llm.run_llm_folds(study, backend, prompt, k, name=name, which=folds)
            runs[name] = results.read_folds(study.run_folder(name).path, folds)
            m = runs[name].metrics
            seconds = m["scoring_seconds"].sum()
            print(f"{name}: {m['texts'].sum() / seconds:.2f} texts/s scoring ({seconds:.0f} s)", flush=True)
    suite = baselines.BaselineSuite(study, baselines.BaselineConfig())
    suite.run("lr_tfidf_char")
    tfidf = results.read_folds(study.run_folder(suite.run_name("lr_tfidf_char")).path, folds)
    others = {p.name: results.read_folds(p, folds) for p in args.compare} | runs
    if args.limit:
        index = next(iter(runs.values())).predictions["index"].to_numpy()
        tfidf, others = on_texts(tfidf, index), {n: on_texts(r, index) for n, r in others.items()}
    table = analysis.gains_over(tfidf, others)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(f"fold(s) {folds}, {len(tfidf.predictions)} texts; gains in points over {tfidf.name}:")
        print(table.to_string())


if __name__ == "__main__":
    main()
