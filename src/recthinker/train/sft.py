"""LoRA SFT on agent trajectories: TRL `SFTTrainer` + PEFT over `{"messages", "tools"}` rows.

    rows = [t.to_sft_row() for t in read_trajectories(path) if t.valid]
    adapter = run_sft(rows, bundled_hf_model(), Path("outputs/sft-smollm2"), max_steps=60)
    model = HFChat(bundled_hf_model(), adapter_dir=adapter)   # serve it (AgentConfig(tool_mode="native"))

The loss covers assistant tokens only (`assistant_only_loss=True`): TRL swaps the Qwen2.5 template for its
training variant, identical text plus `{% generation %}` markers, so the system prompt, the task, and
every tool observation get label -100 while each assistant turn, `<|im_end|>` included, is learned.

Rows go into a `datasets.Dataset` with `Json` features for tool arguments and schemas: with inferred
features, Arrow would merge the argument objects of all rows into one struct and render every missing key
as `null` in the training text.

The run folder holds `adapter/` (LoRA weights + the tokenizer with the inference template),
`train_log.jsonl` (one row per logged step), `loss.png` and `config.json` (the resolved SFT and LoRA
settings). `merge_adapter` folds the LoRA weights into a full model folder.

GGUF: TRL writes transformers checkpoints. To serve a trained model with llama.cpp, convert the merged
folder with llama.cpp's `convert_hf_to_gguf.py` (in the llama.cpp source tree and the llama-cpp-python
sdist; the `gguf` package alone has no HF converter). Without it, serve through `HFChat`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recthinker.agent.prompting import tools_block
from recthinker.train.model import set_tool_template
from recthinker.train.plots import plot_log

log = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def training_row(row: dict[str, Any]) -> dict[str, Any]:
    """A `Trajectory.to_sft_row()` in the form the chat template renders like the agent's prompt mode.

    In prompt mode the loop appends the `# Tools` block to the system message and also records the
    schemas in `tools`; rendered with `tools=`, the template would list the tools twice. The block is cut
    from the system message here, so the template writes it back (`tools=`) exactly as GRPO prompts get it.

    >>> tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    >>> row = {"messages": [{"role": "system", "content": "Hi.\\n" + tools_block(tools)}], "tools": tools}
    >>> training_row(row)["messages"][0]["content"]
    'Hi.'
    """
    messages = [dict(m) for m in row["messages"]]
    tools = list(row.get("tools") or [])
    if tools and messages and messages[0]["role"] == "system":
        content = messages[0].get("content") or ""
        block = tools_block(tools).strip()
        if block in content:
            messages[0]["content"] = content.replace(block, "").rstrip()
    return {"messages": messages, "tools": tools}


def sft_dataset(rows: Sequence[dict[str, Any]] | str | Path) -> Any:
    """A `datasets.Dataset` of `{"messages", "tools"}` rows (a list, or a JSONL file of rows).

    Tool-call arguments and tool schemas are stored as `Json` so every row keeps its own keys.
    """
    from datasets import Dataset, Features, Json, List, Value  # heavy: datasets

    if isinstance(rows, str | Path):
        lines = Path(rows).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    message = {
        "role": Value("string"),
        "content": Value("string"),
        "name": Value("string"),
        "tool_calls": List(
            {"type": Value("string"), "function": {"name": Value("string"), "arguments": Json()}}
        ),
    }
    features = Features({"messages": List(message), "tools": List(Json())})
    clean = []
    for row in rows:
        row = training_row(row)
        msgs = [
            {
                "role": m["role"],
                "content": m.get("content") or "",
                "name": m.get("name"),
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                    }
                    for c in m.get("tool_calls") or []
                ]
                or None,
            }
            for m in row["messages"]
        ]
        clean.append({"messages": msgs, "tools": row["tools"] or None})
    return Dataset.from_list(clean, features=features)


def default_sft_config(out_dir: Path, **overrides: Any) -> Any:
    """TRL `SFTConfig` with CPU-friendly defaults (fp32 and `use_cpu` without CUDA, no trackers)."""
    import torch  # heavy: torch, trl
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    settings: dict[str, Any] = {
        "output_dir": str(out_dir),
        "assistant_only_loss": True,  # loss on assistant turns only (see the module docstring)
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "constant",
        "num_train_epochs": 1,
        "max_length": 2048,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return SFTConfig(**settings)


def lora_config(
    r: int = 16,
    alpha: int = 32,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    layers: Sequence[int] | None = None,
) -> Any:
    """PEFT LoRA settings for a causal LM (attention projections by default).

    `layers` limits the adapters to those decoder layers. On a CPU, adapting only the top layers also
    shortens the backward pass: no gradient flows below the lowest adapted layer (SmolLM2-135M, 1.5k
    tokens, one thread: forward + backward 30 s with all 30 layers adapted, 18 s with the top 10).
    """
    from peft import LoraConfig  # heavy: peft

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(target_modules),
        layers_to_transform=list(layers) if layers else None,
        task_type="CAUSAL_LM",
    )


def top_layers(model_dir: str | Path, n: int) -> list[int] | None:
    """The indices of the top `n` decoder layers of the model in `model_dir` (None for n <= 0: all layers)."""
    if n <= 0:
        return None
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    total = int(config["num_hidden_layers"])
    return list(range(max(0, total - n), total))


def jsonl_log_callback(path: Path) -> Any:
    """A `TrainerCallback` that appends every log dict (with its `step`) to the JSONL file `path`."""
    from transformers import TrainerCallback  # heavy: transformers

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")

    class JsonlLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs:
                row = {"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

    return JsonlLog()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, int | float | str | bool | type(None)) else str(value)


def build_sft_trainer(
    rows: Sequence[dict[str, Any]] | str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    lora_layers: Sequence[int] | None = None,
    **sft_overrides: Any,
) -> Any:
    """The `SFTTrainer` `run_sft` trains (tokenized dataset, LoRA-wrapped model); arguments as in `run_sft`."""
    import torch  # heavy: torch, transformers, trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = default_sft_config(out_dir, **sft_overrides)
    tokenizer = set_tool_template(AutoTokenizer.from_pretrained(model_dir))
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if args.bf16 else torch.float32
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora_config(lora_r, lora_alpha, lora_target_modules, lora_layers),
        callbacks=[jsonl_log_callback(out_dir / "train_log.jsonl")],
    )


def run_sft(
    rows: Sequence[dict[str, Any]] | str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    lora_layers: Sequence[int] | None = None,
    **sft_overrides: Any,
) -> Path:
    """Train a LoRA adapter on tool-calling conversations; returns `out_dir / "adapter"`.

    Args:
        rows: `Trajectory.to_sft_row()` dicts, or a JSONL file of them.
        model_dir: A transformers model folder with a tool chat template (`bundled_hf_model()`).
        out_dir: The run folder (created).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_target_modules: Module names that get LoRA adapters.
        lora_layers: Decoder layers that get them (None: all; see `lora_config`).
        **sft_overrides: Any `trl.SFTConfig` field (e.g. `max_steps=60`, `learning_rate=1e-3`).
    """
    out_dir = Path(out_dir)
    trainer = build_sft_trainer(
        rows,
        model_dir,
        out_dir,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_target_modules=lora_target_modules,
        lora_layers=lora_layers,
        **sft_overrides,
    )
    write_run_config(
        out_dir,
        trainer.args,
        trainer.model.peft_config["default"],
        model_dir=str(model_dir),
        n_rows=len(trainer.train_dataset),
    )
    start = time.perf_counter()
    trainer.train()
    log.info("SFT: %d steps in %.0fs", trainer.state.global_step, time.perf_counter() - start)
    adapter_dir = out_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    trainer.processing_class.save_pretrained(adapter_dir)  # inference template: HFChat reads it from here
    plot_log(out_dir / "train_log.jsonl", out_dir / "loss.png", ["loss", "grad_norm"], title="SFT")
    return adapter_dir


def write_run_config(out_dir: Path, args: Any, lora: Any, **extra: Any) -> None:
    """Write `config.json`: the resolved trainer settings, the LoRA settings and `extra` fields."""
    lora_dict = {
        k: _plain(v) if not isinstance(v, list | set) else sorted(v) for k, v in lora.to_dict().items()
    }
    config = {"trainer": json.loads(args.to_json_string()), "lora": lora_dict, **extra}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA adapter into its base model and save a plain transformers folder (with tokenizer)."""
    from peft import AutoPeftModelForCausalLM  # heavy: peft, transformers
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir)
    merged = model.merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    return out_dir
