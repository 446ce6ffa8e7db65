"""`recthinker.llm.export`: a LoRA adapter merged into the bundled SmolLM2 GGUF.

The fast tests check the file against numpy arithmetic on a hand-written adapter; the slow test checks the
meaning: llama.cpp on the export decodes the same greedy continuation as transformers + PEFT with the same
adapter (up to llama.cpp's quantization noise), and a merge without the q/k row permutation does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from safetensors.numpy import save_file  # noqa: E402

from recthinker.errors import ConfigError  # noqa: E402
from recthinker.llm import bundled_model_path  # noqa: E402
from recthinker.llm.export import (  # noqa: E402
    BASE_KEY,
    EXPORT_FORMAT,
    SHA_KEY,
    adapter_gguf,
    adapter_sha256,
    export_gguf,
    permute_rows,
    read_safetensors,
)

N_HEAD, N_HEAD_KV, HIDDEN, KV_DIM = 9, 3, 576, 192
PREFIX = "base_model.model.model.layers"


def write_adapter(folder: Path, weights: dict[str, np.ndarray], r: int = 4, alpha: int = 8, **config) -> Path:
    """A PEFT-shaped adapter folder: adapter_config.json + adapter_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    modules = sorted({key.split(".")[-3] for key in weights})
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": r,
                "lora_alpha": alpha,
                "use_rslora": False,
                "use_dora": False,
                "target_modules": modules,
                "modules_to_save": None,
                "bias": "none",
                **config,
            }
        )
    )
    save_file(weights, str(folder / "adapter_model.safetensors"))
    return folder


def random_lora(rng: np.random.Generator, r: int = 4) -> dict[str, np.ndarray]:
    """Random A/B for q_proj and v_proj of layers 0 and 1 (B nonzero, unlike PEFT's init)."""
    weights = {}
    for layer in (0, 1):
        for module, out in (("q_proj", HIDDEN), ("v_proj", KV_DIM)):
            key = f"{PREFIX}.{layer}.self_attn.{module}"
            weights[f"{key}.lora_A.weight"] = rng.normal(0, 0.05, (r, HIDDEN)).astype(np.float32)
            weights[f"{key}.lora_B.weight"] = rng.normal(0, 0.05, (out, r)).astype(np.float32)
    return weights


@pytest.fixture(scope="module")
def base() -> gguf.GGUFReader:
    return gguf.GGUFReader(bundled_model_path())  # parsing the tokenizer arrays takes a few seconds


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray], Path]:
    tmp = tmp_path_factory.mktemp("export")
    weights = random_lora(np.random.default_rng(0))
    adapter = write_adapter(tmp / "adapter", weights)
    return adapter, weights, export_gguf(adapter, tmp / "out" / "merged.gguf")


@pytest.fixture(scope="module")
def merged(exported) -> gguf.GGUFReader:
    return gguf.GGUFReader(exported[2])


def test_permute_rows_interleaves_rotary_halves_per_head() -> None:
    # 2 heads of dim 6: HF rows [a0 a1 a2 b0 b1 b2 | ...] -> llama.cpp rows [a0 b0 a1 b1 a2 b2 | ...]
    w = np.arange(12, dtype=np.float32)[:, None]
    assert permute_rows(w, 2)[:, 0].tolist() == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]


def test_permute_rows_maps_transformers_layout_to_gguf_layout(base) -> None:
    """The float32 HF folder came from transformers' GGUF loader, which un-permutes q and k."""
    from safetensors import safe_open

    from recthinker.data.dataset import cache_dir
    from recthinker.train.model import BUNDLED_HF_NAME

    path = cache_dir() / "models" / BUNDLED_HF_NAME / "model.safetensors"
    if not path.is_file():
        pytest.skip("no converted HF model (made by recthinker.train.model.bundled_hf_model)")
    tensors = {t.name: t for t in base.tensors}
    with safe_open(str(path), framework="np") as f:
        for module, name, n_head in (("q_proj", "attn_q", N_HEAD), ("k_proj", "attn_k", N_HEAD_KV)):
            hf = f.get_tensor(f"model.layers.5.self_attn.{module}.weight")
            t = tensors[f"blk.5.{name}.weight"]
            np.testing.assert_array_equal(
                permute_rows(hf, n_head), gguf.quants.dequantize(t.data, t.tensor_type)
            )


def q8_tolerance(expected: np.ndarray) -> np.ndarray:
    """Q8_0's largest rounding error per element, step = max |x| / 127 over each 32-block: half a step, plus
    up to 127 times the F16 rounding of the stored step (2**-11 relative), so 0.6 steps."""
    blocks = np.abs(expected).reshape(*expected.shape[:-1], -1, 32).max(axis=-1, keepdims=True)
    return np.broadcast_to(0.6 * blocks / 127, (*blocks.shape[:-1], 32)).reshape(expected.shape) + 1e-6


def test_merged_tensors_equal_base_plus_permuted_delta(exported, base, merged) -> None:
    weights = exported[1]
    base_t = {t.name: t for t in base.tensors}
    merged_t = {t.name: t for t in merged.tensors}
    assert list(merged_t) == list(base_t)
    changed = set()
    for layer in (0, 1):
        for module, name, n_head in (("q_proj", "attn_q", N_HEAD), ("v_proj", "attn_v", None)):
            key = f"{PREFIX}.{layer}.self_attn.{module}"
            hf_delta = (
                (8 / 4) * weights[f"{key}.lora_B.weight"] @ weights[f"{key}.lora_A.weight"]
            )  # alpha / r
            delta = permute_rows(hf_delta, n_head) if n_head is not None else hf_delta
            tensor = f"blk.{layer}.{name}.weight"
            changed.add(tensor)
            expected = gguf.quants.dequantize(base_t[tensor].data, base_t[tensor].tensor_type) + delta
            got = merged_t[tensor]
            assert got.tensor_type == gguf.GGMLQuantizationType.Q8_0
            error = np.abs(gguf.quants.dequantize(got.data, got.tensor_type) - expected)
            assert (error <= q8_tolerance(expected)).all(), tensor
            if n_head is not None:  # an unpermuted merge would miss the tolerance by more than 2x
                assert (np.abs(delta - hf_delta) > 2 * q8_tolerance(expected)).any()
    for name, t in base_t.items():
        if name in changed:
            continue
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:  # requantized for llama.cpp's fast CPU kernels
            assert merged_t[name].tensor_type == gguf.GGMLQuantizationType.Q8_0, name
            before = gguf.quants.dequantize(t.data, t.tensor_type)
            after = gguf.quants.dequantize(merged_t[name].data, merged_t[name].tensor_type)
            assert (np.abs(after - before) <= q8_tolerance(before)).all(), name
        else:  # F32 norms, the Q8_0 embedding: byte for byte
            assert merged_t[name].tensor_type == t.tensor_type, name
            assert np.array_equal(merged_t[name].data, t.data), name
    assert any(t.tensor_type == gguf.GGMLQuantizationType.Q4_1 for t in base_t.values())
    assert not any(t.tensor_type == gguf.GGMLQuantizationType.Q4_1 for t in merged_t.values())


def test_metadata_is_copied_and_stamped(exported, base, merged) -> None:
    adapter, _, out = exported
    for name, field in base.fields.items():
        if name in ("GGUF.kv_count",):
            continue
        copy = merged.get_field(name)
        assert copy is not None, name
        assert copy.types == field.types, name
        assert copy.contents() == field.contents(), name
    assert merged.get_field(SHA_KEY).contents() == adapter_sha256(adapter)
    assert merged.get_field(BASE_KEY).contents() == bundled_model_path().name
    assert out.stat().st_size > bundled_model_path().stat().st_size  # Q4_1 weights are now Q8_0
    assert [p.name for p in out.parent.iterdir()] == ["merged.gguf"]  # no temporary left behind


def test_adapter_gguf_caches_by_adapter_hash(
    exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recthinker.llm import export

    adapter, _, out = exported
    calls = []

    def fake_export(adapter_dir: Path, out_path: Path) -> Path:
        calls.append(adapter_dir)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(out.read_bytes())
        return out_path

    monkeypatch.setenv("RECTHINKER_CACHE", str(tmp_path))
    monkeypatch.setattr(export, "export_gguf", fake_export)
    path = adapter_gguf(adapter)
    assert path == tmp_path / "gguf" / f"{adapter_sha256(adapter)[:16]}-v{EXPORT_FORMAT}.gguf"
    assert adapter_gguf(adapter) == path
    assert calls == [adapter]  # exported once, then reused


def test_bf16_safetensors_read_as_float32(tmp_path: Path) -> None:
    values = np.array([[1.0, -2.5], [0.15625, 393216.0]], dtype=np.float32)  # all exact in bfloat16
    data = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, len(data)]}}).encode()
    (tmp_path / "a.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + data)
    np.testing.assert_array_equal(read_safetensors(tmp_path / "a.safetensors")["x"], values)


@pytest.mark.parametrize(
    ("key", "config", "message"),
    [
        (f"{PREFIX}.0.self_attn.rotary.lora_A.weight", {}, "rotary"),
        ("base_model.model.model.embed_tokens.lora_embedding_A", {}, "lora_embedding_A"),
        ("base_model.model.lm_head.modules_to_save.weight", {}, "lm_head"),
        (None, {"use_dora": True}, "DoRA"),
        (None, {"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_unsupported_adapters_raise_config_error(tmp_path: Path, key, config, message) -> None:
    weights = random_lora(np.random.default_rng(1))
    if key is not None:
        weights[key] = np.zeros((4, HIDDEN), dtype=np.float32)
    adapter = write_adapter(tmp_path / "adapter", weights, **config)
    with pytest.raises(ConfigError, match=message):
        export_gguf(adapter, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_non_llama_base_and_missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="adapter_config.json"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    adapter = write_adapter(tmp_path / "adapter", random_lora(np.random.default_rng(2)))
    base = tmp_path / "qwen.gguf"
    writer = gguf.GGUFWriter(base, arch="qwen2")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((HIDDEN, HIDDEN), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match="qwen2"):
        export_gguf(adapter, tmp_path / "out.gguf", base_gguf=base)


# -- the proof: llama.cpp on the export decodes what transformers + PEFT decode -------------------------

PROMPTS = (
    "The three most important things to remember when cooking pasta are",
    "Once upon a time, in a small village by the sea, there lived",
)
# llama.cpp multiplies Q4_1 weights by Q8_1-quantized activations, so its log-probabilities differ from
# transformers' float32 ones even on the unmodified base: by up to about 0.2 nats on these prompts, and by
# under 0.1 nats on an export whose merged tensors are F16 and whose other tensors are the base's own. The
# test checks that exact layout (the merge arithmetic and the q/k permutation); the shipped layout re-rounds
# every weight to Q8_0, which adds up to 0.6 of a Q8_0 step per element (checked tensor by tensor above)
# and, with this deliberately large random adapter, moves single log-probabilities by up to ~0.3 nats. The tolerances sit just above that noise; the
# same adapter merged without the q/k row permutation is off by 0.6-0.75 nats (the negative control below).
LOGPROB_TOL = 0.25  # |log p_hf - log p_llama| of each generated token
NEAR_TIE = 0.1  # greedy paths may part only where transformers' top two tokens are this close


def peft_adapter(model, folder: Path) -> Path:
    """A LoRA on all seven llama projections with seeded random A and B, saved by PEFT itself."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                # q/k carry most of the change: that is where the row permutation matters.
                std = 0.05 if ("q_proj" in name or "k_proj" in name) else 0.01
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    peft_model.save_pretrained(folder)
    return folder


def llama_greedy(gguf_path: Path, prompts: list[list[int]], n: int) -> list[tuple[list[int], list[float]]]:
    """Greedy token ids and their log-probabilities from llama.cpp (one thread) for each prompt."""
    from recthinker.llm.llamacpp import start_server

    server = start_server(gguf_path, n_ctx=256, n_threads=1)
    out = []
    for ids in prompts:
        response = server.handle_completions(
            {"prompt": ids, "n_predict": n, "temperature": 0.0, "n_probs": 1}
        )
        steps = response["choices"][0]["logprobs"]["content"]
        out.append(([s["id"] for s in steps], [s["logprob"] for s in steps]))
    return out


def disagreements(model, prompt: list[int], llama_ids: list[int], llama_logprobs: list[float]) -> list[str]:
    """Where llama.cpp's greedy continuation departs from the transformers model's beyond the noise."""
    import torch

    with torch.inference_mode():
        # Teacher forcing on llama.cpp's tokens: both models see the same context at every position.
        logits = model(torch.tensor([prompt + llama_ids])).logits[0, len(prompt) - 1 : -1].float()
        hf_ids = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=len(llama_ids),
            do_sample=False,
            top_p=None,
            top_k=None,
            temperature=None,
        )[0, len(prompt) :].tolist()
    logprobs = torch.log_softmax(logits, dim=-1)
    top2 = logprobs.topk(2, dim=-1).values
    chosen = logprobs.gather(1, torch.tensor(llama_ids)[:, None])[:, 0]
    problems = [
        f"token {i}: log p {chosen[i]:.3f} (transformers) vs {lp:.3f} (llama.cpp)"
        for i, lp in enumerate(llama_logprobs)
        if abs(chosen[i].item() - lp) > LOGPROB_TOL
    ]
    split = next((i for i, (a, b) in enumerate(zip(hf_ids, llama_ids, strict=False)) if a != b), None)
    if split is not None and (top2[split, 0] - top2[split, 1]).item() >= NEAR_TIE:
        problems.append(
            f"greedy paths part at token {split} with a top-2 gap of {top2[split, 0] - top2[split, 1]:.3f}"
        )
    elif split is None and len(hf_ids) != len(llama_ids):
        problems.append(f"{len(hf_ids)} tokens (transformers) vs {len(llama_ids)} (llama.cpp)")
    return problems


@pytest.mark.slow
def test_llamacpp_on_export_decodes_like_transformers_with_peft(tmp_path: Path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("xllamacpp")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recthinker.llm import export
    from recthinker.train.model import bundled_hf_model

    torch.set_num_threads(1)
    hf_dir = bundled_hf_model()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    adapter = peft_adapter(AutoModelForCausalLM.from_pretrained(hf_dir), tmp_path / "adapter")
    base_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base_model, adapter).eval()  # what HFChat serves

    monkeypatch.setattr(export, "WEIGHT_TYPE", "F16")  # the exact layout (see the note above)
    monkeypatch.setattr(export, "REQUANTIZED", ())
    merged = export_gguf(adapter, tmp_path / "merged.gguf")
    base_runs = llama_greedy(bundled_model_path(), prompts, 20)
    for prompt, (ids, logprobs), (base_ids, _) in zip(
        prompts, llama_greedy(merged, prompts, 20), base_runs, strict=True
    ):
        text = tokenizer.decode(ids)
        assert disagreements(peft_model, prompt, ids, logprobs) == [], text
        assert ids != base_ids, f"the adapter did not change the output: {text!r}"

    # Negative control: without the q/k row permutation the same checks must fail.
    monkeypatch.setattr(export, "permute_rows", lambda weight, n_head: weight)
    unpermuted = export_gguf(adapter, tmp_path / "unpermuted.gguf")
    runs = llama_greedy(unpermuted, prompts, 20)
    assert any(disagreements(peft_model, p, ids, lps) for p, (ids, lps) in zip(prompts, runs, strict=True))


def test_model_lookup_runs_our_adapters_on_llamacpp(exported, tmp_path: Path, monkeypatch) -> None:
    """`load_chat_model`: None -> the committed default adapter merged into the bundled GGUF (with the agent
    settings it was trained with); "base" -> the untrained GGUF; an adapter trained on the bundled model's
    transformers conversion -> llama.cpp on its export; and `default_config` applies the settings."""
    from recthinker.agent.rankers import default_config
    from recthinker.llm import bundled, load_chat_model
    from recthinker.llm.llamacpp import LlamaCpp

    adapter, _, _ = exported
    monkeypatch.setenv("RECTHINKER_CACHE", str(tmp_path / "cache"))
    default = tmp_path / "default_model"
    default.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (default / name).write_bytes((adapter / name).read_bytes())
    settings = {
        "answer_form": "evidence",
        "max_steps": 3,
        "max_tool_calls": 2,
        "max_tokens": 224,
        "n_history": 6,
    }
    (default / "agent.json").write_text(json.dumps(settings))
    monkeypatch.setattr(bundled, "DEFAULT_MODEL_DIR", default)

    model = load_chat_model(None)
    assert isinstance(model, LlamaCpp) and model.model_path == adapter_gguf(default)
    assert model.model_path.parent == tmp_path / "cache" / "gguf" and model.agent_settings == settings
    config = default_config("agent", model)
    assert (config.answer_form, config.max_tool_calls, config.max_steps, config.constrained) == (
        "evidence",
        2,
        3,
        True,
    )
    passive = default_config("fixed-workflow", model)
    assert passive.answer_form == "ranking" and passive.n_history == 6
    base = load_chat_model("base")
    assert base.model_path == bundled_model_path() and not getattr(base, "agent_settings", None)

    trained = tmp_path / "run" / "adapter"
    trained.mkdir(parents=True)
    config_json = json.loads((adapter / "adapter_config.json").read_text())
    config_json["base_model_name_or_path"] = f"/somewhere/{bundled.BUNDLED_HF_NAME}"
    (trained / "adapter_config.json").write_text(json.dumps(config_json))
    (trained / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    assert isinstance(load_chat_model(str(trained)), LlamaCpp)
    (trained / "agent.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="agent.json"):
        load_chat_model(str(trained))

    monkeypatch.setattr(bundled, "DEFAULT_MODEL_DIR", tmp_path / "nothing")
    assert load_chat_model(None).model_path == bundled_model_path()
