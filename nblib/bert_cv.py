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
import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate import Accelerator, PartialState

from . import bert, calibration, cli, cv, hardware, layout, predict, self_training
from .data import DataError
from .folds import FoldSplit
from .hardware import Device, Hardware, Parallel, Precision, Processes
from .results import ModelResults, read_folds
from .settings import MAX_LEN, ModelSelection, StudySettings, from_params, identity, runtime, setting, to_params
from .study import Study, open_study

log = logging.getLogger(__name__)

OOM_ADVICE = (
    "CUDA ran out of memory at batch size {per_device} per device. Try, in this order: a smaller "
    "max_len (texts are short; see 01_eda's length table), precision='bf16' or 'fp16', a smaller "
    "batch_size with grad_accum > 1 (same effective batch), or a smaller model."
)


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
    max_len: int = setting(MAX_LEN, "tokens per text; longer texts are cut (and counted)", ge=1)
    truncation: Literal["head", "head+tail"] = setting("head", "what a cut text keeps: head, or head+tail")
    train: bert.TrainSettings = field(default_factory=bert.TrainSettings)
    selection: ModelSelection = field(default_factory=ModelSelection)
    train_final: bool = setting(True, "also train one model on all labelled texts")
    precision: Precision = runtime("auto", "auto, fp32, bf16 or fp16")
    device: Device = runtime("auto", "auto, cpu or cuda")
    num_processes: Processes = runtime("auto", "auto: every visible GPU (1 on CPU)", ge=1)
    parallel: Parallel = runtime("auto", "auto, folds (whole folds side by side) or ddp (one fold over every GPU)")
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


def _fine_tune_retrying(
    cfg: FineTuneConfig, settings: bert.TrainSettings, **kw
) -> tuple[bert.FoldResult, bert.TrainSettings]:
    """fine_tune with a fresh Accelerator, and on CUDA out-of-memory: halve the per-device batch (doubling
    accumulation) and retry. Returns the result and the settings that fitted, for the next folds."""
    while True:
        accelerator = hardware.make_accelerator(cfg)
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
        self.source = bert.model_source(config.model, study)
        identity = config.identity(layout.stored_path(self.source, study.path))  # the folder may move
        self.teacher = self_training.Teacher(study, config.teacher, config.pseudo) if config.teacher else None
        if self.teacher:
            identity["pool_sha"] = self.teacher.pool_sha
        self.run = study.open_run(config.name, identity, write=write)
        self.tokenizer, self.encoded = bert.tokenize_texts(
            self.source, study.data.texts, config.max_len, study.data.labels, config.truncation
        )
        if self.teacher:
            self.teacher.encode_pool(self.tokenizer, config.max_len, config.truncation)
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
        collator = bert.make_collator(self.tokenizer, hardware.make_accelerator(self.config))
        batch = next(iter(bert.train_loader(self.encoded.subset(split.train), collator, size, split.seed)))
        batch["idx"] = torch.as_tensor(split.train)[batch["idx"]]  # back to rows of the study's data
        return batch

    def pseudo_labelled(self, k: int | None) -> bert.Encoded:
        """Self-training: the pool texts the teacher's fold-k model labels confidently, with those labels, as training
        texts for fold ``k`` (None: the teacher's final model, for the final model); saved in ``pseudo_labels/``.

        Args:
            k: the fold (None: the final model).
        """
        device = "cpu" if self.config.use_cpu() else "cuda"
        return self.teacher.pseudo_labelled(k, self.run.path / "pseudo_labels", device)

    def trains_here(self) -> bool:
        """Whether :meth:`cross_validate` trains the folds in this process (one process: the CPU or one GPU), rather
        than in fold workers or under torchrun."""
        return self.config.processes() == 1

    def accelerator(self) -> Accelerator:
        """A new Accelerator for one model on this process's device, with the run's precision."""
        return hardware.make_accelerator(self.config)

    def fold_parts(self, split: FoldSplit) -> tuple[bert.Encoded, bert.Encoded, bert.Encoded]:
        """A fold's tokenized training (self-training: with the pool texts its teacher labelled), validation and test
        texts.

        Args:
            split: the fold.
        """
        e = self.encoded
        train = e.subset(split.train)
        if self.teacher:
            train = train.join(self.pseudo_labelled(split.fold))
        return train, e.subset(split.val), e.subset(split.test)

    def fit_fold(self, split: FoldSplit) -> cv.FoldOutput:
        """Fine-tune a fresh model on a fold's training part (self-training: and the pool texts its teacher labelled),
        keep the best epoch, predict its test part once.

        Args:
            split: the fold.
        """
        train, val, test = self.fold_parts(split)
        res, self.settings = self._fine_tune(self.settings, train, val, test, split.seed, f"fold {split.fold}")
        return self.fold_output(split, res, len(train))

    def fold_output(self, split: FoldSplit, res: bert.FoldResult, texts: int) -> cv.FoldOutput:
        """A fold's output for its metrics row: the temperature fitted on its validation part, best epoch, checksum;
        its model saved (``save_fold_models``) with that calibration.

        Args:
            split: the fold.
            res: the fine-tuned fold.
            texts: how many texts it was trained on (self-training: the pool texts included).
        """
        temperature = calibration.fit_temperature(res.val_logits, self.study.data.labels[split.val])
        if self.config.save_fold_models and PartialState().is_main_process:
            out = bert.save_checkpoint(res.model, self.tokenizer, self.run.fold_model_dir(split.fold))
            predict.save_record(out, self.config.max_len, self.config.truncation)  # how 05 reads texts for it
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
            extra["pseudo_labelled"] = texts - len(split.train)
        return cv.FoldOutput(res.test_probs, extra, res.history)

    def save_fold(self, split: FoldSplit, res: bert.FoldResult, texts: int, seconds: float) -> dict:
        """Save a fold trained step by step (03's fold 0) in the run, as :meth:`run_folds` saves it: a rerun and
        :meth:`cross_validate` then read it back. Returns its metrics row.

        Args:
            split: the fold.
            res: the fine-tuned fold (:func:`nblib.bert.fold_result`).
            texts: how many texts it was trained on.
            seconds: how long it took.
        """
        return cv.save_fold(self.run, split, self.fold_output(split, res, texts), seconds)

    @contextlib.contextmanager
    def out_of_memory_advice(self) -> Iterator[None]:
        """Turn CUDA out-of-memory in the steps of a fold run one by one into the advice of what to change
        (:meth:`run_folds` retries with a halved per-device batch by itself)."""
        try:
            yield
        except torch.OutOfMemoryError:
            s = self.settings
            per_device = bert.per_device_batch(s.batch_size, PartialState().num_processes, s.grad_accum)
            raise RuntimeError(
                OOM_ADVICE.format(per_device=per_device) + " Or train the fold in one call, job.run_folds([k]), "
                "which retries with half the per-device batch."
            ) from None

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
        calibrations = read_folds(self.run.path, range(self.study.n_folds)).calibrations
        calibration.save_with_models(calibrations, self.run.fold_model_dir)

    def train_final(self) -> None:
        """One model on all labelled texts, for the median of the folds' best epochs; saved in ``final/``."""
        hardware.keep_freed_memory()
        best = self.run.best_epochs()
        epochs = int(np.median(best)) if best else self.settings.epochs
        train = self.encoded.join(self.pseudo_labelled(None)) if self.teacher else self.encoded
        res, _ = self._fine_tune(
            replace(self.settings, epochs=epochs), train, None, None, self.study.settings.seed, "final"
        )
        if PartialState().is_main_process:
            out = bert.save_checkpoint(res.model, self.tokenizer, self.run.final_dir)
            predict.save_record(out, self.config.max_len, self.config.truncation)
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
        return hardware.write_launch_file(self.config, self.run.launch_file)

    def cross_validate(self) -> ModelResults:
        """Every pending fold (side by side on several GPUs), then the final model if asked; all folds' results."""
        cfg, run = self.config, self.run
        pending, n_proc = run.pending_folds(), cfg.processes()
        mode, n_ddp = hardware.parallel_mode(cfg, cfg.parallel, len(pending))
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
                hardware.launch_torchrun("nblib.bert_cv", launch, n_proc, run.log_dir / "ddp.log")
            else:
                hardware.launch_fold_workers(cfg, "nblib.bert_cv", launch, pending, n_proc, run.log_dir)
        self.save_calibrations()
        if final:
            if n_ddp == 1:
                self.train_final()
            else:
                hardware.launch_torchrun("nblib.bert_cv", launch, n_ddp, run.log_dir / "final.log", final=True)
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
