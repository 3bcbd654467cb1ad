"""The GPU benchmark's smoke mode: the same code paths as on a GPU (cross-validation with one and with two
fold workers, throughput, prediction), on CPU with a tiny model. Figures are printed, not judged."""

from __future__ import annotations

import re
import subprocess

from helpers import ROOT


def test_gpu_benchmark_smoke_runs_every_part_and_prints_its_figures():
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"model: random BERT 2 x 32 .*240 texts, 3 folds x 1 epochs", out)
    assert re.search(r"one fold at a time\s+[\d.]+ s\s+\(3 folds\)", out)
    assert re.search(r"2 folds side by side\s+[\d.]+ s\s+\(3 folds\)", out)
    for precision in ("fp32", "bf16"):
        assert f"nblib precision: {precision}" in out
    assert len(re.findall(r"HF Trainer, dynamic padding\s+[\d.]+ texts/s\s+[\d.]+x the original", out)) == 2
    assert "n/a (no GPU)" in out
    assert re.search(r"240 texts in [\d.]+ s: \d+ texts/s", out)
    assert re.search(r"prefix reuse: 32 texts in [\d.]+ s: [\d.]+ texts/s", out)
    assert re.search(r"naive: +32 texts in [\d.]+ s: [\d.]+ texts/s", out) and "speed-up: " in out
