"""The agent loop with a scripted chat model (a test double) and a small fake tool environment."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recthinker.agent.loop import AgentConfig, RecThinker
from recthinker.agent.parse import parse_ranking
from recthinker.agent.prompting import render_for_prompt_mode
from recthinker.agent.trajectory import Step, Trajectory
from recthinker.llm import ChatResult
from recthinker.types import Episode

EPISODE = Episode(episode_id="e1", user_id="u1", history=("h1", "h2"), candidates=("a", "b", "c"), target="b")


class ScriptedModel:
    """Replies with the scripted texts in order; records the messages it was shown."""

    name = "scripted"

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.seen: list[list[dict]] = []
        self.options: list[dict] = []

    def generate(self, messages, **options):
        self.seen.append(messages)
        self.options.append(options)
        text = self.replies.pop(0) if self.replies else ""
        return ChatResult(
            message={"role": "assistant", "content": text},
            prompt_tokens=10,
            completion_tokens=5,
            latency_s=0.0,
            finish_reason="stop",
        )


@dataclass
class Obs:
    text: str
    ok: bool = True
    error: str = ""


class FakeEnv:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.resets = 0

    def reset_episode(self, episode):
        self.resets += 1

    def tool_schemas(self):
        return [
            {
                "type": "function",
                "function": {
                    "name": "user_history",
                    "description": "d",
                    "parameters": {"type": "object", "properties": {"k": {"type": "integer"}}},
                },
            }
        ]

    def call(self, name, arguments):
        self.calls.append((name, arguments))
        if name != "user_history":
            return Obs(f"Unknown tool {name!r}. Available: user_history", ok=False, error="unknown_tool")
        return Obs(f"history: h1, h2 (k={arguments.get('k')})")


def call(name: str, **args) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


def test_tool_call_then_answer():
    model = ScriptedModel(
        [
            "<analyze>Need history.</analyze><plan>Call user_history.</plan>" + call("user_history", k=5),
            "<analyze>Enough.</analyze><plan>Rank.</plan><answer>[2] > [3] > [1]</answer>",
        ]
    )
    env = FakeEnv()
    traj = RecThinker(model, env).run(EPISODE)
    assert traj.valid and traj.ranking == ["b", "c", "a"]
    assert env.calls == [("user_history", {"k": 5})] and env.resets == 1
    assert (
        traj.n_tool_calls == 1
        and traj.steps[0].analyze == "Need history."
        and traj.steps[0].plan == "Call user_history."
    )
    # the second prompt carried the tool result back, as a <tool_response> turn in prompt mode
    assert "<tool_response>\nhistory: h1, h2 (k=5)\n</tool_response>" in model.seen[1][-1]["content"]
    # the tools are described in the system prompt
    assert "\n- user_history(k): " in model.seen[0][0]["content"]  # one line per tool
    row = traj.to_sft_row()
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert row["messages"][2]["tool_calls"][0]["function"] == {"name": "user_history", "arguments": {"k": 5}}
    assert row["tools"][0]["function"]["name"] == "user_history"


def without_timings(d):
    """A trajectory dict with every `latency_s` set to 0 (the only part of a run that is not reproducible)."""
    if isinstance(d, dict):
        return {k: 0 if k == "latency_s" else without_timings(v) for k, v in d.items()}
    if isinstance(d, list):
        return [without_timings(v) for v in d]
    return d


def test_stream_yields_each_finished_turn_then_the_trajectory():
    replies = [
        "<answer>[1] > [1]</answer>",  # a format problem
        call("user_history", k=2),
        "<answer>[2] > [3] > [1]</answer>",
    ]
    env = FakeEnv()
    items = list(RecThinker(ScriptedModel(replies), env).stream(EPISODE))
    *steps, traj = items
    assert all(isinstance(s, Step) for s in steps) and isinstance(traj, Trajectory)
    assert steps == traj.steps and [s.index for s in steps] == [0, 1, 2]  # the trajectory's own steps
    assert steps[1].tool_calls[0].observation == "history: h1, h2 (k=2)"  # yielded after its tools ran
    assert traj.valid and traj.ranking == ["b", "c", "a"] and traj.latency_s > 0
    # run() drains the same stream: the same trajectory
    again = RecThinker(ScriptedModel(replies), FakeEnv()).run(EPISODE)
    assert without_timings(again.to_dict()) == without_timings(traj.to_dict())
    # the fixed-workflow calls come first, as step -1
    fw = RecThinker(
        ScriptedModel(["<answer>[2] > [1] > [3]</answer>"]),
        FakeEnv(),
        config=AgentConfig(mode="fixed-workflow"),
        fixed_workflow=[("user_history", {"k": 3})],
    )
    assert [getattr(i, "index", "trajectory") for i in fw.stream(EPISODE)] == [-1, 0, "trajectory"]


def test_closing_the_stream_stops_the_run_before_its_next_model_call():
    model = ScriptedModel(
        [call("user_history", k=1), call("user_history", k=2), "<answer>[1] > [2] > [3]</answer>"]
    )
    env = FakeEnv()
    run = RecThinker(model, env).stream(EPISODE)
    first = next(run)
    assert first.index == 0 and len(model.seen) == 1 and env.calls == [("user_history", {"k": 1})]
    run.close()
    assert len(model.seen) == 1 and len(env.calls) == 1  # no second turn, no further tool call
    with pytest.raises(StopIteration):
        next(run)


def test_mistakes_become_observations():
    model = ScriptedModel(
        [
            "<tool_call>{not json}</tool_call>",
            call("nope"),
            "<answer>[1] > [1]</answer>",
            "<answer>[3] > [1] > [2]</answer>",
        ]
    )
    env = FakeEnv()
    traj = RecThinker(model, env, config=AgentConfig(max_steps=6)).run(EPISODE)
    assert traj.valid and traj.ranking == ["c", "a", "b"]
    assert "not valid JSON" in traj.steps[0].problems[0]
    assert traj.steps[1].tool_calls[0].error == "unknown_tool" and traj.n_tool_errors == 1
    assert any("listed twice" in p for p in traj.steps[2].problems)
    assert "Format problem" in model.seen[3][-1]["content"]


def test_no_answer_is_invalid_never_candidate_order():
    traj = RecThinker(ScriptedModel(["hmm"] * 3), FakeEnv(), config=AgentConfig(max_steps=3)).run(EPISODE)
    assert not traj.valid and traj.ranking == [] and "no valid answer" in traj.note
    ranking = RecThinker(ScriptedModel(["..."] * 3), FakeEnv(), config=AgentConfig(max_steps=3)).rank(EPISODE)
    assert not ranking.valid and ranking.items == ()


def test_tool_budget_enforced():
    model = ScriptedModel([call("user_history", k=1) * 3, "<answer>[1] > [2] > [3]</answer>"])
    env = FakeEnv()
    traj = RecThinker(model, env, config=AgentConfig(max_tool_calls=2)).run(EPISODE)
    assert len(env.calls) == 2 and traj.tool_calls[2].error == "budget" and traj.valid


def test_last_turn_warning_and_rank_info():
    model = ScriptedModel([call("user_history", k=1), "<answer>[1] > [2] > [3]</answer>"])
    ranking = RecThinker(model, FakeEnv(), config=AgentConfig(max_steps=2)).rank(EPISODE)
    assert "last turn" in model.seen[1][-1]["content"]
    assert ranking.valid and ranking.info["tool_calls"] == 1 and ranking.info["turns"] == 2


def test_zero_shot_and_fixed_workflow():
    zs = RecThinker(
        ScriptedModel(["<answer>[2] > [1] > [3]</answer>"]), None, config=AgentConfig(mode="zero-shot")
    )
    traj = zs.run(EPISODE)
    assert traj.valid and traj.tools == [] and "Rank all candidates now" in traj.messages[1]["content"]
    env = FakeEnv()
    fw = RecThinker(
        ScriptedModel(["<answer>[2] > [1] > [3]</answer>"]),
        env,
        config=AgentConfig(mode="fixed-workflow"),
        fixed_workflow=[("user_history", {"k": 3})],
    )
    traj = fw.run(EPISODE)
    assert env.calls == [("user_history", {"k": 3})] and traj.valid and traj.n_tool_calls == 1
    with pytest.raises(Exception, match="fixed-workflow mode needs"):
        RecThinker(ScriptedModel([]), env, config=AgentConfig(mode="fixed-workflow"))


def test_trajectory_round_trip():
    traj = RecThinker(
        ScriptedModel([call("user_history", k=2), "<answer>[1] > [2] > [3]</answer>"]), FakeEnv()
    ).run(EPISODE)
    again = Trajectory.from_dict(json.loads(json.dumps(traj.to_dict())))
    assert again.to_dict() == traj.to_dict() and again.n_tool_calls == 1


def test_render_for_prompt_mode_merges_tool_results():
    msgs = [
        {
            "role": "assistant",
            "content": "x",
            "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                {"type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
    ]
    out = render_for_prompt_mode(msgs)
    assert out[0]["content"].count("<tool_call>") == 2 and '"arguments": {"a": 1}' in out[0]["content"]
    assert len(out) == 2 and out[1]["role"] == "user" and out[1]["content"].count("<tool_response>") == 2


# Fuzz: thousands of generated malformed outputs through the parser and the loop -- never a crash, and a
# ranking is valid only when it is a permutation of the candidates.
pieces = st.sampled_from(
    [
        "<analyze>",
        "</analyze>",
        "<plan>",
        "</plan>",
        "<answer>",
        "</answer>",
        "<tool_call>",
        "</tool_call>",
        "[1]",
        "[2]",
        "[3]",
        "[4]",
        "[0]",
        " > ",
        "{",
        "}",
        '"name"',
        '"arguments"',
        ":",
        ",",
        '"user_history"',
        '"nope"',
        "null",
        "[",
        "]",
        "a",
        "b",
        "c",
        "\n",
        '{"k": 3}',
        '{"k": "x"}',
        "\\",
        "\u00e9",
    ]
)
texts = st.one_of(st.text(max_size=200), st.lists(pieces, max_size=40).map("".join))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_fuzz_parse_ranking(text):
    r = parse_ranking(text, ["a", "b", "c"])
    assert r.valid == (sorted(r.items) == ["a", "b", "c"] and not r.problems)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=4))
def test_fuzz_loop_never_crashes(replies):
    traj = RecThinker(ScriptedModel(replies), FakeEnv(), config=AgentConfig(max_steps=4)).run(EPISODE)
    assert traj.valid == (sorted(traj.ranking) == ["a", "b", "c"])
    assert len(traj.steps) <= 4 and traj.n_tool_calls <= 6


def test_context_overflow_ends_episode_invalid():
    from recthinker.llm.base import ContextOverflowError, is_context_overflow

    class Overflowing(ScriptedModel):
        def generate(self, messages, **options):
            if len(self.seen) == 1:
                raise ContextOverflowError("request (4156 tokens) exceeds the available context size")
            return super().generate(messages, **options)

    traj = RecThinker(Overflowing([call("user_history", k=1)]), FakeEnv()).run(EPISODE)
    assert not traj.valid and traj.note == "context window exceeded before an answer" and len(traj.steps) == 1
    assert is_context_overflow("This model's maximum context length is 8192 tokens")
    assert not is_context_overflow("HTTP 400: bad request")


def test_evidence_answer_form_builds_permutation_from_called_tools():
    import numpy as np

    class SignalEnv(FakeEnv):
        def tool_schemas(self):
            return [
                {
                    "type": "function",
                    "function": {
                        "name": n,
                        "description": "d",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
                for n in ("cf_scores", "item_relations")
            ]

        def call(self, name, arguments):
            self.calls.append((name, arguments))
            return Obs(f"{name} ok")

        def signals(self, models=()):
            return {
                "cf_als": np.array([3.0, 1.0, 2.0]),
                "item_relations": np.array([0.0, 5.0, 1.0]),
                "popularity": np.zeros(3),
                "similar_users": np.zeros(3),
                "genre_match": np.zeros(3),
            }

    config = AgentConfig(answer_form="evidence")
    # no evidence yet: the answer is refused with a problem the model sees
    model = ScriptedModel(
        [
            "<answer>promote [2]; demote</answer>",
            call("cf_scores", model="als"),
            "<answer>promote [2]; demote [1]</answer>",
        ]
    )
    traj = RecThinker(model, SignalEnv(), config=config).run(EPISODE)
    assert "needs evidence" in traj.steps[0].problems[-1]
    # cf_als order is a, c, b; promote [2]=b to the top, demote [1]=a to the bottom
    assert traj.valid and traj.ranking == ["b", "c", "a"]
    assert "promote [3] [7]; demote [2]" in model.seen[0][0]["content"]
    with pytest.raises(Exception, match="needs the agent mode"):
        RecThinker(ScriptedModel([]), None, config=AgentConfig(mode="zero-shot", answer_form="evidence"))


def test_a_valid_answer_ends_the_episode_and_the_tool_calls_beside_it_are_ignored():
    """The rule the GRPO reward follows (`train.rewards.answer_ranking`): the first valid answer counts."""
    model = ScriptedModel(
        [
            "<answer>[1] > [2]</answer>" + call("user_history", k=2),  # invalid: the calls run
            "<answer>[2] > [1] > [3]</answer>" + call("user_history", k=3),  # valid: the calls are ignored
            "<answer>[3] > [2] > [1]</answer>",
        ]
    )
    env = FakeEnv()
    traj = RecThinker(model, env).run(EPISODE)
    assert traj.valid and traj.ranking == ["b", "a", "c"] and len(traj.steps) == 2
    assert env.calls == [("user_history", {"k": 2})] and "tool calls ignored" in traj.note


def test_answer_to_ranking_is_the_one_reading_of_an_answer():
    from recthinker.agent.loop import answer_to_ranking

    assert answer_to_ranking("[2] > [3] > [1]", EPISODE.candidates).items == ("b", "c", "a")
    assert answer_to_ranking("b > c > a", EPISODE.candidates).items == ("b", "c", "a")
    # the evidence form reads the environment only when there is evidence, and is invalid without one
    assert not answer_to_ranking("promote [1]", EPISODE.candidates, "evidence").valid
    no_evidence = answer_to_ranking("promote [1]", EPISODE.candidates, "evidence", env=FakeEnv())
    assert not no_evidence.valid and "needs evidence" in no_evidence.problems[-1]
    with pytest.raises(ValueError, match="answer_form"):
        answer_to_ranking("[1] > [2] > [3]", EPISODE.candidates, "poem")
