"""Training throughput (texts/s) of 03_bert_cv's training step against the original study's loop.

    .venv/bin/python benchmarks/bert_throughput.py                      # CPU: a small random BERT (4 × 256)
    .venv/bin/python benchmarks/bert_throughput.py --model models/e5-small --steps 20 --freeze-embeddings
    python benchmarks/bert_throughput.py --model bert-base-chinese      # on a GPU
    .venv/bin/python benchmarks/bert_throughput.py --cpu --precision bf16   # CPU bf16 autocast (a stand-in for GPU paths)

Same model weights, same texts, same batch size, same machine, one run:
- original: every text padded to 100 tokens, no attention mask, fp32, random batches;
- nblib: batches of similar length padded to their own longest text, attention mask, and ``--precision``
  (default as in 03_bert_cv: bf16 on GPUs of compute capability 8 or more, fp16 on older ones, fp32 on CPU);
- with ``--freeze-embeddings`` also nblib with the input word embeddings fixed (``freeze_embeddings=True``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader

from nblib import bert, data

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "weibo_emotion" / "labelled_8665.xlsx"


def timed_steps(model, loader, optimizer, accelerator: Accelerator, steps: int, warmup: int = 3) -> float:
    """Texts per second over ``steps`` optimizer steps (after ``warmup`` untimed ones)."""
    model.train()
    it = iter(loader)
    seen, start = 0, None
    for i in range(warmup + steps):
        if i == warmup:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        batch = next(it)
        batch.pop("idx", None)
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        seen += len(batch["labels"])
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def fresh_accelerator(cpu: bool, precision: str) -> Accelerator:
    """An Accelerator with its own mixed precision: accelerate keeps one state per process and refuses to change
    it, so the state of the previous variant is dropped first."""
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=cpu, mixed_precision={"fp32": "no"}.get(precision, precision))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else ROOT / "data" / "demo_labelled.xlsx")
    ap.add_argument("--model", default=None, help="hub id or folder; default: a random BERT, 4 layers × 256")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-len", type=int, default=128, help="truncation of the nblib path (the original pads to 100)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="of the nblib path; auto: bf16 on GPUs of compute capability >= 8, fp16 below, fp32 on CPU",
    )
    ap.add_argument("--freeze-embeddings", action="store_true", help="also time nblib with frozen word embeddings")
    args = ap.parse_args(argv)

    labelled = data.load_labelled(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        source = (
            bert.resolve_model(args.model)
            if args.model
            else str(bert.build_tiny_encoder(labelled.texts, Path(tmp) / "enc", hidden=256, layers=4, heads=4))
        )
        tok = bert.load_tokenizer(source)
        gpu = torch.cuda.is_available() and not args.cpu
        precision = args.precision if args.precision != "auto" else bert.gpu_precision() if gpu else "fp32"
        n = args.batch_size * (args.steps + 3)
        texts, labels = labelled.texts[:n], labelled.labels[:n]
        results = {}
        for name in ["original", "nblib"] + (["nblib, frozen embeddings"] if args.freeze_embeddings else []):
            accelerator = fresh_accelerator(not gpu, "fp32" if name == "original" else precision)
            torch.manual_seed(0)
            model = bert.load_classifier(source, labelled.label_names)
            if name.endswith("frozen embeddings"):
                model.get_input_embeddings().weight.requires_grad_(False)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
            if name == "original":
                enc = tok(texts, padding="max_length", max_length=100, truncation=True, return_tensors="pt")
                ds = [{"input_ids": enc["input_ids"][i], "labels": torch.tensor(int(y))} for i, y in enumerate(labels)]
                loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True)  # no attention mask, as there
            else:
                ds = bert.Encoded(tok, texts, args.max_len, labels)
                loader = bert.train_loader(ds, bert.make_collator(tok, accelerator), args.batch_size, seed=0)
            model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
            results[name] = timed_steps(model, loader, optimizer, accelerator, args.steps)
            accelerator.free_memory()
            del model, optimizer
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"model: {args.model or 'random BERT 4x256'}; device: {device}; batch {args.batch_size}; {args.steps} steps; "
        f"nblib precision: {precision}"
    )
    for name, v in results.items():
        gain = "" if name == "original" else f"   {v / results['original']:.2f}x the original"
        print(f"  {name:25s} {v:8.1f} texts/s{gain}")


if __name__ == "__main__":
    main()
