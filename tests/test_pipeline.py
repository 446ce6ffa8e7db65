"""`recthinker train` end to end on the tiny benchmark with a tiny random Qwen2, resume, and the verbs' --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recthinker.cli import build_parser
from recthinker.errors import ConfigError
from recthinker.train.pipeline import CONTRACT, TRAINED
from recthinker.train.presets import PRESETS, SMOKE, TrainPreset, with_overrides

VERBS = ("rollout", "filter", "sft", "grpo", "train")

# The smoke preset shrunk to the tiny benchmark (20 eligible training users) and a 3M-parameter model.
TINY = {
    "n_train_episodes": 8,
    "teacher_fit_episodes": 8,
    "ndcg_threshold": 0.0,
    "max_steps": 2,
    "max_tokens": 12,
    "max_length": 8192,
    "sft_max_steps": 3,
    "sft_grad_accum": 1,
    "sft_learning_rate": 1e-2,
    "grpo_max_steps": 1,
    "grpo_episodes": 1,
    "num_generations": 2,
    "max_completion_length": 24,
    "eval_limit": 2,
    "eval_sets": ("dense/valid", "sparse/valid"),
    "eval_backend": "hf",  # the tiny Qwen2 has no GGUF; the CPU presets' llama.cpp path is tested in test_export
    "references": ("teacher",),
    "torch_threads": 1,
}


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([verb, "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_train_arguments_parse_into_a_preset() -> None:
    args = build_parser().parse_args(["train", "--preset", "smoke", "--out", "x", "--set", "sft_max_steps=2"])
    assert args.func.__name__ == "cmd_train"
    preset = with_overrides(PRESETS[args.preset], args.set)
    assert preset.sft_max_steps == 2 and preset.eval_sets == SMOKE.eval_sets
    with pytest.raises(ConfigError, match="unknown preset field"):
        with_overrides(SMOKE, ["sft_maxsteps=2"])
    with pytest.raises(ConfigError, match="not a valid int"):
        with_overrides(SMOKE, ["sft_max_steps=two"])
    with pytest.raises(ConfigError, match="references"):
        TrainPreset(references=("oracle",))


def test_presets_fit_their_budgets() -> None:
    # The teacher calls up to 4 tools in 3 turns, or 1 + 1 with a budget of 2 (the CPU presets): a smaller
    # budget or fewer turns would turn its demonstrations into errors.
    for preset in PRESETS.values():
        assert preset.max_tool_calls >= 2 and preset.max_steps >= 3, preset.name
    for name in ("smoke", "cpu"):  # small models answer in form (c) and are evaluated through llama.cpp
        assert PRESETS[name].answer_form == "evidence" and PRESETS[name].eval_backend == "llamacpp"
    assert SMOKE.eval_limit <= 5 and SMOKE.sft_max_steps <= 16 and SMOKE.grpo_max_steps <= 2
    assert PRESETS["gpu"].device == "cuda"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("trl")
    from recthinker.train.model import tiny_test_model

    return tiny_test_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.mark.slow
def test_train_pipeline_end_to_end_and_resume(tiny_benchmark, tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from recthinker.train.pipeline import run_pipeline

    preset = with_overrides(SMOKE, TINY)
    out = tmp_path / "run"
    metrics = run_pipeline(preset, out, dataset=str(tiny_benchmark.root), model=tiny_model)

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for name in (*TRAINED, "teacher"):
        for key in CONTRACT:
            assert isinstance(on_disk[name][key], float), (name, key)
        assert 0.0 <= on_disk[name]["ndcg@10"] <= 1.0 and 0.0 <= on_disk[name]["invalid_rate"] <= 1.0
        assert on_disk[name]["mean_tool_calls"] >= 0.0
        assert on_disk[name]["n"] == 4 and set(on_disk[name]["by_set"]) == {"dense/valid", "sparse/valid"}
    assert on_disk["teacher"]["invalid_rate"] == 0.0  # the scripted teacher always answers
    assert on_disk["filter"]["in"] == 8 and on_disk["filter"]["balanced"] >= 1
    assert json.loads((out / "config.json").read_text())["preset"]["sft_max_steps"] == 3
    assert "| sft |" in (out / "summary.md").read_text()

    # every stage's outputs
    for path in (
        "teacher/weights.json",
        "rollout/episodes.jsonl",
        "rollout/rollout.jsonl",
        "filter/sft.jsonl",
        "filter/report.json",
        "sft/adapter/adapter_model.safetensors",
        "sft/train_log.jsonl",
        "grpo/adapter/adapter_model.safetensors",
        "grpo/train_log.jsonl",
        "eval/dense-valid/sft/episodes.jsonl",
        "eval/sparse-valid/grpo/episodes.jsonl",
        "eval/dense-valid/summary.json",
    ):
        assert (out / path).is_file(), path
    ran = json.loads((out / "stages.json").read_text())
    assert [s["stage"] for s in ran] == [
        "teacher",
        "rollout",
        "filter",
        "sft",
        "grpo",
        "eval-untrained",
        "eval-sft",
        "eval-grpo",
        "eval-teacher",
    ]
    assert all(s["status"] == "ran" for s in ran)

    # SFT moved the adapter away from its initialisation (PEFT starts every lora_B at zero); GRPO continued
    # that adapter and logged its rewards (a random model's group rewards tie, so its update may be zero)
    sft = load_file(str(out / "sft/adapter/adapter_model.safetensors"))
    grpo = load_file(str(out / "grpo/adapter/adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for k, t in sft.items() if "lora_B" in k)
    assert sft.keys() == grpo.keys()
    logged = [json.loads(line) for line in (out / "grpo/train_log.jsonl").read_text().splitlines()]
    step = next(r for r in logged if "reward" in r)
    assert "rewards/ndcg_reward/mean" in step and 0.0 <= step["frac_reward_zero_std"] <= 1.0
    if step["frac_reward_zero_std"] < 1.0:
        assert any(not torch.equal(sft[k], grpo[k]) for k in sft)

    # publishing copies the final (GRPO) adapter with the settings it was trained with and a manifest
    from recthinker.train.pipeline import publish_adapter

    published = publish_adapter(out, tmp_path / "default_model")
    assert sorted(p.name for p in published.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "agent.json",
        "manifest.json",
    ]
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["adapter_from"] == "grpo/adapter" and manifest["preset"]["sft_max_steps"] == 3
    assert manifest["metrics"]["grpo"] == on_disk["grpo"] and len(manifest["sha256"]["sft_rows"]) == 64
    assert json.loads((published / "agent.json").read_text())["answer_form"] == preset.answer_form
    assert (published / "adapter_model.safetensors").read_bytes() == (
        out / "grpo/adapter/adapter_model.safetensors"
    ).read_bytes()

    # a second run resumes: every stage is skipped, the adapters are untouched, the metrics are the same
    mtime = (out / "sft/adapter/adapter_model.safetensors").stat().st_mtime_ns
    again = run_pipeline(preset, out, dataset=str(tiny_benchmark.root), model=tiny_model)
    assert all(s["status"] == "skipped" for s in json.loads((out / "stages.json").read_text()))
    assert (out / "sft/adapter/adapter_model.safetensors").stat().st_mtime_ns == mtime
    assert {k: again[k] for k in TRAINED} == {k: metrics[k] for k in TRAINED}


def test_rollout_and_filter_verbs(tiny_benchmark, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tiny_benchmark.root)
    rollout_path, sft_path = tmp_path / "rollout.jsonl", tmp_path / "sft.jsonl"
    args = build_parser().parse_args(
        ["rollout", "--policy", "teacher", "--dataset", root, "--episodes", "6", "--teacher-fit", "6"]
        + ["--out", str(rollout_path)]
    )
    assert args.func(args) == 0
    rows = [json.loads(line) for line in rollout_path.read_text().splitlines()]
    assert len(rows) == 6 and all(r["meta"]["split"] == "train" for r in rows)
    args = build_parser().parse_args(
        ["filter", "--in", str(rollout_path), "--out", str(sft_path), "--ndcg-threshold", "0"]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{") : printed.rindex("}") + 1])
    assert report["in"] == 6 and report["balanced"] == len(sft_path.read_text().splitlines()) >= 1
    assert {"messages", "tools"} <= set(json.loads(sft_path.read_text().splitlines()[0]))
    args = build_parser().parse_args(
        ["filter", "--in", str(tmp_path / "missing.jsonl"), "--out", str(sft_path)]
    )
    with pytest.raises(ConfigError, match="no such rollout file"):
        args.func(args)


def test_episodes_and_resources_take_a_set_or_a_count(tiny_benchmark) -> None:
    from recthinker.train.pipeline import episodes_and_resources

    root = str(tiny_benchmark.root)
    bench, episodes, resources = episodes_and_resources(root, set_name="dense/valid", n_episodes=2)
    assert len(episodes) == 2 and episodes == bench.episodes("dense/valid")[:2] and resources is not None
    with pytest.raises(ConfigError, match="--episodes N"):
        episodes_and_resources(root)


@pytest.mark.slow
@pytest.mark.realdata
def test_smoke_preset_ends_with_a_model_that_answers(tmp_path: Path) -> None:
    """The real smoke preset (ML-1M, bundled SmolLM2-135M, ~8-10 min on 2 cores) ends with a model whose
    answers are valid on at least half of its evaluation episodes (issue 14's contract; with 3 SFT steps at
    5e-4 every answer was invalid), while the untrained model's are not."""
    from recthinker.train.pipeline import run_pipeline

    metrics = run_pipeline(SMOKE, tmp_path / "smoke", dataset="ml-1m")
    assert min(metrics["sft"]["invalid_rate"], metrics["grpo"]["invalid_rate"]) <= 0.5, metrics
    assert metrics["untrained"]["invalid_rate"] > metrics["sft"]["invalid_rate"]
    assert metrics["sft"]["n"] == 2 * SMOKE.eval_limit
