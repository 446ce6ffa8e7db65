"""GRPO with tools: TRL `GRPOTrainer(environment_factory=...)` over ranking episodes, LoRA on the policy.

    env_factory = functools.partial(RecEnv, resources)        # tools read the train split only
    rows = [grpo_row(e, items) for e in train_episodes]
    adapter = run_grpo(rows, "outputs/sft-smollm2/adapter", Path("outputs/grpo"), env_factory, max_steps=50)

Each row's `prompt` is the agent loop's own system prompt and task message (`grpo_row`); TRL renders it with
the tokenizer's chat template and the environment's tool schemas, i.e. the one-line-per-tool `# Tools`
block the loop writes in prompt mode. The model then alternates assistant turns and tool calls (TRL calls the
environment's public methods, i.e. its tools; tool-result tokens are masked out of the loss) for at most
`max_tool_calling_iterations` rounds and `max_completion_length` tokens in all. The remaining row fields
(`user_id`, `candidates`, `history`, `episode_id`, `target`) go to `env.reset(**row)` and, as columns, to
the rewards (`rewards.reward_funcs`: weighted NDCG@10 + format + tool efficiency).

The run folder holds `adapter/`, `train_log.jsonl`, `rewards.png` (reward and its parts),
`tools.png` (tool-call and failure frequency) and `config.json`.

An untuned model rarely calls a tool and writes no valid answer, so every reward in a group is equal and
the advantage is zero (`frac_reward_zero_std` = 1): run SFT first and start GRPO from its adapter.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from recthinker.agent.loop import INSTRUCTIONS, AgentConfig, system_prompt
from recthinker.agent.prompting import task_prompt
from recthinker.train.model import set_tool_template
from recthinker.train.plots import plot_log
from recthinker.train.rewards import RewardConfig, reward_funcs
from recthinker.train.sft import DEFAULT_TARGET_MODULES, jsonl_log_callback, lora_config, write_run_config
from recthinker.types import Episode

log = logging.getLogger(__name__)


def grpo_row(
    episode: Episode, items: pd.DataFrame | None, config: AgentConfig | None = None
) -> dict[str, Any]:
    """A GRPO training row: the agent's prompt (system + task) and the episode's fields.

    The system message is the agent loop's native-mode system prompt (no tools block: the chat template
    adds it from the environment's schemas), the user message its task prompt.

    >>> e = Episode(episode_id="u1/train", user_id="u1", history=("a",), candidates=("b", "c"), target="c")
    >>> row = grpo_row(e, None)
    >>> [m["role"] for m in row["prompt"]], row["candidates"], row["target"]
    (['system', 'user'], ['b', 'c'], 'c')
    """
    cfg = config or AgentConfig()
    n = len(episode.candidates)
    system = system_prompt(cfg, n)
    task = task_prompt(episode, items, n_history=cfg.n_history, instruction=INSTRUCTIONS["agent"])
    return {
        "prompt": [{"role": "system", "content": system}, {"role": "user", "content": task}],
        "episode_id": episode.episode_id,
        "user_id": episode.user_id,
        "history": list(episode.history),
        "candidates": list(episode.candidates),
        "target": episode.target,
    }


def default_grpo_config(out_dir: Path, reward_weights: Sequence[float], **overrides: Any) -> Any:
    """TRL `GRPOConfig` with CPU-friendly defaults: one prompt x 4 completions per step, no KL reference."""
    import torch  # heavy: torch, trl
    from trl import GRPOConfig

    cuda = torch.cuda.is_available()
    settings: dict[str, Any] = {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": 4,
        "num_generations": 4,  # group size G; the batch holds batch_size / G prompts
        "max_completion_length": 384,  # all assistant turns and tool results together
        "max_tool_calling_iterations": AgentConfig().max_tool_calls,
        "temperature": 1.0,
        "learning_rate": 2e-5,
        "lr_scheduler_type": "constant",
        "beta": 0.0,  # no KL term, so no reference model in memory
        "reward_weights": list(reward_weights),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "seed": 0,
    }
    settings.update(overrides)
    return GRPOConfig(**settings)


def grpo_dataset(rows: Sequence[dict[str, Any]] | str | Path) -> Any:
    """A `datasets.Dataset` of GRPO rows (a list, or a JSONL file of rows)."""
    from datasets import Dataset  # heavy: datasets

    if isinstance(rows, str | Path):
        lines = Path(rows).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    return Dataset.from_list(list(rows))


def _load_policy(model_path: Path, dtype: Any) -> tuple[Any, Any, bool]:
    """(model, tokenizer, is_peft): an adapter folder continues its LoRA, a model folder gets a new one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers

    tokenizer = set_tool_template(AutoTokenizer.from_pretrained(model_path))
    if (model_path / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel  # heavy: peft

        base = PeftConfig.from_pretrained(model_path).base_model_name_or_path
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        return PeftModel.from_pretrained(model, model_path, is_trainable=True), tokenizer, True
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype), tokenizer, False


def factory_name(env_factory: Callable[[], Any]) -> str:
    """The name of the environment class a factory builds, for the run config.

    >>> import functools
    >>> factory_name(functools.partial(dict, a=1)), factory_name(dict)
    ('dict', 'dict')
    """
    while isinstance(env_factory, functools.partial):
        env_factory = env_factory.func
    return getattr(env_factory, "__name__", repr(env_factory))


def build_grpo_trainer(
    train_rows: Sequence[dict[str, Any]] | str | Path,
    model: str | Path,
    out_dir: str | Path,
    env_factory: Callable[[], Any],
    *,
    reward_config: RewardConfig | None = None,
    extra_rewards: Sequence[tuple[Callable[..., list[float | None]], float]] = (),
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    **grpo_overrides: Any,
) -> Any:
    """The `GRPOTrainer` `run_grpo` trains; arguments as in `run_grpo`."""
    import torch  # heavy: torch, trl
    from trl import GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is marked experimental
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    funcs, weights = reward_funcs(reward_config or RewardConfig())
    funcs += [f for f, _ in extra_rewards]
    weights += [w for _, w in extra_rewards]
    args = default_grpo_config(out_dir, weights, **grpo_overrides)
    policy, tokenizer, is_peft = _load_policy(Path(model), torch.bfloat16 if args.bf16 else torch.float32)
    return GRPOTrainer(
        model=policy,
        reward_funcs=funcs,
        args=args,
        train_dataset=grpo_dataset(train_rows),
        processing_class=tokenizer,
        peft_config=None if is_peft else lora_config(lora_r, lora_alpha, lora_target_modules),
        environment_factory=env_factory,
        callbacks=[jsonl_log_callback(out_dir / "train_log.jsonl")],
    )


def run_grpo(
    train_rows: Sequence[dict[str, Any]] | str | Path,
    model: str | Path,
    out_dir: str | Path,
    env_factory: Callable[[], Any],
    *,
    reward_config: RewardConfig | None = None,
    extra_rewards: Sequence[tuple[Callable[..., list[float | None]], float]] = (),
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    **grpo_overrides: Any,
) -> Path:
    """GRPO with tool calls against `env_factory()` environments; returns `out_dir / "adapter"`.

    Args:
        train_rows: `grpo_row` dicts, or a JSONL file of them.
        model: An SFT adapter folder (its LoRA keeps training) or a model folder (a new LoRA is added).
        out_dir: The run folder (created).
        env_factory: No-argument callable returning a fresh environment, e.g.
            `functools.partial(RecEnv, resources)`: `reset(**row)` plus the tools as its public methods, with
            type hints and Google-style docstrings. TRL builds its pool of environments with it and
            resets one per rollout.
        reward_config: Weights and tool budget of the reward (`RewardConfig()` by default).
        extra_rewards: Further `(reward_func, weight)` pairs in TRL's signature, added to the three.
        lora_r: LoRA rank of a new adapter.
        lora_alpha: LoRA scaling numerator of a new adapter.
        lora_target_modules: Module names of a new adapter.
        **grpo_overrides: Any `trl.GRPOConfig` field (e.g. `max_steps=50`, `num_generations=8`).
    """
    out_dir = Path(out_dir)
    reward_config = reward_config or RewardConfig()
    trainer = build_grpo_trainer(
        train_rows,
        model,
        out_dir,
        env_factory,
        reward_config=reward_config,
        extra_rewards=extra_rewards,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_target_modules=lora_target_modules,
        **grpo_overrides,
    )
    write_run_config(
        out_dir,
        trainer.args,
        trainer.model.peft_config["default"],
        model=str(model),
        rewards=reward_config.to_dict(),
        reward_funcs=list(trainer.reward_func_names),
        environment=factory_name(env_factory),
        n_rows=len(trainer.train_dataset),
    )
    start = time.perf_counter()
    trainer.train()
    log.info("GRPO: %d steps in %.0fs", trainer.state.global_step, time.perf_counter() - start)
    adapter_dir = out_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    trainer.processing_class.save_pretrained(adapter_dir)
    log_path = out_dir / "train_log.jsonl"
    reward_keys = ["reward", "reward_std", *(f"rewards/{n}/mean" for n in trainer.reward_func_names)]
    plot_log(log_path, out_dir / "rewards.png", [*reward_keys, "frac_reward_zero_std"], title="GRPO rewards")
    plot_log(
        log_path,
        out_dir / "tools.png",
        ["tools/call_frequency", "tools/failure_frequency", "completions/mean_length"],
        title="GRPO tool use",
    )
    return adapter_dir
