"""How training uses the machine: the import layers of nblib.hardware, one precision setting for fine-tuning and TAPT,
and the allocator setting (freed tensor memory reused instead of faulted in afresh every step).

The precision, TF32 and launching rules are exercised through fine-tuning in test_bert.py and through TAPT in
test_tapt.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

PROBE = """
import resource, sys, torch
from nblib.hardware import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # ten 8 MiB tensors alive together, then freed, as in a training step
    held = [torch.ones(8 << 18) for _ in range(10)]
    return sum(t.sum() for t in held)
for _ in range(3):  # warm-up: the first touches fault in any case
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_tensor_memory():
    # Kept: the 80 MiB a step stay mapped, so the steps fault (almost) nothing in again. The default is not asserted:
    # glibc's dynamic thresholds and transparent huge pages make it vary from run to run (ten runs on one machine:
    # 613,440 faults in eight, 0 in two), while without the setting this probe faulted ~613,000 pages in most runs.
    assert _page_faults("keep") < 30 * 1000


def test_keep_freed_memory_is_idempotent():
    from nblib.hardware import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()


def _nblib_modules_after_importing(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps([m for m in sys.modules if m.startswith('nblib')]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_hardware_imports_no_training_code():
    assert _nblib_modules_after_importing("nblib.hardware") <= {
        "nblib",
        "nblib.hardware",
        "nblib.data",
        "nblib.settings",
        "nblib.sheets",
    }


def test_tapt_does_not_import_bert_cv():
    from nblib import tapt

    tree = ast.parse(Path(tapt.__file__).read_text(encoding="utf-8"))
    named = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    named |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not any("bert_cv" in name for name in named)
    assert "nblib.bert_cv" not in _nblib_modules_after_importing("nblib.tapt")


def test_fine_tuning_and_tapt_share_one_precision_and_device_setting():
    from nblib import bert_cv, hardware, tapt

    for cls in (bert_cv.FineTuneConfig, tapt.TaptConfig):
        hints = typing.get_type_hints(cls)
        assert issubclass(cls, hardware.Hardware)
        assert hints["precision"] is hardware.Precision and hints["device"] is hardware.Device
    resolved = set(typing.get_args(hardware.Precision)) - {"auto"}
    assert set(hardware.MIXED_PRECISION) == resolved and hardware.MIXED_PRECISION["fp32"] == "no"
