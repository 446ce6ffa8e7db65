"""LLM rankers for the evaluation harness: the agent and the two passive LLM baselines, on one back end.

    ranker = make_llm_ranker("agent", bench, "dense/test", model=None)   # bundled model
    ranker.rank(episode)

`agent` investigates with the tools; `zero-shot` ranks from history + candidates (LLMRank-style);
`fixed-workflow` calls every tool once in a fixed order and then ranks. Each thread gets its own agent
and `RecEnv` over the shared read-only `Resources`, so `evaluate --workers N` can drive a server
concurrently. Next to NDCG each episode records `tau_vs_signal`: Kendall's tau between the model's
ranking and the candidates' order under the strongest single tool signal (ALS scores), so a model that
ignores its evidence cannot hide behind a valid format.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np

from recthinker.agent.loop import AgentConfig, RecThinker
from recthinker.errors import ConfigError
from recthinker.llm import ChatModel, load_chat_model
from recthinker.metrics import kendall_tau
from recthinker.tools.env import TOOLS, RecEnv, ToolHost
from recthinker.types import Episode, Ranking

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


def default_config(kind: str, model: ChatModel) -> AgentConfig:
    """Settings per ranker kind and back end.

    Grammar-constrained turns for in-process llama.cpp (small models need them), free text elsewhere. A
    model trained by this project runs the agent with the settings it was trained with
    (`model.agent_settings`: answer form, turn and tool budgets, history shown). The passive baselines get
    one answer turn plus one correction (LLMRank asks once) and always answer with a permutation.
    """
    from recthinker.llm import LlamaCpp

    constrained = isinstance(model, LlamaCpp)
    trained = dict(getattr(model, "agent_settings", None) or {})
    if kind in ("agent", "agent-evidence"):
        settings = {**trained, "mode": "agent", "constrained": constrained}
        if kind == "agent-evidence":  # answer form (c): promote/demote over the gathered evidence
            settings["answer_form"] = "evidence"
        return AgentConfig(**settings)
    n_history = {"n_history": trained["n_history"]} if "n_history" in trained else {}
    return AgentConfig(mode=kind, constrained=constrained, max_steps=2, **n_history)


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
        self._local = threading.local()

    def _agent(self) -> tuple[RecThinker, Any]:
        if not hasattr(self._local, "agent"):
            env = ToolHost(RecEnv(self.resources))
            tools_env = None if self.config.mode == "zero-shot" else env
            self._local.env = env
            self._local.agent = RecThinker(
                self.model,
                tools_env,
                items=self.items,
                config=self.config,
                name=self.name,
                fixed_workflow=[("user_profile", {})] if self.kind == "fixed-workflow" else (),
            )
        return self._local.agent, self._local.env

    def rank(self, episode: Episode) -> Ranking:
        agent, env = self._agent()
        if self.kind == "fixed-workflow":
            agent.fixed_workflow = fixed_workflow_calls(episode, self.items)
        traj = agent.run(episode)
        info: dict[str, Any] = {**traj.summary(), "trajectory": traj.to_dict()}
        if traj.valid:
            info["tau_vs_signal"] = tau_vs_signal(env, episode, traj.ranking)
        return Ranking(items=tuple(traj.ranking), valid=traj.valid, note=traj.note, info=info)


def make_llm_ranker(
    kind: str, bench, episode_set: str, *, model: str | ChatModel | None = None, seed: int = 42
) -> AgentRanker:
    """An LLM ranker of `kind` (agent | zero-shot | fixed-workflow | ...) for episodes of `episode_set`.

    `model` is a `load_chat_model` spec or an already loaded `ChatModel` (shared between rankers).
    """
    from recthinker.tools.build import load_resources

    if kind not in (
        "agent",
        "agent-evidence",
        "zero-shot",
        "fixed-workflow",
        "pointwise",
        "pointwise-evidence",
    ):
        raise ConfigError(f"unknown LLM ranker {kind!r}")
    resources = load_resources(bench, episode_set, seed=seed)
    chat = load_chat_model(model) if model is None or isinstance(model, str) else model
    if kind.startswith("pointwise"):
        from recthinker.agent.pointwise import PointwiseRanker

        return SignalTau(
            PointwiseRanker(chat, resources, bench.items, with_evidence=kind == "pointwise-evidence"),
            resources,
        )
    return AgentRanker(kind, chat, resources, bench.items)


class SignalTau:
    """Wraps a ranker to add `tau_vs_signal` (Kendall tau vs the ALS order) to each valid ranking's info."""

    def __init__(self, ranker, resources) -> None:
        self.inner, self.name, self._resources = ranker, ranker.name, resources
        self._local = threading.local()

    def rank(self, episode: Episode) -> Ranking:
        ranking = self.inner.rank(episode)
        if not ranking.valid:
            return ranking
        if not hasattr(self._local, "env"):
            self._local.env = ToolHost(RecEnv(self._resources))
        info = {**ranking.info, "tau_vs_signal": tau_vs_signal(self._local.env, episode, ranking.items)}
        return Ranking(items=ranking.items, valid=True, note=ranking.note, info=info)
