"""Bad model specs are one-line `ConfigError`s naming the spec, raised before llama.cpp, transformers or
an HTTP client is handed anything: truncated, fake and empty GGUF files, folders that are no model,
adapters without their base, malformed server URLs and thread counts that mean nothing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from recthinker import llm
from recthinker.errors import ConfigError
from recthinker.llm import (
    LLMServerError,
    ModelLoadError,
    bundled_model_path,
    load_chat_model,
)
from recthinker.llm.base import parse_server_url
from recthinker.llm.bundled import BUNDLED_HF_NAME
from recthinker.llm.gguf_header import check_gguf, read_gguf_header
from recthinker.llm.llamacpp import LlamaCpp, start_server


@pytest.fixture
def no_native(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail the test if llama.cpp is handed a model: the checks must come first."""
    xllamacpp = pytest.importorskip("xllamacpp")
    calls: list = []

    def server(params: object) -> None:
        calls.append(params)
        raise AssertionError("llama.cpp was handed the model")

    monkeypatch.setattr(xllamacpp, "Server", server)
    return calls


def _tiny_gguf(path: Path, arch: str = "llama") -> Path:
    """A small well-formed GGUF: an architecture, two float32 tensors (4x8 and 8)."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _raise_message(spec: str, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_chat_model(spec, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- GGUF files -----------------------------------------------------------------------------------------


def test_truncated_prefix_of_the_bundled_model(tmp_path: Path, no_native: list) -> None:
    bundled = bundled_model_path()
    with open(bundled, "rb") as f:
        head = f.read(1 << 20)
    (tmp_path / "head.gguf").write_bytes(head)
    message = _raise_message(str(tmp_path / "head.gguf"))
    assert "head.gguf" in message and "truncated" in message and "header" in message
    # Cut inside the tensor data: the header reads, the data it declares is not all there.
    header = read_gguf_header(bundled)
    assert header.data_end == header.size == bundled.stat().st_size
    with open(bundled, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(header.data_start + 4096))
    message = _raise_message(str(tmp_path / "cut.gguf"))
    assert "cut.gguf" in message and "truncated" in message and str(header.data_end) in message
    assert not no_native


def test_truncated_tensor_data_of_a_small_gguf(tmp_path: Path, no_native: list) -> None:
    whole = _tiny_gguf(tmp_path / "whole.gguf")
    assert check_gguf(whole).n_tensors == 2  # complete: accepted
    data = whole.read_bytes()
    for cut in (1, 40, len(data) - read_gguf_header(whole).data_start - 1):
        (tmp_path / "cut.gguf").write_bytes(data[: len(data) - cut])
        assert "truncated" in _raise_message(str(tmp_path / "cut.gguf"))
    assert not no_native


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"hello, this is a text file\n" * 20, "not a GGUF file"),
        (np.random.default_rng(0).bytes(4096), "not a GGUF file"),
        (b"GGUF\x03\x00", "truncated"),
        (b"GGUF" + struct.pack("<IQQ", 3, 1, 1), "truncated"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62) + b"\0" * 64, "truncated"),
        (b"GGUF" + struct.pack("<IQQ", 1, 1, 1), "version 1"),
        (b"GGUF" + struct.pack(">IQQ", 3, 1, 1), "big-endian"),
        (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1) + b"k" + struct.pack("<I", 99), "unknown metadata"),
        (
            b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1) + b"k" + struct.pack("<II", 4, 0),
            "no model architecture",
        ),
    ],
    ids=[
        "empty",
        "text",
        "random",
        "magic-only",
        "no-kv",
        "huge-counts",
        "v1",
        "big-endian",
        "bad-type",
        "no-arch",
    ],
)
def test_fake_and_broken_gguf_files(tmp_path: Path, no_native: list, content: bytes, expected: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    message = _raise_message(str(path))
    assert str(path) in message and expected in message
    with pytest.raises(ConfigError, match="GGUF"):
        LlamaCpp(path)
    with pytest.raises(ConfigError, match="GGUF"):
        start_server(path)
    assert not no_native


def test_header_only_gguf_is_not_a_model(tmp_path: Path, no_native: list) -> None:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(tmp_path / "vocab.gguf", arch="llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert "no tensors" in _raise_message(str(tmp_path / "vocab.gguf"))


def test_missing_gguf_a_folder_named_gguf_and_a_fake_file_without_suffix(
    tmp_path: Path, no_native: list
) -> None:
    assert "not found" in _raise_message(str(tmp_path / "missing.gguf"))
    (tmp_path / "dir.gguf").mkdir()
    assert "is a folder" in _raise_message(str(tmp_path / "dir.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 100)
    assert "not a GGUF file" in _raise_message(str(tmp_path / "weights.bin"))
    assert "no such file or folder" in _raise_message(str(tmp_path / "nothing-here"))
    assert not no_native


def test_a_lora_adapter_gguf_is_not_a_model(tmp_path: Path, no_native: list) -> None:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(tmp_path / "lora.gguf", arch="llama")
    writer.add_type("adapter")
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((2, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "general.type is 'adapter'" in _raise_message(str(tmp_path / "lora.gguf"))


def test_a_gguf_llamacpp_cannot_load_fails_once_at_first_use(tmp_path: Path, monkeypatch) -> None:
    xllamacpp = pytest.importorskip("xllamacpp")
    model = load_chat_model(str(_tiny_gguf(tmp_path / "foo.gguf", arch="fooarch")))  # the header is fine
    with pytest.raises(ModelLoadError, match="llama.cpp could not load it") as info:
        model.generate([{"role": "user", "content": "hi"}], max_tokens=1)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, LLMServerError)
    assert "foo.gguf" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setattr(xllamacpp, "Server", lambda params: pytest.fail("loaded again"))
    with pytest.raises(ModelLoadError):
        model.generate([{"role": "user", "content": "hi"}], max_tokens=1)


# ---- threads --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, -1, -8, 513, True, 1.5, "2", None])
def test_thread_counts_that_mean_nothing(threads: object, no_native: list) -> None:
    for spec in (None, "base", str(bundled_model_path()), "http://127.0.0.1:8080/v1"):
        assert "threads" in _raise_message(spec, n_threads=threads)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="threads"):
        LlamaCpp(bundled_model_path(), n_threads=threads)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="threads"):
        start_server(bundled_model_path(), n_threads=threads)  # type: ignore[arg-type]
    assert not no_native


def test_valid_thread_counts_build_lazily(no_native: list) -> None:
    for threads in (1, 2, np.int64(4), 512):
        model = load_chat_model("base", n_threads=threads)  # type: ignore[arg-type]
        assert isinstance(model, LlamaCpp) and model._server is None
    assert not no_native


# ---- folders --------------------------------------------------------------------------------------------


def _model_folder(path: Path) -> Path:
    """A folder that passes the checks (config, weights, tokenizer): transformers is never reached here."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _safetensors(path / "model.safetensors")
    (path / "tokenizer.json").write_text("{}")
    return path


def _safetensors(path: Path, cut: int = 0) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    data = struct.pack("<Q", len(header)) + header + b"\0" * 16
    path.write_bytes(data[: len(data) - cut])
    return path


def test_folders_that_are_no_model(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _raise_message(str(empty))
    assert str(empty) in message and "is empty" in message
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    assert "neither a Hugging Face model" in _raise_message(str(junk))
    (junk / "model.gguf").write_bytes(b"")
    assert "model.gguf: pass that file" in _raise_message(str(junk))


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda d: (d / "config.json").write_text("{oops"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text("[1]"), "JSON object"),
        (lambda d: (d / "config.json").write_text("{}"), "no model_type"),
        (lambda d: (d / "model.safetensors").unlink(), "no weights"),
        (lambda d: _safetensors(d / "model.safetensors", cut=5), "truncated"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 64), "truncated or not a safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "empty"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "no-model-type",
        "no-weights",
        "cut-weights",
        "fake-weights",
        "empty-weights",
        "no-tokenizer",
    ],
)
def test_broken_hf_model_folders(tmp_path: Path, breakage, expected: str) -> None:
    folder = _model_folder(tmp_path / "model")
    assert isinstance(load_chat_model(str(folder)), llm.HFChat)  # intact: accepted (loads lazily)
    breakage(folder)
    message = _raise_message(str(folder))
    assert str(folder) in message and expected in message


def test_sharded_weights_with_a_missing_shard(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "model")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model-00002-of-00002.safetensors" in _raise_message(str(folder))


def _adapter(path: Path, base: object, weights: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    if base is not ...:
        config["base_model_name_or_path"] = base
    (path / "adapter_config.json").write_text(json.dumps(config))
    if weights:
        _safetensors(path / "adapter_model.safetensors")
    return path


def test_adapters_whose_base_model_cannot_be_found(tmp_path: Path) -> None:
    for base in ("/nonexistent/base-model", "Qwen/Qwen3-4B", str(tmp_path / "missing")):
        message = _raise_message(str(_adapter(tmp_path / "a1", base)))
        assert "a1" in message and repr(base) in message and "not a local directory" in message
    assert "names no base model" in _raise_message(str(_adapter(tmp_path / "a2", ...)))
    assert "names no base model" in _raise_message(str(_adapter(tmp_path / "a3", "")))
    assert "names no base model" in _raise_message(str(_adapter(tmp_path / "a4", 7)))
    empty_base = tmp_path / "empty-base"
    empty_base.mkdir()
    message = _raise_message(str(_adapter(tmp_path / "a5", str(empty_base))))
    assert "base model" in message and "config.json not found" in message


def test_broken_adapter_folders(tmp_path: Path) -> None:
    base = _model_folder(tmp_path / "base")
    good = _adapter(tmp_path / "good", str(base))
    chat = load_chat_model(str(good))
    assert isinstance(chat, llm.HFChat) and chat.adapter_dir == good
    assert "no weights" in _raise_message(str(_adapter(tmp_path / "noweights", str(base), weights=False)))
    cut = _adapter(tmp_path / "cut", str(base))
    _safetensors(cut / "adapter_model.safetensors", cut=3)
    assert "truncated" in _raise_message(str(cut))
    (cut / "adapter_config.json").write_text("{nope")
    assert "adapter_config.json is not valid JSON" in _raise_message(str(cut))
    (cut / "adapter_config.json").write_bytes(b"\xff\xfe\x00")
    assert "cannot be read" in _raise_message(str(cut))


def test_bundled_adapter_with_broken_weights_fails_before_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recthinker.llm import export

    monkeypatch.setattr(export, "adapter_gguf", lambda d: pytest.fail("export reached"))
    adapter = _adapter(tmp_path / "trained", f"/somewhere/{BUNDLED_HF_NAME}")
    _safetensors(adapter / "adapter_model.safetensors", cut=1)
    assert "truncated" in _raise_message(str(adapter))
    (adapter / "adapter_model.safetensors").unlink()
    assert "no weights" in _raise_message(str(adapter))


# ---- server URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("http://", "no host"),
        ("https://", "no host"),
        ("http:/127.0.0.1:8080/v1", "no host"),
        ("http://:8080/v1", "no host"),
        ("http://host:notaport/v1", "port 'notaport'"),
        ("http://host:/v1", "port ''"),
        ("http://host:0/v1", "port '0'"),
        ("http://127.0.0.1:99999/v1", "port '99999'"),
        ("http://[::1/v1", "not a valid URL"),
        ("ftp://x", "scheme 'ftp'"),
        ("file:///tmp/model.gguf", "scheme 'file'"),
        ("http://127.0.0.1:1/v1#", "empty model name"),
        ("http://exa mple.com/v1", "spaces"),
        ("http://127.0.0.1:8080/v1#qwen 3", "spaces"),
        (" http://127.0.0.1:8080/v1", "spaces"),
        ("http://127.0.0.1:8080/v1\n", "spaces"),
        ("http://ho$t:8080/v1", "host 'ho$t'"),
        ("http://127.0.0.1:8080/v1?model=x", "query string"),
    ],
)
def test_malformed_server_urls(spec: str, expected: str) -> None:
    message = _raise_message(spec)
    assert repr(spec) in message and expected in message


def test_well_formed_server_urls() -> None:
    assert parse_server_url("http://127.0.0.1:8080/v1") == ("http://127.0.0.1:8080/v1", "default")
    assert parse_server_url("https://api.example.com/v1#gpt-4o") == ("https://api.example.com/v1", "gpt-4o")
    assert parse_server_url("http://[::1]:11434/v1#qwen3:4b") == ("http://[::1]:11434/v1", "qwen3:4b")
    assert parse_server_url("http://vllm:8000/v1#Qwen/Qwen3-4B")[1] == "Qwen/Qwen3-4B"
    model = load_chat_model("http://localhost:8000/v1#m")
    assert (model.base_url, model.name) == ("http://localhost:8000/v1", "m")


@pytest.mark.parametrize("spec", ["", "   ", "\t"])
def test_empty_spec(spec: str) -> None:
    assert "is empty" in _raise_message(spec)


def test_a_folder_transformers_rejects_fails_once_at_first_use(tmp_path: Path, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    folder = _model_folder(tmp_path / "model")  # passes the file checks; the tokenizer is not one
    model = load_chat_model(str(folder))
    with pytest.raises(ModelLoadError, match="transformers could not load it") as info:
        model.generate([{"role": "user", "content": "hi"}], max_tokens=1)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, LLMServerError)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setattr(transformers, "AutoTokenizer", None)  # not tried again
    with pytest.raises(ModelLoadError):
        model.generate([{"role": "user", "content": "hi"}], max_tokens=1)


def test_a_path_object_is_a_spec_too(tmp_path: Path, no_native: list) -> None:
    assert isinstance(load_chat_model(bundled_model_path()), LlamaCpp)
    with pytest.raises(ConfigError, match="not found"):
        load_chat_model(tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match="not text"):
        load_chat_model(42)  # type: ignore[arg-type]
