"""Label-scoring throughput of the local LLM backend (texts/s): the shared prefix's cache reused vs. the naive path.

    python benchmarks/llm.py --model DIR --texts N --labels 6      # a causal LM folder (or hub id)
    python benchmarks/llm.py --texts 200                           # no model: a random tiny causal LM
    python benchmarks/llm.py --shape small --device cuda           # no model: a random 24 x 896 one (Qwen2.5-0.5B's)

Both paths score the same texts with the same k-shot prompt (``--shots`` examples per class drawn from the texts)
and ``--labels`` classes (answers "0", "1", …): prefix reuse runs the instruction and examples once and reuses
their key/value cache for every batch; the naive path runs the whole prompt for every text and class. Prints
texts/s of each, the speed-up, and the largest difference between their probabilities. Texts: the Weibo benchmark
sheet in ../shared/datasets when present, else the demo sheet.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nblib import data, llm
from nblib.codebook import Codebook, CodebookEntry

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "weibo_emotion" / "labelled_8665.xlsx"
NAMES = [
    "喜悦",
    "愤怒",
    "悲伤",
    "恐惧",
    "惊讶",
    "无情绪",
    "厌恶",
    "喜爱",
]  # answers are the numbers; names for the prompt
SHAPES = {"tiny": {"hidden": 64, "layers": 2, "heads": 4}, "small": {"hidden": 896, "layers": 24, "heads": 14}}


def codebook_of(n: int) -> Codebook:
    """A codebook of ``n`` classes (emotion names, then 类别 j)."""
    names = [NAMES[j] if j < len(NAMES) else f"类别{j}" for j in range(n)]
    return Codebook(tuple(CodebookEntry(j, name, f"评论主要表达{name}") for j, name in enumerate(names)))


def timed(backend: llm.LocalBackend, prompt: llm.Prompt, texts: list[str], reuse: bool) -> tuple[np.ndarray, float]:
    """Probabilities of ``texts`` and the seconds they took (after a warm-up batch)."""
    backend.log_likelihoods(prompt, texts[: backend.batch_size], reuse_prefix=reuse)
    if backend.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    probs = backend.score(prompt, texts, reuse_prefix=reuse).probs
    if backend.device.type == "cuda":
        torch.cuda.synchronize()
    return probs, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="causal LM folder or hub id; default: a random one (--shape)")
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES), help="the random model's size")
    ap.add_argument("--texts", type=int, default=200, help="texts scored by the prefix-reuse path")
    ap.add_argument("--naive-texts", type=int, default=None, help="texts scored by the naive path (default: --texts)")
    ap.add_argument("--labels", type=int, default=6, help="classes (answers 0 … labels-1)")
    ap.add_argument("--shots", type=int, default=1, help="examples per class in the prompt")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else ROOT / "data" / "demo_labelled.xlsx")
    args = ap.parse_args(argv)
    text_col = "Sentence"
    pool = data.read_table(args.data)[text_col].dropna().astype(str).tolist()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pool))
    examples = [(pool[i], j % args.labels) for j, i in enumerate(order[: args.shots * args.labels])]
    texts = [pool[i] for i in order[args.shots * args.labels :][: args.texts]]
    codebook = codebook_of(args.labels)
    prompt = llm.render_prompt(codebook, examples=examples)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            source, described = args.model, args.model
        else:
            shape = SHAPES[args.shape]
            extra = codebook.to_frame().to_string()
            source = str(llm.build_tiny_causal_lm(pool, Path(tmp) / "lm", extra_text=extra, **shape))
            described = f"random causal LM {shape['layers']} x {shape['hidden']}"
        start = time.perf_counter()
        backend = llm.LocalBackend(source, device=args.device, batch_size=args.batch_size)
        loaded = time.perf_counter() - start
        prefix, text_ids, answers = backend.encode(prompt, texts)
        device = torch.cuda.get_device_name(backend.device) if backend.device.type == "cuda" else "CPU"
        print(
            f"model: {described} (loaded in {loaded:.0f} s); device: {device} ({torch.get_num_threads()} threads), "
            f"{str(backend.dtype).removeprefix('torch.')}; chat template: {backend.chat}",
            flush=True,
        )
        print(
            f"{args.labels} labels (answer tokens: {[len(a) for a in answers]}); {args.shots} example(s) per class; "
            f"shared prefix {len(prefix)} tokens; texts {np.mean([len(t) for t in text_ids]):.0f} tokens on average; "
            f"batch {args.batch_size}",
            flush=True,
        )
        cached, cached_s = timed(backend, prompt, texts, reuse=True)
        naive_texts = texts[: args.naive_texts or len(texts)]
        naive, naive_s = timed(backend, prompt, naive_texts, reuse=False)
    rate, naive_rate = len(texts) / cached_s, len(naive_texts) / naive_s
    print(f"prefix reuse: {len(texts)} texts in {cached_s:.1f} s: {rate:.1f} texts/s")
    print(f"naive:        {len(naive_texts)} texts in {naive_s:.1f} s: {naive_rate:.1f} texts/s")
    diff = np.abs(cached[: len(naive_texts)] - naive).max()
    same = (cached[: len(naive_texts)].argmax(1) == naive.argmax(1)).mean()
    print(
        f"speed-up: {rate / naive_rate:.1f}x; largest |difference| of probabilities {diff:.2g}; same label {same:.1%}"
    )


if __name__ == "__main__":
    main()
