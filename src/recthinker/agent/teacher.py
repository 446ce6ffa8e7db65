"""The bootstrap teacher's policy: a *scripted policy over the real tools*, not an LLM.

It writes the first Analyze-Plan-Act trajectories for SFT, and it is a reference ranker (`--ranker teacher`).
It is a `ChatModel` ("bootstrap-teacher") that runs inside the real `RecThinker` loop, so its trajectories
have exactly the agent's format: the same system and task prompts, prompt-mode tool calls, observations from
`RecEnv`, steps and SFT rows. Each `generate` call looks at the conversation so far (which tools were
called) and at the episode state in its `RecEnv` (history, candidates, and the numbers behind the tool
outputs), and writes one turn:

1. Turn 1 uses only what the task prompt shows: the history length and the genre concentration of the
   shown history, and how many candidates share a genre with it. A focused history (>= 5 items shown,
   top genre on >= 40% of them) calls `cf_scores` + `item_relations`; a thin or scattered one calls
   `cf_scores` + `similar_users`. With a budget of <= 2 tool calls (the CPU presets) it calls `cf_scores`
   alone and keeps the second call for turn 2.
2. Turn 2 judges sufficiency from the observations: with the evidence so far, the fitted combination's
   leader must be in the top 2 of every collaborative signal seen and lead the runner-up by
   >= `MARGIN` standard deviations of the combined score. If so, it answers; otherwise it calls the
   remaining collaborative tool (item_relations first for a focused history, similar_users first
   otherwise), plus `item_info` on the candidates no collaborative signal has seen (when there are >= 3
   of them), within the budget, and answers in turn 3.
3. The answer ranks all candidates by a weighted sum of per-episode z-scored signals (`ToolHost.signals`):
   genre_match (visible in the prompt) and the signal of each tool it called (cf_scores -> cf_als,
   item_relations -> item_relations, similar_users -> similar_users, item_info -> popularity, log1p).
   In answer form (c) (`agent.evidence`) it promotes its leader and demotes its last candidate where
   the environment's equal-weight order of the same evidence has them elsewhere.

The weights of every evidence set (`TeacherWeights`) are the policy's only parameters; they are fitted on
training episodes in `train/teacher.py` (`fit_teacher`), which is training's business: this module only
reads them.

Analysis and plan text are terse and factual -- every token the model learns to write is decoded at
~40 tokens/s on a laptop CPU -- and quote the numbers the observations show by candidate label (ALS scores
min-max normalised as `cf_scores` prints them, relation sums, similar-user counts).

    ranker = TeacherRanker(load_resources(bench, "dense/test"), bench.items, fit_teacher(bench))
    ranking = ranker.rank(episode)           # ranking.info["trajectory"] is a full agent trajectory
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recthinker.agent.claims import claim_counts
from recthinker.agent.evidence import environment_order, standardize
from recthinker.agent.loop import AgentConfig, RecThinker
from recthinker.agent.parse import parse_turn
from recthinker.agent.rankers import PerThread
from recthinker.llm import ChatResult
from recthinker.llm.base import render_tool_call
from recthinker.tools import collab
from recthinker.tools.env import TOOLS, RecEnv, ToolHost
from recthinker.types import Episode, Ranking

NAME = "bootstrap-teacher"
SIGNALS = ("genre_match", "cf_als", "item_relations", "similar_users", "popularity")
# tool -> the signal it adds to the evidence: each tool's declared signal (`@tool(signal=...)`), cf_scores at its
# default model (the teacher calls ALS only). Deliberately without genre_match, which `agent.evidence` does
# count for user_profile / user_history: here it is the base of every evidence set (the prompt shows the
# history), so no tool adds it.
TOOL_SIGNAL = {
    name: spec.signal_for({})
    for name, spec in TOOLS.items()
    if spec.signal and spec.signal_for({}) != "genre_match"
}
COLLAB = ("cf_als", "item_relations", "similar_users")
WORDS = {"cf_als": "ALS", "item_relations": "item relations", "similar_users": "similar users"}  # in plans
MARGIN = 0.75  # lead of the combined-score leader over the runner-up, in std units, to stop early
FOCUS_SHARE = 0.4  # top-genre share of the shown history that makes it "focused"
MIN_SHOWN = 5  # fewer shown history items than this is a thin history
MIN_UNSEEN_FOR_INFO = 3  # call item_info when at least this many candidates have no collaborative evidence

# ---- signals and weights ----------------------------------------------------------------------------------


def evidence_key(signals: Sequence[str]) -> str:
    """Canonical key of an evidence set, e.g. "cf_als+genre_match"."""
    return "+".join(sorted(set(signals)))


@dataclass
class TeacherWeights:
    """Fitted weights per evidence set (key: `evidence_key`), with the NDCG@10 each reached when fitted."""

    weights: dict[str, dict[str, float]]
    fit_ndcg: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, z: Mapping[str, np.ndarray], signals: Sequence[str]) -> np.ndarray:
        w = self.weights[evidence_key(signals)]
        return sum((w.get(s, 0.0) * z[s] for s in w), np.zeros(len(next(iter(z.values())))))

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "fit_ndcg": self.fit_ndcg, "meta": self.meta}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> TeacherWeights:
        return cls(
            weights=dict(row["weights"]),
            fit_ndcg=dict(row.get("fit_ndcg", {})),
            meta=dict(row.get("meta", {})),
        )


# ---- the scripted policy --------------------------------------------------------------------------------

_SHOWN_RE = re.compile(r"\((?:oldest to newest, )?(\d+) of (\d+) items\)")


def _called_tools(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for m in messages:
        if m.get("role") != "assistant":
            continue
        for c in m.get("tool_calls") or ():
            names.append(c["function"]["name"])
        names += [c["function"]["name"] for c in parse_turn(m.get("content") or "").tool_calls]
    return names


@dataclass
class _State:
    """What the teacher knows about the current episode (recomputed when the episode changes)."""

    key: tuple
    z: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    sim_counts: np.ndarray
    n_sim: int


class BootstrapTeacher:
    """A scripted `ChatModel` whose turns follow the policy in the module docstring."""

    name = NAME

    def __init__(
        self, env, weights: TeacherWeights, *, answer_form: str = "ranking", max_tool_calls: int = 4
    ) -> None:
        self.env = env
        self.weights = weights
        self.answer_form = answer_form
        self.max_tool_calls = max_tool_calls
        self._state: _State | None = None
        self._focused = True  # the last first turn's judgement (focused history -> item_relations next)

    # -- observations ---------------------------------------------------------------------------------
    def _episode_state(self) -> _State:
        env = self.env
        key = (env.episode_id, env.user_id, env.candidates)
        if self._state is None or self._state.key != key:
            raw = env.signals(("als",))
            nbrs = collab.similar_users(env.resources.index, env.user_id, list(env.history), 10)
            counts = collab.neighbour_counts(env.resources.index, [r for r, _, _ in nbrs], env.candidates)
            self._state = _State(
                key=key, z=standardize(raw), raw=raw, sim_counts=np.asarray(counts), n_sim=len(nbrs)
            )
        return self._state

    # -- ChatModel ------------------------------------------------------------------------------------
    def generate(self, messages: list[dict[str, Any]], **_: Any) -> ChatResult:
        text = self.turn(messages)
        return ChatResult(
            message={"role": "assistant", "content": text},
            prompt_tokens=0,
            completion_tokens=0,
            latency_s=0.0,
            finish_reason="stop",
        )

    def turn(self, messages: Sequence[Mapping[str, Any]]) -> str:
        st = self._episode_state()
        called = _called_tools(messages)
        last = "last turn" in str(messages[-1].get("content", "")) if messages else False
        evidence = ["genre_match", *dict.fromkeys(TOOL_SIGNAL[c] for c in called if c in TOOL_SIGNAL)]
        if not called and not last:
            return self._first_turn(messages, st)
        room = self.max_tool_calls - len(called)
        if not last and room > 0 and len(set(called)) <= 2 and not self._sufficient(st, evidence):
            calls = self._second_calls(st, called)[:room]
            if calls:
                return self._compose(self._observed(st, evidence), self._gap_plan(st, evidence, calls), calls)
        return self._answer(st, evidence)

    def _shown_history(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[str], int]:
        task = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        m = _SHOWN_RE.search(str(task))
        n_shown, n_total = (
            (int(m.group(1)), int(m.group(2)))
            if m
            else (min(10, len(self.env.history)), len(self.env.history))
        )
        return list(self.env.history[-n_shown:]) if n_shown else [], n_total

    def _first_turn(self, messages: Sequence[Mapping[str, Any]], st: _State) -> str:
        cat = self.env.resources.catalog
        shown, n_total = self._shown_history(messages)
        genres = Counter(g for i in shown for g in cat.cats(i))
        top = genres.most_common(2)
        top_share = top[0][1] / len(shown) if shown and top else 0.0
        hist_genres = set(genres)
        match = [i for i, c in enumerate(self.env.candidates) if hist_genres & set(cat.cats(c))]
        gtext = " then ".join(f"{g} ({n}/{len(shown)})" for g, n in top) if top else "no known genres"
        size = f"{n_total} items" if len(shown) == n_total else f"{n_total} items ({len(shown)} shown)"
        analyze = (
            f"{size}, mostly {gtext}; {len(match)}/{len(self.env.candidates)} candidates share a genre. "
            "Missing: collaborative evidence."
        )
        focused = len(shown) >= MIN_SHOWN and top_share >= FOCUS_SHARE
        kind = "Focused" if focused else ("Short" if len(shown) < MIN_SHOWN else "Scattered")
        if focused:
            calls = [("cf_scores", {"model": "als"}), ("item_relations", {})]
        else:
            calls = [("cf_scores", {"model": "als"}), ("similar_users", {"k": 10})]
        self._focused = focused
        if self.max_tool_calls <= 2:  # a small budget: one signal first, a second only if it is not enough
            calls = calls[:1]
        plan = f"{kind} history: " + " and ".join(c for c, _ in calls) + "."
        return self._compose(analyze, plan, calls)

    def _combined(self, st: _State, evidence: Sequence[str]) -> tuple[np.ndarray, float]:
        """Candidate order by the fitted combination of `evidence`, and the leader's lead over the runner-up
        in standard deviations of the combined score (0 when the score is flat)."""
        score = self.weights.score(st.z, evidence)
        order = np.argsort(-score, kind="stable")
        sd = score.std()
        return order, float((score[order[0]] - score[order[1]]) / sd) if sd > 1e-12 else 0.0

    def _sufficient(self, st: _State, evidence: Sequence[str]) -> bool:
        order, lead = self._combined(st, evidence)
        agree = all(order[0] in np.argsort(-st.z[s], kind="stable")[:2] for s in evidence if s in COLLAB)
        return bool(lead >= MARGIN and agree)

    def _unseen(self, st: _State, evidence: Sequence[str]) -> list[int]:
        """Candidates that no collaborative signal seen so far gives any weight."""
        seen = np.zeros(len(self.env.candidates), dtype=bool)
        for s in evidence:
            if s == "cf_als":
                continue  # ALS scores every known item: no signal of its own on coverage
            if s in COLLAB:
                seen |= st.raw[s] > 0
        return [int(i) for i in np.flatnonzero(~seen)]

    def _second_calls(self, st: _State, called: Sequence[str]) -> list[tuple[str, dict]]:
        calls: list[tuple[str, dict]] = []
        second = (("item_relations", {}), ("similar_users", {"k": 10}))
        for tool, args in second if self._focused else second[::-1]:
            if tool not in called:
                calls.append((tool, args))
        evidence = ["genre_match", *(TOOL_SIGNAL[c] for c in called), *(TOOL_SIGNAL[c] for c, _ in calls)]
        unseen = self._unseen(st, evidence)
        if len(unseen) >= MIN_UNSEEN_FOR_INFO and "item_info" not in called:
            calls.append(("item_info", {"item_ids": [f"[{i + 1}]" for i in unseen[:10]]}))
        return calls

    def _observed(self, st: _State, evidence: Sequence[str]) -> str:
        """The evidence so far as named slots (leader, next), not lists: a small model continues a list."""
        parts = []
        if "cf_als" in evidence:
            s = st.raw["cf_als"]
            finite = np.isfinite(s)
            lo, hi = (s[finite].min(), s[finite].max()) if finite.any() else (0.0, 0.0)
            first, second = np.lexsort((np.arange(len(s)), -np.where(finite, s, -np.inf)))[:2]
            v = (s[second] - lo) / (hi - lo) if hi > lo else 1.0
            parts.append(f"ALS leader [{first + 1}] 1.00, next [{second + 1}] {v:.2f}")
        if "item_relations" in evidence:
            r = st.raw["item_relations"]
            first, second = np.argsort(-r, kind="stable")[:2]
            parts.append(
                f"relations leader [{first + 1}] {r[first]:.2f}, next [{second + 1}] {r[second]:.2f}"
            )
        if "similar_users" in evidence:
            c = st.sim_counts
            top = int(np.argmax(c))
            if st.n_sim == 0:
                parts.append("no similar users")
            elif c[top] == 0:
                parts.append(f"none of {st.n_sim} similar users chose a candidate")
            else:
                parts.append(f"similar users chose [{top + 1}] most ({c[top]} of {st.n_sim})")
        if "popularity" in evidence:
            p = st.raw["popularity"]
            order = np.argsort(-p, kind="stable")
            parts.append(
                f"most popular [{order[0] + 1}] ({int(p[order[0]])}), least [{order[-1] + 1}] ({int(p[order[-1]])})"
            )
        return ("; ".join(parts) + ".") if parts else "No tool evidence yet."

    def _gap_plan(self, st: _State, evidence: Sequence[str], calls: Sequence[tuple[str, dict]]) -> str:
        order, lead = self._combined(st, evidence)
        rivals = [
            f"{WORDS[s]} put [{int(np.argmax(st.z[s])) + 1}] first"
            for s in evidence
            if s in COLLAB and order[0] not in np.argsort(-st.z[s], kind="stable")[:2]
        ]
        if rivals:
            reason = f"Signals disagree (leader [{order[0] + 1}]; " + ", ".join(rivals) + ")"
        else:
            reason = f"Top unsettled ([{order[0] + 1}] leads by {lead:.2f} sd)"
        wanted = [c for c, _ in calls if c != "item_info"]
        text = reason + ": " + " and ".join(wanted)
        info = next((a for c, a in calls if c == "item_info"), None)
        if info:
            text += f"; item_info on {', '.join(info['item_ids'])} (no evidence)"
        return text + "."

    def _answer(self, st: _State, evidence: Sequence[str]) -> str:
        order, lead = self._combined(st, evidence)
        analyze = self._observed(st, evidence)
        opening = "Evidence suffices" if self._sufficient(st, evidence) else "Tools used up"
        plan = f"{opening}; [{order[0] + 1}] leads by {lead:.2f} sd."
        if self.answer_form == "evidence":
            answer = self._evidence_answer(st, evidence, order)
        else:
            answer = " > ".join(f"[{i + 1}]" for i in order)
        return f"<analyze>{analyze}</analyze>\n<plan>{plan}</plan>\n<answer>{answer}</answer>"

    def _evidence_answer(self, st: _State, evidence: Sequence[str], order: np.ndarray) -> str:
        """Answer form (c): promote the combined leader, demote the combined last, when the environment's
        order of the same evidence (`agent.evidence.environment_order`) does not already have them
        there. The environment then ranks the rest by that evidence.
        """
        keys = [s for s in evidence if s != "genre_match"]  # what the environment sees: the tools called
        if not keys:
            return "promote; demote"  # unreachable: the teacher always calls cf_scores first
        base = environment_order(st.raw, keys, self.env.evidence_order)
        promote = [int(order[0])] if base[0] != order[0] else []
        demote = [int(order[-1])] if base[-1] != order[-1] else []
        text = "promote " + " ".join(f"[{i + 1}]" for i in promote)
        return (text.rstrip() + "; demote " + " ".join(f"[{i + 1}]" for i in demote)).rstrip()

    @staticmethod
    def _compose(analyze: str, plan: str, calls: Sequence[tuple[str, dict]]) -> str:
        blocks = [render_tool_call(n, a) for n, a in calls]
        return "\n".join([f"<analyze>{analyze}</analyze>", f"<plan>{plan}</plan>", *blocks])


# ---- Ranker -----------------------------------------------------------------------------------------------


def teacher_agent(resources, items, weights: TeacherWeights, config: AgentConfig, name: str | None = None):
    """A `RecThinker` driven by a `BootstrapTeacher` over its own tool host on `resources`."""
    env = ToolHost(RecEnv(resources))
    teacher = BootstrapTeacher(
        env, weights, answer_form=config.answer_form, max_tool_calls=config.max_tool_calls
    )
    return RecThinker(teacher, env, items=items, config=config, name=name)


class TeacherRanker:
    """`Ranker` running the bootstrap teacher through the real agent loop (one env + teacher per thread)."""

    def __init__(self, resources, items, weights: TeacherWeights, config: AgentConfig | None = None) -> None:
        self.name = "teacher"
        self.resources = resources
        self.items = items
        self.weights = weights
        self.config = config or AgentConfig()
        self._agents = PerThread(
            lambda: teacher_agent(self.resources, self.items, self.weights, self.config, name="teacher")
        )

    def agent(self) -> RecThinker:
        """This thread's `RecThinker` driven by a `BootstrapTeacher`."""
        return self._agents.get()

    def rank(self, episode: Episode) -> Ranking:
        traj = self.agent().run(episode)
        info = {**traj.summary(), **claim_counts(traj), "trajectory": traj.to_dict()}
        return Ranking(items=tuple(traj.ranking), valid=traj.valid, note=traj.note, info=info)
