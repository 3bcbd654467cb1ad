"""Prediction throughput (texts/s) of ``nblib.predict`` on the benchmark texts (or the demo pool).

    .venv/bin/python benchmarks/predict_throughput.py                    # CPU: a random BERT, 4 layers × 256
    .venv/bin/python benchmarks/predict_throughput.py --model models/e5-small --n 2000
    python benchmarks/predict_throughput.py --model bert-base-chinese     # on a GPU

Length-sorted batches with dynamic padding, as ``python -m nblib.predict`` runs them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from nblib import bert, data, predict

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "weibo_emotion" / "unlabelled_10000.xlsx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=Path, default=SHARED if SHARED.exists() else ROOT / "data" / "demo_unlabelled.xlsx")
    ap.add_argument("--model", default=None, help="hub id or folder; default: a random BERT, 4 layers × 256")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    texts = data.load_unlabelled(args.texts)["text"].tolist()[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        source = (
            bert.resolve_model(args.model)
            if args.model
            else str(bert.build_tiny_encoder(texts, Path(tmp) / "enc", hidden=256, layers=4, heads=4))
        )
        saved = bert.save_checkpoint(
            bert.load_classifier(source, ["a", "b", "c", "d"]), bert.load_tokenizer(source), Path(tmp) / "model"
        )
        model, tok = predict.load_model(saved)
        predict.predict_texts(
            model, tok, texts[:64], batch_size=args.batch_size, device=args.device, progress=False
        )  # warm-up
        start = time.perf_counter()
        predict.predict_texts(model, tok, texts, batch_size=args.batch_size, device=args.device)
        seconds = time.perf_counter() - start
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available() and args.device != "cpu"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"model: {args.model or 'random BERT 4x256'}; device: {device}; batch {args.batch_size}")
    print(f"{len(texts)} texts in {seconds:.1f} s: {len(texts) / seconds:.0f} texts/s")


if __name__ == "__main__":
    main()
