"""Label new texts with a saved fine-tuned model (the final model of 03_bert_cv, or any fold model), or with
the average of a run's fold models.

    python -m nblib.predict MODEL_DIR in.xlsx out.xlsx --column Sentence
    python -m nblib.predict RUN_DIR in.xlsx out.xlsx --column Sentence --ensemble folds

Texts are read as the model was trained: 03_bert_cv writes ``prediction.json`` (``max_len``, ``truncation``) into
every model folder it saves, and ``max_len``/``truncation`` left unset (None) take its values; a value given that
differs is used, with a warning (see docs/predict.md). A model saved without that file is read with ``max_len=128``
and ``truncation="head"``, the defaults of its time, and one warning says so.
Probabilities are calibrated: each saved model's logits are divided by the temperature in its
``calibration.json`` and shifted by its class biases (``nblib.calibration``; no file means uncalibrated).
``--ensemble folds`` averages the k fold models' calibrated probabilities (``<run>/fold_models/fold_<k>``, saved
by 03_bert_cv with ``save_fold_models=True``) instead of using the one final model.
Texts are batched in length order (least padding) with a progress bar, on GPU when there is one.
Empty texts are kept in place with no prediction; nothing is dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from . import bert, calibration, cli
from .layout import RunFolder, finished_model, run_of_saved_model, saved_model_label, unfinished_model
from .settings import MAX_LEN, Ensemble, PredictSettings, Truncation
from .sheets import DataError, Params, clean_text, read_sheet, write_table, writer_kind

log = logging.getLogger(__name__)
ENSEMBLES = typing.get_args(Ensemble)
RECORD_FILE = "prediction.json"  # next to a saved model: how it reads texts (see PredictionRecord)


@dataclass(frozen=True)
class PredictParams(Params):
    """:class:`nblib.sheets.Params` and the spelling of prediction's own parameters, for the messages."""

    ensemble: str = "ensemble="
    max_len: str = "max_len="
    truncation: str = "truncation="
    batch_size: str = "batch_size="
    device: str = "device="


NOTEBOOK_PARAMS = PredictParams(
    columns="input_col=", sheet="input_sheet=", header_row="input_header_row=", encoding="input_encoding="
)  # how 05_predict names predict_file's parameters
# the command line's options that are PredictSettings fields, by field name (type, range, choices, help from there)
CLI_OPTIONS = {
    "batch_size": "--batch-size",
    "max_len": "--max-len",
    "truncation": "--truncation",
    "device": "--device",
    "ensemble": "--ensemble",
}
CLI_PARAMS = PredictParams(**vars(cli.SHEET_PARAMS), **{name: f"{flag} " for name, flag in CLI_OPTIONS.items()})
DEVICES = typing.get_args(typing.get_type_hints(PredictSettings)["device"])


@dataclass(frozen=True)
class PredictionRecord:
    """How a saved model reads texts, as it was trained: written as ``prediction.json`` next to the model.

    The model's other needs sit next to it too: its label names in ``config.json`` (``id2label``), its calibration
    in ``calibration.json``.
    """

    max_len: int = MAX_LEN
    truncation: Truncation = "head"


OLD_RECORD = PredictionRecord()  # how a model saved without prediction.json is read: the defaults of its time


def save_record(model_dir: str | Path, max_len: int, truncation: str) -> Path:
    """Write ``prediction.json`` into a saved model's folder: the ``max_len`` and ``truncation`` it was trained with
    (read back by :func:`load_record`).

    Args:
        model_dir: the saved model's folder.
        max_len: tokens per text in training.
        truncation: what a cut text kept in training.
    """
    path = Path(model_dir) / RECORD_FILE
    path.write_text(json.dumps(asdict(PredictionRecord(int(max_len), truncation)), indent=2))
    return path


def load_record(model_dir: str | Path) -> PredictionRecord | None:
    """The saved :class:`PredictionRecord` of a model (None: saved before models carried one).

    Args:
        model_dir: the saved model's folder.

    Raises:
        bert.ModelNotAvailableError: the file is damaged; the message names it.
    """
    path = Path(model_dir) / RECORD_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        record = PredictionRecord(int(saved["max_len"]), saved["truncation"])
        if record.truncation not in typing.get_args(Truncation):
            raise ValueError(f"truncation {record.truncation!r} is not one of {typing.get_args(Truncation)}")
        return record
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise bert.ModelNotAvailableError(
            f"{path} is damaged ({type(e).__name__}: {e}). Copy the model folder again, or write it back with the "
            f"max_len and truncation of the run's config.json, or delete it to read texts with {OLD_RECORD}."
        ) from None


class CalibratedClassifier(torch.nn.Module):
    """Saved classifiers with their calibrations as one model whose softmax is the mean of their calibrated
    probabilities: one member (a final or fold model), or a run's fold models (the fold ensemble).

    Its ``logits`` are ``log mean_k softmax(z_k / T_k + b_k)``, so :func:`predict_texts` (and
    ``nblib.bert.evaluate``) use it like any classifier; ``config`` is the first member's (label names);
    ``record`` says how it reads texts (:class:`PredictionRecord`).

    Args:
        models: the classifiers, with the same labels.
        calibrations: the calibration of each (from its ``calibration.json``).
        record: how they read texts (from ``prediction.json``; None: not known, read with :data:`OLD_RECORD`).
    """

    def __init__(
        self,
        models: Sequence[PreTrainedModel],
        calibrations: Sequence[calibration.Calibration],
        record: PredictionRecord | None = None,
    ):
        super().__init__()
        self.record = record
        self.warned: set[tuple[str, object]] = set()  # the settings given otherwise that were warned about
        n_classes = models[0].config.num_labels
        self.members = torch.nn.ModuleList(models)
        self.register_buffer("temperatures", torch.tensor([c.temperature for c in calibrations], dtype=torch.float32))
        biases = [c.bias if c.bias is not None else [0.0] * n_classes for c in calibrations]
        self.register_buffer("biases", torch.tensor(biases, dtype=torch.float32))
        self.config = models[0].config

    def forward(self, **batch: torch.Tensor) -> SequenceClassifierOutput:
        """The log of the members' mean calibrated probabilities, as ``logits``.

        Args:
            **batch: the tokenized batch (``input_ids``, ``attention_mask``, …).
        """
        logp = torch.stack(
            [
                torch.log_softmax(m(**batch).logits.float() / t + b, -1)
                for m, t, b in zip(self.members, self.temperatures, self.biases)
            ]
        )
        return SequenceClassifierOutput(logits=torch.logsumexp(logp, 0) - np.log(len(self.members)))


def _is_saved_model(folder: Path) -> bool:
    """Whether ``folder`` holds a model's config.json (a damaged one counts: loading it names the damage)."""
    config = folder / "config.json"
    try:
        return "model_type" in json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return config.is_file()


def model_dirs(
    model_dir: str | Path, ensemble: Ensemble = "final", params: PredictParams = NOTEBOOK_PARAMS
) -> list[Path]:
    """The saved model folder(s) a prediction uses; a clear error naming what to pass when they are not there.

    Args:
        model_dir: with ``ensemble="final"`` a saved model (``<run>/final`` or ``<run>/fold_models/fold_<k>``);
            with ``"folds"`` a run's results folder (``results/<study>/models/<run>``).
        ensemble: "final" (the one model) or "folds" (every fold model of the run).
        params: how the caller names the parameters, for the messages.

    Raises:
        bert.ModelNotAvailableError: the folder is not what ``ensemble`` needs, or holds no (fold) models.
    """
    model_dir = Path(model_dir)
    if ensemble not in ENSEMBLES:
        raise ValueError(f"{params.ensemble}{ensemble!r} is not one of {ENSEMBLES}.")
    is_run = (model_dir / "folds").is_dir() or (model_dir / "fold_models").is_dir()
    if ensemble == "folds":
        if _is_saved_model(model_dir):
            run = model_dir.parents[1] if model_dir.parent.name == "fold_models" else model_dir.parent
            raise bert.ModelNotAvailableError(
                f"{model_dir} is one saved model; {params.ensemble}folds averages a run's fold models: pass the "
                f"run's results folder ({run}), or set {params.ensemble}final to use this one model."
            )
        if not is_run:
            raise bert.ModelNotAvailableError(
                f"{model_dir} is not the results folder of a run (results/<study>/models/<run>): "
                f"{params.ensemble}folds needs one."
            )
        run = RunFolder(model_dir)
        folds = run.fold_model_dirs()
        unfinished = [why for p in folds if (why := unfinished_model(p))]
        if unfinished:  # a fold model whose save did not finish: say so, rather than count it missing
            raise bert.ModelNotAvailableError(unfinished[0] + ".")
        n_folds = run.saved_config().get("n_folds") if run.config_file.exists() else None
        if not folds or (n_folds and len(folds) != n_folds):
            raise bert.ModelNotAvailableError(
                f"{model_dir} holds {len(folds)} fold model(s) of {n_folds} folds: fold models are saved while their "
                f"folds train, when 03_bert_cv runs with save_fold_models=True (the default). Rerun it with that "
                f"setting and another run_name (or move this run folder away), or use the final model "
                f"({run.final_dir}) with {params.ensemble}final."
            )
        return folds
    if is_run:
        final = model_dir / "final"
        raise bert.ModelNotAvailableError(
            f"{model_dir} is the results folder of a run, not a saved model: pass {final} (trained on all texts)"
            + ("" if (final / "config.json").exists() else ", once the run has trained it,")
            + f" or {model_dir / 'fold_models'}/fold_<k>, or average its fold models with {params.ensemble}folds."
        )
    if not _is_saved_model(model_dir):
        raise bert.ModelNotAvailableError(
            f"No saved model in {model_dir} (no model's config.json). Pass the 'final' folder or a "
            f"'fold_models/fold_<k>' folder written by 03_bert_cv, e.g. results/<study>/models/<run>/final."
        )
    return [finished_model(model_dir)]


def load_model(
    model_dir: str | Path, ensemble: Ensemble = "final", params: PredictParams = NOTEBOOK_PARAMS
) -> tuple[CalibratedClassifier, PreTrainedTokenizerBase]:
    """A saved classifier (or a run's fold models) with its calibration, and the tokenizer; a clear error when the
    folder is not what ``ensemble`` needs.

    Args:
        model_dir: a folder written by ``save_pretrained`` (``<run>/final`` or ``<run>/fold_models/fold_<k>``),
            or with ``ensemble="folds"`` the run's results folder (see :func:`model_dirs`).
        ensemble: "final" (the one model) or "folds" (the mean of the fold models' calibrated probabilities).
        params: how the caller names the parameters, for the messages.

    Returns:
        The model (:class:`CalibratedClassifier`; its softmax gives calibrated probabilities) and its tokenizer.

    Raises:
        bert.ModelNotAvailableError: see :func:`model_dirs`; a folder whose save did not finish, or whose files are
            missing or damaged (:func:`nblib.bert.check_model_folder`); fold models with different labels or
            vocabularies.
    """
    dirs = model_dirs(model_dir, ensemble, params)
    tokenizers = [bert.load_tokenizer(str(d)) for d in dirs]  # checks each folder first
    models = [bert.load_pretrained(AutoModelForSequenceClassification, str(d)) for d in dirs]
    differ = [
        d
        for d, m, t in zip(dirs, models, tokenizers)
        if m.config.id2label != models[0].config.id2label or t.get_vocab() != tokenizers[0].get_vocab()
    ]
    if differ:
        raise bert.ModelNotAvailableError(f"{differ} have other labels or another vocabulary than {dirs[0]}.")
    cals = [_calibration(d) for d in dirs]
    log.info("%d model(s) from %s, calibration(s): %s", len(dirs), model_dir, [c.describe() for c in cals])
    return CalibratedClassifier(models, cals, _record(dirs)), tokenizers[0]


def _record(dirs: Sequence[Path]) -> PredictionRecord | None:
    """The one record of the models in ``dirs`` (None, warned once: saved without one); an error when they differ."""
    records = [load_record(d) for d in dirs]
    if any(r != records[0] for r in records):
        raise bert.ModelNotAvailableError(
            f"{[str(d) for d in dirs]} read texts differently ({RECORD_FILE}: {records}): average fold models of one run."
        )
    if records[0] is None:
        log.warning(
            "%s has no %s (saved before models recorded how they read texts): predicting with max_len=%d and "
            "truncation='%s', the defaults of its time; if it was trained otherwise (see its run's config.json), "
            "pass those values.",
            dirs[0],
            RECORD_FILE,
            OLD_RECORD.max_len,
            OLD_RECORD.truncation,
        )
    return records[0]


def reading(
    model: torch.nn.Module,
    max_len: int | None = None,
    truncation: str | None = None,
    params: PredictParams = NOTEBOOK_PARAMS,
) -> tuple[int, str]:
    """The ``max_len`` and ``truncation`` a prediction uses: the model's (its :class:`PredictionRecord`) where
    None, else those given, with a warning for each that differs from how the model was trained.

    Args:
        model: a classifier from :func:`load_model` (its ``record``); a plain classifier has none
            (:data:`OLD_RECORD` fills in, no warning).
        max_len: tokens per text (None: the model's).
        truncation: "head" or "head+tail" (None: the model's).
        params: how the caller names the parameters, for the warnings (once per model and value).
    """
    record = getattr(model, "record", None)
    trained = record or OLD_RECORD
    for name, given, was, effect in (
        (params.max_len, max_len, trained.max_len, "texts are cut at another length than in training"),
        (params.truncation, truncation, trained.truncation, "long texts keep other tokens than in training"),
    ):
        if record is not None and given is not None and given != was and (name, given) not in model.warned:
            model.warned.add((name, given))
            log.warning(
                "%s%r, but the model was trained with %r (its %s): %s, and its predictions may differ from its "
                "evaluated ones; leave it unset to read texts as trained.",
                name,
                given,
                was,
                RECORD_FILE,
                effect,
            )
    return (trained.max_len if max_len is None else max_len), (trained.truncation if truncation is None else truncation)


def _calibration(model_dir: Path) -> calibration.Calibration:
    """The saved calibration of a model; a damaged ``calibration.json`` is one message that names it."""
    try:
        return calibration.load_calibration(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise bert.ModelNotAvailableError(
            f"{Path(model_dir) / calibration.CALIBRATION_FILE} is damaged ({type(e).__name__}: {e}). Copy the model "
            f"folder again; or, for a model of 03_bert_cv, rerun 03_bert_cv with the same run_name (it writes the "
            f"calibration again); or delete the file to predict with uncalibrated probabilities."
        ) from None


def check_device(device: str, params: PredictParams = NOTEBOOK_PARAMS) -> None:
    """Refuse an unknown device, and ``"cuda"`` where PyTorch sees no GPU (as training does) instead of running
    on the CPU without a word.

    Args:
        device: "auto", "cpu" or "cuda".
        params: how the caller names the parameter.

    Raises:
        DataError: the device cannot be used here.
    """
    if device not in DEVICES:
        raise DataError(f"{params.device}{device!r} is not one of {DEVICES}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise DataError(
            f"{params.device}cuda, but PyTorch sees no CUDA GPU here (a CPU-only torch build, no driver, or "
            f"CUDA_VISIBLE_DEVICES empty). Use {params.device}cpu or auto to predict on the CPU."
        )


def check_output(out_path: str | Path, overwrite: bool = False) -> Path:
    """Check before any work that the predictions can be written to ``out_path``: a known format, an existing
    folder (not a file) that this process may write to, and no file there unless ``overwrite``.

    Args:
        out_path: the output file.
        overwrite: an existing file may be replaced.

    Raises:
        FileExistsError: the file exists and ``overwrite`` is False.
        DataError: the format is unknown, or the folder is missing, a file or not writable.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(
            f"{out_path} exists; choose another output file, or pass overwrite=True (--overwrite on the command line)."
        )
    if out_path.is_dir():
        raise DataError(f"The output {out_path} is a folder: give a file name in it, e.g. {out_path / 'out.xlsx'}.")
    writer_kind(out_path)
    folder = out_path.parent
    above = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if above is not None and not above.is_dir():
        raise DataError(f"Cannot write {out_path}: {above} is a file, not a folder. Choose an output path in a folder.")
    if not folder.is_dir():
        raise DataError(f"Cannot write {out_path}: the folder {folder} does not exist. Create it, or choose another.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DataError(
            f"Cannot write to {folder} ({e.strerror}): the folder is read-only, full or not yours. Choose an output "
            f"path on a writable disk."
        ) from None
    return out_path


def predict_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_len: int | None = None,
    truncation: str | None = None,
    device: str = "auto",
    progress: bool = True,
    params: PredictParams = NOTEBOOK_PARAMS,
) -> pd.DataFrame:
    """Predicted label id and name, every class probability, and whether the text was cut, one row per text.

    Args:
        model: a classifier from :func:`load_model` (calibrated probabilities; a plain classifier gives raw ones).
        tokenizer: its tokenizer.
        texts: the texts; empty ones get no prediction (NaN).
        batch_size: texts per batch.
        max_len: tokens per text read by the model; longer texts are cut (``truncated`` is True). None: as the
            model was trained (see :func:`reading`); another value is used, with a warning.
        truncation: "head" (keep the start of a long text) or "head+tail" (its start and its end); None: as the
            model was trained.
        device: "auto", "cpu" or "cuda".
        progress: show a progress bar.
        params: how the caller names the parameters, for the messages.

    Returns:
        Columns ``pred_id``, ``pred_label``, ``prob_<label>`` for every label, and ``truncated``.

    Raises:
        DataError: ``max_len`` outside what the model reads, ``batch_size`` below 1, or an unusable ``device``.
    """
    max_len, truncation = reading(model, max_len, truncation, params)
    return _predict(model, tokenizer, texts, batch_size, max_len, truncation, device, progress, params)


def _check(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int, max_len: int, device: str, params
) -> None:
    """Refuse a ``max_len`` the model cannot read, a ``batch_size`` below 1 or an unusable device."""
    bert.check_max_len(max_len, model.config, tokenizer, params.max_len)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"{params.batch_size}{batch_size!r} is out of range: give a whole number ≥ 1.")
    check_device(device, params)


def class_names(model: PreTrainedModel) -> list[str]:
    """A classifier's class names, in label-id order (its ``id2label``).

    Args:
        model: the classifier.
    """
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def _predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int,
    max_len: int,
    truncation: str,
    device: str,
    progress: bool,
    params: PredictParams,
) -> pd.DataFrame:
    """:func:`predict_texts` with ``max_len`` and ``truncation`` settled."""
    _check(model, tokenizer, batch_size, max_len, device, params)
    names = class_names(model)

    def score(present: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        ds = bert.Encoded(tokenizer, present, max_len, truncation=truncation)
        loader = accelerator.prepare(bert.eval_loader(ds, bert.make_collator(tokenizer, accelerator), batch_size))
        logits = bert.evaluate(accelerator.prepare(model), loader, accelerator, desc="predicting" if progress else None)
        return bert.softmax(logits), {"truncated": np.asarray(ds.truncated, dtype=bool)}

    return label_texts(texts, names, score, flags=("truncated",))


def label_texts(
    texts: Sequence[str],
    names: Sequence[str],
    score: Callable[[list[str]], tuple[np.ndarray, dict[str, np.ndarray]]],
    flags: Sequence[str] = (),
) -> pd.DataFrame:
    """The prediction table of ``texts`` (:func:`prediction_table`), whatever scores them: empty texts are not
    scored and keep their row with no prediction (counted in the log), nothing is dropped.

    Args:
        texts: the texts, cleaned here (:func:`nblib.sheets.clean_text`).
        names: the class names, in label-id order.
        score: the non-empty texts → their class probabilities (a NaN row: no prediction) and any flag columns.
        flags: the boolean columns ``score`` adds, False for empty texts.
    """
    texts = [clean_text(t) for t in texts]
    present = [i for i, t in enumerate(texts) if t]
    probs = np.full((len(texts), len(names)), np.nan)
    columns = {flag: np.zeros(len(texts), dtype=bool) for flag in flags}
    if present:
        probs[present], scored = score([texts[i] for i in present])
        for flag in flags:
            columns[flag][present] = scored[flag]
    out = prediction_table(probs, names)
    for flag, values in columns.items():
        out[flag] = values
    if len(present) < len(texts):
        log.warning("%d empty text(s) got no prediction (rows kept, prediction left blank).", len(texts) - len(present))
    return out


def prediction_table(probs: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """The prediction columns of a sheet: ``pred_id``, ``pred_label`` and ``prob_<name>`` for every class; a row
    of NaN probabilities (an empty text, a text without a valid answer) keeps its place with no prediction.

    Args:
        probs: one row of class probabilities per text.
        names: the class names, in label-id order.
    """
    out = pd.DataFrame(
        {"pred_id": pd.array([int(p.argmax()) if not np.isnan(p).any() else None for p in probs], dtype="Int64")}
    )
    out["pred_label"] = [names[i] if i is not pd.NA else "" for i in out["pred_id"]]
    for j, name in enumerate(names):
        out[f"prob_{name}"] = probs[:, j]
    return out


def predict_file(
    model_dir: str | Path,
    in_path: str | Path,
    out_path: str | Path,
    *,
    column: str = "Sentence",
    sheet: str | int | None = None,
    header_row: int = 1,
    encoding: str | None = None,
    batch_size: int = 64,
    max_len: int | None = None,
    truncation: str | None = None,
    device: str = "auto",
    ensemble: Ensemble = "final",
    overwrite: bool = False,
    params: PredictParams = NOTEBOOK_PARAMS,
) -> pd.DataFrame:
    """Read a sheet, predict its ``column``, write the sheet with the predictions appended.

    Args:
        model_dir: the saved model, or with ``ensemble="folds"`` the run's folder (see :func:`load_model`).
        in_path: the sheet to label (.xlsx, .csv, .tsv), read by :func:`nblib.sheets.read_sheet`.
        out_path: where to write (.xlsx, .csv or .tsv, by suffix), by :func:`nblib.sheets.write_table`.
        column: the text column.
        sheet: sheet name or 0-based index of an .xlsx input (None: the first).
        header_row: the row of the column names in the input (1-based).
        encoding: the encoding of a CSV/TSV input (None: detected).
        batch_size: texts per batch.
        max_len: tokens per text read by the model (None: as the model was trained; see :func:`reading`).
        truncation: "head" or "head+tail" (see :class:`nblib.bert.Encoded`; None: as the model was trained).
        device: "auto", "cpu" or "cuda".
        ensemble: "final" (one model) or "folds" (the mean of the run's fold models' calibrated probabilities).
        overwrite: replace an existing output file.
        params: how the caller names these parameters, for the error messages.

    Returns:
        The input's columns followed by the prediction columns (see :func:`predict_texts`).
    """
    check_output(out_path, overwrite)  # before the model loads and the texts are predicted
    labeller = open_saved_model(model_dir, ensemble, max_len, truncation, batch_size, device, params)
    return labeller.predict_file(
        in_path, out_path, column=column, sheet=sheet, header_row=header_row, encoding=encoding, overwrite=overwrite
    )


class Labeller:
    """What labels new texts (05, the command line): a subclass gives ``names`` (the class names, in label-id order),
    ``run_dir`` (the run whose out-of-fold predictions give the error rates), ``label`` (a short name for file names),
    ``describe()`` and ``predict_texts``; labelling a sheet is done here, the same for every kind."""

    params: PredictParams = NOTEBOOK_PARAMS
    names: list[str]

    def predict_texts(self, texts: Sequence[str], progress: bool = True) -> pd.DataFrame:
        """``pred_id``, ``pred_label`` and every ``prob_<name>`` (:func:`prediction_table`), one row per text.

        Args:
            texts: the texts; empty ones get no prediction.
            progress: show a progress bar.
        """
        raise NotImplementedError

    def columns(self) -> list[str]:
        """The columns :meth:`predict_texts` gives."""
        return list(prediction_table(np.empty((0, len(self.names))), self.names).columns)

    def companions(self, out_path: Path) -> list[Path]:
        """The files a kind writes next to a labelled sheet (:meth:`wrote`), checked with it before any work.

        Args:
            out_path: the labelled sheet.
        """
        return []

    def wrote(self, result: pd.DataFrame, out_path: Path) -> None:
        """What a kind adds once a labelled sheet is written (a log line, a file next to it).

        Args:
            result: the sheet as written.
            out_path: where.
        """
        log.info("Wrote %d predictions to %s.", len(result), out_path)

    def predict_file(
        self,
        in_path: str | Path,
        out_path: str | Path,
        *,
        column: str = "Sentence",
        sheet: str | int | None = None,
        header_row: int = 1,
        encoding: str | None = None,
        overwrite: bool = False,
    ) -> pd.DataFrame:
        """Read a sheet, label its ``column``, write the sheet with the prediction columns appended.

        Args:
            in_path: the sheet to label (.xlsx, .csv, .tsv), read by :func:`nblib.sheets.read_sheet`.
            out_path: where to write (.xlsx, .csv or .tsv, by suffix), by :func:`nblib.sheets.write_table`.
            column: the text column.
            sheet: sheet name or 0-based index of an .xlsx input (None: the first).
            header_row: the row of the column names in the input (1-based).
            encoding: the encoding of a CSV/TSV input (None: detected).
            overwrite: replace an existing output file.

        Returns:
            The input's columns followed by the prediction columns.
        """
        out_path = check_output(out_path, overwrite)
        taken = [str(c) for c in self.companions(out_path) if c.exists() and not overwrite]
        if taken:
            raise FileExistsError(
                f"{taken} exist(s), written with an earlier {out_path.name}: choose another output file, or pass "
                f"overwrite=True (--overwrite on the command line)."
            )
        table = read_sheet(in_path, [column], sheet, header_row, encoding, self.params)
        for problem, rows, action in table.notes:
            log.warning("%s: %d row(s) %s — %s", Path(in_path).name, len(rows), problem, action)
        clash = [c for c in self.columns() if c in table.df.columns]
        if clash:
            raise DataError(
                f"{Path(in_path).name} already has column(s) {clash} (a sheet of earlier predictions?): "
                f"rename or remove them, so that the new predictions do not mix with them."
            )
        texts = ["" if pd.isna(v) else str(v) for v in table.df[column]]
        result = pd.concat([table.df.reset_index(drop=True), self.predict_texts(texts)], axis=1)
        write_table(result, out_path)
        self.wrote(result, out_path)
        return result


@dataclass
class SavedModelLabeller(Labeller):
    """A saved fine-tuned model (or a run's fold models), loaded once, with how it reads texts
    (:func:`open_saved_model`); ``nblib.labellers.LlmLabeller`` is its LLM twin."""

    model_dir: Path
    model: CalibratedClassifier
    tokenizer: PreTrainedTokenizerBase
    max_len: int
    truncation: str
    batch_size: int = 64
    device: str = "auto"
    params: PredictParams = NOTEBOOK_PARAMS

    @property
    def names(self) -> list[str]:
        """The class names, in label-id order."""
        return class_names(self.model)

    @property
    def run_dir(self) -> Path:
        """The results folder of the run whose out-of-fold predictions give the model's error rates."""
        return run_of_saved_model(self.model_dir)

    @property
    def label(self) -> str:
        """A short name for file names (:func:`nblib.layout.saved_model_label`)."""
        return saved_model_label(self.model_dir)

    def describe(self) -> str:
        """The model, its labels and how it reads texts, in a few lines."""
        record = self.model.record or "not recorded"
        return (
            f"model: {self.model_dir}\nlabels: {self.names}\ntexts read with max_len={self.max_len}, "
            f"truncation={self.truncation!r} (trained: {record})"
        )

    def predict_texts(self, texts: Sequence[str], progress: bool = True) -> pd.DataFrame:
        """:func:`predict_texts` with this model's settings: the prediction columns and ``truncated``.

        Args:
            texts: the texts.
            progress: show a progress bar.
        """
        return _predict(
            self.model,
            self.tokenizer,
            texts,
            self.batch_size,
            self.max_len,
            self.truncation,
            self.device,
            progress,
            self.params,
        )

    def columns(self) -> list[str]:
        """The columns :meth:`predict_texts` gives (``truncated`` last)."""
        return [*super().columns(), "truncated"]

    def wrote(self, result: pd.DataFrame, out_path: Path) -> None:
        """Log how many texts were cut.

        Args:
            result: the sheet as written.
            out_path: where.
        """
        log.info(
            "Wrote %d predictions to %s (%d texts cut at max_len=%d, truncation='%s').",
            len(result),
            out_path,
            int(result["truncated"].sum()),
            self.max_len,
            self.truncation,
        )


def open_saved_model(
    model_dir: str | Path,
    ensemble: Ensemble = "final",
    max_len: int | None = None,
    truncation: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    params: PredictParams = NOTEBOOK_PARAMS,
) -> SavedModelLabeller:
    """Load a saved model (:func:`load_model`) and settle how it reads texts (:func:`reading`), all checked.

    Args:
        model_dir: the saved model, or with ``ensemble="folds"`` the run's folder.
        ensemble: "final" (one model) or "folds" (the mean of the run's fold models' calibrated probabilities).
        max_len: tokens per text (None: as the model was trained).
        truncation: "head" or "head+tail" (None: as the model was trained).
        batch_size: texts per batch.
        device: "auto", "cpu" or "cuda".
        params: how the caller names these parameters, for the messages.
    """
    check_device(device, params)
    model, tokenizer = load_model(model_dir, ensemble, params)
    max_len, truncation = reading(model, max_len, truncation, params)
    _check(model, tokenizer, batch_size, max_len, device, params)
    return SavedModelLabeller(Path(model_dir), model, tokenizer, max_len, truncation, batch_size, device, params)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: its options that are :class:`nblib.settings.PredictSettings` fields
    (:data:`CLI_OPTIONS`) take their type, range, choices, default and help from the field."""
    ap = argparse.ArgumentParser(
        prog="python -m nblib.predict",
        description="Label texts with a saved model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "model_dir",
        help="a folder written by 03_bert_cv (…/final or …/fold_models/fold_<k>), or with --ensemble folds its run folder",
    )
    ap.add_argument("input", help="the sheet to label: .xlsx, .csv or .tsv")
    ap.add_argument("output", help=".xlsx, .csv or .tsv to write (the suffix decides the format)")
    cli.add_sheet_options(ap, "the input")
    for name, flag in CLI_OPTIONS.items():
        ap.add_argument(flag, **cli.from_setting(PredictSettings, name))
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return ap


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m nblib.predict MODEL_DIR IN OUT --column C``; returns the exit status.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    options = {name: getattr(args, name) for name in CLI_OPTIONS}
    try:
        result = predict_file(
            args.model_dir,
            args.input,
            args.output,
            column=args.column,
            sheet=args.sheet,
            header_row=args.header_row,
            encoding=args.encoding,
            overwrite=args.overwrite,
            params=CLI_PARAMS,
            **options,
        )
    except (DataError, FileNotFoundError, FileExistsError, bert.ModelNotAvailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["pred_label"].value_counts().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
