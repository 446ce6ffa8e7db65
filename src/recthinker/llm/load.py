"""`load_chat_model(spec)`: a chat model from a short spec, every spec checked before anything loads it.

None is the default model (the committed adapter merged into the bundled GGUF, on llama.cpp), "base" the
untrained bundled SmolLM2, a URL an OpenAI-compatible server, a `.gguf` file llama.cpp in-process, and a
folder a transformers model or a LoRA adapter. The back ends are imported only when a spec needs one.
"""

from __future__ import annotations

import os
from pathlib import Path

from recthinker.errors import ConfigError
from recthinker.llm.base import ChatModel, check_threads, parse_server_url
from recthinker.llm.bundled import (
    _trained_on_bundled,
    agent_settings,
    bundled_model_path,
    default_adapter_dir,
)

SPEC_FORMS = "'base', http(s)://host:port/v1#model-name, a .gguf file, or a model or LoRA adapter folder"


def adapter_on_llamacpp(adapter_dir: Path, n_threads: int = 1) -> ChatModel:
    """An adapter of the bundled model, merged into its GGUF (cached), on llama.cpp, with its `agent.json`."""
    # the back ends, imported when a spec needs one: `import recthinker.llm` stays free of httpx and gguf
    from recthinker.llm.export import adapter_gguf
    from recthinker.llm.hf import ADAPTER_CONFIG, check_adapter_weights, read_json_object
    from recthinker.llm.llamacpp import LlamaCpp

    check_threads(n_threads)
    what = f"adapter {str(adapter_dir)!r}"
    read_json_object(Path(adapter_dir) / ADAPTER_CONFIG, what)
    check_adapter_weights(Path(adapter_dir), what)
    settings = agent_settings(adapter_dir)
    model = LlamaCpp(adapter_gguf(adapter_dir), n_threads=n_threads)
    model.name = f"smollm2-135m+{adapter_dir.name}"
    model.agent_settings = settings
    return model


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
        from recthinker.llm.llamacpp import LlamaCpp  # back end, imported when a spec needs it (httpx, gguf)

        return LlamaCpp(bundled_model_path(), n_threads=n_threads)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"model spec {spec!r} is empty or not text: give {SPEC_FORMS}")
    if spec.lower().startswith(("http:", "https:")) or "://" in spec:
        from recthinker.llm.openai import OpenAICompatible  # back end, imported when a spec needs it (httpx)

        url, model = parse_server_url(spec)
        return OpenAICompatible(url, model)
    path = Path(spec).expanduser()
    if path.is_file() or path.suffix.lower() == ".gguf":
        from recthinker.llm.llamacpp import LlamaCpp  # back end, imported when a spec needs it (httpx, gguf)

        return LlamaCpp(path, n_threads=n_threads)  # checks the file's GGUF header first
    if path.is_dir():
        return _folder_model(path, n_threads)
    raise ConfigError(
        f"model spec {spec!r} is not a URL, a .gguf file or a model directory: no such file or folder"
    )


def _folder_model(path: Path, n_threads: int) -> ChatModel:
    """A transformers model folder or a PEFT LoRA adapter folder, checked before anything loads it."""
    from recthinker.llm.hf import (  # back end, imported when a spec needs it
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
