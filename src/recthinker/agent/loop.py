"""The RecThinker agent loop: analyze -> plan -> act (call tools) -> ... -> answer (a full ranking).

    agent = RecThinker(model, env, items=catalog)          # model: any ChatModel, env: RecEnv
    trajectory = agent.run(episode)                        # every turn, tool call and the ranking
    for item in agent.stream(episode):                     # the same run, one finished turn at a time:
        ...                                                # each `Step`, then the `Trajectory`

Each assistant turn writes `<analyze>` and `<plan>` and then either tool calls or `<answer>`. Model
mistakes -- malformed tool JSON, unknown tools, bad arguments, invalid or incomplete answers -- become
observations the model can react to; when no valid answer arrives by `max_steps` the ranking is invalid
(and scores 0). Our own bugs raise. The same class runs the two passive LLM baselines: `zero-shot`
(history + candidates, no tools) and `fixed-workflow` (every tool called once in a fixed order, then rank).
The answer forms live here too, beside the prompt that asks for them: `answer_to_ranking` is the one rule
that turns an answer into a ranking, for evaluation and for the GRPO reward (`train.rewards`).
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from recthinker.agent.evidence import evidence_ranking, evidence_signals
from recthinker.agent.grammar import turn_grammar
from recthinker.agent.parse import ParsedRanking, parse_ranking, parse_turn
from recthinker.agent.prompting import (
    messages,
    render_for_prompt_mode,
    task_prompt,
    template,
    tools_block,
)
from recthinker.agent.trajectory import Step, ToolCallRecord, Trajectory
from recthinker.errors import ConfigError
from recthinker.llm import ChatModel, ContextOverflowError, LLMServerError
from recthinker.types import Episode, Ranking

MODES = ("agent", "zero-shot", "fixed-workflow")
TOOL_MODES = ("prompt", "native")


class Observation(Protocol):
    text: str
    ok: bool
    error: str


class ToolEnv(Protocol):
    """What the loop needs from the environment (`recthinker.tools.env.ToolHost` around a `RecEnv`)."""

    def reset_episode(self, episode: Episode) -> None: ...

    def call(self, name: str, arguments: dict[str, Any]) -> Observation: ...

    def tool_schemas(self) -> list[dict[str, Any]]: ...

    def signals(self, models: tuple[str, ...] = ()) -> dict[str, Any]: ...  # for the evidence answer form


@dataclass
class AgentConfig:
    """Settings of one agent (or LLM baseline) run."""

    mode: str = "agent"  # agent | zero-shot | fixed-workflow
    max_steps: int = 6  # assistant turns per episode, answer included
    max_tool_calls: int = 6  # tool-call budget per episode; calls beyond it get an error observation
    tool_mode: str = (
        "prompt"  # prompt: schemas in the system prompt, <tool_call> text; native: server `tools`
    )
    n_history: int = 10  # history items shown in the task prompt (tools can fetch more)
    temperature: float = 0.0  # 0 = greedy
    max_tokens: int = 512  # per assistant turn (covers the constrained grammar's longest turn, ~470 tokens)
    seed: int = 0  # sampling seed passed to the back end
    constrained: bool = False  # GBNF-constrained turns (llama.cpp back ends): well-formed tags and calls
    answer_form: str = "ranking"  # ranking: a full permutation; evidence: promote/demote over the evidence

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.tool_mode not in TOOL_MODES:
            raise ConfigError(f"tool_mode must be one of {TOOL_MODES}, got {self.tool_mode!r}")
        if self.max_steps < 1 or self.max_tool_calls < 0 or self.max_tokens < 8:
            raise ConfigError(f"max_steps >= 1, max_tool_calls >= 0 and max_tokens >= 8 required: {self}")


ANSWER_FORMS = {  # answer form -> (how to answer, the rule about it) in the system prompt
    form: (text["how"], text["rule"]) for form, text in messages()["answer_forms"].items()
}


def answer_to_ranking(
    answer: str | None,
    candidates: Sequence[str],
    answer_form: str = "ranking",
    *,
    evidence_calls: Sequence[tuple[str, Mapping[str, Any] | str]] = (),
    env: ToolEnv | None = None,
) -> ParsedRanking:
    """The ranking an `<answer>` stands for: the one rule the loop (so evaluation) and the GRPO reward share.

    - `ranking`: candidate labels or ids, best first (`parse.parse_ranking`).
    - `evidence`: promote/demote over the base order of the evidence (`evidence.evidence_ranking`): the
      signals revealed by `evidence_calls`, the successful `(tool, arguments)` calls made *before* this
      answer, read from the episode's `env` (`ToolHost.signals`). Without `env` it is invalid.

    Never raises on model text: an unusable answer is an invalid ranking (it scores 0).

    >>> answer_to_ranking("[2] > [1]", ["a", "b"]).items
    ('b', 'a')
    >>> import numpy as np
    >>> class Env:  # the episode's environment; only its `signals` are read
    ...     def signals(self, models=()):
    ...         return {"item_relations": np.array([1.0, 3.0, 2.0])}
    >>> calls = [("item_relations", {})]  # relations order b, c, a; [1] = a promoted
    >>> answer_to_ranking("promote [1]; demote", ["a", "b", "c"], "evidence", evidence_calls=calls, env=Env()).items
    ('a', 'b', 'c')
    """
    if answer_form == "ranking":
        return parse_ranking(answer, candidates)
    if answer_form != "evidence":
        raise ValueError(f"answer_form must be one of {tuple(ANSWER_FORMS)}, got {answer_form!r}")
    if env is None:
        return ParsedRanking(items=(), problems=["an evidence answer needs the episode's environment"])
    keys = evidence_signals(evidence_calls)
    models = tuple(k.removeprefix("cf_") for k in keys if k.startswith("cf_"))
    order = getattr(env, "evidence_order", None)  # the learned fusion, when the resources carry one
    return evidence_ranking(answer, candidates, env.signals(models) if keys else {}, keys, order)


INSTRUCTIONS = messages()["instructions"]  # the task message's last line, per mode
TURN = messages()["turn"]  # what the loop tells the model between turns


def system_prompt(cfg: AgentConfig, n_candidates: int, tools: list[dict[str, Any]] | None = None) -> str:
    """The system message: the protocol, the answer form and -- in prompt mode, given `tools` -- the tools block.

    Without `tools` (native mode, GRPO prompts) the chat template adds the tools block itself.
    """
    if cfg.mode != "agent":
        return template("zero_shot").format(n_candidates=n_candidates).strip()
    how, rule = ANSWER_FORMS[cfg.answer_form]
    text = (
        template("system")
        .format(
            n_candidates=n_candidates,
            max_tool_calls=cfg.max_tool_calls,
            answer_format=how.format(n=n_candidates),
            answer_rule=rule,
        )
        .strip()
    )
    if tools and cfg.tool_mode == "prompt":
        text += "\n" + tools_block(tools).rstrip("\n")  # exactly what prompts/chat_template.jinja writes
    return text


class RecThinker:
    """An LLM that investigates with tools before it ranks. Implements `Ranker`."""

    def __init__(
        self,
        model: ChatModel,
        env: ToolEnv | None,
        *,
        items: pd.DataFrame | None = None,
        config: AgentConfig | None = None,
        name: str | None = None,
        fixed_workflow: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> None:
        self.model = model
        self.env = env
        self.items = items
        self.config = config or AgentConfig()
        self.name = name or self.config.mode
        self.fixed_workflow = list(fixed_workflow)  # (tool, arguments) for the fixed-workflow baseline
        if self.config.mode != "zero-shot" and env is None:
            raise ConfigError(f"mode {self.config.mode!r} needs a tool environment")
        if self.config.answer_form not in ANSWER_FORMS:
            raise ConfigError(
                f"answer_form must be one of {tuple(ANSWER_FORMS)}, got {self.config.answer_form!r}"
            )
        if self.config.answer_form == "evidence" and self.config.mode != "agent":
            raise ConfigError(
                "the evidence answer form needs the agent mode (it builds on the agent's tool calls)"
            )
        if self.config.mode == "fixed-workflow" and not self.fixed_workflow:
            raise ConfigError("fixed-workflow mode needs the list of (tool, arguments) to call")

    # -- Ranker protocol -------------------------------------------------------------------------
    def rank(self, episode: Episode) -> Ranking:
        traj = self.run(episode)
        info = {**traj.summary(), "trajectory": traj.to_dict()}
        return Ranking(items=tuple(traj.ranking), valid=traj.valid, note=traj.note, info=info)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, episode: Episode) -> Trajectory:
        """Run the whole episode: `stream` drained, its last item."""
        *_, traj = self.stream(episode)
        return traj

    def stream(self, episode: Episode) -> Iterator[Step | Trajectory]:
        """Run the episode one turn at a time: each `Step` as soon as it is finished, then the `Trajectory`.

        A turn is finished when its tool calls have run and the next model call has not started, so a
        consumer that stops iterating (closes the generator) stops the run between turns (the service does
        so when its client leaves or time runs out). The steps are the trajectory's own, yielded once each
        in order: the fixed-workflow calls (index -1), the assistant turns, the answer turn last; when the
        answer turn is yielded the trajectory's `ranking` and `valid` are already set. The last item is
        always the `Trajectory` (the same object `run` returns), with its latency and note filled in.
        """
        cfg = self.config
        start = time.perf_counter()
        traj = Trajectory(
            episode_id=episode.episode_id,
            user_id=episode.user_id,
            candidates=list(episode.candidates),
            target=episode.target or None,
            kind=cfg.mode,
            model=getattr(self.model, "name", type(self.model).__name__),
        )
        tools: list[dict[str, Any]] = []
        if self.env is not None:
            self.env.reset_episode(episode)
            if cfg.mode == "agent":
                tools = self.env.tool_schemas()
        traj.tools = tools
        traj.messages = [
            {"role": "system", "content": self._system_prompt(len(episode.candidates), tools)},
            {
                "role": "user",
                "content": task_prompt(
                    episode, self.items, n_history=cfg.n_history, instruction=INSTRUCTIONS[cfg.mode]
                ),
            },
        ]
        if cfg.mode == "fixed-workflow":
            yield self._run_fixed_workflow(traj)
        budget = cfg.max_tool_calls if cfg.mode == "agent" else 0
        for index in range(cfg.max_steps):
            if index == cfg.max_steps - 1 and index > 0:
                traj.messages.append({"role": "user", "content": TURN["last_turn"]})
            last = index == cfg.max_steps - 1 or budget <= 0
            try:
                step = self._turn(traj, index, tools, allow_tools=not last)
            except ContextOverflowError:  # the conversation outgrew the model: no answer, scores 0
                traj.note = "context window exceeded before an answer"
                break
            traj.steps.append(step)
            if step.answer is not None and not step.problems:  # a valid answer (`traj.valid` is set)
                yield step
                break
            if step.tool_calls:
                budget = self._act(traj, step, budget)
            if step.problems:
                traj.messages.append(
                    {
                        "role": "user",
                        "content": TURN["format_problem"].format(problems="; ".join(step.problems)),
                    }
                )
            yield step
        else:
            traj.note = f"no valid answer within {cfg.max_steps} turns"
        traj.latency_s = time.perf_counter() - start
        yield traj

    def _system_prompt(self, n_candidates: int, tools: list[dict[str, Any]]) -> str:
        return system_prompt(self.config, n_candidates, tools)

    def _turn(self, traj: Trajectory, index: int, tools: list[dict[str, Any]], *, allow_tools: bool) -> Step:
        cfg = self.config
        native = cfg.mode == "agent" and cfg.tool_mode == "native"
        messages = traj.messages if native else render_for_prompt_mode(traj.messages)
        options: dict[str, Any] = {}
        if cfg.constrained:
            names = [t["function"]["name"] for t in tools]
            options["grammar"] = turn_grammar(
                names,
                len(traj.candidates),
                allow_tools=allow_tools and cfg.mode == "agent",
                evidence_answer=cfg.answer_form == "evidence",
            )
        result = self.model.generate(
            messages,
            tools=tools if native else None,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            seed=cfg.seed + index,
            **options,
        )
        text = result.message.get("content") or ""
        turn = parse_turn(text, result.message.get("tool_calls") or ())
        step = Step(
            index=index,
            content=text,
            analyze=turn.analyze,
            plan=turn.plan,
            answer=turn.answer,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=result.latency_s,
        )
        assistant: dict[str, Any] = {"role": "assistant", "content": turn.content}
        if turn.answer is not None:
            parsed = answer_to_ranking(
                turn.answer,
                traj.candidates,
                cfg.answer_form,
                evidence_calls=[(c.name, c.arguments) for c in traj.tool_calls if c.ok],
                env=self.env,
            )
            step.problems = list(parsed.problems)
            if parsed.valid:
                traj.ranking, traj.valid = list(parsed.items), True
                if turn.tool_calls:
                    traj.note = "answer given together with tool calls: tool calls ignored"
                traj.messages.append(assistant)
                return step
            step.answer = turn.answer
            if turn.tool_calls:  # an invalid answer next to tool calls: run the tools, drop the answer
                step.answer, step.problems = None, []
        if turn.tool_calls and cfg.mode == "agent":
            assistant["tool_calls"] = turn.tool_calls
            step.tool_calls = [
                ToolCallRecord(
                    name=c["function"]["name"], arguments=c["function"]["arguments"], observation="", ok=False
                )
                for c in turn.tool_calls
            ]
        elif turn.tool_calls:
            step.problems.append(TURN["no_tools"])
        if turn.malformed_calls:
            step.problems.append(TURN["malformed_calls"].format(n=turn.malformed_calls))
        if turn.answer is None and not turn.tool_calls and not turn.malformed_calls:
            if result.finish_reason == "length":
                step.problems.append(TURN["cut_off"].format(max_tokens=cfg.max_tokens))
            step.problems.append(TURN["write_either"].format())
        traj.messages.append(assistant)
        return step

    def _act(self, traj: Trajectory, step: Step, budget: int) -> int:
        """Run the step's tool calls against the environment; return the budget left."""
        calls = traj.messages[-1]["tool_calls"]
        for record, call in zip(step.tool_calls, calls, strict=True):
            t0 = time.perf_counter()
            raw = call["function"]["arguments"]
            try:
                args = json.loads(raw) if isinstance(raw, str) else dict(raw)
            except json.JSONDecodeError:
                args = None
            if budget <= 0:
                record.observation, record.error = (
                    f"Tool budget of {self.config.max_tool_calls} calls is used up: give the final <answer> now.",
                    "budget",
                )
            elif not isinstance(args, dict):
                record.observation, record.error = (
                    f"Arguments of {record.name} are not a JSON object: {raw!r}",
                    "bad_json",
                )
            else:
                record.arguments = args
                obs = self.env.call(record.name, args)
                record.observation, record.ok, record.error = obs.text, obs.ok, obs.error
                budget -= 1
            record.latency_s = time.perf_counter() - t0
            traj.messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call.get("id", ""),
                    "name": record.name,
                    "content": record.observation,
                }
            )
        return budget

    def _run_fixed_workflow(self, traj: Trajectory) -> Step:
        """Call every tool once in a fixed order and put the results into the conversation (step -1)."""
        step = Step(index=-1, content="(fixed workflow: every tool once, in order)")
        calls = []
        for k, (name, args) in enumerate(self.fixed_workflow):
            t0 = time.perf_counter()
            obs = self.env.call(name, dict(args))
            step.tool_calls.append(
                ToolCallRecord(
                    name=name,
                    arguments=dict(args),
                    observation=obs.text,
                    ok=obs.ok,
                    error=obs.error,
                    latency_s=time.perf_counter() - t0,
                )
            )
            calls.append(
                {
                    "id": f"fixed_{k}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
            )
        traj.messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        for call, record in zip(calls, step.tool_calls, strict=True):
            traj.messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "name": record.name,
                    "content": record.observation,
                }
            )
        traj.steps.append(step)
        return step


def run_safely(agent: RecThinker, episode: Episode) -> Trajectory:
    """`agent.run`, with failures recorded in the trajectory instead of raised (batch rollouts).

    A failure of the model back end (`LLMServerError`: server unreachable, HTTP errors) is marked with
    `meta["backend_error"] = True` and note "backend error", so callers can tell an episode that never
    reached the model from our own bug (note "error") without reading the message.
    """
    try:
        return agent.run(episode)
    except Exception as exc:  # noqa: BLE001 -- episode boundary of a batch run: record, continue, fail at the end
        backend = isinstance(exc, LLMServerError) and not isinstance(exc, ContextOverflowError)
        return Trajectory(
            episode_id=episode.episode_id,
            user_id=episode.user_id,
            candidates=list(episode.candidates),
            target=episode.target,
            kind=agent.config.mode,
            error=traceback.format_exc(),
            note="backend error" if backend else "error",
            meta={"backend_error": True} if backend else {},
        )
