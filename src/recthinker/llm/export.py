"""Merge a PEFT LoRA adapter into the bundled SmolLM2 GGUF, so llama.cpp serves the trained model.

No torch or transformers: the adapter's safetensors file is read with numpy, the base GGUF with gguf-py.
Each targeted weight becomes `dequant(base) + scale * B @ A`; all metadata (tokenizer, chat template) is
kept, plus `recthinker.adapter_sha256` and `recthinker.base_gguf`. Merged weights and the base's Q4_1
weights are written as Q8_0 (`WEIGHT_TYPE`), every other tensor is copied byte for byte: llama.cpp's x86 CPU
backend has no repacked or tinyBLAS matrix kernels for Q4_1 (nor fast F16 ones without native F16
arithmetic), and has both for Q8_0, which also holds Q4_1's 16-level blocks almost exactly. Measured on the
2-core machine with the trained default model (`benchmarks/bench_agent.py`): prompt processing went from
131 to about 190 tokens/s on two threads.

    path = adapter_gguf(Path("outputs/sft-smollm2/adapter"))   # cached under cache_dir()/gguf/
    model = LlamaCpp(path)

llama.cpp's HF converter permutes the rows of the llama q and k weights (rotary halves interleaved per
head, `LlamaModel.permute` in `convert_hf_to_gguf.py`); transformers' GGUF loader undoes it. A LoRA delta,
computed in the HF layout, gets the same permutation before it is added. `tests/test_export.py` checks
that greedy decoding of the export in llama.cpp matches transformers + PEFT, and differs without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, Keys, quants

from recthinker.data.dataset import cache_dir
from recthinker.errors import ConfigError
from recthinker.llm.bundled import bundled_model_path

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SHA_KEY = "recthinker.adapter_sha256"
BASE_KEY = "recthinker.base_gguf"

# HF module (under model.layers.N.) -> llama.cpp tensor (under blk.N.)
GGUF_TENSOR = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LORA_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(\d+)\.("
    + "|".join(re.escape(m) for m in GGUF_TENSOR)
    + r")\.lora_([AB])\.weight"
)
WEIGHT_TYPE = "Q8_0"  # merged weights and requantized base weights (see the module docstring)
REQUANTIZED = ("Q4_1",)  # base weight types without fast llama.cpp CPU kernels, rewritten as WEIGHT_TYPE
EXPORT_FORMAT = 2  # part of the cache key: bump when the bytes an adapter exports to change
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoraPair:
    """One adapted linear layer: its delta is `scale * b @ a` in the HF layout (out x in)."""

    tensor: str  # GGUF tensor name, e.g. "blk.3.attn_q.weight"
    a: np.ndarray  # (r, in)
    b: np.ndarray  # (out, r)
    scale: float

    def delta(self) -> np.ndarray:
        """The weight update in float32, HF layout (out x in)."""
        return (self.scale * self.b.astype(np.float32)) @ self.a.astype(np.float32)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a safetensors file into numpy (BF16 becomes float32, which numpy can hold exactly).

    Args:
        path: A `.safetensors` file (8-byte header length, JSON header, raw little-endian data).

    Returns:
        Tensor name -> array.
    """
    raw = Path(path).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    data = memoryview(raw)[8 + header_len :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConfigError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=np.dtype(dtype).newbyteorder("<")).reshape(info["shape"])
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
    return out


def lora_scale(config: dict[str, Any], source: Path) -> float:
    """`lora_alpha / r` (or `lora_alpha / sqrt(r)` with rsLoRA), after rejecting what we cannot merge.

    Args:
        config: The parsed `adapter_config.json`.
        source: Its path, for error messages.
    """
    if config.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{source}: peft_type {config.get('peft_type')!r} is not LORA")
    unsupported = {
        "use_dora": "DoRA",
        "modules_to_save": "modules_to_save",
        "rank_pattern": "per-module ranks (rank_pattern)",
        "alpha_pattern": "per-module alphas (alpha_pattern)",
        "trainable_token_indices": "trainable tokens",
        "fan_in_fan_out": "fan_in_fan_out",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise ConfigError(f"{source}: {what} ({key}={config[key]!r}) cannot be merged into a GGUF")
    if config.get("lora_bias") or config.get("bias", "none") != "none":
        raise ConfigError(f"{source}: LoRA biases cannot be merged into a GGUF")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, int | float):
        raise ConfigError(f"{source}: needs a positive integer r and a numeric lora_alpha, got r={r!r}")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def read_adapter(adapter_dir: Path) -> list[LoraPair]:
    """The LoRA pairs of a PEFT adapter folder, keyed by their GGUF tensor names.

    Args:
        adapter_dir: Folder with `adapter_config.json` and `adapter_model.safetensors`.

    Raises:
        ConfigError: A missing file, an unsupported option, or a key outside the llama attention/MLP
            projections (embeddings, lm_head, modules_to_save), or an A without its B.
    """
    config_path, weights_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ConfigError(f"LoRA adapter file not found: {path}")
    scale = lora_scale(json.loads(config_path.read_text(encoding="utf-8")), config_path)
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, array in read_safetensors(weights_path).items():
        match = _LORA_KEY.fullmatch(key)
        if match is None:
            raise ConfigError(
                f"{weights_path}: unsupported adapter tensor {key!r} (only llama q/k/v/o/gate/up/down LoRA)"
            )
        layer, module, half = match.groups()
        halves.setdefault(f"blk.{layer}.{GGUF_TENSOR[module]}.weight", {})[half] = array
    pairs = []
    for tensor, ab in sorted(halves.items()):
        if set(ab) != {"A", "B"} or ab["A"].ndim != 2 or ab["B"].shape[1:] != ab["A"].shape[:1]:
            shapes = {half: a.shape for half, a in ab.items()}
            raise ConfigError(
                f"{weights_path}: {tensor} needs lora_A (r x in) and lora_B (out x r), got {shapes}"
            )
        pairs.append(LoraPair(tensor=tensor, a=ab["A"], b=ab["B"], scale=scale))
    if not pairs:
        raise ConfigError(f"{weights_path}: no LoRA tensors")
    return pairs


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: per head, interleave the two rotary halves (`LlamaModel.permute`).

    Args:
        weight: (rows, cols) in the HF layout; rows = n_head * head_dim.
        n_head: Attention heads for q, key/value heads for k.
    """
    rows, cols = weight.shape
    return weight.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def adapter_sha256(adapter_dir: Path) -> str:
    """SHA-256 over the adapter's config and weights (names and bytes), hex."""
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        digest.update(name.encode() + b"\0")
        with open(adapter_dir / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _field_value(field: Any) -> Any:
    """A reader field's value in the form `GGUFWriter.add_key_value` takes; strings stay raw bytes."""
    if field.types[0] == GGUFValueType.ARRAY:
        if len(field.types) != 2:
            raise ConfigError(f"GGUF metadata {field.name}: nested arrays are not supported")
        if field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        return field.contents()
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[-1])
    return field.contents()


def _as_weight_type(weight: np.ndarray) -> tuple[np.ndarray, Any]:
    """`weight` (float32, GGUF layout) as `WEIGHT_TYPE` blocks, or F16 when its rows do not split into blocks."""
    qtype = GGMLQuantizationType[WEIGHT_TYPE]
    if weight.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        return weight.astype(np.float16), GGMLQuantizationType.F16
    return quants.quantize(weight.astype(np.float32), qtype), qtype


def _merge(reader: Any, pairs: list[LoraPair]) -> dict[str, tuple[np.ndarray, Any]]:
    """(data, type) of every adapted tensor after the merge: `WEIGHT_TYPE` blocks, F32 if the base is F32."""

    def uint(key: str) -> int:
        field = reader.get_field(key)
        if field is None:
            raise ConfigError(f"base GGUF lacks {key}")
        return int(field.contents())

    n_head, n_head_kv = uint("llama.attention.head_count"), uint("llama.attention.head_count_kv")
    tensors = {t.name: t for t in reader.tensors}
    merged = {}
    for pair in pairs:
        base = tensors.get(pair.tensor)
        if base is None:
            raise ConfigError(f"adapter targets {pair.tensor}, which the base GGUF does not have")
        weight = quants.dequantize(base.data, base.tensor_type)  # (out, in), float32
        if weight.shape != (pair.b.shape[0], pair.a.shape[1]):
            raise ConfigError(
                f"{pair.tensor}: LoRA delta is {pair.b.shape[0]} x {pair.a.shape[1]}, base is {weight.shape}"
            )
        delta = pair.delta()
        if pair.tensor.endswith(".attn_q.weight"):
            delta = permute_rows(delta, n_head)
        elif pair.tensor.endswith(".attn_k.weight"):
            delta = permute_rows(delta, n_head_kv)
        if base.tensor_type == GGMLQuantizationType.F32:
            merged[pair.tensor] = ((weight + delta).astype(np.float32), GGMLQuantizationType.F32)
        else:
            merged[pair.tensor] = _as_weight_type(weight + delta)
    return merged


def _requantized(reader: Any, done: set[str]) -> dict[str, tuple[np.ndarray, Any]]:
    """(data, type) of every base weight in a `REQUANTIZED` type (outside `done`), as `WEIGHT_TYPE`."""
    return {
        t.name: _as_weight_type(quants.dequantize(t.data, t.tensor_type))
        for t in reader.tensors
        if t.tensor_type.name in REQUANTIZED and t.name not in done
    }


def export_gguf(adapter_dir: Path, out_path: Path, base_gguf: Path | None = None) -> Path:
    """Write `base_gguf` with the LoRA adapter merged in, atomically (temporary sibling, then rename).

    Args:
        adapter_dir: PEFT LoRA adapter folder (trained on the model `base_gguf` holds).
        out_path: The GGUF file to write (replaced if present).
        base_gguf: A llama-architecture GGUF; default the bundled SmolLM2-135M-Instruct.

    Returns:
        `out_path`.

    Raises:
        ConfigError: The adapter or base cannot be merged (see `read_adapter`; non-llama base; shapes).
    """
    start = time.perf_counter()
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    base_path = Path(base_gguf) if base_gguf is not None else bundled_model_path()
    if not base_path.is_file():
        raise ConfigError(f"base GGUF not found: {base_path}")
    pairs = read_adapter(adapter_dir)
    sha = adapter_sha256(adapter_dir)
    reader = GGUFReader(base_path)
    arch_field = reader.get_field(Keys.General.ARCHITECTURE)
    arch = arch_field.contents() if arch_field is not None else None
    if arch != "llama":
        raise ConfigError(f"{base_path}: architecture {arch!r} is not supported (only llama)")
    merged = _merge(reader, pairs)
    merged.update(_requantized(reader, set(merged)))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        writer = GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
        alignment = reader.get_field(Keys.General.ALIGNMENT)
        if alignment is not None:
            writer.data_alignment = int(alignment.contents())
        for field in reader.fields.values():
            # GGUF.* are the reader's virtual header fields; the writer adds the architecture itself.
            if field.name.startswith("GGUF.") or field.name in (Keys.General.ARCHITECTURE, SHA_KEY, BASE_KEY):
                continue
            sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, _field_value(field), field.types[0], sub_type=sub_type)
        writer.add_string(SHA_KEY, sha)
        writer.add_string(BASE_KEY, base_path.name)
        tensors = {t.name: merged.get(t.name, (t.data, t.tensor_type)) for t in reader.tensors}
        for name, (data, qtype) in tensors.items():
            # Quantized data is uint8 in its byte shape; the writer derives the element shape from qtype.
            writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data, _ in tensors.values():
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        writer.close()
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "merged %d LoRA tensors from %s into %s (%d tensors %s, %.0f MB) in %.1fs",
        len(pairs),
        adapter_dir,
        out_path,
        len(merged),
        WEIGHT_TYPE,
        out_path.stat().st_size / 1e6,
        time.perf_counter() - start,
    )
    return out_path


def adapter_gguf(adapter_dir: Path) -> Path:
    """The bundled GGUF with this adapter merged in, exported once to `cache_dir()/gguf/<sha16>.gguf`.

    Args:
        adapter_dir: PEFT LoRA adapter folder trained on the bundled SmolLM2-135M-Instruct.

    Returns:
        The cached GGUF file (keyed by the adapter's config and weights and by `EXPORT_FORMAT`).
    """
    adapter_dir = Path(adapter_dir)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter_dir / name).is_file():
            raise ConfigError(f"LoRA adapter file not found: {adapter_dir / name}")
    out = cache_dir() / "gguf" / f"{adapter_sha256(adapter_dir)[:16]}-v{EXPORT_FORMAT}.gguf"
    if out.is_file():
        log.info("using cached export %s of %s", out, adapter_dir)
        return out
    return export_gguf(adapter_dir, out)
