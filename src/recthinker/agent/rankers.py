"""The agent as a `Ranker`: the agent-level adapters that `recthinker.rankers` builds, and their settings.

    ranker = AgentRanker("agent", load_chat_model(None), load_resources(bench, "dense/test"), bench.items)
    ranker.rank(episode)

`default_config` applies the per-kind agent settings (a trained model's `agent.json` included), in one
place. `agent` investigates with the tools; `zero-shot` ranks from history + candidates (LLMRank-style);
`fixed-workflow` calls every tool once in a fixed order and then ranks. Each thread gets its own agent
and `RecEnv` over the shared read-only `Resources`, so `evaluate --workers N` can drive a server
concurrently. Next to NDCG each episode records `tau_vs_signal`: Kendall's tau between the model's
ranking and the candidates' order under the strongest single tool signal (ALS scores), so a model that
ignores its evidence cannot hide behind a valid format.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from recthinker.agent.claims import claim_counts
from recthinker.agent.loop import AgentConfig, RecThinker, answer_to_ranking
from recthinker.errors import ConfigError
from recthinker.llm import ChatModel
from recthinker.metrics import kendall_tau
from recthinker.tools.env import TOOLS, RecEnv, ToolHost
from recthinker.types import Episode, Ranking

T = TypeVar("T")

SIGNAL = "cf_als"  # the strongest single tool signal on ML-1M (see benchmarks/bench_tools.py)


def tau_vs_signal(env, episode: Episode, ranking) -> float:
    """Kendall tau between `ranking` and the candidates' order under the strongest single tool signal."""
    env.reset_episode(episode)
    signal = env.signals((SIGNAL.removeprefix("cf_"),))[SIGNAL]
    order = [episode.candidates[i] for i in np.argsort(-signal, kind="stable")]
    return kendall_tau(list(ranking), order)


def fixed_workflow_calls(episode: Episode, items) -> list[tuple[str, dict[str, Any]]]:
    """Every tool once, in declaration order, with arguments chosen without a model: each tool's example
    call, except that item_info asks about every candidate and search_items for the user's top categories."""
    cats = Counter(c for i in episode.history if i in items.index for c in items.loc[i, "categories"])
    query = " ".join(c for c, _ in cats.most_common(3)) or "popular"
    this_episode = {
        "item_info": {"item_ids": [f"[{k}]" for k in range(1, len(episode.candidates) + 1)]},
        "search_items": {"query": query},
    }
    return [(name, {**spec.example, **this_episode.get(name, {})}) for name, spec in TOOLS.items()]


class PerThread(Generic[T]):
    """`make()`, once per thread, on first use.

    Agents and tool hosts hold per-episode state, so each thread of `evaluate --workers N` or of a rollout
    gets its own; the chat model and the `Resources` they are built over are shared and read-only.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._local = threading.local()

    def get(self) -> T:
        if not hasattr(self._local, "value"):
            self._local.value = self._make()
        return self._local.value


PASSIVE_KEEPS = ("n_history",)  # what the passive baselines take from a trained model's settings


def default_config(
    kind: str,
    model: ChatModel | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    passive_keeps: Sequence[str] = PASSIVE_KEEPS,
    constrained: bool | None = None,
) -> AgentConfig:
    """The `AgentConfig` of ranker `kind`: the one place where per-kind agent settings are applied.

    `settings` are the agent settings to run with; by default the model's own (`model.agent_settings`, the
    `agent.json` of a model this project trained: answer form, turn and tool budgets, history shown); the
    training pipeline passes its preset's. The agent (`agent`, `agent-evidence`: answer form (c)) and the
    teacher (a scripted policy in the agent's loop) take all of them. The passive baselines (`zero-shot`,
    `fixed-workflow`) get one answer turn plus one correction (LLMRank asks once), always answer with a
    permutation, and take only the settings named in `passive_keeps` (a trained model's history length;
    the pipeline's references keep its budgets too). Grammar-constrained turns (`constrained`) default to
    in-process llama.cpp (small models need them); free text elsewhere.

    >>> c = default_config("fixed-workflow", settings={"n_history": 6, "max_tokens": 224})
    >>> c.mode, c.max_steps, c.n_history, c.max_tokens
    ('fixed-workflow', 2, 6, 512)
    """
    from recthinker.llm import LlamaCpp  # recthinker.llm loads its back ends on first use

    constrained = isinstance(model, LlamaCpp) if constrained is None else constrained
    trained = dict((getattr(model, "agent_settings", None) or {}) if settings is None else settings)
    if kind in ("agent", "agent-evidence", "teacher"):
        config = {**trained, "mode": "agent", "constrained": constrained}
        if kind == "agent-evidence":  # answer form (c): promote/demote over the gathered evidence
            config["answer_form"] = "evidence"
        return AgentConfig(**config)
    if kind not in ("zero-shot", "fixed-workflow"):
        raise ConfigError(f"ranker kind {kind!r} runs no agent loop")
    kept = {k: trained[k] for k in passive_keeps if k in trained}
    return AgentConfig(**{**kept, "mode": kind, "constrained": constrained, "max_steps": 2})


class AgentRanker:
    """`Ranker` around `RecThinker`: one agent + environment per thread, shared model and resources."""

    def __init__(
        self, kind: str, model: ChatModel, resources, items, config: AgentConfig | None = None
    ) -> None:
        self.name = kind
        self.kind = kind
        self.model = model
        self.resources = resources
        self.items = items
        self.config = config or default_config(kind, model)
        self._agents = PerThread(self._make_agent)

    def _make_agent(self) -> tuple[RecThinker, ToolHost]:
        env = ToolHost(RecEnv(self.resources))
        agent = RecThinker(
            self.model,  # read here, not in __init__: a caller may swap in a shared model before the first rank
            None if self.config.mode == "zero-shot" else env,
            items=self.items,
            config=self.config,
            name=self.name,
            fixed_workflow=[("user_profile", {})] if self.kind == "fixed-workflow" else (),
        )
        return agent, env

    def agent(self) -> RecThinker:
        """This thread's `RecThinker` (a rollout's policy: `train.rollout` samples from it)."""
        return self._agents.get()[0]

    def rank(self, episode: Episode) -> Ranking:
        agent, env = self._agents.get()
        if self.kind == "fixed-workflow":
            agent.fixed_workflow = fixed_workflow_calls(episode, self.items)
        traj = agent.run(episode)
        info: dict[str, Any] = {**traj.summary(), **claim_counts(traj), "trajectory": traj.to_dict()}
        if traj.valid:
            info["tau_vs_signal"] = tau_vs_signal(env, episode, traj.ranking)
            if self.config.answer_form == "evidence":
                info["unmoved_ranking"] = unmoved_ranking(env, traj)
        return Ranking(items=tuple(traj.ranking), valid=traj.valid, note=traj.note, info=info)


def unmoved_ranking(env: ToolHost, traj) -> list[str]:
    """The order an evidence answer (form (c)) would have given without the model's promote/demote: the
    environment's base order of the same evidence. The harness scores it beside the answer, so a summary
    says how often the model's own judgement moved the order and what those moves were worth."""
    calls = [(c.name, c.arguments) for c in traj.tool_calls if c.ok]
    base = answer_to_ranking("promote; demote", traj.candidates, "evidence", evidence_calls=calls, env=env)
    if not base.valid:  # a valid evidence answer had evidence, so its base order exists: our bug
        raise RuntimeError(f"no base order for a valid evidence answer: {base.problems}")
    return list(base.items)


class SignalTau:
    """Wraps a ranker to add `tau_vs_signal` (Kendall tau vs the ALS order) to each valid ranking's info."""

    def __init__(self, ranker, resources) -> None:
        self.inner, self.name = ranker, ranker.name
        self._envs = PerThread(lambda: ToolHost(RecEnv(resources)))

    def rank(self, episode: Episode) -> Ranking:
        ranking = self.inner.rank(episode)
        if not ranking.valid:
            return ranking
        info = {**ranking.info, "tau_vs_signal": tau_vs_signal(self._envs.get(), episode, ranking.items)}
        return Ranking(items=ranking.items, valid=True, note=ranking.note, info=info)
