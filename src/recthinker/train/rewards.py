"""Reward functions in TRL's shape: `f(completions, **columns) -> list[float | None]`, batch in, list out.

A completion is either a string (one assistant turn) or, in conversational / tool-calling GRPO, a list of
messages: assistant turns (content + structured `tool_calls`) interleaved with `tool` results. The answer
is the first valid `<answer>`, as in the agent loop (`answer_ranking`). Dataset columns (`target`,
`candidates`) arrive as lists, one entry per completion.

- `ndcg_reward`: NDCG@k of the answer, computed by the evaluator's own `ndcg_at_k` (evaluation and
  training agree on what "good" means); an invalid answer scores 0 -- never a fallback order. The answer
  is read as the agent loop reads it (`answer_ranking`): the same turn, the same evidence and the same
  `agent.loop.answer_to_ranking`, so a completion scores the NDCG evaluation would give it.
- `format_reward`: the share of well-formed turns (`<analyze>`, `<plan>`, then tool calls or an answer)
  when the answer is a valid ranking; -1 when it is not.
- `tool_efficiency_reward`: a penalty for tool calls beyond a budget, scaled by the answer's accuracy.

Why the tool penalty is scaled by accuracy (OTC-PO, Wang et al. 2025, "Acting Less is Reasoning More"):
a flat per-call penalty added to the reward can make a correct answer that needed many calls score below
a wrong answer that made none, which flips the sign of the correct answer's GRPO advantage and teaches
the model to stop investigating. Here the penalty is `-ndcg * min(cap, per_call * excess_calls)`, so the
tool term (a) is zero for wrong and invalid answers (no call is ever "saved" by answering badly) and (b)
removes at most a fraction `cap` of the accuracy reward. `RewardConfig` requires
`tool_weight * cap < ndcg_weight * (1 - 1/log2(3))` (the relative NDCG gap between rank 1 and rank 2):
then, at equal format quality, a correct answer (target first) with any number of calls always outscores
every wrong answer (target lower, or invalid) made with no calls, so its advantage keeps its sign.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from recthinker.agent.loop import ANSWER_FORMS, answer_to_ranking
from recthinker.agent.parse import ParsedRanking, parse_turn
from recthinker.metrics import ndcg_at_k, target_rank
from recthinker.tools.env import TOOLS, RecEnv, ToolHost

Completion = str | Sequence[dict[str, Any]]
RANK1_RANK2_GAP = 1.0 - 1.0 / math.log2(3)  # relative NDCG@k drop from rank 1 to rank 2 (~0.369)


@dataclass
class RewardConfig:
    """Weights and parameters of the GRPO reward: ndcg_weight*ndcg + format_weight*format + tool_weight*tool."""

    ndcg_weight: float = 1.0  # weight of NDCG@k of the answer (in [0, 1])
    format_weight: float = 0.2  # weight of the format term (in [-1, 1])
    tool_weight: float = 1.0  # weight of the tool-efficiency term (in [-cap, 0])
    k: int = 10  # NDCG cut-off
    tool_budget: int = 3  # tool calls per episode free of penalty
    tool_penalty_per_call: float = 0.05  # fraction of the accuracy reward lost per call beyond the budget
    tool_penalty_cap: float = 0.3  # most of the accuracy reward the tool term can remove (fraction)
    answer_form: str = (
        "ranking"  # "ranking" (permutation) | "evidence" (promote/demote, needs `environments`)
    )

    def __post_init__(self) -> None:
        if self.k < 1 or self.tool_budget < 0 or self.tool_penalty_per_call < 0 or self.tool_penalty_cap < 0:
            raise ValueError(f"k >= 1 and non-negative tool budget / penalties required: {self}")
        if min(self.ndcg_weight, self.format_weight, self.tool_weight) < 0:
            raise ValueError(f"reward weights must be >= 0: {self}")
        if self.answer_form not in ANSWER_FORMS:
            raise ValueError(f"answer_form must be 'ranking' or 'evidence', got {self.answer_form!r}")
        if self.tool_weight * self.tool_penalty_cap >= self.ndcg_weight * RANK1_RANK2_GAP:
            raise ValueError(
                f"tool_weight * tool_penalty_cap = {self.tool_weight * self.tool_penalty_cap:.3f} must stay below "
                f"ndcg_weight * {RANK1_RANK2_GAP:.3f}, or tool calls could flip the sign of a correct answer's "
                "advantage (OTC-PO)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- reading completions -------------------------------------------------------------------------------------


def _messages(completion: Completion) -> list[dict[str, Any]]:
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return [dict(m) for m in completion]


def _assistant_turns(completion: Completion) -> list[dict[str, Any]]:
    return [m for m in _messages(completion) if m.get("role") == "assistant"]


def _content(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content blocks
        content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return str(content)


def final_answer(completion: Completion) -> str | None:
    """The `<answer>` text of the last assistant turn, or None (the reward reads `answer_ranking`'s turn).

    >>> final_answer("<analyze>a</analyze><plan>p</plan><answer>[2] > [1]</answer>")
    '[2] > [1]'
    >>> final_answer([{"role": "assistant", "content": "<answer>[1]</answer>"}, {"role": "tool", "content": "x"}])
    '[1]'
    """
    turns = _assistant_turns(completion)
    return parse_turn(_content(turns[-1])).answer if turns else None


def count_tool_calls(completion: Completion) -> int:
    """Tool calls in a completion: structured `tool_calls` plus `<tool_call>` blocks left in the text.

    >>> count_tool_calls('<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>')
    2
    >>> count_tool_calls([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "a", "arguments": {}}}]}])
    1
    """
    n = 0
    for m in _assistant_turns(completion):
        turn = parse_turn(_content(m), m.get("tool_calls") or ())
        n += len(turn.tool_calls) + turn.malformed_calls
    return n


def answer_ranking(
    completion: Completion, candidates: Sequence[str], env: Any = None, answer_form: str = "ranking"
) -> ParsedRanking:
    """The `ParsedRanking` a completion stands for, judged as the agent loop judges it.

    The loop stops at the first turn whose `<answer>` is valid (tool calls made in that turn are ignored), so
    that answer counts, not the last turn's: TRL runs those calls and lets the model go on. Each answer is
    read by `agent.loop.answer_to_ranking`; `answer_form="evidence"` (promote/demote) builds the permutation
    from the tools `env` (the episode's `RecEnv` after the rollout) ran successfully before the answer;
    without `env` it is invalid.

    >>> answer_ranking("<answer>[2] > [1]</answer>", ["a", "b"]).items
    ('b', 'a')
    >>> answer_ranking([{"role": "assistant", "content": "<answer>[2] > [1]</answer>"},
    ...                 {"role": "assistant", "content": "<answer>[1] > [2]</answer>"}], ["a", "b"]).items
    ('b', 'a')
    >>> answer_ranking("<answer>promote [2]</answer>", ["a", "b"], answer_form="evidence").valid
    False
    """
    turns = _assistant_turns(completion)
    env = _host(env)
    evidence = answer_form == "evidence" and env is not None  # only answer form (c) reads the environment
    parsed = None
    for j, message in enumerate(turns):
        answer = parse_turn(_content(message)).answer
        if answer is None:
            continue
        calls = _ok_calls_before(turns, j, env) if evidence else ()
        parsed = answer_to_ranking(answer, candidates, answer_form, evidence_calls=calls, env=env)
        if parsed.valid:
            return parsed
    return parsed or answer_to_ranking(None, candidates, answer_form, env=env)


def _host(env: Any) -> Any:
    """The episode's environment as TRL hands it over (a `RecEnv`), read through a `ToolHost`."""
    return ToolHost(env) if isinstance(env, RecEnv) else env


def _ok_calls_before(turns: Sequence[dict[str, Any]], j: int, env: Any) -> Sequence[tuple[str, Any]]:
    """The calls `env` ran successfully before assistant turn `j`: the evidence the loop had at that answer.

    TRL runs a turn's structured `tool_calls`, then generates the next turn, and stops at a turn without
    calls; so when turn `j` is the last and calls nothing, every call in `env.ok_calls` came before it.
    Otherwise the earlier turns' calls are matched in order against `env.ok_calls`; a call succeeded iff it
    is the next successful one (tools are deterministic: an identical call cannot have failed).
    """
    ok = list(env.ok_calls)
    if j == len(turns) - 1 and not turns[j].get("tool_calls"):
        return ok
    n = 0
    for message in turns[:j]:
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            if n < len(ok) and _same_call(fn.get("name"), fn.get("arguments"), ok[n]):
                n += 1
    return ok[:n]


def _same_call(name: Any, arguments: Any, ran: tuple[str, Any]) -> bool:
    """Whether calling tool `name` with `arguments` is the call `ran` = `(name, arguments)` in the host's `ok_calls`.

    `ran` holds the arguments as given or with the tool's defaults filled in; both are accepted.
    """
    if name != ran[0]:
        return False
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return False
    if not isinstance(arguments, dict):
        return False
    spec = TOOLS.get(name)
    if spec is None:
        return False
    try:  # the same binding TRL does when it calls `env.<name>(**arguments)`; the tool's `self` is unbound
        bound = inspect.signature(spec.fn).bind(None, **arguments)
    except TypeError:
        return False
    bound.apply_defaults()
    ran_args = dict(ran[1])
    return set(arguments) <= set(ran_args) and all(
        k in bound.arguments and bound.arguments[k] == v for k, v in ran_args.items()
    )


def _envs(environments: Sequence[Any] | None, n: int) -> Sequence[Any]:
    return environments if environments is not None else [None] * n


def _rank(
    completion: Completion,
    target: str,
    candidates: Sequence[str],
    env: Any = None,
    answer_form: str = "ranking",
) -> int | None:
    parsed = answer_ranking(completion, candidates, env, answer_form)
    return target_rank(parsed.items, target) if parsed.valid else None


# -- rewards -------------------------------------------------------------------------------------------------


def ndcg_reward(
    completions: Sequence[Completion],
    target: Sequence[str | None],
    candidates: Sequence[Sequence[str]],
    k: int = 10,
    environments: Sequence[Any] | None = None,
    answer_form: str = "ranking",
    **kwargs: Any,
) -> list[float | None]:
    """NDCG@k of the ranking in the `<answer>` (`answer_ranking`); 0.0 if missing or invalid; None without a target.

    >>> ndcg_reward(["<answer>[2] > [3] > [1]</answer>"], ["i1"], [["i1", "i3", "i7"]])
    [0.5]
    >>> ndcg_reward([[{"role": "assistant", "content": "<answer>[3] > [1]</answer>"}]], ["i7"], [["i1", "i3", "i7"]])
    [0.0]
    """
    envs = _envs(environments, len(completions))
    return [
        None if t is None else ndcg_at_k(_rank(c, t, cands, e, answer_form), k)
        for c, t, cands, e in zip(completions, target, candidates, envs, strict=True)
    ]


def format_reward(
    completions: Sequence[Completion],
    candidates: Sequence[Sequence[str]],
    environments: Sequence[Any] | None = None,
    answer_form: str = "ranking",
    **kwargs: Any,
) -> list[float]:
    """Share of well-formed assistant turns if the answer (`answer_ranking`) is a valid ranking, else -1.0.

    A turn is well-formed when it has non-empty `<analyze>` and `<plan>`, then tool calls or an `<answer>`,
    and no malformed `<tool_call>` block.

    >>> good = "<analyze>a</analyze><plan>p</plan><answer>[2] > [1]</answer>"
    >>> format_reward([good, "<answer>[2] > [1]</answer>", "[2] > [1]"], [["a", "b"]] * 3)
    [1.0, 0.0, -1.0]
    """
    out = []
    envs = _envs(environments, len(completions))
    for completion, cands, env in zip(completions, candidates, envs, strict=True):
        if not answer_ranking(completion, cands, env, answer_form).valid:
            out.append(-1.0)
            continue
        turns = _assistant_turns(completion)
        good = 0
        for m in turns:
            t = parse_turn(_content(m), m.get("tool_calls") or ())
            acts = bool(t.tool_calls) or t.answer is not None
            good += bool(t.analyze and t.plan and acts and not t.malformed_calls)
        out.append(good / len(turns))
    return out


def tool_efficiency_reward(
    completions: Sequence[Completion],
    target: Sequence[str | None],
    candidates: Sequence[Sequence[str]],
    budget: int = 3,
    per_call: float = 0.05,
    cap: float = 0.3,
    k: int = 10,
    environments: Sequence[Any] | None = None,
    answer_form: str = "ranking",
    **kwargs: Any,
) -> list[float | None]:
    """`-ndcg * min(cap, per_call * calls_over_budget)`: zero for wrong answers and within the budget.

    See the module docstring for why the penalty is scaled by accuracy (OTC-PO).

    >>> calls = "".join('<tool_call>{"name": "t", "arguments": {}}</tool_call>' for _ in range(5))
    >>> answer = "<answer>[1] > [2]</answer>"
    >>> tool_efficiency_reward([calls, answer], ["a", "a"], [["a", "b"]] * 2, budget=3)
    [0.0, 0.0]
    >>> convo = [{"role": "assistant", "content": calls}, {"role": "tool", "content": "x"},
    ...          {"role": "assistant", "content": answer}]
    >>> [round(r, 3) for r in tool_efficiency_reward([convo], ["a"], [["a", "b"]], budget=3)]
    [-0.1]
    """
    out: list[float | None] = []
    envs = _envs(environments, len(completions))
    for c, t, cands, e in zip(completions, target, candidates, envs, strict=True):
        if t is None:
            out.append(None)
            continue
        excess = max(0, count_tool_calls(c) - budget)
        penalty = (
            ndcg_at_k(_rank(c, t, cands, e, answer_form), k) * min(cap, per_call * excess) if excess else 0.0
        )
        out.append(-penalty if penalty else 0.0)
    return out


def reward_funcs(config: RewardConfig) -> tuple[list[Callable[..., list[float | None]]], list[float]]:
    """The three rewards bound to `config`, and their weights, for `GRPOTrainer(reward_funcs=...)`.

    >>> funcs, weights = reward_funcs(RewardConfig())
    >>> [f.__name__ for f in funcs], weights
    (['ndcg_reward', 'format_reward', 'tool_efficiency_reward'], [1.0, 0.2, 1.0])
    """

    def ndcg(completions: Sequence[Completion], **kwargs: Any) -> list[float | None]:
        return ndcg_reward(completions, k=config.k, answer_form=config.answer_form, **kwargs)

    def fmt(completions: Sequence[Completion], **kwargs: Any) -> list[float]:
        return format_reward(completions, answer_form=config.answer_form, **kwargs)

    def tool(completions: Sequence[Completion], **kwargs: Any) -> list[float | None]:
        return tool_efficiency_reward(
            completions,
            budget=config.tool_budget,
            per_call=config.tool_penalty_per_call,
            cap=config.tool_penalty_cap,
            k=config.k,
            answer_form=config.answer_form,
            **kwargs,
        )

    for fn, base in ((ndcg, ndcg_reward), (fmt, format_reward), (tool, tool_efficiency_reward)):
        fn.__name__ = fn.__qualname__ = base.__name__
        fn.__doc__ = base.__doc__
    return [ndcg, fmt, tool], [config.ndcg_weight, config.format_weight, config.tool_weight]


def total_reward(
    completion: Completion, target: str, candidates: Sequence[str], config: RewardConfig
) -> float:
    """The weighted sum GRPO optimises, for one completion (analysis and tests).

    >>> total_reward("<analyze>a</analyze><plan>p</plan><answer>[1] > [2]</answer>", "a", ["a", "b"], RewardConfig())
    1.2
    """
    funcs, weights = reward_funcs(config)
    values = [f([completion], target=[target], candidates=[candidates])[0] for f in funcs]
    return sum(w * (v or 0.0) for w, v in zip(weights, values, strict=True))
