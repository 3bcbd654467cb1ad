"""The allocator setting: freed tensor memory is reused instead of faulted in afresh every step."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from nblib.hardware import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # tensors of 1-8 MiB alive together, then freed, as in a training step
    held = [torch.ones(n << 18) for n in (1, 3, 8, 2, 5)]
    return sum(t.sum() for t in held)
for _ in range(3):  # warm-up: the first touches fault in any case
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_tensor_memory():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 100 * 2000  # glibc gives the 19 MiB back each step: ~4,900 pages faulted in again
    assert kept < default / 20


def test_keep_freed_memory_is_idempotent():
    from nblib.hardware import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()
