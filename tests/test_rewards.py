"""Rewards: hand-computed cases, both completion forms, and the tool penalty's no-sign-flip guarantee."""

from __future__ import annotations

import doctest
import math

import pytest

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
