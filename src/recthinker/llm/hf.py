"""`HFChat`: a transformers causal LM (optionally with a PEFT LoRA adapter) as a `ChatModel`.

The tokenizer's chat template renders the messages and tools (`apply_chat_template(..., tools=...)`);
Hermes/Qwen `<tool_call>{json}</tool_call>` blocks in the output become OpenAI `tool_calls`. This is
the back end for checkpoints our SFT/GRPO runs write. torch, transformers and peft are imported on
first use (they are in the `[train]` extra).

    model = HFChat("outputs/sft-smollm2/base", adapter_dir="outputs/sft-smollm2/adapter")
    model.generate(messages, tools=tool_schemas, max_tokens=256).message
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from recthinker.errors import ConfigError
from recthinker.llm.base import ChatResult, ModelLoadError, parse_hermes_tool_calls

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; ConfigError naming `what` and the file when it is missing or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path.name} not found in {path.parent}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what}: {path} cannot be read ({e})") from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{what}: {path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: {path} must hold a JSON object, got {type(value).__name__}")
    return value


def check_safetensors(path: Path, what: str) -> None:
    """Reject a `.safetensors` file that is empty, cut off or not safetensors, from its header alone.

    The format: an 8-byte little-endian header length, a JSON header mapping tensor names to
    `{dtype, shape, data_offsets: [begin, end]}` (offsets into the data after the header), the data.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            raw = f.read(n) if 8 + n <= size else b""
    except OSError as e:
        raise ConfigError(f"{what}: {path} cannot be read ({e})") from e
    if size < 8 or 8 + n > size or not raw:
        raise ConfigError(f"{what}: {path} is empty, truncated or not a safetensors file ({size} bytes)")
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        raise ConfigError(f"{what}: {path} is not a safetensors file (unreadable header)") from None
    if 8 + n + max(ends, default=0) > size:
        raise ConfigError(
            f"{what}: {path} is truncated: its header declares {8 + n + max(ends)} bytes, the file has {size}"
        )


def _check_weights(folder: Path, names: tuple[str, ...], what: str) -> None:
    """The first of `names` in `folder` exists and, for safetensors (single or sharded), is complete."""
    found = next((folder / n for n in names if (folder / n).is_file()), None)
    if found is None:
        raise ConfigError(f"{what}: no weights in {folder} (expected one of {', '.join(names)})")
    if found.name.endswith(".index.json"):
        index = read_json_object(found, what)
        shards = index.get("weight_map")
        if not isinstance(shards, dict) or not shards:
            raise ConfigError(f"{what}: {found} has no weight_map")
        for shard in sorted(set(map(str, shards.values()))):
            if not (folder / shard).is_file():
                raise ConfigError(f"{what}: weight shard {shard} listed in {found.name} is missing")
            if shard.endswith(".safetensors"):
                check_safetensors(folder / shard, what)
    elif found.suffix == ".safetensors":
        check_safetensors(found, what)
    elif found.stat().st_size == 0:
        raise ConfigError(f"{what}: {found} is empty")


def check_model_dir(model_dir: Path, what: str, tokenizer_dir: Path | None = None) -> None:
    """Reject a folder transformers could not load as a causal LM: config, weights, tokenizer.

    Args:
        model_dir: The model folder.
        what: How error messages name it, e.g. "model folder 'x'".
        tokenizer_dir: Another folder that may hold the tokenizer (an adapter's).
    """
    config = read_json_object(model_dir / "config.json", what)
    if not isinstance(config.get("model_type"), str):
        raise ConfigError(
            f"{what}: {model_dir / 'config.json'} has no model_type (not a transformers config)"
        )
    _check_weights(model_dir, MODEL_WEIGHTS, what)
    folders = [d for d in (model_dir, tokenizer_dir) if d is not None]
    if not any((d / n).is_file() for d in folders for n in TOKENIZER_FILES):
        raise ConfigError(f"{what}: no tokenizer (none of {', '.join(TOKENIZER_FILES)}) in {model_dir}")


def check_adapter_weights(adapter_dir: Path, what: str) -> None:
    """Reject a PEFT adapter folder whose weights are missing, empty or cut off."""
    _check_weights(adapter_dir, ADAPTER_WEIGHTS, what)


class HFChat:
    """A local transformers chat model; loads on first call, calls are serialised by a lock."""

    def __init__(
        self,
        model_dir: str | Path,
        adapter_dir: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        """Args:
        model_dir: Directory with the base model (config + weights) and, unless the adapter has one, the tokenizer.
        adapter_dir: Optional PEFT LoRA adapter directory; its tokenizer (and chat template) wins if present.
        device: torch device, e.g. "cpu" or "cuda".
        dtype: torch dtype name: "float32", "bfloat16", "float16" or "auto".
        """
        self.model_dir = Path(model_dir)
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
        self.name = (self.adapter_dir or self.model_dir).name
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_error: ModelLoadError | None = None

    def __repr__(self) -> str:
        return f"HFChat({str(self.model_dir)!r}, adapter_dir={self.adapter_dir!r})"

    def _load(self) -> tuple[Any, Any]:
        if self._load_error is not None:
            raise self._load_error  # a folder transformers could not load is not tried again
        if self._model is None:
            try:
                self._load_now()
            except Exception as e:
                # The folder passed `check_model_dir`; what transformers, tokenizers or PEFT still reject
                # in it (a config, tokenizer or weights they cannot read) is a problem with the folder.
                where = f"{self.model_dir}" + (f" + adapter {self.adapter_dir}" if self.adapter_dir else "")
                first = (str(e).strip().splitlines() or [""])[0][:300]
                self._load_error = ModelLoadError(
                    f"model folder {where}: transformers could not load it: {type(e).__name__}: {first}"
                )
                raise self._load_error from e
        return self._model, self._tokenizer

    def _load_now(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers, torch

        start = time.perf_counter()
        tok_dir = self.model_dir
        if self.adapter_dir is not None and (self.adapter_dir / "tokenizer_config.json").is_file():
            tok_dir = self.adapter_dir
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype)
        if self.adapter_dir is not None:
            from peft import PeftModel  # heavy: peft

            model = PeftModel.from_pretrained(model, self.adapter_dir)
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        log.info("loaded %s on %s in %.1fs", self.name, self.device, time.perf_counter() - start)

    def _prompt_ids(
        self, tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None
    ) -> list[int]:
        text = tokenizer.apply_chat_template(
            template_messages(messages), tools=tools or None, add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]

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
        """One assistant turn (see `ChatModel.generate`). `json_schema` and `grammar` are not supported here."""
        if json_schema is not None or grammar is not None:
            raise NotImplementedError(
                "HFChat cannot constrain output to a JSON schema or grammar; use LlamaCpp or a llama.cpp/vLLM server"
            )
        import torch  # heavy: torch, transformers
        from transformers import GenerationConfig

        start = time.perf_counter()
        with self._lock:
            model, tokenizer = self._load()
            prompt = self._prompt_ids(tokenizer, messages, tools)
            eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
            config = GenerationConfig(
                max_new_tokens=max_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
                stop_strings=stop or None,
            )
            if seed is not None:
                torch.manual_seed(seed)
            input_ids = torch.tensor([prompt], device=self.device)
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    tokenizer=tokenizer,
                )
        new_ids = output[0, len(prompt) :].tolist()
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        hit_eos = bool(new_ids) and new_ids[-1] in eos_ids
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop or []) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        content, tool_calls = parse_hermes_tool_calls(text)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
            finish = "tool_calls"
        elif hit_eos or cut >= 0 or len(new_ids) < max_tokens:
            finish = "stop"
        else:
            finish = "length"
        return ChatResult(
            message=message,
            prompt_tokens=len(prompt),
            completion_tokens=len(new_ids),
            latency_s=time.perf_counter() - start,
            finish_reason=finish,
        )

    def logprobs_of(self, messages: list[dict[str, Any]], options: list[str]) -> list[float]:
        """Exact log P(option | prompt) for each option, summed over the option's own tokens."""
        import torch  # heavy: torch

        with self._lock:
            model, tokenizer = self._load()
            prompt = self._prompt_ids(tokenizer, messages, None)
            scores = []
            for option in options:
                option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
                if not option_ids:
                    raise ValueError(f"option {option!r} has no tokens")
                ids = torch.tensor([prompt + option_ids], device=self.device)
                with torch.inference_mode():
                    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # (len(option), V)
                logp = torch.log_softmax(logits, dim=-1)
                target = torch.tensor(option_ids, device=self.device)
                scores.append(float(logp.gather(1, target[:, None]).sum()))
        return scores


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy messages into the shape HF chat templates expect: tool-call arguments as dicts, content as str."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                fn = dict(tc["function"])
                if isinstance(fn.get("arguments"), str):
                    # Unparseable arguments stay a raw string: the model sees its own mistake.
                    with contextlib.suppress(json.JSONDecodeError):
                        fn["arguments"] = json.loads(fn["arguments"])
                calls.append({**tc, "function": fn})
            m["tool_calls"] = calls
        out.append(m)
    return out
