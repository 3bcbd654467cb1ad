"""A real OpenAI-compatible chat-completions server for the tests (stdlib ThreadingHTTPServer on 127.0.0.1, a free
port), serving a Hugging Face causal LM folder with greedy answers, ``logprobs`` and ``top_logprobs``, and scripted
faults: ``"429"`` (with Retry-After), ``"500"``, ``"malformed"`` (no logprobs, an answer that is no label),
``"label:X"`` (answer X, no logprobs), ``"timeout"`` (no answer until the client gives up), ``"no-logprobs"`` (400 when logprobs are asked for, else
the answer "1"), ``"html"`` (a web page, as a wrong base URL may give).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class ChatServer:
    """Serve ``model_dir`` as model ``name`` at ``base_url`` (``…/v1``); use as a context manager.

    ``script`` holds the faults of the next requests (one each, in order), ``default`` the fault of every other
    request (None: answer normally); ``requests`` counts every POST, ``max_in_flight`` the most served at once.
    """

    def __init__(self, model_dir: str | Path, name: str = "tiny", key: str | None = None, delay: float = 0.0) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.strings = [self.tokenizer.decode([i]) for i in range(len(self.tokenizer))]  # each token as text
        self.name, self.key, self.delay = name, key, delay
        self.script: deque[str] = deque()
        self.default: str | None = None
        self.retry_after = "1"
        self.requests = self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny model: one thread is fastest, and several contend on a busy machine
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        torch.set_num_threads(self._threads)

    def reset(self, default: str | None = None, *script: str) -> None:
        """Forget counts and faults; then ``default`` for every request but the scripted ones."""
        with self._lock:
            self.script = deque(script)
            self.default = default
            self.requests = self.max_in_flight = 0

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The token ids the model reads for ``messages`` (the chat template with the assistant turn opened)."""
        return list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )

    def next_logprobs(self, ids: list[int]) -> torch.Tensor:
        """Log-probabilities of the next token after ``ids``."""
        with self._model_lock, torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, -1].double()
        return torch.log_softmax(logits, -1)

    def complete(self, body: dict) -> dict:
        """A chat completion for ``body``: greedy tokens, with logprobs/top_logprobs when asked."""
        ids = self.prompt_ids(body["messages"])
        n_prompt, content, steps = len(ids), [], []
        top_k = int(body.get("top_logprobs") or 0)
        for _ in range(int(body.get("max_tokens") or 16)):
            lp = self.next_logprobs(ids)
            token = int(lp.argmax())
            if token == self.tokenizer.eos_token_id:
                break
            best = torch.topk(lp, min(top_k, len(lp))) if top_k else None
            steps.append(
                {
                    "token": self.strings[token],
                    "logprob": float(lp[token]),
                    "bytes": None,
                    "top_logprobs": [
                        {"token": self.strings[i], "logprob": v, "bytes": None}
                        for v, i in zip(best.values.tolist(), best.indices.tolist())
                    ]
                    if best is not None
                    else [],
                }
            )
            content.append(token)
            ids.append(token)
        logprobs = {"content": steps} if body.get("logprobs") else None
        return self.response(self.tokenizer.decode(content), logprobs, n_prompt, len(content))

    def response(self, content: str, logprobs: dict | None, n_in: int, n_out: int) -> dict:
        """The JSON body of a chat completion."""
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": logprobs,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def error(self, status: int, message: str, headers: dict | None = None) -> None:
                self.send(status, {"error": {"message": message, "type": "test", "code": status}}, headers)

            def do_POST(self) -> None:
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fault = server.script.popleft() if server.script else server.default
                try:
                    self.serve(fault)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def serve(self, fault: str | None) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if server.delay:
                    time.sleep(server.delay)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self.error(404, f"no route {self.path}")
                if server.key is not None and self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self.error(401, "Incorrect API key provided.")
                if body.get("model") != server.name:
                    return self.error(404, f"The model `{body.get('model')}` does not exist.")
                if fault == "429":
                    return self.error(429, "Rate limit reached.", {"Retry-After": server.retry_after})
                if fault == "500":
                    return self.error(500, "The server had an error.")
                if fault == "timeout":
                    server._closing.wait(30)
                    return None
                if fault == "no-logprobs":
                    if body.get("logprobs"):
                        return self.error(400, "logprobs is not supported for this model.")
                    return self.send(200, server.response("1", None, 10, 1))
                if fault == "html":
                    page = b"<html><body>Welcome</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    return self.wfile.write(page)
                if fault == "malformed":
                    return self.send(200, server.response("我不知道，可能吧", None, 10, 3))
                if fault and fault.startswith("label:"):
                    return self.send(200, server.response(fault[len("label:") :], None, 10, 1))
                return self.send(200, server.complete(body))

        return Handler
