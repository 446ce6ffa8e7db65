"""LLM rankers over the real tools on the tiny benchmark, with scripted chat models (test doubles)."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("answer, moved", [("promote [10]; demote [1]", True), ("promote; demote", False)])
def test_evidence_answer_records_the_unmoved_order_and_the_harness_scores_it(
    tiny_benchmark, resources, tmp_path, answer, moved
):
    from recthinker.eval.harness import evaluate

    episode = tiny_benchmark.episodes("dense/test")[0]
    call = '<analyze>a</analyze><plan>p</plan><tool_call>{"name": "cf_scores", "arguments": {"model": "als"}}</tool_call>'
    model = Scripted([call, f"<analyze>a</analyze><plan>p</plan><answer>{answer}</answer>"])
    config = AgentConfig(answer_form="evidence")
    ranking = AgentRanker("agent", model, resources, tiny_benchmark.items, config).rank(episode)
    env = ToolHost(RecEnv(resources))
    env.reset_episode(episode)
    scores = env.signals(("als",))["cf_als"]
    als_order = [episode.candidates[i] for i in np.argsort(-scores, kind="stable")]
    assert ranking.valid and ranking.info["unmoved_ranking"] == als_order  # the base order, no moves
    assert (list(ranking.items) != als_order) is moved
    if moved:
        assert ranking.items[0] == episode.candidates[9] and ranking.items[-1] == episode.candidates[0]

    class Replay:  # the ranking above, through the harness
        name = "agent"

        def rank(self, ep):
            return ranking

    summary = evaluate([Replay()], [episode], tmp_path / "run")["agent"]
    row = json.loads((tmp_path / "run" / "agent" / "episodes.jsonl").read_text().splitlines()[0])
    base_rank = als_order.index(episode.target) + 1
    assert row["moved"] is moved
    assert row["unmoved_ndcg@10"] == pytest.approx(1 / np.log2(base_rank + 1))
    assert summary["moved_rate"] == (1.0 if moved else 0.0) and summary["judged"] == 1
    assert summary["move_gain_ndcg@10"] == pytest.approx(row["ndcg@10"] - row["unmoved_ndcg@10"])
    assert "moved the base order in" in (tmp_path / "run" / "summary.md").read_text()


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


# ---- the composition root (recthinker.rankers) ------------------------------------------------------------


def test_the_kinds_are_listed_once():
    from recthinker import cli
    from recthinker.baselines import SCORER_NAMES
    from recthinker.rankers import CLASSIC_KINDS, KINDS, LLM_KINDS, TEACHER
    from recthinker.train.presets import REFERENCES

    assert CLASSIC_KINDS is SCORER_NAMES and len(set(KINDS)) == len(KINDS)
    assert cli.CLASSIC_RANKERS is CLASSIC_KINDS and cli.LLM_RANKERS is LLM_KINDS and cli.RANKER_KINDS is KINDS
    assert TEACHER in KINDS and set(REFERENCES) <= set(KINDS)


def test_build_ranker_builds_every_kind_from_one_spec(tiny_benchmark, resources):
    from recthinker.agent.teacher import TeacherRanker, TeacherWeights
    from recthinker.rankers import KINDS, RankerSpec, build_ranker

    class Model(Scripted):
        def logprobs_of(self, messages, options):
            return [0.0, 0.0]

    model, models, fitted = Model([]), {}, []
    weights = TeacherWeights(weights={})

    def fit():
        fitted.append(1)
        return weights

    built = {}
    for kind in (k for k in KINDS if k != "sasrec"):  # sasrec: torch, covered by test_baselines
        spec = RankerSpec(f"my-{kind}", kind)
        built[kind] = build_ranker(
            spec, tiny_benchmark, "dense/test", resources=resources, model=model, teacher_weights=fit
        )
        assert built[kind].name == f"my-{kind}"
    assert fitted == [1] and isinstance(built["teacher"], TeacherRanker)
    assert built["teacher"].weights is weights and built["teacher"].config == AgentConfig()
    assert isinstance(built["agent"], AgentRanker) and built["agent"].model is model
    assert built["agent-evidence"].config.answer_form == "evidence"
    assert built["fixed-workflow"].config.max_steps == 2
    assert built["pointwise-evidence"].inner.with_evidence and not built["pointwise"].inner.with_evidence
    # a chat model named by spec is loaded once and shared through the cache
    models["shared"] = model
    a = build_ranker("a=agent@shared", tiny_benchmark, "dense/test", resources=resources, models=models)
    z = build_ranker("z=zero-shot@shared", tiny_benchmark, "dense/test", resources=resources, models=models)
    assert a.model is z.model is model


def test_build_ranker_refuses_what_it_cannot_build(tiny_benchmark):
    from recthinker.errors import ConfigError, RecThinkerError
    from recthinker.rankers import build_ranker

    with pytest.raises(RecThinkerError, match="only LLM rankers"):
        build_ranker("pop@base", tiny_benchmark, "dense/test")
    with pytest.raises(RecThinkerError, match="unknown ranker 'nope': use one of random, pop"):
        build_ranker("nope", tiny_benchmark, "dense/test")
    with pytest.raises(ConfigError, match="teacher_weights"):
        build_ranker("teacher", tiny_benchmark, "dense/test")


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu"])
@pytest.mark.parametrize("kind", ["agent", "zero-shot", "fixed-workflow"])
@pytest.mark.parametrize("constrained", [False, True])
def test_the_pipeline_settings_go_through_default_config(preset, kind, constrained):
    """`train.pipeline.agent_config` is `default_config` with the preset's settings, and gives what the
    pipeline's own formula gave before there was one place for them."""
    from recthinker.train.pipeline import agent_config
    from recthinker.train.presets import PRESETS

    p = PRESETS[preset]
    expected = AgentConfig(
        mode=kind,
        max_steps=p.max_steps if kind == "agent" else 2,
        max_tool_calls=p.max_tool_calls,
        max_tokens=p.max_tokens,
        n_history=p.n_history,
        seed=p.seed,
        answer_form=p.answer_form if kind == "agent" else "ranking",
        constrained=constrained,
    )
    assert agent_config(p, kind, constrained=constrained) == expected
