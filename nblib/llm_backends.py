"""Which LLM backend a study's settings ask for: a local causal LM (``nblib.llm``) or an OpenAI-compatible server."""

from __future__ import annotations

import logging

from .codebook import Codebook
from .llm import LOCAL, LocalBackend, local_model
from .llm_api import BACKEND, ApiBackend
from .sheets import DataError
from .study import Study

log = logging.getLogger(__name__)
API_CACHE = "llm_cache"  # the study's subfolder of cached API answers


def open_backend(
    study: Study,
    backend: str,
    model: str,
    codebook: Codebook | None = None,
    device: str = "auto",
    batch_size: int = 16,
    base_url: str | None = None,
    key_env: str = "OPENAI_API_KEY",
) -> LocalBackend | ApiBackend:
    """The backend the notebook's parameters ask for: a :class:`nblib.llm.LocalBackend`, or an
    :class:`nblib.llm_api.ApiBackend` whose answers are cached in the study folder.

    Args:
        study: the study (where tiny-random is built).
        backend: ``"local"`` or ``"api"``.
        model: the local model (folder, hub id, tiny-random) or the API's model name.
        codebook: the codebook (tiny-random's vocabulary).
        device: local: where the model runs.
        batch_size: local: texts per forward pass.
        base_url: api: the server.
        key_env: api: the environment variable with the key.
    """
    if backend == "api":
        return ApiBackend(base_url=base_url, model=model, key_env=key_env, cache_dir=study.path / API_CACHE)
    return LocalBackend(local_model(study, model, codebook), device=device, batch_size=batch_size)


def reopen_backend(
    study: Study, settings: dict, device: str = "auto", batch_size: int = 16
) -> LocalBackend | ApiBackend:
    """The backend an LLM run used, from its recorded settings (``backend.json``: ``LocalBackend.settings`` or
    ``ApiBackend.settings``); the API key is read again from the recorded environment variable.

    Args:
        study: the study (its cache of API answers).
        settings: the recorded settings.
        device: local: where the model runs now.
        batch_size: local: texts per forward pass now.

    Raises:
        DataError: settings of no known backend.
    """
    kind = settings.get("backend")
    if kind == LOCAL:
        backend = LocalBackend(settings["model"], device=device, batch_size=batch_size, chat=settings["chat"])
        now = backend.settings()["dtype"]
        if settings.get("dtype") not in (None, now):
            log.warning(
                "%s scored its folds in %s; here it runs in %s (%s): probabilities may differ in the last digits.",
                backend.name,
                settings["dtype"],
                now,
                backend.device,
            )
        return backend
    if kind == BACKEND:
        options = {k: v for k, v in settings.items() if k not in ("backend", "cache")}
        return ApiBackend(**options, cache_dir=study.path / API_CACHE)
    raise DataError(
        f"The recorded backend {kind!r} is none of {[LOCAL, BACKEND]}: the record is damaged; rerun 07_llm."
    )
