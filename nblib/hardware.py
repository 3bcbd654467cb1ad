"""How training uses the machine: devices, precision, accelerators, seeds, memory, and the processes that train.

Fine-tuning (:mod:`nblib.bert_cv`) and TAPT (:mod:`nblib.tapt`) both take their hardware from here, so both
follow the same rules: ``precision="auto"`` is fp32 on the CPU and bf16 or fp16 on a GPU by its compute
capability; TF32 matrix products only with mixed precision; a warning where bf16 is emulated on the CPU;
a fresh ``Accelerator`` per model; several processes as ``torchrun`` (DDP) or as fold workers, none of which
outlives the process that started it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
from accelerate import Accelerator, PartialState

from .data import path_list
from .settings import Device, to_params

log = logging.getLogger(__name__)
H = TypeVar("H", bound="Hardware")

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Processes = int | Literal["auto"]  # auto: every visible GPU (1 on CPU)
Parallel = Literal["auto", "folds", "ddp"]  # how several processes share a run's folds (parallel_mode)
# a resolved precision as accelerate's mixed_precision
MIXED_PRECISION: dict[str, str] = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices).

    Args:
        seed: the seed.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- precision ---------------------------------------------------------------------------------------


def gpu_precision(device: torch.device | int | None = None) -> str:
    """Mixed precision for a CUDA device: bf16 from compute capability 8 (Ampere) on, else fp16 with loss scaling.

    ``torch.cuda.is_bf16_supported()`` also counts emulated bf16 (slow on V100, T4, RTX 20xx), so it does not decide.
    Ask after the process's device is set (default: the current device), so that each rank asks its own GPU.
    """
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, e.g. Intel Xeon from Cooper Lake / Sapphire
    Rapids, AMD Zen 4): there ``precision="bf16"`` (autocast) trains about 1.7x faster than fp32; elsewhere bf16
    is emulated and slower."""
    return bool(
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )


class Hardware:
    """Where a run executes, shared by the settings classes with ``device``, ``precision`` and ``num_processes``
    fields (fine-tuning, TAPT)."""

    device: Device
    precision: Precision
    num_processes: Processes

    def use_cpu(self) -> bool:
        """Whether this process trains on the CPU; ``device="cuda"`` where PyTorch sees no GPU is an error."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "device='cuda', but PyTorch sees no CUDA GPU here (a CPU-only torch build, no driver, "
                "or CUDA_VISIBLE_DEVICES empty). Use device='cpu' or 'auto' to train on the CPU."
            )
        return self.device == "cpu" or not torch.cuda.is_available()

    def resolved_precision(self, device: torch.device | None = None) -> str:
        """fp32 on CPU unless asked (``precision="bf16"`` is 1.7x faster where the CPU has native bf16, see
        :func:`cpu_bf16_native`); on GPU bf16 from compute capability 8 (Ampere) on, else fp16 (loss scaling).

        Args:
            device: this process's GPU (default: the current device).
        """
        if self.precision != "auto":
            return self.precision
        return "fp32" if self.use_cpu() else gpu_precision(device)

    def processes(self) -> int:
        """The number of processes: ``num_processes``, or every visible GPU (1 on CPU)."""
        if self.num_processes != "auto":
            return int(self.num_processes)
        return 1 if self.use_cpu() else max(1, torch.cuda.device_count())


def make_accelerator(hw: Hardware) -> Accelerator:
    """A new Accelerator (fresh fp16 loss-scale state) on this process's device, in ``hw``'s precision.

    The device is set first (under torchrun: this rank's GPU), then "auto" precision is decided on it.
    TF32 matrix products only with mixed precision: ``precision="fp32"`` means full fp32. bf16 on a CPU
    without native bf16 is emulated (slower than fp32): a warning says so.

    Args:
        hw: the run's hardware settings.
    """
    cpu = hw.use_cpu()
    precision = hw.resolved_precision(PartialState(cpu=cpu).device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    if cpu and precision == "bf16" and not cpu_bf16_native():
        log.warning("precision='bf16' on a CPU without native bf16 (AVX512-BF16 or AMX): emulated, slower than fp32.")
    return Accelerator(cpu=cpu, mixed_precision=MIXED_PRECISION[precision])


# --- memory ------------------------------------------------------------------------------------------

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below it come from the reusable heap, not fresh mmaps
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap kept for reuse, up to 1 GiB
TOP_PAD = 64 << 20  # the heap grows in steps of 64 MiB


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse in this process; True where it took effect (Linux, glibc).

    PyTorch on CPU allocates and frees a few hundred KiB to several MiB per tensor, many times a step. glibc
    serves blocks above 128 KiB (its default, raised dynamically) with ``mmap`` and gives them back to the
    kernel on ``free``, so the next step's tensors fault their pages in afresh: the kernel zeroes every page
    again, and on a virtual machine each first touch can also exit to the hypervisor (benchmarks/README.md
    has the share of CPU time this took). Raising the mmap threshold to glibc's maximum and keeping up to
    1 GiB of freed heap makes the same allocations reuse memory already mapped. The numbers computed do not
    change. Called at the start of every fold, final model and TAPT run (once per process).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt: leave the allocator as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting; the allocator keeps its defaults")
    return ok


# --- processes ---------------------------------------------------------------------------------------


def absolute_paths(cfg: H) -> H:
    """Data, pool, annotator sheets, results, a label-table file and a local model folder as absolute paths: workers
    may start in another folder or on another machine.

    Args:
        cfg: settings with ``study`` and ``model`` fields (fine-tuning or TAPT).
    """

    def resolved(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    s = cfg.study
    model_dir = Path(cfg.model).expanduser().is_dir()
    table_file = isinstance(s.label_table, str) and Path(s.label_table).expanduser().is_file()
    study = replace(
        s,
        data_path=resolved(s.data_path),
        results_dir=resolved(s.results_dir),
        unlabelled_path=resolved(s.unlabelled_path) if s.unlabelled_path else None,
        label_table=resolved(s.label_table) if table_file else s.label_table,
        extra_labelled_paths=[resolved(p) for p in path_list(s.extra_labelled_paths)] or None,
    )
    return replace(cfg, study=study, model=resolved(cfg.model) if model_dir else cfg.model)


def write_launch_file(cfg: Hardware, path: Path, indent: int | None = 2) -> Path:
    """Write ``cfg``'s flat parameters, paths made absolute, as the JSON file worker processes read; return ``path``.

    Args:
        cfg: the run's settings (with ``study`` and ``model`` fields).
        path: the file.
        indent: JSON indentation (None: one line).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_params(absolute_paths(cfg)), indent=indent, ensure_ascii=False))
    return path


_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` (Linux) that makes the child get SIGTERM when this process dies, even by SIGKILL."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call above
            os._exit(1)

    return set_death_signal


def _stop(procs: list[subprocess.Popen], grace_s: float = 30) -> None:
    """Terminate the processes still running (torchrun passes it on to its workers); kill those that linger."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_logged(commands: list[tuple[list[str], dict, Path]]) -> None:
    """Start the commands side by side, wait for all, and fail with the end of the log of any that failed.

    No worker outlives this call: on an error or interrupt (KeyboardInterrupt) they are terminated, and on
    Linux they get SIGTERM when this process dies.
    """
    procs, logs = [], []
    try:
        for cmd, env, log_file in commands:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            logs.append(log_file.open("w"))
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, preexec_fn=_die_with_this_process()
                )
            )
        codes = [p.wait() for p in procs]
    finally:
        _stop(procs)
        for handle in logs:
            handle.close()
    for code, (_, _, f) in zip(codes, commands):
        if code != 0:
            tail = "\n".join(f.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"worker failed (exit {code}); log {f}:\n{tail}")
        log.info("worker finished; log in %s", f)


def launch_torchrun(module: str, config_file: Path, n_proc: int, log_file: Path, final: bool = False) -> None:
    """Run ``python -m <module> --config <config_file>`` in ``n_proc`` processes under torchrun (one machine).

    Args:
        module: the entry point (``nblib.bert_cv`` or ``nblib.tapt``).
        config_file: the settings the processes read.
        n_proc: processes (one per GPU).
        log_file: where their output goes.
        final: pass ``--final`` (the final model of a fine-tuning run).
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n_proc}",
        "-m",
        module,
        "--config",
        str(config_file),
    ] + (["--final"] if final else [])
    log.info("DDP over %d processes: %s", n_proc, " ".join(cmd))
    _run_logged([(cmd, dict(os.environ), log_file)])


def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs), in the order torch numbers them."""
    n = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [str(i) for i in range(n)] if visible is None else [v.strip() for v in visible.split(",")][:n]


def parallel_mode(hw: Hardware, parallel: Parallel, pending: int) -> tuple[str, int]:
    """How the processes share the pending folds: ``"ddp"`` (each fold over every GPU) or ``"folds"`` (whole folds
    side by side), and the processes a DDP group can have (one per GPU; every process on the CPU).

    ``parallel="auto"``: DDP only while there are fewer pending folds than processes, and a GPU for each process.

    Args:
        hw: the run's hardware settings.
        parallel: ``"auto"``, ``"folds"`` or ``"ddp"``.
        pending: the number of folds still to train.

    Raises:
        ValueError: ``parallel="ddp"`` with more processes than visible GPUs.
    """
    n_proc = hw.processes()
    n_ddp = n_proc if hw.use_cpu() else min(n_proc, len(visible_gpus()))
    ddp = n_proc > max(1, pending) and n_ddp == n_proc
    mode = parallel if parallel != "auto" else ("ddp" if ddp else "folds")
    if mode == "ddp" and n_ddp < n_proc and pending:
        raise ValueError(
            f"num_processes={n_proc} with parallel='ddp' needs one GPU per process, but {n_ddp} are visible; "
            f"parallel='folds' runs several folds side by side on one GPU."
        )
    return mode, n_ddp


def launch_fold_workers(
    cfg: Hardware, module: str, launch: Path, pending: Sequence[int], n_proc: int, log_dir: Path
) -> None:
    """``n_proc`` worker processes ``python -m <module> --config <file> --folds <theirs>``, each training its share
    of the folds on its own device.

    Worker i runs on GPU ``i mod (visible GPUs)``: more workers than GPUs put several folds side by side on
    one GPU (worth it when the model leaves the card mostly idle, e.g. bert-base with batch 32 of short texts).
    Every worker gets an equal share of the CPU threads (``OMP_NUM_THREADS``, unless it is set already).

    Args:
        cfg: the run's settings (a dataclass with ``study`` and ``model`` fields).
        module: the workers' entry point (``nblib.bert_cv``).
        launch: the run's settings file, read by workers on the CPU.
        pending: the folds to train.
        n_proc: worker processes.
        log_dir: where each worker's settings (on GPUs) and log go.
    """
    gpus = None if cfg.use_cpu() else visible_gpus()
    if gpus == []:
        raise ValueError("parallel='folds' on the GPU, but no GPU is visible: set device='cpu', or check the GPUs.")
    threads = str(max(1, (os.cpu_count() or 1) // n_proc))
    commands = []
    for i in range(n_proc):
        mine = list(pending[i::n_proc])
        if not mine:
            continue
        env, config = {"OMP_NUM_THREADS": threads, **os.environ}, launch
        if gpus is not None:  # the precision this process recorded, and an error instead of a silent CPU run
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            worker = replace(cfg, device="cuda", precision=cfg.resolved_precision(), num_processes=1)
            config = write_launch_file(worker, log_dir / f"worker_{i}.json", indent=None)
        folds = ",".join(map(str, mine))
        commands.append(
            (
                [sys.executable, "-m", module, "--config", str(config), "--folds", folds],
                env,
                log_dir / f"worker_{i}.log",
            )
        )
        log.info("worker %d: folds %s%s", i, mine, "" if gpus is None else f" on GPU {gpus[i % len(gpus)]}")
    _run_logged(commands)
