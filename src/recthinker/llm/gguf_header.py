"""The header of a GGUF model file, read and checked without loading the model (milliseconds).

    header = read_gguf_header("model.gguf", {"tokenizer.chat_template"})  # version, sizes, those strings
    check_gguf("model.gguf")  # ConfigError unless llama.cpp can load it: architecture, tensors, all data

`llamacpp.py` calls `check_gguf` before it hands a file to llama.cpp, so a truncated, fake or empty file is
a one-line `ConfigError` instead of a native abort; `gguf_strings` reads the metadata it needs (the chat
template). Little-endian GGUF v2 and v3 only: the versions llama.cpp reads.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from recthinker.errors import ConfigError

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
