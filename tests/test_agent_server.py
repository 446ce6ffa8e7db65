"""The agent end to end against a real OpenAI-compatible server (llama.cpp, bundled SmolLM2) on 127.0.0.1,
with the real RecEnv tools over the tiny benchmark, plus the `recommend --json` contract with a scripted
policy. The untrained 135M model rarely answers validly: these tests check the plumbing, not quality."""

from __future__ import annotations

import json

import pytest

from recthinker.agent.loop import AgentConfig, RecThinker
from recthinker.agent.rankers import AgentRanker
from recthinker.eval.harness import evaluate
from recthinker.llm import OpenAICompatible, bundled_model_path, serve_llamacpp
from recthinker.tools.build import load_resources
from recthinker.tools.env import RecEnv, ToolHost


@pytest.fixture(scope="module")
def server_url():
    with serve_llamacpp(bundled_model_path(), n_threads=1, n_parallel=2, n_ctx=8192) as url:
        yield url


@pytest.fixture(scope="module")
def resources(tiny_benchmark):
    return load_resources(tiny_benchmark, "dense/test")


pytestmark = pytest.mark.slow  # minutes on a shared 2-core CPU: CI's second step


def test_agent_against_loopback_server(server_url, tiny_benchmark, resources):
    assert server_url.startswith("http://127.0.0.1:")
    model = OpenAICompatible(server_url, timeout_s=600)
    episode = tiny_benchmark.episodes("dense/test")[0]
    config = AgentConfig(max_steps=2, max_tokens=96)
    traj = RecThinker(model, ToolHost(RecEnv(resources)), items=tiny_benchmark.items, config=config).run(
        episode
    )
    assert 1 <= len(traj.steps) <= 2
    assert all(s.prompt_tokens > 200 and s.completion_tokens > 0 for s in traj.steps)
    assert traj.messages[0]["role"] == "system" and "\n- user_profile(): " in traj.messages[0]["content"]
    assert traj.valid == (sorted(traj.ranking) == sorted(episode.candidates))
    if not traj.valid:
        assert traj.ranking == [] and traj.note  # never a fallback to candidate order


def test_constrained_turns_are_well_formed(server_url, tiny_benchmark, resources):
    """With the GBNF grammar even the untrained model writes parseable turns (a tool call or an answer)."""
    model = OpenAICompatible(server_url, timeout_s=600)
    episode = tiny_benchmark.episodes("sparse/test")[0]
    config = AgentConfig(max_steps=2, constrained=True)
    traj = RecThinker(model, ToolHost(RecEnv(resources)), items=tiny_benchmark.items, config=config).run(
        episode
    )
    first = traj.steps[0]
    assert first.analyze and first.plan
    assert first.tool_calls or first.answer is not None
    assert not any("not valid JSON" in p for p in first.problems)


def test_concurrent_episodes_through_harness(server_url, tiny_benchmark, resources, tmp_path):
    model = OpenAICompatible(server_url, timeout_s=600, max_concurrency=2)
    ranker = AgentRanker(
        "zero-shot",
        model,
        resources,
        tiny_benchmark.items,
        AgentConfig(mode="zero-shot", max_steps=1, max_tokens=48),
    )
    episodes = tiny_benchmark.episodes("dense/test")[:3]
    summary = evaluate([ranker], episodes, tmp_path, workers=3)["zero-shot"]
    assert summary["n"] == 3 and 0.0 <= summary["invalid_rate"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "zero-shot" / "episodes.jsonl").read_text().splitlines()]
    assert {r["episode_id"] for r in rows} == {e.episode_id for e in episodes}
    assert all(r["prompt_tokens"] > 0 and r["tool_calls"] == 0 for r in rows)
