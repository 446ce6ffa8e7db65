"""LLM rankers over the real tools on the tiny benchmark, with scripted chat models (test doubles)."""

from __future__ import annotations

import numpy as np
import pytest

from recthinker.agent.loop import AgentConfig
from recthinker.agent.pointwise import PointwiseRanker
from recthinker.agent.rankers import AgentRanker, fixed_workflow_calls, tau_vs_signal
from recthinker.llm import ChatResult
from recthinker.tools.build import load_resources
from recthinker.tools.env import RecEnv, ToolHost, tool_schemas


class Scripted:
    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.seen = []

    def generate(self, messages, **options):
        self.seen.append(messages)
        return ChatResult(
            message={"role": "assistant", "content": self.replies.pop(0)},
            prompt_tokens=1,
            completion_tokens=1,
            latency_s=0.0,
            finish_reason="stop",
        )


class YesForItem:
    """P(Yes) high only for prompts that mention `item_title`."""

    name = "yes-for-item"

    def __init__(self, item_title):
        self.item_title = item_title

    def logprobs_of(self, messages, options):
        hit = self.item_title in messages[-1]["content"].split("Item: ", 1)[1]
        return [-0.1, -3.0] if hit else [-3.0, -0.1]


@pytest.fixture(scope="module")
def resources(tiny_benchmark):
    return load_resources(tiny_benchmark, "dense/test")


def test_agent_ranker_records_tools_and_tau(tiny_benchmark, resources):
    episode = tiny_benchmark.episodes("dense/test")[0]
    order = " > ".join(f"[{k}]" for k in range(1, 11))
    model = Scripted(
        [
            '<analyze>a</analyze><plan>p</plan><tool_call>{"name": "cf_scores", "arguments": {"model": "als"}}</tool_call>',
            f"<analyze>a</analyze><plan>p</plan><answer>{order}</answer>",
        ]
    )
    ranking = AgentRanker("agent", model, resources, tiny_benchmark.items, AgentConfig()).rank(episode)
    assert ranking.valid and list(ranking.items) == list(episode.candidates)
    assert ranking.info["tool_calls"] == 1 and ranking.info["tool_errors"] == 0
    assert "1." in model.seen[1][-1]["content"]  # the cf_scores observation came back
    assert -1.0 <= ranking.info["tau_vs_signal"] <= 1.0
    env = ToolHost(RecEnv(resources))
    env.reset_episode(episode)
    scores = env.signals(("als",))["cf_als"]
    als_order = [episode.candidates[i] for i in np.argsort(-scores, kind="stable")]
    assert tau_vs_signal(env, episode, als_order) == pytest.approx(1.0)


def test_fixed_workflow_calls_every_tool_once(tiny_benchmark, resources):
    episode = tiny_benchmark.episodes("sparse/test")[0]
    calls = fixed_workflow_calls(episode, tiny_benchmark.items)
    assert sorted(name for name, _ in calls) == sorted(t["function"]["name"] for t in tool_schemas())
    env = ToolHost(RecEnv(resources))
    env.reset_episode(episode)
    assert all(env.call(name, args).ok for name, args in calls)


def test_pointwise_ranks_by_yes_probability(tiny_benchmark, resources):
    episode = tiny_benchmark.episodes("dense/test")[1]
    favourite = episode.candidates[-1]
    title = tiny_benchmark.items.loc[favourite, "title"]
    ranking = PointwiseRanker(YesForItem(title), resources, tiny_benchmark.items).rank(episode)
    assert (
        ranking.valid
        and ranking.items[0] == favourite
        and sorted(ranking.items) == sorted(episode.candidates)
    )
    assert ranking.info["llm_calls"] == 2 * len(episode.candidates)
    with pytest.raises(TypeError, match="cannot score options"):
        PointwiseRanker(Scripted([]), resources, tiny_benchmark.items)
