"""Training throughput (texts/s) of 03_bert_cv's training step against the original study's loop and HF Trainer.

    .venv/bin/python benchmarks/bert_throughput.py                      # CPU: a small random BERT (4 × 256)
    .venv/bin/python benchmarks/bert_throughput.py --model models/e5-small --steps 20 --freeze-embeddings
    python benchmarks/bert_throughput.py --model bert-base-chinese      # on a GPU
    .venv/bin/python benchmarks/bert_throughput.py --cpu --precision bf16   # CPU bf16 autocast

Same model weights, same texts, same batch size, same machine, one run:
- original: every text padded to 100 tokens, no attention mask, fp32, random batches, per-tensor AdamW;
- nblib: 03_bert_cv's step: batches of similar length padded to their own longest text, attention mask,
  gradient clipping, fused AdamW, and ``--precision`` (default as in 03_bert_cv: bf16 on GPUs of compute
  capability 8 or more, fp16 on older ones, fp32 on CPU);
- the levers one at a time: nblib in fp32, then also with per-tensor AdamW (only the batching left), and nblib
  in bf16 (on a CPU with native bf16, ``precision="bf16"`` in 03_bert_cv);
- the peer a user would pick instead: Hugging Face ``Trainer`` with ``run_classification.py``'s defaults
  (every text padded to 128), and with dynamic padding, in nblib's precision;
- with ``--freeze-embeddings`` also nblib with the input word embeddings fixed (``freeze_embeddings=True``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import typing
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from nblib import bert, data, hardware

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "weibo_emotion" / "labelled_8665.xlsx"


def timed_steps(
    model, loader, optimizer, accelerator: Accelerator, steps: int, warmup: int = 3, clip: float | None = None
) -> float:
    """Texts per second over ``steps`` optimizer steps (after ``warmup`` untimed ones); ``clip``: max grad norm."""
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
        if clip is not None:
            accelerator.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        seen += len(batch["labels"])
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


class _StepClock(TrainerCallback):
    """Starts the clock after ``warmup`` steps of a Trainer run and stops it at the end."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            if torch.cuda.is_available() and not args.use_cpu:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and not args.use_cpu:
            torch.cuda.synchronize()
        self.end = time.perf_counter()


def trainer_throughput(
    model,
    tok,
    texts,
    labels,
    batch_size: int,
    steps: int,
    cpu: bool,
    dynamic: bool,
    out_dir: str,
    precision: str = "fp32",
    warmup: int = 3,
) -> float:
    """Texts per second of Hugging Face ``Trainer`` (``run_classification.py``'s defaults: texts padded to 128,
    lr 2e-5, linear schedule, clipping 1.0; ``dynamic``: padded per batch instead), in ``precision`` like nblib."""
    enc = tok(texts, truncation=True, max_length=128, padding=False if dynamic else "max_length")
    ds = [
        {"input_ids": ids, "attention_mask": m, "labels": int(y)}
        for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], labels)
    ]
    clock = _StepClock(warmup)
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=batch_size,
        max_steps=warmup + steps,
        learning_rate=2e-5,
        use_cpu=cpu,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    collator = DataCollatorWithPadding(tok) if dynamic else default_data_collator
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its end-of-training log line would break up the table
    trainer.train()
    return steps * batch_size / (clock.end - clock.start)


def fresh_accelerator(cpu: bool, precision: str) -> Accelerator:
    """An Accelerator with its own mixed precision: accelerate keeps one state per process and refuses to change
    it, so the state of the previous variant is dropped first."""
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=cpu, mixed_precision=hardware.MIXED_PRECISION[precision])


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
        choices=typing.get_args(hardware.Precision),
        default="auto",
        help="of the nblib path and HF Trainer; auto: as 03_bert_cv (bf16 on GPUs of compute capability >= 8, fp16 below, fp32 on CPU)",
    )
    ap.add_argument("--freeze-embeddings", action="store_true", help="also time nblib with frozen word embeddings")
    ap.add_argument("--no-trainer", action="store_true", help="leave out the Hugging Face Trainer runs")
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
        precision = args.precision if args.precision != "auto" else hardware.gpu_precision() if gpu else "fp32"
        n = args.batch_size * (args.steps + 3)
        texts, labels = labelled.texts[:n], labelled.labels[:n]
        nblib_variants = {  # name: (precision, fused AdamW); the levers one at a time
            "nblib": (precision, True),
            "nblib, fp32": ("fp32", True),
            "nblib, fp32, per-tensor AdamW": ("fp32", False),
            "nblib, bf16": ("bf16", True),
        }
        nblib_variants = {  # the same variant once, under its first name
            name: v for name, v in nblib_variants.items() if name == "nblib" or v != nblib_variants["nblib"]
        }
        if args.freeze_embeddings:
            nblib_variants["nblib, frozen embeddings"] = (precision, True)
        results = {}
        for name in ["original", *nblib_variants]:
            variant_precision, fused = nblib_variants.get(name, ("fp32", False))
            accelerator = fresh_accelerator(not gpu, variant_precision)
            torch.manual_seed(0)
            model = bert.load_classifier(source, labelled.label_names)
            if name.endswith("frozen embeddings"):
                model.get_input_embeddings().weight.requires_grad_(False)
            if name == "original":
                optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, foreach=False)
                enc = tok(texts, padding="max_length", max_length=100, truncation=True, return_tensors="pt")
                ds = [{"input_ids": enc["input_ids"][i], "labels": torch.tensor(int(y))} for i, y in enumerate(labels)]
                loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True)  # no attention mask, as there
            else:
                optimizer = bert.make_optimizer(model, bert.TrainSettings(lr=2e-5), fused=fused)
                ds = bert.Encoded(tok, texts, args.max_len, labels)
                loader = bert.train_loader(ds, bert.make_collator(tok, accelerator), args.batch_size, seed=0)
            model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
            clip = None if name == "original" else bert.TrainSettings().max_grad_norm
            results[name] = timed_steps(model, loader, optimizer, accelerator, args.steps, clip=clip)
            accelerator.free_memory()
            del model, optimizer
        if not args.no_trainer:
            for dynamic in (False, True):
                AcceleratorState._reset_state(reset_partial_state=True)
                torch.manual_seed(0)
                model = bert.load_classifier(source, labelled.label_names)
                name = "HF Trainer, dynamic padding" if dynamic else "HF Trainer, padded to 128"
                results[name] = trainer_throughput(
                    model,
                    tok,
                    texts,
                    labels,
                    args.batch_size,
                    args.steps,
                    not gpu,
                    dynamic,
                    str(Path(tmp) / "trainer"),
                    precision,
                )
                del model
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"model: {args.model or 'random BERT 4x256'}; device: {device}; batch {args.batch_size}; {args.steps} steps; "
        f"nblib precision: {precision}"
    )
    for name, v in results.items():
        gain = "" if name == "original" else f"   {v / results['original']:.2f}x the original"
        print(f"  {name:29s} {v:8.1f} texts/s{gain}")


if __name__ == "__main__":
    main()
