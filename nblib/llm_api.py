"""The API backend of the LLM classifier: any OpenAI-compatible chat-completions server (DeepSeek, DashScope/Qwen,
vLLM, Ollama, llama.cpp server) scores texts with a :class:`nblib.llm.Prompt`, like ``nblib.llm.LocalBackend``.

- The key is read from an environment variable when a run starts and handed to the HTTP client only: it is never
  stored on the backend, written to a file, a log, a result, a repr or an error message.
- Label probabilities come from the answer's ``logprobs``/``top_logprobs`` where the server gives them
  (:func:`label_probs`), else from a strict parse of the answer (exactly one verbalization), asked again a bounded
  number of times; an answer that is still not a label is counted in ``Scores.invalid`` and left unscored (a NaN
  row), never mapped to a class.
- Every answer goes to an on-disk cache (:class:`AnswerCache`, SQLite) keyed by backend settings, base URL, model,
  prompt fingerprint and text, written as it arrives: a rerun, or a run resumed after a crash, sends no request
  already answered.
- At most ``concurrency`` requests at a time; 429/5xx and timeouts are retried with backoff (honouring
  ``Retry-After``) by the ``openai`` client, then end in one :class:`ApiError` naming the HTTP status and what to do.

docs/llm_api.md tells how to point it at each server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .llm import Prompt, Scores

log = logging.getLogger(__name__)

BACKEND = "openai-chat"  # the backend's name in cache keys and run records
ANSWER_SETTINGS = ("logprobs", "top_logprobs", "max_tokens", "temperature", "extra_body")  # change an answer
CACHE_FILE = "llm_api_cache.sqlite"  # one file per cache_dir (e.g. per study): answers of every run
NO_KEY = "no-key"  # sent as the bearer token when key_env is None (local servers ignore it)
EXAMPLES_SHOWN = 3  # invalid answers quoted in the warning


class ApiError(RuntimeError):
    """An API request failed for good (no key, refused key, unknown model, rate limit, server error, timeout);
    the message names the HTTP status where there is one and what to do."""


@dataclass(frozen=True)
class Answer:
    """One text's outcome, as cached.

    ``probs`` is one probability per label (None: the answer was not a label, see ``source``); ``source`` is
    ``"logprobs"`` (from the answer's token log-probabilities), ``"parse"`` (the answer was exactly one
    verbalization: probability 1 on it) or ``"invalid"``; ``label_mass`` is the share of the first token's
    probability that went to a label (NaN in parse mode); tokens and requests cover every try for this text.
    """

    probs: tuple[float, ...] | None
    answer: str
    source: str
    label_mass: float
    tokens_in: int
    tokens_out: int
    requests: int
    usage_missing: bool = False


def _strip(token: str) -> str:
    """The answer so far without leading whitespace (trailing whitespace ends a label: ``"1\\n"`` is label 1)."""
    return token.lstrip()


def _labels_for(s: str, verbalizations: Sequence[str]) -> list[int]:
    """The labels an answer starting with ``s`` (leading whitespace removed) can still be: ``s`` is a prefix of
    the verbalization, or the verbalization followed by a non-word character (``"1."``, ``"1\\n"``)."""
    if not s:
        return list(range(len(verbalizations)))
    out = []
    for i, v in enumerate(verbalizations):
        if v.startswith(s) or (s.startswith(v) and not re.match(r"\w", s[len(v) :])):
            out.append(i)
    return out


def label_probs(
    steps: Sequence[tuple[str, float, Sequence[tuple[str, float]]]], verbalizations: Sequence[str]
) -> tuple[np.ndarray | None, float]:
    """Label probabilities from an answer's token log-probabilities, normalised over the labels.

    Walks the answer's tokens while they do not yet decide a label (leading whitespace, a prefix two
    verbalizations share). At each step every listed alternative that spells (the start of) a label adds
    ``P(path so far) · p`` to it (split evenly where several labels share it and the answer took another way);
    an alternative no label starts with, or only whitespace, is left out. A label absent from the alternatives where it was still possible
    gets a floor: what is left of that step's probability (1 − the listed ones), shared among the absent labels
    and capped at the smallest listed probability (had it been likelier, the server would have listed it).
    Then the probabilities are normalised to sum to 1.

    Args:
        steps: per answer token ``(token, logprob, top_logprobs)`` with ``top_logprobs`` as ``(token, logprob)``.
        verbalizations: one string per label, as the prompt asks for them.

    Returns:
        ``(probs, label_mass)``: ``probs`` is None when no label got any probability (the answer is something
        else); ``label_mass`` is the probability that went to labels before normalising (how much the model
        meant to answer with a label at all).
    """
    k = len(verbalizations)
    mass = np.zeros(k)
    floors = np.zeros(k)
    path_p, consumed = 1.0, ""
    for token, logprob, top in steps:
        alive = set(_labels_for(_strip(consumed), verbalizations))
        alternatives = {tok: lp for tok, lp in top}
        alternatives[token] = logprob  # the answer's own token is known even if top_logprobs omits it
        probs = {tok: math.exp(lp) for tok, lp in alternatives.items()}
        seen: set[int] = set()
        for tok, p in probs.items():
            s = _strip(consumed + tok)
            labels = _labels_for(s, verbalizations)
            seen.update(labels if s else ())
            if tok != token and s and labels:  # shared by several labels (文 of 文物, 文化): split evenly
                mass[labels] += path_p * p / len(labels)
        missing = sorted(alive - seen - {i for i in range(k) if mass[i] > 0})
        if missing:
            rest = max(0.0, 1.0 - sum(probs.values()))
            floor = path_p * min(rest / len(missing), min(probs.values()))
            for i in missing:
                floors[i] = floors[i] or floor
        s = _strip(consumed + token)
        labels = _labels_for(s, verbalizations)
        if not labels:
            break
        if len(labels) == 1 and s:  # the answer can only be this label now
            mass[labels[0]] += path_p * probs[token]
            break
        path_p *= probs[token]
        consumed += token
    else:  # the answer ended on a whole verbalization another one starts with ("1" of "1" and "10")
        ended = [i for i, v in enumerate(verbalizations) if _strip(consumed).rstrip() == v]
        if consumed and len(ended) == 1:
            mass[ended[0]] += path_p
    label_mass = float(mass.sum())
    if label_mass <= 0:
        return None, 0.0
    mass = np.where(mass > 0, mass, floors)
    return mass / mass.sum(), label_mass


def parse_answer(answer: str, verbalizations: Sequence[str]) -> int | None:
    """The label an answer names when, surrounding whitespace removed, it is exactly one verbalization; None for
    anything else (``"类别：1"``, ``"1。"``, ``"I think 2"``) — never a guess.

    Args:
        answer: the model's answer text.
        verbalizations: one string per label.
    """
    matches = [i for i, v in enumerate(verbalizations) if answer.strip() == v.strip()]
    return matches[0] if len(matches) == 1 else None


class AnswerCache:
    """Answers on disk, one SQLite file: safe for several threads and processes; each answer is committed as it
    arrives (a transaction: written whole or not at all), so a crashed run keeps every answer it got.

    Args:
        path: the SQLite file (created with its folder).
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, backend TEXT, base_url TEXT, model TEXT, "
        "prompt TEXT, text TEXT, answer TEXT NOT NULL, created TEXT)"
    )

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(self.SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=60)) as db, db:
            yield db

    def get(self, keys: Sequence[str]) -> dict[str, Answer]:
        """The cached answers among ``keys``.

        Args:
            keys: cache keys (:meth:`ApiBackend.cache_key`).
        """
        found: dict[str, Answer] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock, self._connect() as db:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                rows = db.execute(
                    f"SELECT key, answer FROM answers WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                for key, answer in rows:
                    record = json.loads(answer)
                    record["probs"] = tuple(record["probs"]) if record["probs"] is not None else None
                    found[key] = Answer(**record)
        return found

    def put(self, key: str, answer: Answer, **meta: str) -> None:
        """Store one answer (replacing an earlier one under the same key).

        Args:
            key: its cache key.
            answer: the answer.
            meta: ``backend``, ``base_url``, ``model``, ``prompt`` (fingerprint) and ``text``, kept for reading
                the cache by eye.
        """
        row = (
            key,
            meta.get("backend"),
            meta.get("base_url"),
            meta.get("model"),
            meta.get("prompt"),
            meta.get("text"),
            json.dumps(asdict(answer), ensure_ascii=False),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        with self._lock, self._connect() as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)


class ApiBackend:
    """Label texts with an OpenAI-compatible chat-completions server (``score`` like ``nblib.llm.LocalBackend``).

    Args:
        base_url: the server's OpenAI-compatible base URL, e.g. ``https://api.deepseek.com/v1``,
            ``https://dashscope.aliyuncs.com/compatible-mode/v1``, ``http://localhost:8000/v1`` (vLLM),
            ``http://localhost:11434/v1`` (Ollama), ``http://localhost:8080/v1`` (llama.cpp server).
        model: the model name the server knows (``deepseek-chat``, ``qwen-plus``, ...).
        key_env: the environment variable holding the API key (read when a run starts, never stored); None for
            a local server that needs no key.
        cache_dir: folder of the answer cache (``llm_api_cache.sqlite``), e.g. the study's results folder;
            None keeps no cache (every run asks again).
        concurrency: requests in flight at once.
        max_retries: retries of one request after a 429, 5xx, 408/409 or timeout (with backoff, honouring the
            server's ``Retry-After`` up to 2 minutes), before the run stops with an :class:`ApiError`.
        timeout: seconds to wait for one answer.
        price_in_per_1m: price of 1 million prompt tokens (any currency) for the cost estimate; None: no cost.
        price_out_per_1m: price of 1 million answer tokens.
        logprobs: ask for token log-probabilities (True), never (False: answers are parsed), or None: ask, and
            parse the answer when the server gives none (a server that refuses the parameter with a 400 is asked
            again without it).
        top_logprobs: alternatives per answer token asked for (OpenAI and DeepSeek allow up to 20, DashScope 5);
            at least the number of labels gives the fullest probabilities.
        max_tokens: answer tokens at most (enough for the longest verbalization).
        temperature: sampling temperature (0: the most likely answer).
        parse_retries: how many times an answer that is not exactly one label is asked again before it counts
            as invalid.
        retry_invalid: ask again for texts whose cached answer was invalid (default: a rerun sends nothing).
        extra_body: extra request fields for a server's own options, e.g. ``{"enable_thinking": False}``
            (DashScope Qwen3).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        key_env: str | None = "OPENAI_API_KEY",
        *,
        cache_dir: str | Path | None,
        concurrency: int = 4,
        max_retries: int = 5,
        timeout: float = 60.0,
        price_in_per_1m: float | None = None,
        price_out_per_1m: float | None = None,
        logprobs: bool | None = None,
        top_logprobs: int = 5,
        max_tokens: int = 16,
        temperature: float = 0.0,
        parse_retries: int = 2,
        retry_invalid: bool = False,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not str(base_url).startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: give the server's http(s) URL, e.g. http://localhost:8000/v1.")
        if concurrency < 1 or max_retries < 0 or parse_retries < 0 or timeout <= 0 or max_tokens < 1:
            raise ValueError(
                f"concurrency={concurrency}, max_retries={max_retries}, parse_retries={parse_retries}, "
                f"timeout={timeout}, max_tokens={max_tokens}: concurrency and max_tokens must be at least 1, the "
                "retries at least 0, timeout above 0 seconds."
            )
        self.base_url = str(base_url).rstrip("/")
        self.model = model
        self.name = model  # how run names (nblib.llm.run_name) call the backend
        self.key_env = key_env
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.price_in_per_1m = price_in_per_1m
        self.price_out_per_1m = price_out_per_1m
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.parse_retries = parse_retries
        self.retry_invalid = retry_invalid
        self.extra_body = dict(extra_body or {})
        self.last_run: dict[str, Any] = {}
        self._read_key()  # no key: say so now, not after the first texts
        self._cache = AnswerCache(self.cache_dir / CACHE_FILE) if self.cache_dir is not None else None
        self._no_logprobs = threading.Event()  # set when the server refused the logprobs parameter

    DECISIVE = ("backend", "base_url", "model", *ANSWER_SETTINGS)  # settings a resumed run must keep

    def __repr__(self) -> str:
        return f"ApiBackend(base_url={self.base_url!r}, model={self.model!r}, key_env={self.key_env!r})"

    def _read_key(self) -> str:
        """The API key from ``key_env`` (a placeholder when ``key_env`` is None), or one message what to do."""
        if self.key_env is None:
            return NO_KEY
        key = os.environ.get(self.key_env, "").strip()
        if not key:
            raise ApiError(
                f"No API key: the environment variable {self.key_env} is not set (or empty). Set it where the "
                f"notebook or script starts, e.g. `export {self.key_env}=...` in the shell before `jupyter lab`, "
                f"or in the notebook `os.environ[{self.key_env!r}] = getpass.getpass()` (never in a cell that is "
                "saved); pass key_env= to read another variable, or key_env=None for a local server that needs "
                "no key (vLLM, Ollama, llama.cpp)."
            )
        return key

    def settings(self) -> dict[str, Any]:
        """What decides the answers and the cost, for the run record (the key's variable name, never the key)."""
        return {
            "backend": BACKEND,
            "base_url": self.base_url,
            "model": self.model,
            "key_env": self.key_env,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "parse_retries": self.parse_retries,
            "retry_invalid": self.retry_invalid,
            "extra_body": self.extra_body,
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "price_in_per_1m": self.price_in_per_1m,
            "price_out_per_1m": self.price_out_per_1m,
            "cache": str(self.cache_dir / CACHE_FILE) if self.cache_dir is not None else None,
        }

    def _backend_id(self) -> str:
        """The settings that change an answer, as one string (part of each cache key)."""
        return json.dumps(
            [BACKEND, {k: self.settings()[k] for k in ANSWER_SETTINGS}], sort_keys=True, ensure_ascii=False
        )

    def cache_key(self, prompt: Prompt, text: str) -> str:
        """The cache key of one text under one prompt: sha256 of (backend settings, base URL, model, prompt
        fingerprint, text).

        Args:
            prompt: the prompt.
            text: the text.
        """
        parts = [self._backend_id(), self.base_url, self.model, prompt.fingerprint(), text]
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()

    def score(self, prompt: Prompt, texts: Sequence[str]) -> Scores:
        """Class probabilities of each text (NaN row where the answer was not a label), from the cache where
        answered before, else from the server.

        ``tokens_in``/``tokens_out``/``cost`` cover every text scored (a cached answer keeps the tokens it took,
        so the cost per 1,000 texts is right for a resumed run); ``requests`` and ``seconds`` are this call's.
        ``last_run`` holds the details (from cache, sent, invalid answers, label mass).

        Args:
            prompt: the rendered prompt (``nblib.llm.render_prompt``).
            texts: the texts to label.
        """
        start = time.perf_counter()
        texts = [str(t) for t in texts]
        keys = [self.cache_key(prompt, t) for t in texts]
        answers = self._cache.get(keys) if self._cache is not None else {}
        if self.retry_invalid:
            answers = {k: a for k, a in answers.items() if a.source != "invalid"}
        from_cache = len(answers)
        todo = {k: t for k, t in zip(keys, texts) if k not in answers}
        sent = self._ask_all(prompt, todo, answers, len(set(keys))) if todo else 0
        return self._scores(prompt, texts, keys, answers, from_cache, sent, time.perf_counter() - start)

    def _ask_all(self, prompt: Prompt, todo: dict[str, str], answers: dict[str, Answer], n_unique: int) -> int:
        """Ask the server for each text of ``todo`` (at most ``concurrency`` at a time), caching each answer as it
        arrives; returns the HTTP requests sent. The first request that fails for good stops the run."""
        import openai

        sent = [0]
        counter = threading.Lock()

        def count(request: Any) -> None:
            with counter:
                sent[0] += 1

        stop = threading.Event()
        http = openai.DefaultHttpxClient(event_hooks={"request": [count]})
        client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self._read_key(),
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=http,
        )
        meta = {"backend": self._backend_id(), "base_url": self.base_url, "model": self.model}
        meta["prompt"] = prompt.fingerprint()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="llm-api")
        futures = {pool.submit(self._ask, client, prompt, text, stop): key for key, text in todo.items()}
        try:
            for fut in as_completed(futures):
                error = fut.exception()
                if error is not None:
                    if self._cache is not None and isinstance(error, ApiError):
                        kept = sum(1 for k in futures.values() if k in answers) + n_unique - len(todo)
                        error.args = (
                            f"{error.args[0]} {kept} of {n_unique} texts are answered in the cache "
                            f"({self._cache.path}); a rerun asks only for the rest.",
                        )
                    raise error
                key = futures[fut]
                answers[key] = fut.result()
                if self._cache is not None:
                    self._cache.put(key, answers[key], text=todo[key], **meta)
        except BaseException:  # an error, or an interrupt (Ctrl-C, stopping the kernel): stop now, not after the rest
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            client.close()  # requests in flight end at once; their results are not needed
            raise
        pool.shutdown()
        client.close()
        return sent[0]

    def _ask(self, client: Any, prompt: Prompt, text: str, stop: threading.Event) -> Answer | None:
        """One text: ask, read the label probabilities from logprobs or the answer, ask again (at most
        ``parse_retries`` times) while the answer is not a label."""
        messages = prompt.messages(text)
        tokens_in = tokens_out = requests = 0
        usage_missing = False
        answer = ""
        for _ in range(self.parse_retries + 1):
            if stop.is_set():
                return None
            response = self._create(client, messages)
            requests += 1
            if not hasattr(response, "choices"):
                raise ApiError(
                    f"{self.base_url}/chat/completions did not answer like an OpenAI-compatible chat-completions "
                    f"server (got {type(response).__name__}): check base_url= (it usually ends in /v1)."
                )
            usage = getattr(response, "usage", None)
            if usage is None:
                usage_missing = True
            else:
                tokens_in += usage.prompt_tokens or 0
                tokens_out += usage.completion_tokens or 0
            choice = response.choices[0] if response.choices else None
            answer = (choice.message.content or "") if choice is not None and choice.message else ""
            steps = _steps(choice)
            counts = dict(tokens_in=tokens_in, tokens_out=tokens_out, requests=requests, usage_missing=usage_missing)
            if steps:
                probs, mass = label_probs(steps, prompt.verbalizations)
                if probs is not None:
                    return Answer(tuple(float(p) for p in probs), answer, "logprobs", mass, **counts)
            label = parse_answer(answer, prompt.verbalizations)
            if label is not None:
                onehot = tuple(float(i == label) for i in range(len(prompt.verbalizations)))
                return Answer(onehot, answer, "parse", math.nan, **counts)
        return Answer(None, answer, "invalid", math.nan, **counts)

    def _create(self, client: Any, messages: list[dict]) -> Any:
        """One chat completion (the client retries 429/5xx/timeouts); failures for good become an ApiError."""
        import openai

        request: dict[str, Any] = dict(
            model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=self.temperature
        )
        if self.extra_body:
            request["extra_body"] = self.extra_body
        want_logprobs = self.logprobs is True or (self.logprobs is None and not self._no_logprobs.is_set())
        if want_logprobs:
            request.update(logprobs=True, top_logprobs=self.top_logprobs)
        try:
            return client.chat.completions.create(**request)
        except openai.BadRequestError as e:
            if want_logprobs and self.logprobs is None:  # a server or model without logprobs: parse answers
                log.warning(
                    "%s refused the request with logprobs (400: %s); asking without logprobs and parsing answers.",
                    self.base_url,
                    self._server_says(e),
                )
                self._no_logprobs.set()
                return self._create(client, messages)
            raise ApiError(self._status_message(e)) from None
        except openai.APIStatusError as e:
            raise ApiError(self._status_message(e)) from None
        except openai.APITimeoutError:
            raise ApiError(
                f"No answer from {self.base_url} (model {self.model!r}) within timeout={self.timeout:g} s, "
                f"{self.max_retries + 1} tries: the server is slow or overloaded. Raise timeout=, lower "
                f"concurrency= (now {self.concurrency}), or check the server."
            ) from None
        except openai.APIConnectionError:
            raise ApiError(
                f"Cannot connect to {self.base_url} ({self.max_retries + 1} tries): is the server running and "
                "the base URL right (host, port, https or http)? Check base_url= and the network."
            ) from None

    def _server_says(self, error: Any) -> str:
        """The server's own error text, shortened, with the key blanked out should it echo it."""
        body = getattr(error, "body", None)
        said = body.get("message") if isinstance(body, dict) else None
        said = str(said or getattr(error, "message", "") or "")[:300]
        key = os.environ.get(self.key_env, "") if self.key_env else ""
        return said.replace(key, "***") if key else said

    def _status_message(self, error: Any) -> str:
        """One message for an HTTP status that ended the run: the status, what the server said, what to do."""
        status = error.status_code
        tries = self.max_retries + 1
        where = f"{self.base_url}/chat/completions (model {self.model!r})"
        said = self._server_says(error)
        said = f' The server says: "{said}".' if said else ""
        if status in (401, 403):
            what = (
                f"the server refused the API key from {self.key_env}: check that it is this server's key "
                "(DeepSeek, DashScope and OpenAI keys differ), not expired, and that the account may use this model."
                if self.key_env
                else "the server wants an API key: pass key_env= naming the environment variable that holds it."
            )
        elif status == 404:
            what = (
                f"the server knows no model {self.model!r}, or the base URL is wrong: check model= against the "
                f"server's list ({self.base_url}/models) and that base_url= ends where the server expects "
                "(usually in /v1; DashScope: /compatible-mode/v1)."
            )
        elif status == 429:
            what = (
                f"rate limit or quota: still refused after {tries} tries with backoff. Lower concurrency= (now "
                f"{self.concurrency}), wait and rerun (answers so far are cached), raise max_retries=, or check the "
                "account's balance and limits."
            )
        elif status >= 500:
            what = f"the server failed {tries} times: try again later, or check the server's log (local servers)."
        else:
            what = "the server refused the request: check model= and the settings named in the server's message."
        return f"HTTP {status} from {where}: {what}{said}"

    def _scores(
        self,
        prompt: Prompt,
        texts: list[str],
        keys: list[str],
        answers: dict[str, Answer],
        from_cache: int,
        sent: int,
        seconds: float,
    ) -> Scores:
        """Assemble Scores from the answers, record ``last_run`` and report invalid answers."""
        k = len(prompt.verbalizations)
        probs = np.full((len(texts), k), np.nan)
        for i, key in enumerate(keys):
            if answers[key].probs is not None:
                probs[i] = answers[key].probs
        used = [answers[key] for key in dict.fromkeys(keys)]
        tokens_in = sum(a.tokens_in for a in used)
        tokens_out = sum(a.tokens_out for a in used)
        usage_missing = sum(a.usage_missing for a in used)
        cost = None
        if self.price_in_per_1m is not None or self.price_out_per_1m is not None:
            cost = (tokens_in * (self.price_in_per_1m or 0) + tokens_out * (self.price_out_per_1m or 0)) / 1e6
        invalid_rows = [i for i, key in enumerate(keys) if answers[key].source == "invalid"]
        sources = [a.source for a in used]
        masses = [a.label_mass for a in used if a.source == "logprobs"]
        self.last_run = {
            "texts": len(texts),
            "distinct_texts": len(used),
            "from_cache": from_cache,
            "requests": sent,
            "logprobs": sources.count("logprobs"),
            "parsed": sources.count("parse"),
            "invalid": len(invalid_rows),
            "invalid_answers": [(texts[i], answers[keys[i]].answer) for i in invalid_rows],
            "median_label_mass": float(np.median(masses)) if masses else None,
            "usage_missing": usage_missing,
        }
        if invalid_rows:
            shown = ", ".join(repr(answers[keys[i]].answer[:40]) for i in invalid_rows[:EXAMPLES_SHOWN])
            log.warning(
                "%d of %d answers were not exactly one of the labels %s after %d tries each: left unscored (NaN), "
                "never mapped to a class (e.g. %s). Make the instruction ask for the label alone, or use a model "
                "that follows it; retry_invalid=True asks again.",
                len(invalid_rows),
                len(texts),
                list(prompt.verbalizations),
                self.parse_retries + 1,
                shown,
            )
        if usage_missing:
            log.warning(
                "%d answers came without token counts (usage): tokens and cost are underestimated.", usage_missing
            )
        return Scores(
            probs=probs,
            invalid=len(invalid_rows),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            seconds=seconds,
            requests=sent,
            cost=cost,
        )


def _steps(choice: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """The answer's tokens as ``(token, logprob, [(alternative, logprob), ...])``; empty without logprobs."""
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    return [
        (t.token, t.logprob, [(a.token, a.logprob) for a in (t.top_logprobs or [])])
        for t in content
        if t.logprob is not None
    ]
