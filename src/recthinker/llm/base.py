"""The `ChatModel` protocol and what the chat back ends share, in the OpenAI message shape.

Every back end answers `generate(messages, tools=..., json_schema=...) -> ChatResult`, where
`ChatResult.message` is an OpenAI assistant message (`role`, `content`, optional `tool_calls`).
Shared here: the errors, the `/chat/completions` request and response shapes, the Hermes/Qwen
`<tool_call>` text format, and the checks of a thread count and a server URL. No back-end dependency:
httpx, llama.cpp and torch are imported by the back ends (`openai.py`, `llamacpp.py`, `hf.py`) only.
"""

from __future__ import annotations

import ipaddress
import json
import numbers
import re
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from recthinker.errors import ConfigError, RecThinkerError


class LLMServerError(RecThinkerError):
    """A chat back end failed (server unreachable after retries, HTTP 4xx, malformed response)."""


class ModelLoadError(LLMServerError, ConfigError):
    """A model passed the file checks, but its engine (llama.cpp, transformers) could not load it.

    Raised at first use, since loading is lazy; the back end then keeps raising it without retrying.
    A `ConfigError` (the model is the problem) and an `LLMServerError` (the back end cannot answer),
    so a batch run counts it as a back-end failure and stops.
    """


class ContextOverflowError(LLMServerError):
    """The conversation no longer fits the model's context window (the episode ends without an answer)."""


_OVERFLOW_HINTS = (
    "exceed_context_size",
    "exceeds the available context",
    "maximum context length",
    "context length",
)


def is_context_overflow(message: str) -> bool:
    """Whether a server's error text says the prompt was too long (llama.cpp, vLLM, OpenAI wordings)."""
    low = message.lower()
    return any(h in low for h in _OVERFLOW_HINTS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatResult:
    """One assistant turn and what it cost."""

    message: dict[str, Any]  # OpenAI assistant message: role, content (str), optional tool_calls
    prompt_tokens: int  # tokens in the rendered prompt
    completion_tokens: int  # tokens generated
    latency_s: float  # wall-clock seconds for the call, retries included
    finish_reason: str  # "stop" | "length" | "tool_calls" (as the server reports it)


@runtime_checkable
class ChatModel(Protocol):
    """What the agent loop needs from a model (smolagents' `Model.generate`)."""

    name: str

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
        """Answer `messages` with one assistant message.

        Args:
            messages: OpenAI-shaped chat messages.
            tools: OpenAI function schemas (`transformers.utils.get_json_schema`), forwarded to the server.
            json_schema: If given, constrain the reply to JSON matching this schema.
            temperature: Sampling temperature; 0 means greedy.
            max_tokens: Cap on generated tokens.
            seed: Sampling seed, where the back end supports one.
            stop: Strings that end generation (not included in the reply).
            grammar: A GBNF grammar the reply must follow (llama.cpp back ends and servers).
        """
        ...


# -- shared by the OpenAI-shaped back ends (HTTP and in-process llama.cpp) -----------------------


def chat_payload(
    messages: list[dict[str, Any]],
    *,
    model: str,
    tools: list[dict[str, Any]] | None,
    json_schema: dict[str, Any] | None,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    stop: list[str] | None,
    grammar: str | None = None,
) -> dict[str, Any]:
    """The `/chat/completions` request body for one `generate` call."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    if tools:
        payload["tools"] = tools
    if json_schema is not None:
        # OpenAI structured outputs shape; llama.cpp, vLLM and SGLang accept it too.
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": json_schema},
        }
    if grammar is not None:
        payload["grammar"] = grammar  # llama.cpp's extension of the OpenAI request
    if seed is not None:
        payload["seed"] = seed
    if stop:
        payload["stop"] = stop
    return payload


def chat_result(response: dict[str, Any], latency_s: float) -> ChatResult:
    """Turn a `/chat/completions` response body into a `ChatResult`; raises `LLMServerError` if malformed."""
    if "error" in response:
        raise LLMServerError(f"chat server returned an error: {response['error']}")
    try:
        choice = response["choices"][0]
        raw = choice["message"]
        usage = response.get("usage") or {}
        message: dict[str, Any] = {"role": "assistant", "content": raw.get("content") or ""}
        if raw.get("reasoning_content"):
            message["reasoning_content"] = raw["reasoning_content"]
        if raw.get("tool_calls"):
            message["tool_calls"] = [_openai_tool_call(tc, i) for i, tc in enumerate(raw["tool_calls"])]
        return ChatResult(
            message=message,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=latency_s,
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise LLMServerError(f"malformed chat response ({e!r}): {str(response)[:500]}") from e


def _openai_tool_call(tc: dict[str, Any], index: int) -> dict[str, Any]:
    """Normalise one tool call: arguments as a JSON string (some servers send an object)."""
    fn = tc["function"]
    args = fn.get("arguments", "{}")
    if not isinstance(args, str):
        args = json.dumps(args)
    return {
        "id": tc.get("id") or f"call_{index}",
        "type": "function",
        "function": {"name": fn["name"], "arguments": args},
    }


# -- Hermes / Qwen tool-call text format ----------------------------------------------------------

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """One tool call as the chat template renders it (and `parse_hermes_tool_calls` reads it back).

    >>> render_tool_call("cf_scores", {"model": "als"})
    '<tool_call>\\n{"name": "cf_scores", "arguments": {"model": "als"}}\\n</tool_call>'
    >>> parse_hermes_tool_calls(render_tool_call("f", {"k": 3}))[1][0]["function"]
    {'name': 'f', 'arguments': '{"k": 3}'}
    """
    return (
        "<tool_call>\n"
        + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        + "\n</tool_call>"
    )


def parse_hermes_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split model text into free content and OpenAI tool calls from `<tool_call>{json}</tool_call>` blocks.

    A block must hold a JSON object with a string `name` and an object `arguments` (a JSON string or
    `parameters` is accepted too). Valid blocks are removed from the content; malformed ones stay in
    it verbatim, so the agent loop can show the model its mistake. Never raises on model text.
    An unclosed last block (generation cut off) is parsed if its JSON is complete.

    >>> content, calls = parse_hermes_tool_calls('Let me look.\\n<tool_call>{"name": "f", "arguments": {"k": 3}}</tool_call>')
    >>> content, calls[0]["function"]
    ('Let me look.', {'name': 'f', 'arguments': '{"k": 3}'})
    """
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    pos = 0
    for match in _TOOL_CALL_RE.finditer(text):
        call = _parse_one_call(match.group(1))
        kept.append(text[pos : match.start()])
        if call is None:
            kept.append(match.group(0))
        else:
            name, args = call
            calls.append(
                {
                    "id": f"call_{len(calls)}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
            )
        pos = match.end()
    kept.append(text[pos:])
    content = re.sub(r"\n{3,}", "\n\n", "".join(kept)).strip()
    return content, calls


def _parse_one_call(body: str) -> tuple[str, dict[str, Any]] | None:
    try:
        obj = json.loads(body.strip())
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], args


# -- checks of a thread count and a server URL ----------------------------------------------------

MAX_THREADS = 512  # llama.cpp's GGML_MAX_N_THREADS


def check_threads(n_threads: object) -> int:
    """`n_threads` if it is a whole number of CPU threads llama.cpp can use (it aborts on 0)."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise ConfigError(f"threads must be a whole number from 1 to {MAX_THREADS}, got {n_threads!r}")
    if not 1 <= n_threads <= MAX_THREADS:
        raise ConfigError(
            f"threads must be from 1 to {MAX_THREADS} (CPU threads of in-process llama.cpp), got {n_threads}"
        )
    return int(n_threads)


def parse_server_url(spec: str) -> tuple[str, str]:
    """(base URL, model name) of a server spec `http(s)://host[:port]/path[#model-name]` (model default "default").

    >>> parse_server_url("http://127.0.0.1:8080/v1#qwen3-4b")
    ('http://127.0.0.1:8080/v1', 'qwen3-4b')

    Raises:
        ConfigError: naming the spec and what is wrong (scheme, host, port, query, empty model name).
    """

    def bad(why: str) -> ConfigError:
        return ConfigError(f"model server URL {spec!r}: {why}; expected http(s)://host:port/v1#model-name")

    if any(c.isspace() or not c.isprintable() for c in spec):
        raise bad("contains spaces or control characters")
    url, hash_, model = spec.partition("#")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise bad(f"not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise bad(f"scheme {parts.scheme or url.split(':')[0]!r} is not http or https")
    host = parts.hostname or ""
    if not host:
        raise bad("no host name")
    if not (re.fullmatch(r"[\w.-]+", host) or (":" in host and _is_ip(host))):
        raise bad(f"host {host!r} is not a host name or IP address")
    after_host = parts.netloc.rpartition("@")[2].rpartition("]")[2]  # "host:port", or ":port" after "[v6]"
    if ":" in after_host:
        port = after_host.partition(":")[2]
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise bad(f"port {port!r} is not a number from 1 to 65535")
    if parts.query:
        raise bad("has a query string ('?...'); put the model name after '#'")
    if hash_ and not model:
        raise bad("empty model name after '#' (drop the '#' for the server's default model)")
    return url, model or "default"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
