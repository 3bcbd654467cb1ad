"""k-fold cross-validation of a fine-tuned encoder on CPU, one GPU or several, resumable fold by fold.

From a notebook call :func:`cross_validate`. Several processes are started from here:

- ``parallel="folds"``: one worker process per GPU (of ``CUDA_VISIBLE_DEVICES``), each training whole folds
  on its own GPU (no communication; each fold is the same computation as on one GPU, up to CUDA's
  nondeterministic kernels). The default when there are at least as many pending folds as GPUs.
- ``parallel="ddp"``: every fold trained by all GPUs together with DistributedDataParallel
  (``torchrun`` + ``accelerate``; the global batch size stays ``batch_size``).

Across machines (shared filesystem for results): write the run's ``launch.json`` with :func:`write_launch`
(nothing is trained), start the same module with torchrun on every node, then once more with ``--final`` for
the final model, then rerun the notebook with the same settings to collect the results::

    torchrun --nnodes 2 --nproc_per_node 4 --node_rank $RANK --master_addr $HOST --master_port 29500 \\
        -m nblib.bert_cv --config results/<study>/models/<run>/launch.json [--final]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from accelerate import Accelerator, PartialState

from . import bert
from .cv import FoldOutput, FoldSplit, run_folds
from .data import LabelledData, load_labelled, load_or_make_folds, study_dir
from .results import ModelResults, ModelRun

log = logging.getLogger(__name__)

OOM_ADVICE = ("CUDA ran out of memory at batch size {per_device} per device. Try, in this order: a smaller "
              "max_len (texts are short; see 01_eda's length table), precision='bf16' or 'fp16', a smaller "
              "batch_size with grad_accum > 1 (same effective batch), or a smaller model.")


@dataclass
class FineTuneConfig:
    """Everything a run needs: data, model, training, hardware. Written as JSON for worker processes."""

    data_path: str
    text_col: str = "Sentence"
    label_col: str = "Label"
    sheet: str | int | None = None
    label_table: dict | str | None = None
    n_folds: int = 5
    seed: int = 42
    results_dir: str = "../results"
    model: str = "bert-base-chinese"   # hub id, local folder, or "tiny-random" (a small random model, for smoke runs)
    run_name: str | None = None        # results folder name; default "bert_<model folder name>"
    max_len: int = 128
    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-5
    head_lr: float | None = None       # learning rate of the new head (and of a pooler the checkpoint lacks); None: lr
    freeze_embeddings: bool = False    # keep the input word embeddings fixed: 1.6x faster CPU steps measured for e5-small (250k vocabulary)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_accum: int = 1
    val_fraction: float = 0.1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_processes: int | Literal["auto"] = "auto"
    parallel: Literal["auto", "folds", "ddp"] = "auto"
    train_final: bool = True
    save_fold_models: bool = True
    oom_retry: bool = True
    worker_folds: list[int] | None = field(default=None, repr=False)  # set for worker processes only

    @property
    def name(self) -> str:
        return self.run_name or f"bert_{Path(self.model.rstrip('/')).name}"

    def use_cpu(self) -> bool:
        """Whether this process trains on the CPU; ``device="cuda"`` where PyTorch sees no GPU is an error."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda', but PyTorch sees no CUDA GPU here (a CPU-only torch build, no driver, "
                               "or CUDA_VISIBLE_DEVICES empty). Use device='cpu' or 'auto' to train on the CPU.")
        return self.device == "cpu" or not torch.cuda.is_available()

    def resolved_precision(self, device: torch.device | None = None) -> str:
        """fp32 on CPU unless asked; on GPU bf16 from compute capability 8 (Ampere) on, else fp16 (with loss scaling).

        ``device``: this process's GPU (default: the current device).
        """
        if self.precision != "auto":
            return self.precision
        return "fp32" if self.use_cpu() else bert.gpu_precision(device)

    def processes(self) -> int:
        if self.num_processes != "auto":
            return int(self.num_processes)
        return 1 if self.use_cpu() else max(1, torch.cuda.device_count())

    def identity(self, source: str) -> dict:
        """The settings that decide the results (hardware and parallel mode do not); a rerun must match them."""
        keys = ["max_len", "epochs", "batch_size", "lr", "head_lr", "freeze_embeddings", "warmup_ratio", "weight_decay",
                "val_fraction", "seed", "train_final"]
        return {"source": source, **{k: getattr(self, k) for k in keys}, "precision": self.resolved_precision(),
                "model_selection": "best validation macro-F1 per fold"}


# --- one process ------------------------------------------------------------------------------------

@dataclass
class _Study:
    """The data, folds, model source and results folder of one run, opened once per process."""

    data: LabelledData
    folds: np.ndarray
    source: str
    run: ModelRun


def _open(cfg: FineTuneConfig, write: bool = True) -> _Study:
    data = load_labelled(cfg.data_path, cfg.text_col, cfg.label_col, cfg.sheet, cfg.label_table)
    folds = load_or_make_folds(data, cfg.results_dir, cfg.n_folds, cfg.seed)
    if cfg.model == bert.TINY_RANDOM:
        folder = study_dir(cfg.results_dir, data) / "encoders" / bert.TINY_RANDOM
        source = str(folder if (folder / "config.json").exists() else bert.build_tiny_encoder(data.texts, folder, seed=cfg.seed))
    else:
        source = bert.resolve_model(cfg.model)
    return _Study(data, folds, source, ModelRun(cfg.results_dir, cfg.name, cfg.identity(source), data, folds, write=write))


def _accelerator(cfg: FineTuneConfig) -> Accelerator:
    """A new Accelerator (fresh fp16 loss-scale state) on this process's device.

    The device is set first (under torchrun: this rank's GPU), then "auto" precision is decided on it.
    TF32 matrix products only with mixed precision: ``precision="fp32"`` means full fp32.
    """
    cpu = cfg.use_cpu()
    precision = cfg.resolved_precision(PartialState(cpu=cpu).device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    return Accelerator(cpu=cpu, mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision])


def _fine_tune_retrying(cfg: FineTuneConfig, settings: bert.TrainSettings, **kw) -> tuple[bert.FoldResult, bert.TrainSettings]:
    """fine_tune with a fresh Accelerator, and on CUDA out-of-memory: halve the per-device batch (doubling
    accumulation) and retry. Returns the result and the settings that fitted, for the next folds."""
    while True:
        accelerator = _accelerator(cfg)
        per_device = bert.per_device_batch(settings.batch_size, accelerator.num_processes, settings.grad_accum)
        try:
            return bert.fine_tune(settings=settings, accelerator=accelerator, **kw), settings
        except torch.OutOfMemoryError as e:
            if not cfg.oom_retry or per_device % 2 or accelerator.num_processes > 1:
                raise RuntimeError(OOM_ADVICE.format(per_device=per_device)) from e
        # out of the except block: the failed try's model is no longer held by the traceback; fine_tune frees it
        settings = replace(settings, grad_accum=settings.grad_accum * 2)
        log.warning("CUDA out of memory at %d texts per device; retrying this fold with %d and grad_accum=%d "
                    "(same effective batch).", per_device, per_device // 2, settings.grad_accum)


def run_in_process(cfg: FineTuneConfig, final: bool = False, study: _Study | None = None) -> None:
    """Train folds (``cfg.worker_folds``, default all pending) or the final model, in this process.

    Under torchrun (several processes) all processes train each fold together (DDP) and the main one saves.
    ``study``: the run already opened by :func:`cross_validate` in this process.
    """
    accelerator = _accelerator(cfg)
    study = study or _open(cfg, write=accelerator.is_main_process)
    if not accelerator.is_main_process and accelerator.is_local_main_process:
        study.run.record_environment()  # one file per machine of a multi-node run (the main process writes its own)
    data, folds, source, run = study.data, study.folds, study.source, study.run
    tokenizer = bert.load_tokenizer(source)
    encoded = bert.Encoded(tokenizer, data.texts, cfg.max_len, data.labels)
    settings = bert.TrainSettings(cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_ratio, cfg.weight_decay,
                                  grad_accum=cfg.grad_accum, head_lr=cfg.head_lr,
                                  freeze_embeddings=cfg.freeze_embeddings)
    common = dict(source=source, label_names=data.label_names, tokenizer=tokenizer)
    if final:
        _train_final(cfg, run, encoded, settings, accelerator, common)
        return

    def fit_predict(split: FoldSplit) -> FoldOutput:
        nonlocal settings  # a batch halved after running out of memory stays halved for the later folds
        res, settings = _fine_tune_retrying(cfg, settings, train=encoded.subset(split.train),
                                            val=encoded.subset(split.val), test=encoded.subset(split.test),
                                            seed=split.seed, desc=f"fold {split.fold}", **common)
        if cfg.save_fold_models and accelerator.is_main_process:
            bert.save_checkpoint(res.model, tokenizer, run.path / "fold_models" / f"fold_{split.fold}")
        extra = {"best_epoch": res.best_epoch, "encoder_checksum": res.encoder_checksum,
                 "processes": accelerator.num_processes, "precision": cfg.resolved_precision()}
        return FoldOutput(res.test_probs, extra, res.history)

    which = cfg.worker_folds if cfg.worker_folds is not None else run.pending_folds()
    run_folds(run, data, folds, fit_predict, cfg.val_fraction, cfg.seed, which=which, save=accelerator.is_main_process)
    accelerator.wait_for_everyone()


def _train_final(cfg, run: ModelRun, encoded: bert.Encoded, settings: bert.TrainSettings, accelerator, common) -> None:
    """One model on all labelled texts, for as many epochs as the folds' best epochs suggest (median)."""
    best = [json.loads(p.read_text())["best_epoch"] for p in sorted((run.path / "folds").glob("fold_*.json"))]
    epochs = int(np.median(best)) if best else cfg.epochs
    res, _ = _fine_tune_retrying(cfg, replace(settings, epochs=epochs), train=encoded, val=None, test=None,
                                 seed=cfg.seed, desc="final", **common)
    if accelerator.is_main_process:
        out = bert.save_checkpoint(res.model, common["tokenizer"], run.path / "final")
        info = {"epochs": epochs, "fold_best_epochs": best, "texts": len(encoded), "history": res.history.to_dict("records")}
        (out / "training.json").write_text(json.dumps(info, indent=2))
        log.info("Final model (all %d texts, %d epochs) saved to %s", len(encoded), epochs, out)
    accelerator.wait_for_everyone()


# --- the notebook's entry point ---------------------------------------------------------------------

def cross_validate(cfg: FineTuneConfig) -> ModelResults:
    """Cross-validate (resuming finished folds), train the final model if asked, return the results."""
    cfg = _absolute_paths(cfg)
    study = _open(cfg)
    run = study.run
    pending, n_proc = run.pending_folds(), cfg.processes()
    mode = cfg.parallel if cfg.parallel != "auto" else ("folds" if n_proc <= max(1, len(pending)) else "ddp")
    # fail before starting anything; the final model is trained by all processes together
    bert.per_device_batch(cfg.batch_size, n_proc if mode == "ddp" or cfg.train_final else 1, cfg.grad_accum)
    log.info("%s: %d pending folds on %s, %d process(es)%s; precision %s.", cfg.name, len(pending),
             "CPU" if cfg.use_cpu() else "GPU", n_proc, f", parallel={mode}" if n_proc > 1 else "",
             cfg.resolved_precision())
    launch = _write_launch(cfg, run)
    if pending:
        if n_proc == 1:
            run_in_process(cfg, study=study)
        elif mode == "ddp":
            _launch_torchrun(launch, n_proc, run.path / "logs" / "ddp.log")
        else:
            _launch_fold_workers(cfg, pending, n_proc, run.path / "logs")
    final = run.path / "final" / "training.json"
    if cfg.train_final and not final.exists():
        if n_proc == 1:
            run_in_process(cfg, final=True, study=study)
        else:
            _launch_torchrun(launch, n_proc, run.path / "logs" / "final.log", final=True)
    return run.finish()


def write_launch(cfg: FineTuneConfig) -> Path:
    """Write the run's ``launch.json`` (paths made absolute) without training anything; return its path.

    For several machines: start ``-m nblib.bert_cv --config <path>`` under torchrun on every node (see the module
    docstring), then the same with ``--final``, then rerun the notebook with the same settings to collect the results.
    """
    cfg = _absolute_paths(cfg)
    return _write_launch(cfg, _open(cfg, write=False).run)


def _absolute_paths(cfg: FineTuneConfig) -> FineTuneConfig:
    """Data, results, a label-table file and a local model folder as absolute paths: workers may start in another
    folder or on another machine."""
    def resolved(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    model_dir = Path(cfg.model).expanduser().is_dir()
    table_file = isinstance(cfg.label_table, str) and Path(cfg.label_table).expanduser().is_file()
    return replace(cfg, data_path=resolved(cfg.data_path), results_dir=resolved(cfg.results_dir),
                   model=resolved(cfg.model) if model_dir else cfg.model,
                   label_table=resolved(cfg.label_table) if table_file else cfg.label_table)


def _write_launch(cfg: FineTuneConfig, run: ModelRun) -> Path:
    path = run.path / "launch.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cfg), indent=2, ensure_ascii=False))
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
            procs.append(subprocess.Popen(cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                                          preexec_fn=_die_with_this_process()))
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


def _launch_torchrun(config_file: Path, n_proc: int, log_file: Path, final: bool = False) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_proc}",
           "-m", "nblib.bert_cv", "--config", str(config_file)] + (["--final"] if final else [])
    log.info("DDP over %d processes: %s", n_proc, " ".join(cmd))
    _run_logged([(cmd, dict(os.environ), log_file)])


def _visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs), in the order torch numbers them."""
    n = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [str(i) for i in range(n)] if visible is None else [v.strip() for v in visible.split(",")][:n]


def _launch_fold_workers(cfg: FineTuneConfig, pending: list[int], n_proc: int, log_dir: Path) -> None:
    """One worker process per GPU (worker i on the i-th GPU this process sees), each training its share of folds."""
    gpus = None if cfg.use_cpu() else _visible_gpus()
    if gpus is not None and n_proc > len(gpus):
        raise ValueError(f"num_processes={n_proc} with parallel='folds' needs one GPU per process, but {len(gpus)} "
                         f"are visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}).")
    commands = []
    for i in range(n_proc):
        mine = pending[i::n_proc]
        if not mine:
            continue
        env, worker = dict(os.environ), replace(cfg, worker_folds=mine, num_processes=1)
        if gpus is not None:  # the precision this process recorded, and an error instead of a silent CPU run
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
            worker = replace(worker, device="cuda", precision=cfg.resolved_precision())
        worker_cfg = log_dir / f"worker_{i}.json"
        log_dir.mkdir(parents=True, exist_ok=True)
        worker_cfg.write_text(json.dumps(asdict(worker), ensure_ascii=False))
        commands.append(([sys.executable, "-m", "nblib.bert_cv", "--config", str(worker_cfg)], env, log_dir / f"worker_{i}.log"))
        log.info("worker %d: folds %s", i, mine)
    _run_logged(commands)


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: ``python -m nblib.bert_cv --config FILE [--final]`` (also under torchrun)."""
    ap = argparse.ArgumentParser(description="Train folds (or the final model) of a fine-tuning run.")
    ap.add_argument("--config", required=True, type=Path, help="a launch.json written by cross_validate")
    ap.add_argument("--final", action="store_true", help="train the final model on all labelled texts")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = FineTuneConfig(**json.loads(args.config.read_text()))
    run_in_process(cfg, final=args.final)


if __name__ == "__main__":
    main()
