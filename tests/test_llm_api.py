"""The API backend (nblib.llm_api) against a real OpenAI-compatible HTTP server on 127.0.0.1 serving a tiny causal LM
(tests/llm_server.py): probabilities from logprobs, the cache, retries, invalid answers, timeouts, HTTP errors, and
the key kept out of every file, log, repr and message."""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import pytest
from llm_server import ChatServer

from nblib.codebook import Codebook, CodebookEntry
from nblib.llm import LocalBackend, build_tiny_causal_lm, render_prompt
from nblib.llm_api import Answer, AnswerCache, ApiBackend, ApiError, label_probs, parse_answer

KEY_ENV = "NBLIB_TEST_LLM_KEY"
KEY = "sk-test-3f9a1c77e2d84b0f9c6e5a41d2b8c0de"  # must appear in no file, log, repr or message
TEXTS = ["这节目的舞美太美了", "国宝文物讲得真好", "传统文化值得传承", "今天天气不错", "演员演技在线"]
CODEBOOK = Codebook(
    (
        CodebookEntry(0, "节目", "节目的制作、演员、质量"),
        CodebookEntry(1, "文物", "文物、古籍、历史人物"),
        CodebookEntry(2, "文化", "文化、艺术、精神、民族"),
        CodebookEntry(3, "无关", "与节目无关"),
    )
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Qwen2 causal LM with a character vocabulary (digits included)."""
    return build_tiny_causal_lm(TEXTS, tmp_path_factory.mktemp("tiny_lm"), extra_text=str(CODEBOOK.to_frame()))


@pytest.fixture(scope="module")
def running(model_dir):
    with ChatServer(model_dir, name="tiny-qwen", key=KEY) as server:
        yield server


@pytest.fixture
def server(running, monkeypatch):
    """The running server with counts and faults reset, and the key in the environment."""
    running.reset()
    running.delay = 0.0
    monkeypatch.setenv(KEY_ENV, KEY)
    return running


@pytest.fixture
def prompt():
    return render_prompt(CODEBOOK)


def backend(server: ChatServer, tmp_path, **kw) -> ApiBackend:
    settings = dict(key_env=KEY_ENV, cache_dir=tmp_path / "cache", max_retries=2, timeout=10, max_tokens=2)
    settings["top_logprobs"] = len(server.tokenizer)  # every label among the alternatives (a random model)
    return ApiBackend(server.base_url, "tiny-qwen", **(settings | kw))


# -- reading probabilities from logprobs, and answers --


def test_probabilities_from_the_servers_logprobs_equal_the_local_backends(server, model_dir, prompt, tmp_path):
    api = backend(server, tmp_path, max_tokens=1)
    scores = api.score(prompt, TEXTS)
    local = LocalBackend(str(model_dir), device="cpu").score(prompt, TEXTS)
    assert scores.invalid == 0 and scores.requests == len(TEXTS) == server.requests
    np.testing.assert_allclose(scores.probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(scores.probs, local.probs, atol=1e-5)
    # and by hand: the softmax over the label tokens of the next-token distribution after the chat prompt
    ids = [server.tokenizer.convert_tokens_to_ids(v) for v in prompt.verbalizations]
    for row, text in zip(scores.probs, TEXTS):
        lp = server.next_logprobs(server.prompt_ids(prompt.messages(text)))[ids].numpy()
        np.testing.assert_allclose(row, np.exp(lp) / np.exp(lp).sum(), atol=1e-6)
    assert api.last_run["logprobs"] == len(TEXTS) and 0 < api.last_run["median_label_mass"] < 1


def test_labels_missing_from_the_servers_alternatives_get_the_floor(server, prompt, tmp_path):
    ids = [server.tokenizer.convert_tokens_to_ids(v) for v in prompt.verbalizations]
    lp = server.next_logprobs(server.prompt_ids(prompt.messages(TEXTS[0])))
    order = lp.argsort(descending=True).tolist()
    rank = min(order.index(i) for i in ids)  # only the likeliest label among the alternatives
    scores = backend(server, tmp_path, top_logprobs=rank + 1, max_tokens=1).score(prompt, TEXTS[:1])
    p = lp.exp().double()
    listed = p[order[: rank + 1]]
    floor = min((1 - float(listed.sum())) / 3, float(listed.min()))
    best = order[rank]
    expected = np.array([float(p[i]) if i == best else floor for i in ids])
    np.testing.assert_allclose(scores.probs[0], expected / expected.sum(), rtol=1e-6)  # sums to 1, never above best


def test_tokens_and_cost_come_from_the_servers_usage(server, prompt, tmp_path):
    api = backend(server, tmp_path, price_in_per_1m=2.0, price_out_per_1m=8.0)
    scores = api.score(prompt, TEXTS[:2])
    n_in = sum(len(server.prompt_ids(prompt.messages(t))) for t in TEXTS[:2])
    assert scores.tokens_in == n_in and scores.tokens_out > 0
    assert scores.cost == pytest.approx((n_in * 2.0 + scores.tokens_out * 8.0) / 1e6)
    assert backend(server, tmp_path / "other").score(prompt, TEXTS[:1]).cost is None  # no prices, no cost


def test_label_probs_walk_and_floor():
    labels = ("0", "1", "2", "3")
    ln = math.log
    # every label listed: normalised over the labels, what is not a label left out
    probs, mass = label_probs(
        [("好", ln(0.5), [("好", ln(0.5)), ("1", ln(0.3)), ("0", ln(0.1)), ("2", ln(0.06)), ("3", ln(0.04))])], labels
    )
    np.testing.assert_allclose(probs, np.array([0.1, 0.3, 0.06, 0.04]) / 0.5)
    assert mass == pytest.approx(0.5)
    # labels 2 and 3 not listed: each gets the floor min((1 - 0.95) / 2, 0.05) = 0.025, then all are normalised
    probs, _ = label_probs([("1", ln(0.6), [("1", ln(0.6)), ("0", ln(0.3)), ("x", ln(0.05))])], labels)
    np.testing.assert_allclose(probs, np.array([0.3, 0.6, 0.025, 0.025]) / 0.95)
    # the floor is capped at the smallest listed probability
    probs, _ = label_probs([("1", ln(0.5), [("1", ln(0.5)), ("0", ln(0.01))])], ("0", "1", "2"))
    np.testing.assert_allclose(probs, np.array([0.01, 0.5, 0.01]) / 0.52)
    # a leading newline: its alternatives and the path through it both count
    steps = [("\n", ln(0.5), [("\n", ln(0.5)), ("0", ln(0.5))]), ("1", ln(0.8), [("1", ln(0.8)), ("0", ln(0.2))])]
    probs, _ = label_probs(steps, ("0", "1"))
    np.testing.assert_allclose(probs, [0.6, 0.4])
    # names sharing a first token: the answer's next token tells them apart
    steps = [("文", ln(0.9), [("文", ln(0.9)), ("节", ln(0.1))]), ("化", ln(0.7), [("化", ln(0.7)), ("物", ln(0.3))])]
    probs, _ = label_probs(steps, ("节目", "文物", "文化"))
    np.testing.assert_allclose(probs, [0.1, 0.27, 0.63])
    # ... and where the answer took another way, they share the first token's probability evenly
    steps = [("节", ln(0.6), [("节", ln(0.6)), ("文", ln(0.4))]), ("目", ln(0.9), [("目", ln(0.9))])]
    probs, _ = label_probs(steps, ("节目", "文物", "文化"))
    np.testing.assert_allclose(probs, [0.6, 0.2, 0.2])
    # "1" of the labels "1" and "10", the answer ending there
    probs, _ = label_probs([("1", ln(0.9), [("1", ln(0.9)), ("2", ln(0.1))])], ("1", "10", "2"))
    assert probs.argmax() == 0
    # no label anywhere: nothing to normalise
    assert label_probs([("好", ln(0.9), [("好", ln(0.9)), ("的", ln(0.1))])], labels) == (None, 0.0)


def test_an_answer_is_parsed_only_when_it_is_exactly_one_label():
    labels = ("0", "1", "2", "3")
    assert parse_answer(" 2\n", labels) == 2
    for answer in ["类别：2", "2。", "I think 2", "12", "", "二"]:
        assert parse_answer(answer, labels) is None


# -- the cache --


def test_a_rerun_and_a_resumed_run_are_served_from_the_cache(server, prompt, tmp_path):
    first = backend(server, tmp_path).score(prompt, TEXTS[:3])
    assert server.requests == 3 and first.requests == 3
    again = backend(server, tmp_path).score(prompt, TEXTS[:3])  # a new backend: the cache is on disk
    assert server.requests == 3 and again.requests == 0
    np.testing.assert_array_equal(again.probs, first.probs)
    assert (again.tokens_in, again.tokens_out) == (first.tokens_in, first.tokens_out)  # cached answers keep tokens
    resumed = backend(server, tmp_path).score(prompt, TEXTS + TEXTS[:1])  # two new texts, one repeated
    assert server.requests == 5 and resumed.requests == 2
    np.testing.assert_array_equal(resumed.probs[:3], first.probs)
    np.testing.assert_array_equal(resumed.probs[-1], first.probs[0])
    # another prompt, model or base URL is another question
    backend(server, tmp_path).score(render_prompt(CODEBOOK, language="en"), TEXTS[:1])
    assert server.requests == 6


def test_the_cache_takes_writers_at_once(tmp_path):
    caches = [AnswerCache(tmp_path / "c.sqlite") for _ in range(2)]  # two runs (or processes) on one file
    answer = Answer((0.25, 0.75), "1", "logprobs", 0.9, 10, 1, 1)

    def write(i: int) -> None:
        for j in range(40):
            caches[i % 2].put(f"{i}-{j}", answer, text=f"文本{j}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = AnswerCache(tmp_path / "c.sqlite").get([f"{i}-{j}" for i in range(6) for j in range(40)] + ["absent"])
    assert len(found) == 240 and set(found.values()) == {answer}


def test_requests_stay_within_the_concurrency(server, prompt, tmp_path):
    server.delay = 0.2
    backend(server, tmp_path, concurrency=2).score(prompt, TEXTS)
    assert server.max_in_flight == 2 and server.requests == len(TEXTS)


# -- faults --


def test_a_429_is_retried_after_retry_after_and_succeeds(server, prompt, tmp_path):
    server.reset(None, "429")
    start = time.perf_counter()
    scores = backend(server, tmp_path, concurrency=1).score(prompt, TEXTS[:2])
    assert time.perf_counter() - start >= 1.0  # Retry-After: 1 honoured
    assert server.requests == 3 and scores.requests == 3
    assert scores.invalid == 0 and not np.isnan(scores.probs).any()


def test_a_malformed_answer_is_asked_again_then_counted_invalid_never_a_class(server, prompt, tmp_path, caplog):
    server.reset("malformed")
    api = backend(server, tmp_path, parse_retries=2)
    with caplog.at_level(logging.WARNING, logger="nblib.llm_api"):
        scores = api.score(prompt, TEXTS[:1])
    assert server.requests == 3 and scores.requests == 3  # asked, then two more tries
    assert scores.invalid == 1 and np.isnan(scores.probs).all()
    assert "1 of 1 answers were not exactly one of the labels" in caplog.text and "我不知道" in caplog.text
    assert api.last_run["invalid_answers"] == [(TEXTS[0], "我不知道，可能吧")]
    again = api.score(prompt, TEXTS[:1])  # the invalid answer is cached too: a rerun sends nothing
    assert server.requests == 3 and again.invalid == 1 and np.isnan(again.probs).all()
    backend(server, tmp_path, parse_retries=2, retry_invalid=True).score(prompt, TEXTS[:1])
    assert server.requests == 6


def test_a_malformed_answer_then_a_label_is_parsed(server, prompt, tmp_path):
    server.reset(None, "malformed", "label:2")
    scores = backend(server, tmp_path, logprobs=False).score(prompt, TEXTS[:1])
    assert scores.invalid == 0 and scores.requests == 2
    np.testing.assert_array_equal(scores.probs, [[0, 0, 1, 0]])


def test_a_server_refusing_logprobs_is_asked_without_them(server, prompt, tmp_path, caplog):
    server.reset("no-logprobs")
    with caplog.at_level(logging.WARNING, logger="nblib.llm_api"):
        scores = backend(server, tmp_path, concurrency=1).score(prompt, TEXTS[:2])
    assert "refused the request with logprobs" in caplog.text
    assert server.requests == 1 + 2  # one refused request, then each text without logprobs
    np.testing.assert_array_equal(scores.probs, [[0, 1, 0, 0], [0, 1, 0, 0]])


def test_a_timeout_ends_in_one_message(server, prompt, tmp_path):
    server.reset("timeout")
    with pytest.raises(ApiError) as err:
        backend(server, tmp_path, timeout=0.3, max_retries=1, concurrency=1).score(prompt, TEXTS[:1])
    message = str(err.value)
    assert "within timeout=0.3 s, 2 tries" in message and "Raise timeout=" in message
    assert "0 of 1 texts are answered in the cache" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert server.requests == 2


@pytest.mark.parametrize(
    ("fault", "model", "status", "advice"),
    [
        ("429", "tiny-qwen", 429, "Lower concurrency= (now 1)"),
        ("500", "tiny-qwen", 500, "try again later"),
        (None, "no-such-model", 404, "the server knows no model 'no-such-model'"),
    ],
)
def test_an_http_error_names_the_status_and_what_to_do(server, prompt, tmp_path, fault, model, status, advice):
    server.reset(fault)
    server.retry_after = "0.05"
    api = ApiBackend(server.base_url, model, KEY_ENV, cache_dir=tmp_path, max_retries=1, concurrency=1)
    with pytest.raises(ApiError, match=f"HTTP {status} from {server.base_url}") as err:
        api.score(prompt, TEXTS[:1])
    assert advice in str(err.value) and "The server says" in str(err.value)
    server.retry_after = "1"


def test_no_server_and_a_web_page_instead_of_a_server(server, prompt, tmp_path):
    closed = server.base_url.rsplit(":", 1)[0] + ":9/v1"  # the discard port: nothing listens
    with pytest.raises(ApiError, match="Cannot connect to http://127.0.0.1:9/v1 .*is the server running"):
        ApiBackend(closed, "tiny-qwen", KEY_ENV, cache_dir=tmp_path, max_retries=0).score(prompt, TEXTS[:1])
    server.reset("html")
    with pytest.raises(ApiError, match="did not answer like an OpenAI-compatible chat-completions server"):
        backend(server, tmp_path).score(prompt, TEXTS[:1])


def test_a_refused_key_and_no_key(server, prompt, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(ApiError, match=f"HTTP 401 .*refused the API key from {KEY_ENV}"):
        backend(server, tmp_path).score(prompt, TEXTS[:1])
    assert server.requests == 1  # a refused key is not retried
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ApiError, match=f"No API key: the environment variable {KEY_ENV} is not set") as err:
        backend(server, tmp_path)
    assert "key_env=None" in str(err.value)


def test_the_key_appears_in_no_file_log_repr_or_message(server, prompt, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the HTTP client's included
    api = backend(server, tmp_path, price_in_per_1m=1.0)
    api.score(prompt, TEXTS)
    server.reset("malformed")
    api.score(prompt, ["新的一条"])
    server.reset("500")
    with pytest.raises(ApiError) as err:
        backend(server, tmp_path, max_retries=0).score(prompt, ["又一条"])
    seen = [repr(api), str(api.settings()), str(api.__dict__), str(api.last_run), str(err.value), caplog.text]
    assert "chat/completions" in caplog.text  # the HTTP client's own log records were captured
    assert not [s for s in seen if KEY in s]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files)
    assert not [p for p in files if KEY.encode() in p.read_bytes()]
