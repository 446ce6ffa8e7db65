"""Chat models in the OpenAI message shape: the `ChatModel` protocol, the back ends, the bundled and default model.

Every back end answers `generate(messages, tools=..., json_schema=...) -> ChatResult`, where
`ChatResult.message` is an OpenAI assistant message (`role`, `content`, optional `tool_calls`).
The back ends are re-exported here lazily, so that `import recthinker.llm` pulls in neither httpx,
llama.cpp nor torch:

- `base.py`: the `ChatModel` protocol, `ChatResult`, the errors, what the back ends share.
- `OpenAICompatible` (`openai.py`): any `/v1/chat/completions` server (vLLM, SGLang, llama.cpp, Ollama, OpenAI).
- `LlamaCpp`, `serve_llamacpp` (`llamacpp.py`): llama.cpp in-process through `xllamacpp`; `gguf_header.py`
  reads and checks a GGUF file's header before llama.cpp loads it.
- `HFChat` (`hf.py`): transformers + optional PEFT LoRA adapter, Hermes/Qwen `<tool_call>` parsing.
- `bundled.py`: the bundled SmolLM2 GGUF, the committed default adapter (`default_model/`), `agent.json`.
- `export.py`: a LoRA adapter merged into the bundled GGUF (numpy + gguf-py, cached), for llama.cpp.
- `load.py`: `load_chat_model(spec)`.

`load_chat_model(spec)` picks one from a string (None, "base", URL, .gguf path, or a model/adapter
directory). None is the default model: the LoRA adapter trained by `recthinker train --preset cpu` and
committed in `llm/default_model/`, merged into the bundled SmolLM2 GGUF (`llm.export.adapter_gguf`,
cached) and run by llama.cpp; "base" is the untrained bundled SmolLM2. A model trained by this project
carries the agent settings it was trained with (`agent.json` next to its adapter: answer form, turn
and tool budgets) as `model.agent_settings`, which `agent.rankers.default_config` applies.

Quick check with the bundled SmolLM2-135M (one llama.cpp thread)::

    python -c "from recthinker.llm import load_chat_model; \
print(load_chat_model(None).generate([{'role': 'user', 'content': 'Hi'}]).message)"
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recthinker.llm.base import (
    ChatModel,
    ChatResult,
    ContextOverflowError,
    LLMServerError,
    ModelLoadError,
    parse_hermes_tool_calls,
)
from recthinker.llm.bundled import bundled_model_path
from recthinker.llm.load import load_chat_model

if TYPE_CHECKING:
    from recthinker.llm.hf import HFChat
    from recthinker.llm.llamacpp import LlamaCpp, serve_llamacpp
    from recthinker.llm.openai import OpenAICompatible

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

_LAZY = {
    "OpenAICompatible": "recthinker.llm.openai",
    "LlamaCpp": "recthinker.llm.llamacpp",
    "serve_llamacpp": "recthinker.llm.llamacpp",
    "HFChat": "recthinker.llm.hf",
}


def __getattr__(name: str) -> Any:
    # PEP 562: the back ends import httpx / xllamacpp / torch, so load them on first use.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
