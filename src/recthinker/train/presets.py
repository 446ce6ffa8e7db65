"""Presets of the `recthinker train` pipeline: one dataclass, three named instances, `key=value` overrides.

    preset = with_overrides(PRESETS["smoke"], ["sft_max_steps=2", "eval_limit=3"])

`smoke` runs every stage end to end on ML-1M in under 15 minutes on two CPU cores (a tiny slice,
SmolLM2-135M, 12 SFT steps and one GRPO step), enough that its model answers validly: the pipeline visibly
works, though 5 + 5 evaluation episodes measure no ranking quality. `cpu` is the under-an-hour CPU recipe that produces
the committed default model. `gpu` is the recipe for a 1.5B-7B instruct model from a local folder
(`--model`) on one GPU; rollouts of the trained models can go through a vLLM server instead
(`recipes/train_gpu.sh`).

What makes the CPU presets fit: (1) rows of ~1.5k tokens -- one line per tool in the chat template instead of
JSON schemas, a 2-call budget with one tool per turn; (2) answer form (c), promote/demote over the gathered
evidence, which a 135M model learns from ~200 demonstrations where a full permutation it does not (the issue's
measurement: tau vs the scores ~0 after 100 steps); (3) LoRA on the top 10 of 30 layers, so the backward
pass stops there (18 s instead of 30 s per 1.5k-token row on one thread); (4) evaluation through llama.cpp
on the GGUF export of each adapter instead of transformers generation; (5) GRPO sampling at T=0.5, top-p
0.9: at T=1 the SFT model writes no valid turn and every group's advantage is zero. Rows longer than
`max_length` are dropped, not truncated (a truncated demonstration loses its final answer).

Measured for `cpu` on ML-1M, 2 cores (stage times from its `metrics.json`): teacher rollouts 42 s (300
episodes, training tools built), filter 0.1 s (242 of 300 kept), SFT 1144 s (36 steps x 2 rows, 177 rows of
<= 2048 tokens, median 1478; 65 two-call rows were longer and dropped), loss 2.48 -> 0.14, GRPO 720 s (3
steps x 4 completions), evaluation 1697 s (fixed-workflow 924 s of it): 3,600 s in all. NDCG@10 on 10 + 10
test episodes: untrained 0.000 (100% invalid), SFT 0.731, GRPO 0.681, fixed-workflow 0.040, teacher 0.810.
`smoke` (12 SFT steps at 2e-3, 3 + 3 evaluation episodes, 7.8 min wall): stage times rollout 16 s, SFT 152
s (loss 2.5 -> 0.67), GRPO 40 s, evaluations 183 s; untrained 100% invalid, SFT and GRPO 0% invalid
(NDCG@10 0.604 on 6 episodes). With 3 SFT steps at 5e-4 (before) every answer was invalid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from recthinker.errors import ConfigError
from recthinker.rankers import CLASSIC_KINDS, PASSIVE_KINDS, TEACHER

# rankers evaluated next to the trained models (classic ones fitted on each set's background)
REFERENCES = (TEACHER, *PASSIVE_KINDS, *CLASSIC_KINDS)


@dataclass
class TrainPreset:
    """Every setting of one `recthinker train` run (written to `DIR/config.json`)."""

    name: str = "custom"  # preset name, for the record
    seed: int = 0  # training episodes, negatives, sampling and trainer seeds
    # -- data -------------------------------------------------------------------------------------------
    n_train_episodes: int = 40  # training episodes (background only, `train.episodes`), one per user
    teacher_fit_episodes: int = 1000  # training episodes the teacher's signal weights are fitted on (cached)
    # -- bootstrap rollouts and filtering -----------------------------------------------------------------
    teacher_samples: int = 1  # teacher trajectories per episode (the teacher is deterministic: 1 suffices)
    ndcg_threshold: float = 0.6  # keep trajectories with NDCG@10 >= this (0-1)
    per_episode: int = 1  # demonstrations kept per episode (fewest tool calls first)
    workers: int = 1  # rollout / evaluation threads
    # -- agent settings shared by rollouts, GRPO prompts and evaluation ------------------------------------
    max_steps: int = 3  # assistant turns per episode, answer included (the teacher needs <= 3)
    max_tool_calls: int = 4  # tool-call budget per episode (the teacher uses 2-4)
    max_tokens: int = 256  # tokens per assistant turn at inference (teacher turns: 134-238 SmolLM2 tokens)
    n_history: int = 6  # history items shown in the task prompt (training episodes store 6)
    answer_form: str = (
        "ranking"  # the agent's final answer: "ranking" (permutation) | "evidence" (promote/demote)
    )
    # -- SFT (LoRA) -------------------------------------------------------------------------------------
    max_length: int = 4096  # tokens per SFT row; longer rows are dropped, not truncated (SmolLM2: 2.5-3.4k)
    sft_max_steps: int = 4  # optimizer steps (-1: `sft_epochs` epochs)
    sft_epochs: float = 1.0  # epochs when sft_max_steps is -1
    sft_batch_size: int = 1  # rows per device step
    sft_grad_accum: int = 2  # device steps per optimizer step
    sft_learning_rate: float = 5e-4  # constant learning rate of the LoRA weights
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator (scale = alpha / r)
    lora_top_layers: int = 0  # adapt only the top N decoder layers (0 = all; shortens the CPU backward pass)
    # -- self-augmentation (sample with the SFT model, filter, SFT again from its adapter's base) ---------
    augment_rounds: int = 0  # 0 = skip; 1 = one round
    augment_samples: int = 2  # samples per episode with the SFT model
    augment_temperature: float = 0.7  # sampling temperature of those samples
    augment_episodes: int = 10  # first N training episodes sampled in the round
    # -- GRPO -------------------------------------------------------------------------------------------
    grpo_max_steps: int = 1  # optimizer steps (0 = skip GRPO; the "grpo" model is then the SFT model)
    grpo_episodes: int = 4  # first N training episodes used as GRPO prompts
    num_generations: int = 2  # group size G (one prompt x G completions per step)
    max_completion_length: int = 512  # tokens of the whole multi-turn completion, tool results included
    # (teacher rows of the CPU presets: ~1k prompt tokens, then 350-1100 completion tokens)
    grpo_learning_rate: float = 2e-5  # constant learning rate
    grpo_temperature: float = 1.0  # sampling temperature of the group
    grpo_top_p: float = 1.0  # nucleus sampling of the group (a 135M model at T=1 writes no valid turn)
    use_vllm: bool = False  # GRPO generation through vLLM (TRL `use_vllm`; GPU only)
    vllm_mode: str = "colocate"  # "colocate" (same process/GPU) | "server" (`trl vllm-serve` on other GPUs)
    gradient_checkpointing: bool = False  # trade compute for memory in SFT and GRPO (large models)
    # -- evaluation -------------------------------------------------------------------------------------
    eval_sets: tuple[str, ...] = ("dense/valid", "sparse/valid")  # benchmark episode sets
    eval_limit: int = 5  # first N episodes of each set (0 = all)
    references: tuple[
        str, ...
    ] = ()  # also evaluate: teacher | zero-shot | fixed-workflow (base model) | classic
    # -- back end -------------------------------------------------------------------------------------------
    eval_backend: str = "hf"  # "llamacpp": GGUF exports (base GGUF, adapters merged) | "hf": transformers
    eval_threads: int = 1  # llama.cpp threads in evaluation (2 on a dedicated 2-core machine; 1 if shared)
    device: str = "cpu"  # torch device of the evaluated / sampled models ("cuda" on a GPU)
    dtype: str = "float32"  # their dtype ("bfloat16" on a GPU)
    torch_threads: int = 0  # torch.set_num_threads (0 = leave torch's default)
    extra: dict[str, Any] = field(default_factory=dict)  # free notes recorded with the run

    def __post_init__(self) -> None:
        if self.n_train_episodes < 1 or self.teacher_fit_episodes < 1:
            raise ConfigError(f"n_train_episodes and teacher_fit_episodes must be >= 1: {self}")
        if not 0.0 <= self.ndcg_threshold <= 1.0:
            raise ConfigError(f"ndcg_threshold must be in [0, 1], got {self.ndcg_threshold}")
        if self.grpo_max_steps > 0 and self.num_generations < 2:
            raise ConfigError(f"GRPO needs num_generations >= 2, got {self.num_generations}")
        unknown = set(self.references) - set(REFERENCES)
        if unknown:
            raise ConfigError(f"unknown references {sorted(unknown)}: use {', '.join(REFERENCES)}")
        if self.vllm_mode not in ("colocate", "server"):
            raise ConfigError(f"vllm_mode must be 'colocate' or 'server', got {self.vllm_mode!r}")
        if self.answer_form not in ("ranking", "evidence"):
            raise ConfigError(f"answer_form must be 'ranking' or 'evidence', got {self.answer_form!r}")
        if self.eval_backend not in ("llamacpp", "hf"):
            raise ConfigError(f"eval_backend must be 'llamacpp' or 'hf', got {self.eval_backend!r}")
        if not self.eval_sets:
            raise ConfigError("eval_sets must name at least one episode set")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What both CPU presets need to train SmolLM2-135M on 2 cores (the module docstring says why each).
SMALL_MODEL_ON_CPU: dict[str, Any] = {
    "max_tool_calls": 2,
    "max_tokens": 224,
    "answer_form": "evidence",
    "lora_top_layers": 10,
    "max_length": 2048,
    "grpo_temperature": 0.5,
    "grpo_top_p": 0.9,
    "eval_backend": "llamacpp",
    "eval_threads": 2,
    "eval_sets": ("dense/test", "sparse/test"),
    "torch_threads": 2,
}

SMOKE = TrainPreset(
    name="smoke",
    **SMALL_MODEL_ON_CPU,
    n_train_episodes=24,
    sft_max_steps=12,  # 3 steps at 5e-4 left the model 100% invalid; 12 at 2e-3 answer validly (measured)
    sft_learning_rate=2e-3,
    sft_grad_accum=1,
    grpo_max_steps=1,
    grpo_episodes=1,
    num_generations=2,
    max_completion_length=640,
    eval_limit=5,
)

CPU = TrainPreset(
    name="cpu",
    **SMALL_MODEL_ON_CPU,
    n_train_episodes=300,
    sft_max_steps=36,
    sft_batch_size=1,
    sft_grad_accum=2,
    sft_learning_rate=1e-3,
    grpo_max_steps=3,
    grpo_episodes=24,
    num_generations=4,
    max_completion_length=768,
    grpo_learning_rate=5e-5,
    eval_limit=10,
    references=("teacher", "fixed-workflow", "pop", "itemknn", "ease", "als", "sasrec"),
)

GPU = TrainPreset(
    name="gpu",
    n_train_episodes=2000,
    teacher_samples=1,
    max_length=4096,
    max_tokens=384,
    max_steps=6,
    max_tool_calls=6,
    n_history=10,
    sft_max_steps=-1,
    sft_epochs=2.0,
    sft_batch_size=4,
    sft_grad_accum=4,
    sft_learning_rate=1e-4,
    augment_rounds=1,
    augment_samples=4,
    augment_episodes=500,
    grpo_max_steps=200,
    grpo_episodes=1000,
    num_generations=8,
    max_completion_length=2048,
    grpo_learning_rate=1e-5,
    eval_sets=("dense/test", "sparse/test"),
    eval_limit=0,
    eval_backend="hf",
    references=("teacher", "zero-shot", "fixed-workflow"),
    workers=1,
    use_vllm=True,
    gradient_checkpointing=True,
    device="cuda",
    dtype="bfloat16",
)

PRESETS: dict[str, TrainPreset] = {"smoke": SMOKE, "cpu": CPU, "gpu": GPU}


def _convert(name: str, kind: Any, text: str) -> Any:
    origin = getattr(kind, "__origin__", None)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if kind in (int, float, str):
            return kind(text)
        if origin is tuple:
            return tuple(s for s in (p.strip() for p in text.split(",")) if s)
    except ValueError as e:
        raise ConfigError(f"override {name}={text!r}: not a valid {getattr(kind, '__name__', kind)}") from e
    raise ConfigError(f"override {name}: field of type {kind} cannot be set from the command line")


def with_overrides(preset: TrainPreset, overrides: list[str] | dict[str, Any] | None) -> TrainPreset:
    """A copy of `preset` with `key=value` strings (or a dict of values) applied; unknown keys fail.

    >>> with_overrides(SMOKE, ["sft_max_steps=2", "eval_sets=dense/test,sparse/test"]).eval_sets
    ('dense/test', 'sparse/test')
    """
    if not overrides:
        return dataclasses.replace(preset)
    hints = get_type_hints(TrainPreset)
    values: dict[str, Any] = {}
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        if key not in hints or key == "extra":
            raise ConfigError(f"unknown preset field {key!r}; fields: {', '.join(sorted(hints))}")
        values[key] = _convert(key, hints[key], value) if isinstance(value, str) else value
    return dataclasses.replace(preset, **values)


def _split(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    return key.strip(), value.strip()
