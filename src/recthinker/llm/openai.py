"""`OpenAICompatible`: a chat model behind any `POST {base_url}/chat/completions` server.

Works with vLLM, SGLang, llama.cpp's server, Ollama (`http://host:11434/v1`) and OpenAI. Retries
connection failures, 5xx and 429 with exponential backoff (honouring `Retry-After`); a 4xx other
than 429 fails at once. One instance may be shared by many threads (at most `max_concurrency`
requests in flight).

    model = OpenAICompatible("http://127.0.0.1:8080/v1", "qwen3-4b")
    model.generate([{"role": "user", "content": "Hi"}]).message["content"]
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

import httpx

from recthinker.llm.base import (
    ChatResult,
    ContextOverflowError,
    LLMServerError,
    chat_payload,
    chat_result,
    is_context_overflow,
)

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
PROBE_TIMEOUT_S = 2.0  # `probe`: one GET, no retries
PROBE_MAX_AGE_S = 5.0  # `probe`: how long its answer is reused


class OpenAICompatible:
    """Chat model served over the OpenAI chat-completions HTTP API."""

    def __init__(
        self,
        base_url: str,
        model: str = "default",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 8,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Args:
        base_url: Server root including the version, e.g. `http://127.0.0.1:8080/v1`.
        model: Model name sent in each request (llama.cpp ignores it; vLLM needs the served name).
        api_key: Bearer token; defaults to the `OPENAI_API_KEY` environment variable, else none.
        timeout_s: Per-request timeout in seconds.
        max_retries: Retries after the first attempt (connection errors, 5xx, 429).
        max_concurrency: Requests allowed in flight at once across threads.
        backoff_s: First retry delay in seconds; doubles each retry (capped at 30 s).
        transport: httpx transport override, for tests.
        """
        if max_retries < 0 or max_concurrency < 1:
            raise ValueError(f"bad retry/concurrency settings: {max_retries=}, {max_concurrency=}")
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        # A host that never answers costs at most 10 s to connect, not the whole generation timeout.
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._client = httpx.Client(headers=headers, timeout=timeout, limits=limits, transport=transport)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        # A client of its own, so that a probe never waits behind generations for a pooled connection.
        self._probe_client = httpx.Client(headers=headers, timeout=PROBE_TIMEOUT_S, transport=transport)
        self._probe_lock = threading.Lock()
        self._probed: tuple[float, str | None] | None = None  # (monotonic time, problem) of the last probe

    def __repr__(self) -> str:
        return f"OpenAICompatible({self.base_url!r}, {self.name!r})"

    def close(self) -> None:
        """Close the connection pools."""
        self._client.close()
        self._probe_client.close()

    def probe(self) -> str | None:
        """Why the server cannot be used now, or None when it answers (for a server's `/healthz`).

        One `GET {base_url}/models` (2 s timeout, no retries), its answer reused for 5 s. Unreachable, a
        timeout, a 5xx, 401 or 403 is a problem; any other answer means the server is up.
        """
        with self._probe_lock:
            if self._probed is not None and time.monotonic() - self._probed[0] < PROBE_MAX_AGE_S:
                return self._probed[1]
            url = self.base_url + "/models"
            try:
                response = self._probe_client.get(url)
            except httpx.HTTPError as e:
                problem: str | None = f"{url}: {type(e).__name__}: {e}"
            else:
                bad = response.status_code >= 500 or response.status_code in (401, 403)
                problem = f"{url}: HTTP {response.status_code}" if bad else None
            self._probed = (time.monotonic(), problem)
            return problem

    def generate(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        json_schema: dict[str, Any] | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int | None = None,
        stop: list[str] | None = None,
        grammar: str | None = None,
    ) -> ChatResult:
        """One assistant turn (see `ChatModel.generate`); raises `LLMServerError` when the server fails."""
        payload = chat_payload(
            messages,
            model=self.name,
            tools=tools,
            json_schema=json_schema,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            stop=stop,
            grammar=grammar,
        )
        start = time.perf_counter()
        response = self.post("/chat/completions", payload)
        return chat_result(response, time.perf_counter() - start)

    def logprobs_of(self, messages: list[dict[str, Any]], options: list[str]) -> list[float]:
        """Log-probability of each option as the start of the assistant reply (summed over its tokens).

        Needs a llama.cpp server: each option is forced with a one-string `grammar` and scored from the
        raw (pre-grammar) token log-probabilities. Other servers ignore `grammar`; that is detected and
        raised as `LLMServerError`. The tokenisation is the one greedy decoding picks under the grammar.
        """
        return [self._forced_logprob(messages, option) for option in options]

    def _forced_logprob(self, messages: list[dict[str, Any]], option: str) -> float:
        payload = {
            "model": self.name,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": 64,
            "logprobs": True,
            "top_logprobs": 1,
            "grammar": gbnf_literal(option),
        }
        return forced_option_logprob(self.post("/chat/completions", payload), option)

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST JSON to `base_url + path` with retries; returns the decoded JSON body."""
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                with self._slots:
                    response = self._client.post(url, json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as e:
                # A refused connection is immediate and rarely transient: retry it once, not max_retries times.
                if last or (isinstance(e, httpx.ConnectError) and attempt >= 1):
                    raise LLMServerError(f"{url}: {e!r} after {attempt + 1} attempts") from e
                delay = self._delay(attempt, None)
                log.info("%s: %r; retry %d in %.1fs", url, e, attempt + 1, delay)
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError as e:
                        raise LLMServerError(f"{url}: response is not JSON: {response.text[:300]}") from e
                if response.status_code == 400 and is_context_overflow(response.text):
                    raise ContextOverflowError(
                        f"{url}: prompt too long for the context: {response.text[:300]}"
                    )
                if response.status_code not in RETRY_STATUS or last:
                    raise LLMServerError(
                        f"{url}: HTTP {response.status_code} after {attempt + 1} attempts: {response.text[:500]}"
                    )
                delay = self._delay(attempt, response.headers.get("Retry-After"))
                log.info("%s: HTTP %d; retry %d in %.1fs", url, response.status_code, attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = math.nan  # an HTTP date: fall back to backoff
            if math.isfinite(seconds) and seconds >= 0:
                return min(seconds, MAX_RETRY_AFTER_S)
        return min(self.backoff_s * 2**attempt, 30.0)


def gbnf_literal(text: str) -> str:
    """A llama.cpp GBNF grammar accepting exactly `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'root ::= "{escaped}"'


def forced_option_logprob(response: dict[str, Any], option: str) -> float:
    """Sum the token log-probabilities of a reply forced to be `option` (end-of-turn token excluded)."""
    if "error" in response:
        raise LLMServerError(f"chat server returned an error: {response['error']}")
    choice = response["choices"][0]
    text = choice["message"].get("content") or ""
    tokens = (choice.get("logprobs") or {}).get("content") or []
    if text != option or not tokens:
        raise LLMServerError(
            f"server did not force the option {option!r} (got {text[:80]!r}); "
            "logprobs_of needs llama.cpp's `grammar` and `logprobs` support"
        )
    # Compare bytes, not text: a token may hold part of a multi-byte character.
    target, seen, total = option.encode(), b"", 0.0
    for token in tokens:
        if seen == target:
            break  # what follows is the end-of-turn token
        seen += bytes(token["bytes"]) if "bytes" in token else token["token"].encode()
        total += float(token["logprob"])
    return total
