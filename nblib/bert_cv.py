"""k-fold cross-validation of a fine-tuned encoder on CPU, one GPU or several, resumable fold by fold.

From a notebook: ``job = FineTuneJob(config, study)``, then ``job.run_folds([0])`` for one fold and
``job.cross_validate()`` for all of them. Several processes are started from here:

- ``parallel="folds"``: ``num_processes`` worker processes, each training whole folds on its own GPU (of
  ``CUDA_VISIBLE_DEVICES``; no communication; each fold is the same computation as on one GPU, up to CUDA's
  nondeterministic kernels). The default when there are at least as many pending folds as processes.
  ``num_processes`` may exceed the number of GPUs: workers then share GPUs round-robin (e.g. 4 folds side by
  side on one H100 for a model that leaves the card mostly idle).
- ``parallel="ddp"``: every fold trained by all GPUs together with DistributedDataParallel
  (``torchrun`` + ``accelerate``; the global batch size stays ``batch_size``); one process per GPU. The final
  model is trained this way too, by at most one process per GPU.

Across machines (shared filesystem for results): write the run's ``launch.json`` with :func:`write_launch`
(nothing is trained), start the same module with torchrun on every node, then once more with ``--final`` for
the final model, then rerun the notebook with the same settings to collect the results::

    torchrun --nnodes 2 --nproc_per_node 4 --node_rank $RANK --master_addr $HOST --master_port 29500 \\
        -m nblib.bert_cv --config results/<study>/models/<run>/launch.json [--final]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
from accelerate import Accelerator, PartialState

from . import bert, calibration, cli, cv, layout, self_training
from .data import DataError, path_list
from .folds import FoldSplit
from .hardware import keep_freed_memory
from .results import ModelResults, read_folds
from .settings import ModelSelection, StudySettings, from_params, identity, runtime, setting, to_params
from .study import Study, open_study

log = logging.getLogger(__name__)
C = TypeVar("C")

OOM_ADVICE = (
    "CUDA ran out of memory at batch size {per_device} per device. Try, in this order: a smaller "
    "max_len (texts are short; see 01_eda's length table), precision='bf16' or 'fp16', a smaller "
    "batch_size with grad_accum > 1 (same effective batch), or a smaller model."
)


class Hardware:
    """Where a run executes, shared by the settings classes with ``device``, ``precision`` and ``num_processes``
    fields (fine-tuning, TAPT)."""

    device: str
    precision: str
    num_processes: int | str

    def use_cpu(self) -> bool:
        """Whether this process trains on the CPU; ``device="cuda"`` where PyTorch sees no GPU is an error."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "device='cuda', but PyTorch sees no CUDA GPU here (a CPU-only torch build, no driver, "
                "or CUDA_VISIBLE_DEVICES empty). Use device='cpu' or 'auto' to train on the CPU."
            )
        return self.device == "cpu" or not torch.cuda.is_available()

    def resolved_precision(self, device: torch.device | None = None) -> str:
        """fp32 on CPU unless asked (``precision="bf16"`` is faster where the CPU has native bf16, see
        :func:`nblib.bert.cpu_bf16_native`); on GPU bf16 from compute capability 8 (Ampere) on, else fp16 (loss scaling).

        Args:
            device: this process's GPU (default: the current device).
        """
        if self.precision != "auto":
            return self.precision
        return "fp32" if self.use_cpu() else bert.gpu_precision(device)

    def processes(self) -> int:
        """The number of processes: ``num_processes``, or every visible GPU (1 on CPU)."""
        if self.num_processes != "auto":
            return int(self.num_processes)
        return 1 if self.use_cpu() else max(1, torch.cuda.device_count())


@dataclass
class FineTuneConfig(Hardware):
    """Every setting of a fine-tuning run (03_bert_cv's parameters); written as flat JSON for worker processes.

    Fields declared with ``runtime`` are not part of the run's identity: the study by its data fingerprint and
    folds, the model by its resolved source, and the precision as resolved on this machine are recorded instead.
    """

    study: StudySettings = runtime(default_factory=StudySettings)
    model: str = runtime(
        "bert-base-chinese", "hub id, or a local folder (offline servers), or tiny-random for a smoke run", path="model"
    )
    run_name: str | None = runtime(None, "results folder name (default bert_ + model folder name)")
    max_len: int = setting(128, "tokens per text; longer texts are cut (and counted)", ge=1)
    truncation: Literal["head", "head+tail"] = setting("head", "what a cut text keeps: head, or head+tail")
    train: bert.TrainSettings = field(default_factory=bert.TrainSettings)
    selection: ModelSelection = field(default_factory=ModelSelection)
    train_final: bool = setting(True, "also train one model on all labelled texts")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = runtime("auto", "auto, fp32, bf16 or fp16")
    device: Literal["auto", "cpu", "cuda"] = runtime("auto", "auto, cpu or cuda")
    num_processes: int | Literal["auto"] = runtime("auto", "auto: every visible GPU (1 on CPU)", ge=1)
    parallel: Literal["auto", "folds", "ddp"] = runtime(
        "auto", "auto, folds (whole folds side by side) or ddp (one fold over every GPU)"
    )
    save_fold_models: bool = runtime(True, "keep each fold's model (05's fold ensemble, self-training teachers)")
    oom_retry: bool = runtime(True, "on CUDA out-of-memory halve the per-device batch and retry")
    teacher: str | None = setting(
        None, "self-training: a run of this study whose fold-k model labels the pool for fold k"
    )
    pseudo: self_training.PseudoLabelling = field(default_factory=self_training.PseudoLabelling)

    @property
    def name(self) -> str:
        """The run's results folder name."""
        return self.run_name or f"bert_{Path(self.model.rstrip('/')).name}"

    def identity(self, source: str) -> dict:
        """The settings that decide the results; a resumed run must match them.

        Args:
            source: the resolved model (local folder or hub id).
        """
        ident = {"source": source, **identity(self), "precision": self.resolved_precision()}
        if self.teacher is None:  # plain fine-tuning: the self-training settings are not part of its identity
            for name in ["teacher", *to_params(self.pseudo)]:
                del ident[name]
        return ident


def _accelerator(cfg: FineTuneConfig) -> Accelerator:
    """A new Accelerator (fresh fp16 loss-scale state) on this process's device.

    The device is set first (under torchrun: this rank's GPU), then "auto" precision is decided on it.
    TF32 matrix products only with mixed precision: ``precision="fp32"`` means full fp32.
    """
    cpu = cfg.use_cpu()
    precision = cfg.resolved_precision(PartialState(cpu=cpu).device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    if cpu and precision == "bf16" and not bert.cpu_bf16_native():
        log.warning("precision='bf16' on a CPU without native bf16 (AVX512-BF16 or AMX): emulated, slower than fp32.")
    return Accelerator(cpu=cpu, mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision])


def _fine_tune_retrying(
    cfg: FineTuneConfig, settings: bert.TrainSettings, **kw
) -> tuple[bert.FoldResult, bert.TrainSettings]:
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
        log.warning(
            "CUDA out of memory at %d texts per device; retrying this fold with %d and grad_accum=%d "
            "(same effective batch).",
            per_device,
            per_device // 2,
            settings.grad_accum,
        )


def model_source(cfg: FineTuneConfig, study: Study) -> str:
    """The encoder to fine-tune: a local folder or hub id (checked), or the tiny random BERT built for the study.

    Args:
        cfg: the run's settings (``model``).
        study: the study (its texts build the tiny encoder's vocabulary; it is saved in the study folder).
    """
    if cfg.model != bert.TINY_RANDOM:
        return bert.resolve_model(cfg.model)
    folder = study.folder("encoders") / bert.TINY_RANDOM
    if not (folder / "config.json").exists():
        bert.build_tiny_encoder(study.data.texts, folder, seed=study.settings.seed)
    return str(folder)


class FineTuneJob:
    """One fine-tuning run of a study: the resolved model, the tokenized texts, and the run's results folder."""

    def __init__(self, config: FineTuneConfig, study: Study, write: bool = True):
        """Resolve the model, tokenize every text once, and open (or resume) ``models/<config.name>``.

        Args:
            config: the run's settings.
            study: the study (data, folds, folder).
            write: False in the processes of a distributed run that do not save.
        """
        self.config, self.study = config, study
        self.source = model_source(config, study)
        identity = config.identity(layout.stored_path(self.source, study.path))  # the folder may move
        self.teacher = None
        if config.teacher:
            config.pseudo.check()
            self.pool = study.unseen_pool(required_by="self-training").texts
            self.teacher = study.run_folder(config.teacher)
            self_training.check_teacher(self.teacher, study.folds)
            identity["pool_sha"] = hashlib.sha256("\n".join(self.pool["text"]).encode()).hexdigest()[:16]
        self.run = study.open_run(config.name, identity, write=write)
        self.tokenizer = bert.load_tokenizer(self.source)
        bert.check_max_len(config.max_len, self.source, self.tokenizer)
        self.encoded = bert.Encoded(
            self.tokenizer, study.data.texts, config.max_len, study.data.labels, truncation=config.truncation
        )
        if self.teacher:
            self.pool_encoded = bert.Encoded(
                self.tokenizer, self.pool["text"], config.max_len, truncation=config.truncation
            )
        self.settings = config.train  # a batch halved after running out of memory stays halved for later folds

    def describe(self) -> str:
        """Where and how this job trains: device, processes, precision, model and results folder."""
        c = self.config
        return (
            f"{'CPU' if c.use_cpu() else 'GPU'}, {c.processes()} process(es), precision {c.resolved_precision()}; "
            f"model {self.source}; results in {self.run.path}"
        )

    def example_batch(self, split: FoldSplit, size: int = 4) -> dict:
        """The first training batch of a fold as the training loop gets it (token ids, attention mask, labels).

        Args:
            split: the fold.
            size: texts in the batch.
        """
        collator = bert.make_collator(self.tokenizer, _accelerator(self.config))
        batch = next(iter(bert.train_loader(self.encoded.subset(split.train), collator, size, split.seed)))
        batch["idx"] = torch.as_tensor(split.train)[batch["idx"]]  # back to rows of the study's data
        return batch

    def pseudo_labelled(self, k: int | None) -> bert.Encoded:
        """Self-training: the pool texts the teacher's fold-k model labels confidently, with those labels, as training
        texts for fold ``k`` (None: the teacher's final model, for the final model); saved in ``pseudo_labels/``.

        Args:
            k: the fold (None: the final model).
        """
        table = self_training.load_or_make(
            self.run.path / "pseudo_labels" / f"{'final' if k is None else f'fold_{k}'}.csv",
            self_training.teacher_model(self.teacher, k),
            self.pool,
            self.config.pseudo,
            max_len=self.config.max_len,
            truncation=self.config.truncation,
            device="cpu" if self.config.use_cpu() else "cuda",
        )
        chosen = np.flatnonzero(table["chosen"].to_numpy(dtype=bool))
        return self.pool_encoded.subset(chosen).with_labels(table["label"].to_numpy()[chosen])

    def fit_fold(self, split: FoldSplit) -> cv.FoldOutput:
        """Fine-tune a fresh model on a fold's training part (self-training: and the pool texts its teacher labelled),
        keep the best epoch, predict its test part once.

        Args:
            split: the fold.
        """
        e = self.encoded
        train = e.subset(split.train)
        if self.teacher:
            train = train.join(self.pseudo_labelled(split.fold))
        res, self.settings = self._fine_tune(
            self.settings,
            train,
            e.subset(split.val),
            e.subset(split.test),
            split.seed,
            f"fold {split.fold}",
        )
        temperature = calibration.fit_temperature(res.val_logits, self.study.data.labels[split.val])
        if self.config.save_fold_models and PartialState().is_main_process:
            out = bert.save_checkpoint(res.model, self.tokenizer, self.run.fold_model_dir(split.fold))
            where = f"fold {split.fold}'s validation part, {len(split.val)} texts"
            calibration.save_calibration(out, calibration.Calibration(temperature, None, where))
        extra = {
            "best_epoch": res.best_epoch,
            "temperature": temperature,
            "encoder_checksum": res.encoder_checksum,
            "processes": PartialState().num_processes,
            "precision": self.config.resolved_precision(),
        }
        if self.teacher:
            extra["pseudo_labelled"] = len(train) - len(split.train)
        return cv.FoldOutput(res.test_probs, extra, res.history)

    def _fine_tune(
        self,
        settings: bert.TrainSettings,
        train: bert.Encoded,
        val: bert.Encoded | None,
        test: bert.Encoded | None,
        seed: int,
        desc: str,
    ) -> tuple[bert.FoldResult, bert.TrainSettings]:
        """A fresh model of this job's encoder fine-tuned on ``train`` (retried on out-of-memory)."""
        return _fine_tune_retrying(
            self.config,
            settings,
            source=self.source,
            label_names=self.study.data.label_names,
            tokenizer=self.tokenizer,
            train=train,
            val=val,
            test=test,
            seed=seed,
            select_on=self.config.selection.select_on,
            desc=desc,
        )

    def run_folds(self, which: Sequence[int] | None = None) -> None:
        """Train and save folds in this process (under torchrun: all processes together, the main one saves).

        Args:
            which: the folds (default: every fold without results).
        """
        save = PartialState().is_main_process
        cv.run_folds(self.study, self.run, self.fit_fold, self.config.selection.val_fraction, which, save)
        PartialState().wait_for_everyone()

    def fold_results(self, k: int) -> ModelResults:
        """The saved results of fold ``k``: its test predictions, metrics row (best epoch) and per-epoch curves.

        Args:
            k: a finished fold.
        """
        return read_folds(self.run.path, [k])

    def save_calibrations(self) -> None:
        """Replace the validation temperature of each saved fold model with its cross-fitted calibration
        (``nblib.calibration``), so that predictions by the fold models are as calibrated as the out-of-fold
        results; nothing while a fold is unfinished."""
        if self.run.pending_folds():
            return
        res = read_folds(self.run.path, range(self.study.n_folds))
        for k, cal in res.calibrations.items():
            if (self.run.fold_model_dir(k) / "config.json").exists():
                calibration.save_calibration(self.run.fold_model_dir(k), cal)

    def train_final(self) -> None:
        """One model on all labelled texts, for the median of the folds' best epochs; saved in ``final/``."""
        keep_freed_memory()
        best = self.run.best_epochs()
        epochs = int(np.median(best)) if best else self.settings.epochs
        train = self.encoded.join(self.pseudo_labelled(None)) if self.teacher else self.encoded
        res, _ = self._fine_tune(
            replace(self.settings, epochs=epochs), train, None, None, self.study.settings.seed, "final"
        )
        if PartialState().is_main_process:
            out = bert.save_checkpoint(res.model, self.tokenizer, self.run.final_dir)
            info = {
                "epochs": epochs,
                "fold_best_epochs": best,
                "texts": len(train),
                "history": res.history.to_dict("records"),
            }
            # the final model has no held-out texts: it takes the calibration fitted on every out-of-fold output
            done = self.run.done_folds()
            final_cal = read_folds(self.run.path, done).pooled_calibration() if done else calibration.Calibration()
            calibration.save_calibration(out, final_cal)
            (out / layout.FINAL_DONE).write_text(json.dumps(info, indent=2))  # last: it marks the final model done
            log.info("Final model (%d texts, %d epochs) saved to %s", len(train), epochs, out)
        PartialState().wait_for_everyone()

    def write_launch(self) -> Path:
        """Write ``launch.json`` (the settings, paths made absolute) for workers and torchrun; return its path.

        For several machines: start ``-m nblib.bert_cv --config <path>`` under torchrun on every node (see the
        module docstring), then the same with ``--final``, then rerun the notebook to collect the results.
        """
        path = self.run.launch_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(to_params(absolute_paths(self.config)), indent=2, ensure_ascii=False))
        return path

    def cross_validate(self) -> ModelResults:
        """Every pending fold (side by side on several GPUs), then the final model if asked; all folds' results."""
        cfg, run = self.config, self.run
        pending, n_proc = run.pending_folds(), cfg.processes()
        n_ddp = n_proc if cfg.use_cpu() else min(n_proc, len(_visible_gpus()))  # DDP: one process per GPU
        # auto: DDP only while there are fewer pending folds than processes, and a GPU for each process
        ddp = n_proc > max(1, len(pending)) and n_ddp == n_proc
        mode = cfg.parallel if cfg.parallel != "auto" else ("ddp" if ddp else "folds")
        if mode == "ddp" and n_ddp < n_proc and pending:
            raise ValueError(
                f"num_processes={n_proc} with parallel='ddp' needs one GPU per process, but {n_ddp} are visible; "
                f"parallel='folds' runs several folds side by side on one GPU."
            )
        # fail before starting anything; the final model is trained by the DDP processes together
        bert.per_device_batch(
            self.settings.batch_size, n_ddp if mode == "ddp" or cfg.train_final else 1, self.settings.grad_accum
        )
        log.info(
            "%s: %d pending folds on %s, %d process(es)%s; precision %s.",
            cfg.name,
            len(pending),
            "CPU" if cfg.use_cpu() else "GPU",
            n_proc,
            f", parallel={mode}" if n_proc > 1 else "",
            cfg.resolved_precision(),
        )
        launch = self.write_launch()
        final = cfg.train_final and not (run.final_dir / layout.FINAL_DONE).exists()
        for k in [*pending, *([None] if final else [])] if self.teacher else []:  # once, before workers start
            self.pseudo_labelled(k)
        if pending:
            if n_proc == 1:
                self.run_folds(pending)
            elif mode == "ddp":
                launch_torchrun("nblib.bert_cv", launch, n_proc, run.log_dir / "ddp.log")
            else:
                _launch_fold_workers(cfg, launch, pending, n_proc, run.log_dir)
        self.save_calibrations()
        if final:
            if n_ddp == 1:
                self.train_final()
            else:
                launch_torchrun("nblib.bert_cv", launch, n_ddp, run.log_dir / "final.log", final=True)
        return run.finish()


def config_of_run(study: Study, name: str, **changes: object) -> FineTuneConfig:
    """The settings of a finished fine-tuning run of ``study`` (its saved ``config.json``), with ``changes``: a new
    run on the same folds with the same settings (06: TAPT and self-training against plain fine-tuning).

    The encoder is the run's resolved source, the precision the one it ran with, and the run name ``name`` (give a
    new run another ``run_name``).

    Args:
        study: the study.
        name: the run's folder name.
        **changes: fields to set (flat names, e.g. ``model``, ``run_name``, ``teacher``, ``device``).
    """
    run = study.run_folder(name)
    if not run.config_file.exists():
        raise FileNotFoundError(
            f"No run '{name}' in {run.path.parent}: run 03_bert_cv first (its run_name is bert_<model folder name>)."
        )
    saved = run.saved_config()
    if "source" not in saved:
        raise ValueError(f"'{name}' is not a fine-tuning run of 03_bert_cv.")
    params = (
        to_params(study.settings) | saved | {"model": layout.located(saved["source"], study.path), "run_name": name}
    )
    return from_params(FineTuneConfig, params | changes)


def results_on(job: FineTuneJob, folds: Sequence[int] | None = None) -> ModelResults:
    """Every fold of ``job`` (:meth:`FineTuneJob.cross_validate`), or only ``folds``: trained here if pending, read
    back for a comparison on their texts (quicker; no final model).

    Args:
        job: the fine-tuning job.
        folds: the folds (None: all, and the final model if the job's settings ask for it).
    """
    if folds is None:
        return job.cross_validate()
    job.run_folds([k for k in folds if not job.run.fold_done(k)])
    return read_folds(job.run.path, folds)


def write_launch(config: FineTuneConfig) -> Path:
    """Write a run's ``launch.json`` without training anything (for torchrun on several machines); return its path.

    Args:
        config: the run's settings, as 03_bert_cv would use them.
    """
    return FineTuneJob(config, open_study(config.study), write=False).write_launch()


# --- worker processes -------------------------------------------------------------------------------


def absolute_paths(cfg: C) -> C:
    """Data, pool, annotator sheets, results, a label-table file and a local model folder as absolute paths: workers may start in
    another folder or on another machine.

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


def _visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs), in the order torch numbers them."""
    n = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [str(i) for i in range(n)] if visible is None else [v.strip() for v in visible.split(",")][:n]


def _launch_fold_workers(cfg: FineTuneConfig, launch: Path, pending: list[int], n_proc: int, log_dir: Path) -> None:
    """``n_proc`` worker processes, each training its share of the folds on its own device.

    Worker i runs on GPU ``i mod (visible GPUs)``: more workers than GPUs put several folds side by side on
    one GPU (worth it when the model leaves the card mostly idle, e.g. bert-base with batch 32 of short texts).
    Every worker gets an equal share of the CPU threads (``OMP_NUM_THREADS``, unless it is set already).
    """
    gpus = None if cfg.use_cpu() else _visible_gpus()
    if gpus == []:
        raise ValueError("parallel='folds' on the GPU, but no GPU is visible: set device='cpu', or check the GPUs.")
    threads = str(max(1, (os.cpu_count() or 1) // n_proc))
    commands = []
    for i in range(n_proc):
        mine = pending[i::n_proc]
        if not mine:
            continue
        env, config = {"OMP_NUM_THREADS": threads, **os.environ}, launch
        if gpus is not None:  # the precision this process recorded, and an error instead of a silent CPU run
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            config = log_dir / f"worker_{i}.json"
            log_dir.mkdir(parents=True, exist_ok=True)
            worker = replace(cfg, device="cuda", precision=cfg.resolved_precision(), num_processes=1)
            config.write_text(json.dumps(to_params(absolute_paths(worker)), ensure_ascii=False))
        folds = ",".join(map(str, mine))
        commands.append(
            (
                [sys.executable, "-m", "nblib.bert_cv", "--config", str(config), "--folds", folds],
                env,
                log_dir / f"worker_{i}.log",
            )
        )
        log.info("worker %d: folds %s%s", i, mine, "" if gpus is None else f" on GPU {gpus[i % len(gpus)]}")
    _run_logged(commands)


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: ``python -m nblib.bert_cv --config FILE [--folds 0,2] [--final]`` (also under torchrun).

    Args:
        argv: the command-line arguments (default: ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(
        prog="python -m nblib.bert_cv",
        description="Train folds (or the final model) of a fine-tuning run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--config", required=True, type=Path, help="a launch.json written by 03_bert_cv")
    ap.add_argument(
        "--folds",
        type=cli.int_list(0),
        default=None,
        help="the folds to train, 0-based and comma-separated, e.g. 0,2 (none: every fold without results)",
    )
    ap.add_argument("--final", action="store_true", help="train the final model on all labelled texts")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = from_params(FineTuneConfig, json.loads(args.config.read_text()))
    study = open_study(cfg.study)
    try:
        study.check_folds(args.folds or [])
    except DataError as e:
        ap.error(f"argument --folds: {e}")
    state = PartialState(cpu=cfg.use_cpu())
    job = FineTuneJob(cfg, study, write=state.is_main_process)
    if not state.is_main_process and state.is_local_main_process:
        job.run.record_environment()  # one file per machine of a multi-node run (the main process writes its own)
    if args.final:
        job.train_final()
    else:
        job.run_folds(args.folds)


if __name__ == "__main__":
    main()
