"""Models to train: the bundled SmolLM2-135M-Instruct as a Hugging Face folder, and a tiny Qwen2 for tests.

Both carry our chat template (`chat_template`, `agent/prompts/chat_template.jinja`): TRL's training variant
of the Qwen2.5 template (`{% generation %}` markers for the assistant-only loss, prefix-preserving for GRPO)
with a `# Tools` block of one line per tool, `<tool_call>{json}</tool_call>` in assistant turns and
`<tool_response>` blocks in a user turn -- the text the agent loop writes in prompt mode
(`recthinker.agent.prompting`) and that llama.cpp's SmolLM2 template renders from it. So SFT, GRPO and
inference see one format (`tests/test_train_smoke.py` checks all three).

    path = bundled_hf_model()            # converts the GGUF once (~1 min), then reuses the folder
    model = AutoModelForCausalLM.from_pretrained(path)

Needs the `[train]` extra and the `gguf` package (transformers reads GGUF files with it).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from recthinker.data.dataset import cache_dir
from recthinker.llm.bundled import (  # llm/bundled.py knows our adapters by it
    BUNDLED_HF_NAME,
    bundled_model_path,
)

log = logging.getLogger(__name__)


def chat_template() -> str:
    """The chat template every model we train uses: `agent/prompts/chat_template.jinja`.

    TRL's training variant of the Qwen2.5 template (generation markers, prefix-preserving) with one line per
    tool instead of JSON schemas; tool calls and responses are Qwen2.5's.
    """
    return resources.files("recthinker.agent").joinpath("prompts", "chat_template.jinja").read_text("utf-8")


def set_tool_template(tokenizer: Any) -> Any:
    """Give `tokenizer` our tool template (+ TRL's Qwen3 response parser for GRPO's tool calls).

    `<|im_end|>` (SmolLM2 and Qwen agree) ends a turn. TRL recognises its own templates by their text to pick
    the parser of tool calls in completions; ours is the same `<tool_call>` JSON format, so it gets the
    parser TRL gives Qwen2.5.
    """
    from trl.chat_template_utils import qwen3_template  # heavy: trl

    tokenizer.chat_template = chat_template()
    tokenizer.response_template = qwen3_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def bundled_hf_model(cache: Path | None = None) -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF converted to a transformers folder (float32), made once.

    The GGUF (Q4_1) is dequantized by transformers; the folder holds the model, the tokenizer and the
    Qwen2.5 tool chat template. It is written to a temporary sibling and renamed, so a killed run never
    leaves a half-written folder that later runs would trust.

    Args:
        cache: Folder to hold the model folder; default `cache_dir() / "models"`.

    Returns:
        The model folder (`.../smollm2-135m-instruct-hf`).
    """
    root = Path(cache) if cache is not None else cache_dir() / "models"
    out = root / BUNDLED_HF_NAME
    if (out / "config.json").is_file():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # heavy: transformers

    gguf = bundled_model_path()
    start = time.perf_counter()
    log.info("converting %s to a transformers folder (about a minute)", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    set_tool_template(tokenizer)
    # The GGUF loader marks the config as quantized; the weights are already dequantized floats. A fresh
    # model from a clean config, with the state dict copied in, saves as an ordinary checkpoint.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_HF_NAME}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():  # not a concurrent run that finished first
            raise
    log.info("wrote %s in %.0fs", out, time.perf_counter() - start)
    return out


def tiny_test_model(path: Path, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> Path:
    """Write a tiny randomly initialised Qwen2 (~0.3M parameters + embeddings) with an offline tokenizer.

    The tokenizer is a byte-level BPE trained here on a few hundred characters of tool-calling text (no hub
    access), with the Qwen special tokens and the Qwen2.5 tool template. For tests of the training code
    paths: it checks mechanics, not quality.

    Args:
        path: Output folder (created).
        seed: torch seed for the random weights.
        hidden_size: Width of the model.
        num_layers: Transformer layers.

    Returns:
        `path`.
    """
    import torch  # heavy: torch, tokenizers, transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        '<analyze>The user likes drama.</analyze><plan>Check the history.</plan>\n<tool_call>\n{"name": '
        '"user_history", "arguments": {"k": 5}}\n</tool_call>',
        "<tool_response>\nm01 Silent Harbor (1990) | Drama, Romance\n</tool_response>",
        "<answer>[3] > [1] > [2] > [4] > [5] > [6] > [7] > [8] > [9] > [10]</answer>",
        "You are RecThinker, a recommendation investigator. User: u01 History Candidates",
    ] * 4
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])
    set_tool_template(tokenizer)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
