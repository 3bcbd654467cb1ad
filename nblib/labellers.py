"""What 05 labels new texts with: a saved fine-tuned model or a finished LLM run of 07, opened from 05's parameters.

Both kinds (``nblib.predict.SavedModelLabeller`` and :class:`LlmLabeller`) have the same attributes and methods
(``names``, ``run_dir``, ``label``, ``describe``, ``predict_texts``, ``predict_file``), so the pool's labels, its
class shares and the annotator sheet come out the same way for both.

An LLM run is reopened from its folder: the backend from ``backend.json`` (a local causal LM, or the API with the key
read again from its environment variable), the zero-shot prompt from ``prompt.json``, and for a k-shot run k examples
per class drawn from *all* labelled texts (:func:`nblib.llm.final_prompt`; the run's folds drew them from each fold's
training part). The pool's probabilities are calibrated as a final BERT model's are: class biases fitted on the run's
out-of-fold outputs (:meth:`nblib.results.ModelResults.pooled_calibration`), so the class-share estimators read
probabilities on the same scale as the error rates they correct with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from .calibration import Calibration
from .layout import ModelNotAvailableError, RunFolder
from .llm import BACKEND_FILE, PROMPT_FILE, LocalBackend, Prompt, PromptTooLongError, final_prompt
from .llm_api import ApiBackend
from .llm_backends import reopen_backend
from .predict import (
    NOTEBOOK_PARAMS,
    Labeller,
    PredictParams,
    SavedModelLabeller,
    check_device,
    label_texts,
    open_saved_model,
)
from .results import load_run
from .settings import PredictSettings
from .sheets import DataError
from .study import Study

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class LlmLabeller(Labeller):
    """A finished LLM run of 07, reopened to label new texts with its final prompt (:func:`open_llm_run`)."""

    run_dir: Path
    backend: LocalBackend | ApiBackend
    prompt: Prompt
    names: list[str]
    calibration: Calibration
    k_shot: int
    params: PredictParams = NOTEBOOK_PARAMS

    @property
    def label(self) -> str:
        """The run's name, for file names."""
        return self.run_dir.name

    def describe(self) -> str:
        """The run, the backend, the examples and the calibration, in a few lines."""
        examples = f"{self.k_shot} per class from all labelled texts" if self.k_shot else "none (zero-shot)"
        return (
            f"LLM run: {self.run_dir}\nbackend: {self.backend.settings()}\nlabels: {self.names}\n"
            f"examples: {examples}; answers {list(self.prompt.verbalizations)}\n"
            f"probabilities calibrated: {self.calibration.describe()} ({self.calibration.fitted_on})"
        )

    def predict_texts(self, texts: Sequence[str], progress: bool = True) -> pd.DataFrame:
        """Calibrated class probabilities and the label of each text; an empty text, or one the API gave no valid
        answer for, keeps its row with no prediction (counted in the log, never given a class).

        Args:
            texts: the texts.
            progress: show a progress bar (local backend).
        """

        def score(present: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            try:
                if isinstance(self.backend, LocalBackend):
                    scores = self.backend.score(self.prompt, present, progress=progress)
                else:
                    scores = self.backend.score(self.prompt, present)
            except PromptTooLongError as e:
                raise PromptTooLongError(
                    f"Labelling with {self.label}: {e} (k_shot is 07's: label with a run of 07 made with it, "
                    f"llm_run=…; or shorten the longest texts of the input.)"
                ) from None
            probs = np.full_like(scores.probs, np.nan)
            valid = ~np.isnan(scores.probs).any(axis=1)
            probs[valid] = self.calibration.apply(scores.probs[valid])
            if not valid.all():
                log.warning(
                    "%d text(s) got no valid answer from %s (rows kept, prediction left blank; the log of "
                    "nblib.llm_api quotes them).",
                    int((~valid).sum()),
                    self.backend.name,
                )
            return probs, {}

        return label_texts(texts, self.names, score)

    def companions(self, out_path: Path) -> list[Path]:
        """The prompt record written next to a labelled sheet: ``<output name>.prompt.json``.

        Args:
            out_path: the labelled sheet.
        """
        return [out_path.with_name(f"{out_path.name}.prompt.json")]

    def wrote(self, result: pd.DataFrame, out_path: Path) -> None:
        """Write the prompt used (its examples included) and the backend next to the labelled sheet.

        Args:
            result: the sheet as written.
            out_path: where.
        """
        record = {"run": str(self.run_dir), "backend": self.backend.settings(), "prompt": asdict(self.prompt)}
        (prompt_file,) = self.companions(out_path)
        prompt_file.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
        log.info("Wrote %d predictions to %s, the prompt to %s.", len(result), out_path, prompt_file)


def open_llm_run(
    study: Study, run: str, device: str = "auto", batch_size: int = 16, params: PredictParams = NOTEBOOK_PARAMS
) -> LlmLabeller:
    """Reopen a finished LLM run of the study to label new texts: its backend, its prompt with k examples per class
    from all labelled texts, and the calibration of its out-of-fold outputs.

    Args:
        study: the study the run belongs to.
        run: the run's folder name (``llm_<model>_<k>shot_<prompt>``).
        device: local backend: where the model runs.
        batch_size: local backend: texts per forward pass.
        params: how the caller names its parameters, for the messages.

    Raises:
        DataError: no such run, not an LLM run, not finished, or its record incomplete.
        ModelNotAvailableError: its local model is no longer where the run loaded it from.
    """
    check_device(device, params)
    folder = RunFolder(study.path / "models" / run)
    llm_runs = sorted(p.name for p in (study.path / "models").glob("llm_*") if (p / "config.json").exists())
    if not folder.config_file.exists():
        raise DataError(
            f"No run '{run}' in {study.path / 'models'}; LLM runs there: {llm_runs or 'none'} (07_llm makes them)."
        )
    config = folder.saved_config()
    if "prompt_sha" not in config:  # what every LLM run's config has (nblib.llm.run_llm_folds)
        raise DataError(
            f"{run} is not an LLM run of 07_llm (its config.json names no prompt): give it as bert_run= or "
            f"model_dir=, or give llm_run= one of {llm_runs or 'the LLM runs 07_llm makes'}."
        )
    if not (folder.is_finished() and (folder.path / "predictions.csv").exists()):
        raise DataError(
            f"{run} is not finished (folds done: {folder.done_folds()}): run 07_llm to the end first; the "
            f"calibration and the error rates of the class shares come from its out-of-fold predictions."
        )
    missing = [f for f in (PROMPT_FILE, BACKEND_FILE) if not (folder.path / f).exists()]
    if missing:
        raise DataError(
            f"{run} has no {' or '.join(missing)} (made before LLM runs recorded their backend): rerun 07_llm with "
            f"the same settings; it reads the finished folds back without scoring them again, and writes the record."
        )
    prompt = _recorded(folder.path / PROMPT_FILE, _prompt)
    if prompt.fingerprint() != config["prompt_sha"]:
        raise DataError(
            f"{folder.path / PROMPT_FILE} is not the prompt {run} was run with (its fingerprint differs from "
            f"config.json's prompt_sha): it was edited. Rerun 07_llm with the same settings to write it again."
        )
    settings = _recorded(folder.path / BACKEND_FILE, dict)
    try:
        backend = reopen_backend(study, settings, device, batch_size)
    except (KeyError, TypeError) as e:  # a setting missing, or one the backend does not take
        raise _damaged(folder.path / BACKEND_FILE, e) from None
    except ModelNotAvailableError as e:
        raise ModelNotAvailableError(
            f"{run} cannot be reopened: {e} The run loaded its model from {settings.get('model')!r} "
            f"({folder.path / BACKEND_FILE}): put the model there again, or write where it lies now into that file."
        ) from None
    k = int(config["k_shot"])
    results = load_run(folder.path)
    return LlmLabeller(
        folder.path,
        backend,
        final_prompt(study, prompt, k),
        list(config["label_names"]),
        results.pooled_calibration(),
        k,
        params,
    )


def _prompt(record: dict) -> Prompt:
    """The zero-shot prompt of a ``prompt.json`` record."""
    fields = {k: v for k, v in record.items() if k != "template"}
    return Prompt(**{**fields, "examples": (), "verbalizations": tuple(fields["verbalizations"])})


def _recorded(path: Path, read: Callable[[dict], T]) -> T:
    """``read`` of the JSON record at ``path``; a damaged record is one message naming the file."""
    try:
        return read(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _damaged(path, e) from None


def _damaged(path: Path, error: Exception) -> DataError:
    """The message for a damaged record of an LLM run."""
    return DataError(
        f"{path} is damaged ({type(error).__name__}: {error}): rerun 07_llm with the run's settings to write it "
        f"again (its finished folds are read back, not scored again)."
    )


def open_labeller(
    study: Study, settings: PredictSettings, params: PredictParams = NOTEBOOK_PARAMS
) -> SavedModelLabeller | LlmLabeller:
    """The labeller 05's parameters ask for: the LLM run ``llm_run``, else the saved model ``model_dir``, else the
    final model of ``bert_run`` (the newest with one when None).

    Args:
        study: the study.
        settings: 05's parameters.
        params: how the caller names its parameters, for the messages.

    Raises:
        DataError: ``llm_run`` given together with ``bert_run`` or ``model_dir``, or with BERT's ``max_len``,
            ``truncation`` or ``ensemble="folds"``.
    """
    s = settings
    if s.llm_run:
        if s.model_dir or s.bert_run:
            raise DataError(
                f"llm_run={s.llm_run!r} and {'model_dir' if s.model_dir else 'bert_run'}= are both given: label with "
                f"one (leave the other None)."
            )
        bert_only = {
            "max_len": s.max_len,
            "truncation": s.truncation,
            "ensemble": None if s.ensemble == "final" else s.ensemble,
        }
        given = [f"{k}={v!r}" for k, v in bert_only.items() if v is not None]
        if given:
            raise DataError(
                f"{', '.join(given)} apply to a BERT model, not to llm_run={s.llm_run!r} (an LLM reads each text "
                f"whole, with the run's prompt): leave them at their defaults."
            )
        return open_llm_run(study, s.llm_run, s.device, s.batch_size, params)
    model_dir = Path(s.model_dir) if s.model_dir else study.final_model(s.bert_run)
    if s.ensemble == "folds" and model_dir.name == "final":
        model_dir = model_dir.parent  # the fold ensemble takes the run's folder
    return open_saved_model(model_dir, s.ensemble, s.max_len, s.truncation, s.batch_size, s.device, params)
