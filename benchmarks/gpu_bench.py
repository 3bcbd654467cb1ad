"""The GPU benchmark: 5-fold × 5-epoch fine-tuning of a bert-base-chinese-shaped model, end to end, and its parts.

    bash benchmarks/gpu.sh              # one H100-class GPU: under 8 minutes, no download
    bash benchmarks/gpu.sh --smoke      # the same code paths on CPU with a tiny model, under a minute (CI)

Needs no data and no download: the texts are 8,665 random strings of CJK characters whose lengths follow
the Weibo benchmark sheet's (the same token counts, so the same compute), labelled in its class shares; the
model is randomly initialised with ``bert-base-chinese``'s exact shape (vocabulary 21,128, 12 layers × 768,
feed-forward 3,072), built from a config. Prints:

1. wall time of 5-fold × 5-epoch fine-tuning through ``FineTuneJob.cross_validate``, end to end (worker start,
   tokenizing, training, evaluation, saving fold models), one fold at a time and 2 and 4 folds side by side
   on the one GPU (``parallel="folds"``, ``num_processes`` 2 and 4);
2. training texts/s of the original study's loop vs. nblib, fp32 vs. bf16, and Hugging Face Trainer
   (``benchmarks/bert_throughput.py``);
3. peak GPU memory of one fold-training process;
4. prediction texts/s of ``nblib.predict`` with a saved fold model.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nblib import bert, predict
from nblib.bert_cv import FineTuneConfig, FineTuneJob
from nblib.settings import from_params
from nblib.sheets import read_machine_table, write_table
from nblib.study import open_study

HERE = Path(__file__).resolve().parent
# characters per text in the Weibo benchmark sheet (8,665 texts): quantiles at 0, 10, 25, 50, 75, 90, 95, 99, 100 %
WEIBO_LENGTH_QUANTILES = ([0, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 1.0], [10, 18, 22, 32, 51, 84, 112, 140, 213])
WEIBO_CLASS_SHARES = [0.276, 0.216, 0.202, 0.188, 0.075, 0.043]
BERT_BASE = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "vocab_size": 21128}
TINY = {"hidden": 32, "layers": 2, "heads": 2}


def synthetic_sheet(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct random CJK texts with the Weibo sheet's length distribution and class shares, as a .csv.

    Args:
        path: the .csv to write (columns Label, Sentence).
        n: the number of texts.
        seed: the random seed.
    """
    rng = np.random.default_rng(seed)
    lengths = np.interp(rng.random(n), *WEIBO_LENGTH_QUANTILES).round().astype(int)
    chars = np.array([chr(c) for c in range(0x4E00, 0x4E00 + 3000)])
    texts = ["".join(rng.choice(chars, k)) for k in lengths]
    labels = rng.choice(len(WEIBO_CLASS_SHARES), n, p=np.array(WEIBO_CLASS_SHARES) / sum(WEIBO_CLASS_SHARES))
    write_table(pd.DataFrame({"Label": labels, "Sentence": texts}), path)
    return path


def cross_validation_time(sheet: Path, model: str, out: Path, processes: int, args: argparse.Namespace) -> dict:
    """Wall time of one whole cross-validation (fresh results folder), and the peak GPU memory of this process.

    Args:
        sheet: the labelled sheet.
        model: the encoder folder.
        out: the results folder (new).
        processes: fold workers side by side (1: folds one after another, in this process).
        args: the command line (folds, epochs, batch size, device).
    """
    cfg = from_params(
        FineTuneConfig,
        {
            "data_path": str(sheet),
            "unlabelled_path": None,
            "results_dir": str(out),
            "n_folds": args.folds,
            "model": model,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": 2e-5,
            "train_final": False,
            "device": args.device,
            "num_processes": processes,
            "parallel": "folds",
        },
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    res = FineTuneJob(cfg, open_study(cfg.study)).cross_validate()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and processes == 1 else None
    return {"seconds": seconds, "peak_gib": peak, "folds": len(res.metrics), "run": res.name}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, few texts: the code paths in a minute")
    ap.add_argument("--texts", type=int, default=None, help="default 8665 (smoke: 240)")
    ap.add_argument("--folds", type=int, default=None, help="default 5 (smoke: 3)")
    ap.add_argument("--epochs", type=int, default=None, help="default 5 (smoke: 1)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--processes", default=None, help="fold workers side by side to time, default 1,2,4 (smoke: 1,2)")
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.texts = args.texts or (240 if smoke else 8665)
    args.folds = args.folds or (3 if smoke else 5)
    args.epochs = args.epochs or (1 if smoke else 5)
    processes = [int(p) for p in (args.processes or ("1,2" if smoke else "1,2,4")).split(",")]
    gpu = torch.cuda.is_available() and not smoke
    args.device = "cuda" if gpu else "cpu"
    device_name = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sheet = synthetic_sheet(tmp / "texts.csv", args.texts)
        texts = read_machine_table(sheet, text_columns=("Sentence",))["Sentence"].tolist()
        shape = TINY if smoke else BERT_BASE
        model = str(bert.build_tiny_encoder(texts, tmp / "encoder", **shape))
        print(
            f"device: {device_name}; model: random BERT {shape['layers']} x {shape['hidden']} "
            f"(vocabulary {len(bert.load_tokenizer(model))}); {args.texts} texts, {args.folds} folds x "
            f"{args.epochs} epochs, batch {args.batch_size}",
            flush=True,
        )

        print("\n(1) cross-validation, end to end", flush=True)
        timings = {}
        for n in processes:
            timings[n] = cross_validation_time(sheet, model, tmp / f"cv_{n}", n, args)
            side = "one fold at a time" if n == 1 else f"{n} folds side by side"
            print(f"  {side:24s} {timings[n]['seconds']:7.1f} s   ({timings[n]['folds']} folds)", flush=True)

        print("\n(2) training throughput", flush=True)
        spec = importlib.util.spec_from_file_location("bert_throughput", HERE / "bert_throughput.py")
        throughput = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(throughput)
        steps = (
            ["--steps", "3", "--batch-size", "8"] if smoke else ["--steps", "30", "--batch-size", str(args.batch_size)]
        )
        for precision in ("fp32", "bf16"):
            throughput.main(
                ["--model", model, "--data", str(sheet), "--precision", precision, *steps]
                + (["--cpu"] if smoke else [])
            )

        print("\n(3) peak GPU memory, one fold-training process", flush=True)
        peak = timings.get(1, {}).get("peak_gib")
        print(f"  {peak:.2f} GiB" if peak is not None else "  n/a (no GPU)", flush=True)

        print("\n(4) prediction", flush=True)
        fold_model = tmp / "cv_1" if 1 in timings else tmp / f"cv_{processes[0]}"
        saved = next(fold_model.glob("*/models/*/fold_models/fold_0"))
        clf, tok = predict.load_model(saved)
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = predict.predict_texts(clf, tok, texts, device=args.device, progress=False)
        if gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"  {len(out)} texts in {seconds:.1f} s: {len(out) / seconds:.0f} texts/s")


if __name__ == "__main__":
    main()
