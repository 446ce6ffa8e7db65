"""Rewards: hand-computed cases, both completion forms, and the tool penalty's no-sign-flip guarantee."""

from __future__ import annotations

import doctest
import json
import math

import pytest

from recthinker.agent.loop import AgentConfig, RecThinker, answer_to_ranking
from recthinker.eval.harness import score_rank
from recthinker.llm import ChatResult
from recthinker.llm.base import parse_hermes_tool_calls
from recthinker.metrics import target_rank
from recthinker.tools.build import load_resources
from recthinker.tools.env import RecEnv, ToolHost, tool_schemas
from recthinker.train import rewards
from recthinker.train.rewards import (
    RewardConfig,
    count_tool_calls,
    format_reward,
    ndcg_reward,
    reward_funcs,
    tool_efficiency_reward,
    total_reward,
)
from recthinker.types import Episode

CANDS = [f"i{k}" for k in range(1, 11)]  # labels [1]..[10] -> i1..i10
GOOD = "<analyze>a</analyze><plan>p</plan>"
CALL = '<tool_call>{"name": "user_history", "arguments": {"k": 5}}</tool_call>'


def answer(order: list[int]) -> str:
    return "<answer>" + " > ".join(f"[{k}]" for k in order) + "</answer>"


def with_target_at(rank: int, target_label: int = 1) -> list[int]:
    """A full ranking of labels 1..10 with `target_label` at position `rank`."""
    others = [k for k in range(1, 11) if k != target_label]
    return others[: rank - 1] + [target_label] + others[rank - 1 :]


def conversation(n_calls: int, final: str) -> list[dict]:
    """A tool-calling completion in TRL's message form: n_calls single-call turns, then the answer turn."""
    messages: list[dict] = []
    for _ in range(n_calls):
        call = {"type": "function", "function": {"name": "user_history", "arguments": {"k": 5}}}
        messages.append({"role": "assistant", "content": GOOD, "tool_calls": [call]})
        messages.append({"role": "tool", "name": "user_history", "content": "m01 ..."})
    messages.append({"role": "assistant", "content": GOOD + final})
    return messages


def test_doctests() -> None:
    assert doctest.testmod(rewards).failed == 0


def test_ndcg_hand_computed() -> None:
    # target i1 at rank 3 -> 1/log2(4) = 0.5; rank 1 -> 1; rank 10 -> 1/log2(11)
    got = ndcg_reward([GOOD + answer(with_target_at(r)) for r in (3, 1, 10)], ["i1"] * 3, [CANDS] * 3)
    assert got == pytest.approx([0.5, 1.0, 1 / math.log2(11)])


def test_ndcg_invalid_scores_zero_and_none_without_target() -> None:
    bad = [
        "[1] > [2]",  # no <answer>
        answer([1, 2, 3]),  # incomplete
        answer([1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),  # duplicate
        conversation(1, "")[:-1],  # ends on a tool result: no final answer
        "",
    ]
    assert ndcg_reward(bad, ["i1"] * len(bad), [CANDS] * len(bad)) == [0.0] * len(bad)
    assert ndcg_reward([answer(list(range(1, 11)))], [None], [CANDS]) == [None]


def test_string_and_message_forms_agree() -> None:
    text = GOOD + answer(with_target_at(2))
    as_messages = [[{"role": "assistant", "content": text}]]
    assert ndcg_reward([text], ["i1"], [CANDS]) == ndcg_reward(as_messages, ["i1"], [CANDS])
    assert format_reward([text], [CANDS]) == format_reward(as_messages, [CANDS]) == [1.0]


def test_format_reward() -> None:
    ok = answer(list(range(1, 11)))
    completions = [
        conversation(2, ok),  # three well-formed turns
        [
            {"role": "assistant", "content": CALL},
            {"role": "tool", "content": "x"},
            {"role": "assistant", "content": GOOD + ok},
        ],
        GOOD + answer([1, 2]),  # invalid answer
        GOOD + "<tool_call>{not json}</tool_call>" + ok,  # malformed call in the answer turn
    ]
    assert format_reward(completions, [CANDS] * 4) == [1.0, 0.5, -1.0, 0.0]


def test_count_tool_calls_both_forms() -> None:
    assert count_tool_calls(conversation(3, "")) == 3
    assert count_tool_calls(GOOD + CALL + CALL) == 2
    assert count_tool_calls(GOOD + "<tool_call>{bad</tool_call>") == 1  # malformed calls still cost


def test_tool_penalty_only_beyond_budget_and_scaled_by_accuracy() -> None:
    right, wrong = answer(with_target_at(1)), answer(with_target_at(3))
    comps = [conversation(3, right), conversation(5, right), conversation(5, wrong), conversation(20, right)]
    got = tool_efficiency_reward(comps, ["i1"] * 4, [CANDS] * 4, budget=3, per_call=0.05, cap=0.3)
    assert got == pytest.approx([0.0, -0.1, -0.05, -0.3])
    invalid = tool_efficiency_reward([conversation(9, answer([1]))], ["i1"], [CANDS], budget=0)
    assert invalid == [0.0]  # nothing to scale: an invalid answer is not "saved" by few calls


@pytest.mark.parametrize("budget", range(0, 7))
def test_tool_penalty_never_flips_a_correct_answer_below_a_wrong_one(budget: int) -> None:
    """The `rewards` module docstring's claim, checked over budgets, call counts and wrong answers."""
    config = RewardConfig(tool_budget=budget, tool_penalty_per_call=0.1, tool_penalty_cap=0.36)
    wrong_no_calls = [conversation(0, answer(with_target_at(r))) for r in range(2, 11)]
    wrong_no_calls += [conversation(0, answer([1, 2, 3])), conversation(0, "")]  # invalid answers
    best_wrong = max(total_reward(c, "i1", CANDS, config) for c in wrong_no_calls)
    for n_calls in range(0, 25):
        correct = total_reward(conversation(n_calls, answer(with_target_at(1))), "i1", CANDS, config)
        assert correct > best_wrong, (budget, n_calls, correct, best_wrong)


def test_config_rejects_a_penalty_that_could_flip_signs() -> None:
    with pytest.raises(ValueError, match="flip"):
        RewardConfig(tool_weight=1.0, tool_penalty_cap=0.5)
    with pytest.raises(ValueError):
        RewardConfig(k=0)


def test_reward_funcs_take_trl_keyword_columns() -> None:
    funcs, weights = reward_funcs(RewardConfig(tool_budget=0))
    comps = [conversation(1, answer(with_target_at(1))), "nonsense"]
    kwargs = {
        "target": ["i1", "i1"],
        "candidates": [CANDS, CANDS],
        "prompts": [[], []],
        "trainer_state": None,
    }
    values = [f(completions=comps, **kwargs) for f in funcs]
    assert values[0] == [1.0, 0.0]
    assert values[1] == [1.0, -1.0]
    assert values[2] == pytest.approx([-0.05, 0.0])
    assert weights == [1.0, 0.2, 1.0]


class EvidenceEnv:
    """Test double of the episode's `RecEnv` after a rollout: its successful calls and its signals."""

    def __init__(self, ok_calls: list[tuple[str, dict]]) -> None:
        self.ok_calls = ok_calls

    def signals(self, models: tuple[str, ...] = ()) -> dict:
        import numpy as np

        out = {  # ALS prefers i3 > i2 > i1 > ...; item relations prefer i10 > i9 > ...
            "item_relations": np.arange(10, dtype=float),
            "similar_users": np.zeros(10),
            "popularity": np.zeros(10),
            "genre_match": np.zeros(10),
        }
        for m in models:
            out[f"cf_{m}"] = np.array([8.0, 9.0, 10.0, 0, 0, 0, 0, 0, 0, 0])
        return out


def test_evidence_answers_are_ranked_by_the_tools_the_episode_called() -> None:
    """Answer form (c) in GRPO: the permutation comes from the environment's evidence, as in the loop."""
    funcs, _ = reward_funcs(RewardConfig(answer_form="evidence"))
    ndcg, fmt, _tool = funcs
    final = "<answer>promote; demote</answer>"
    comps = [conversation(1, final)] * 3
    envs = [
        EvidenceEnv([("cf_scores", {"model": "als"})]),
        EvidenceEnv([("item_relations", {})]),
        EvidenceEnv([]),
    ]
    kw = {"target": ["i2"] * 3, "candidates": [CANDS] * 3, "environments": envs}
    # ALS order i3 > i2 > i1: the target is 2nd; relations order i10 > ... > i2: the target is 9th;
    # no evidence tool called: invalid (scores 0, format -1)
    assert ndcg(completions=comps, **kw) == pytest.approx([1 / math.log2(3), 1 / math.log2(10), 0.0])
    assert fmt(completions=comps, **kw) == [1.0, 1.0, -1.0]
    promoted = [conversation(1, "<answer>promote [2]</answer>")]
    assert ndcg(
        completions=promoted, **{**kw, "target": ["i2"], "candidates": [CANDS], "environments": envs[:1]}
    ) == [1.0]
    # without the environments (the reward cannot see the evidence) an evidence answer is invalid, never a fallback
    assert ndcg(completions=comps[:1], target=["i2"], candidates=[CANDS]) == [0.0]
    with pytest.raises(ValueError):
        RewardConfig(answer_form="poem")


# -- the reward reads an answer as evaluation does ------------------------------------------------------------
# The same model replies go through the agent loop (what evaluation scores) and through a simulation of TRL's
# tool-calling rollout (what GRPO scores); the reward must find the loop's ranking and evaluation's NDCG.


class Replies:
    """A chat model that replies with scripted texts, in order (a test double of `ChatModel`)."""

    name = "scripted"

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)

    def generate(self, messages, **options):
        text = self.replies.pop(0) if self.replies else ""
        message = {"role": "assistant", "content": text}
        return ChatResult(
            message=message, prompt_tokens=1, completion_tokens=1, latency_s=0.0, finish_reason="stop"
        )


def tool(name: str, **args) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


def trl_rollout(env: RecEnv, replies: list[str]) -> list[dict]:
    """The completion TRL's tool loop makes of `replies`: each turn's calls run as `env.<tool>(**arguments)`.

    As in `GRPOTrainer._tool_call_loop`: a turn's structured calls all run, even beside an `<answer>`, their
    results come back as `tool` messages, a failing call becomes an error result, and the first turn without
    calls ends the rollout.
    """
    tools = {t["function"]["name"] for t in tool_schemas()}
    completion: list[dict] = []
    for text in replies:
        content, calls = parse_hermes_tool_calls(text)
        calls = [
            {
                "type": "function",
                "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])},
            }
            for c in calls
        ]
        completion.append(
            {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
        )
        if not calls:
            break
        for call in calls:
            name, args = call["function"]["name"], call["function"]["arguments"]
            try:
                if name not in tools:
                    raise ValueError(f"Tool {name} not found.")
                result = getattr(env, name)(**args)
            except Exception as e:  # noqa: BLE001 -- as TRL does
                result = {"error": str(e)}
            completion.append({"role": "tool", "name": name, "content": str(result)})
    return completion


@pytest.fixture(scope="module")
def resources(tiny_benchmark):
    return load_resources(tiny_benchmark, "dense/test")


def loop_and_reward(resources, episode: Episode, replies: list[str], form: str):
    """(the loop's Ranking, evaluation's NDCG@10, the reward's ParsedRanking, ndcg_reward) for the same replies."""
    config = AgentConfig(answer_form=form)
    ranking = RecThinker(Replies(replies), ToolHost(RecEnv(resources)), config=config).rank(episode)
    evaluated = score_rank(target_rank(ranking.items, episode.target) if ranking.valid else None)["ndcg@10"]
    env = RecEnv(resources)
    env.reset(**episode.to_dict())  # what TRL's environment_factory + reset(**row) do
    completion = trl_rollout(env, replies)
    parsed = rewards.answer_ranking(completion, list(episode.candidates), env, form)
    (reward,) = ndcg_reward([completion], [episode.target], [list(episode.candidates)], 10, [env], form)
    return ranking, evaluated, parsed, reward


THINK = "<analyze>a</analyze><plan>p</plan>"
ORDERS = {  # episode dense/test[0]: candidates m15 m40 m11 m46 m09 m55 m51 m58 m37 m28, target m11 = [3]
    "labels": " > ".join(f"[{k}]" for k in (5, 3, 1, 2, 4, 6, 7, 8, 9, 10)),
    "ids": " > ".join(["m40", "m15", "m46", "m11", "m09", "m55", "m51", "m58", "m37", "m28"]),
}
SAME_READING = {  # (answer form, replies): one per answer form and way of writing it
    "ranking labels": (
        "ranking",
        [THINK + tool("user_profile"), f"{THINK}<answer>{ORDERS['labels']}</answer>"],
    ),
    "ranking ids": ("ranking", [f"{THINK}<answer>{ORDERS['ids']}</answer>"]),
    "ranking invalid": ("ranking", [f"{THINK}<answer>[3] > [1]</answer>"]),
    "evidence cf": (
        "evidence",
        [THINK + tool("cf_scores", model="als"), f"{THINK}<answer>promote [2]; demote [3]</answer>"],
    ),
    "evidence several tools": (
        "evidence",
        [
            THINK + tool("item_relations") + tool("similar_users", k=5),
            THINK + tool("item_info", item_ids=["[1]", "[4]"]),
            f"{THINK}<answer>promote [7] [2]</answer>",
        ],
    ),
    "evidence with a failed call": (
        "evidence",
        [
            THINK + tool("cf_scores", model="nope") + tool("user_profile"),
            f"{THINK}<answer>demote [1]</answer>",
        ],
    ),
    "evidence without evidence": ("evidence", [f"{THINK}<answer>promote [2]</answer>"]),
}


@pytest.mark.parametrize("case", SAME_READING)
def test_loop_and_reward_read_the_same_answer_the_same_way(tiny_benchmark, resources, case) -> None:
    form, replies = SAME_READING[case]
    episode = tiny_benchmark.episodes("dense/test")[0]
    ranking, evaluated, parsed, reward = loop_and_reward(resources, episode, replies, form)
    assert parsed.valid == ranking.valid and (parsed.items == ranking.items or not ranking.valid)
    assert reward == pytest.approx(evaluated)
    assert ranking.valid == ("invalid" not in case and "without" not in case)


def test_the_answer_that_counts_is_the_loops_first_valid_one(tiny_benchmark, resources) -> None:
    """Fixed: the reward read the *last* turn's answer, with evidence from every call TRL ran.

    The loop stops at the first valid answer and ignores the tool calls written beside it; TRL runs those
    calls and lets the model go on, so the reward used to score a later answer (and, for the evidence form,
    with evidence gathered after the answer). Now it scores what evaluation scores.
    """
    episode = tiny_benchmark.episodes("dense/test")[0]  # target m11 = [3]; ALS puts [3] first, [1] second
    first = " > ".join(f"[{k}]" for k in (3, 1, 2, 4, 5, 6, 7, 8, 9, 10))  # target 1st
    later = " > ".join(f"[{k}]" for k in (1, 2, 4, 5, 6, 7, 8, 9, 10, 3))  # target 10th
    last = 1 / math.log2(11)
    cases = [  # (form, replies, evaluation's NDCG@10 = the reward now, the reward before)
        (
            "ranking",
            [f"{THINK}<answer>{first}</answer>" + tool("user_profile"), f"{THINK}<answer>{later}</answer>"],
            1.0,
            last,
        ),
        (
            "evidence",
            [
                THINK + tool("cf_scores", model="als"),
                f"{THINK}<answer>promote [1]; demote</answer>" + tool("item_relations"),  # target 2nd
                f"{THINK}<answer>promote [1]; demote [3]</answer>",  # target last
            ],
            1 / math.log2(3),
            last,
        ),
        (  # calls that failed before the answer are told apart from the same tools run beside it
            "evidence",
            [
                THINK
                + tool("user_profile")
                + tool("cf_scores", model="nope")
                + tool("item_info", item_ids=[]),
                f"{THINK}<answer>promote [3]; demote</answer>"  # genre match alone, [3] promoted: target 1st
                + tool("cf_scores", model="als")
                + tool("item_info", item_ids=["[1]"]),
                "<answer>promote [1]; demote [3]</answer>",  # target last
            ],
            1.0,
            last,
        ),
    ]
    for form, replies, now, before in cases:
        ranking, evaluated, parsed, reward = loop_and_reward(resources, episode, replies, form)
        assert ranking.valid and parsed.items == ranking.items
        assert reward == pytest.approx(evaluated) == pytest.approx(now)
        # what the reward computed before: the final turn's answer, all of env.ok_calls as evidence
        env = RecEnv(resources)
        env.reset(**episode.to_dict())
        completion = trl_rollout(env, replies)
        old = answer_to_ranking(
            rewards.final_answer(completion),
            list(episode.candidates),
            form,
            evidence_calls=ToolHost(env).ok_calls,
            env=ToolHost(env),
        )
        assert score_rank(target_rank(old.items, episode.target))["ndcg@10"] == pytest.approx(before)


def test_an_invalid_answer_beside_tool_calls_is_dropped_as_in_the_loop(tiny_benchmark, resources) -> None:
    """An evidence answer before any evidence is refused, the calls beside it run, and a later answer counts."""
    episode = tiny_benchmark.episodes("dense/test")[0]
    replies = [
        THINK + tool("item_info", item_ids=[]),  # fails: no ids
        f"{THINK}<answer>promote [2]</answer>"
        + tool("item_info", item_ids=["[2]", "[5]"]),  # no evidence yet
        f"{THINK}<answer>promote [3]; demote [2]</answer>",
    ]
    ranking, evaluated, parsed, reward = loop_and_reward(resources, episode, replies, "evidence")
    assert ranking.valid and ranking.items[0] == "m11" and ranking.items[-1] == "m40"
    assert parsed.items == ranking.items and reward == evaluated == 1.0
