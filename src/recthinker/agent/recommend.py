"""The result of one `recommend` run -- the ranking, the evidence behind it and the trajectory -- as JSON.

    traj = agent.run(episode)                                      # or iterate agent.stream(episode)
    result = recommendation(traj, ToolHost(RecEnv(resources)), episode, proposed)

`recthinker recommend --json` prints it, the live terminal view (`recthinker.cli_view`) shows it, and the
service (`recthinker.serve`) sends it, with item titles added, as its `done` event. The evidence behind the
top items is each tool signal's value for them (ALS rank, relation strength, similar users, genre match,
popularity).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recthinker.agent.trajectory import Trajectory
from recthinker.types import Episode

SIGNALS = ("cf_als", "item_relations", "similar_users", "genre_match", "popularity")


def evidence(env, episode: Episode, ranking: Sequence[str], top: int = 3) -> dict[str, dict[str, float]]:
    """Tool signals of the top-ranked items: what the ranking can be checked against."""
    env.reset_episode(episode)
    sig = env.signals(("als",))
    pos = {c: i for i, c in enumerate(episode.candidates)}
    als_rank = {episode.candidates[j]: r + 1 for r, j in enumerate(np.argsort(-sig["cf_als"], kind="stable"))}
    out = {}
    for item in ranking[:top]:
        row: dict[str, float] = {"als_rank": als_rank[item]}
        for name in SIGNALS[1:]:
            row[name] = round(float(sig[name][pos[item]]), 4)
        out[item] = row
    return out


def to_json(traj: Trajectory, episode: Episode, proposed: bool, ev: dict) -> dict[str, Any]:
    return {
        "user_id": episode.user_id,
        "ranking": traj.ranking,
        "candidates": list(episode.candidates),
        "candidates_proposed": proposed,
        "valid": traj.valid,
        "note": traj.note,
        "tool_calls": traj.n_tool_calls,
        "evidence": ev,
        "trajectory": [s for s in traj.to_dict()["steps"]],
        "latency_s": round(traj.latency_s, 3),
        "model": traj.model,
    }


def recommendation(traj: Trajectory, env, episode: Episode, proposed: bool) -> dict[str, Any]:
    """The JSON of a finished run; `env` is a tool environment of its own, reset here to `episode` to read
    the evidence of a valid ranking's top items (an invalid one has none)."""
    ev = evidence(env, episode, traj.ranking) if traj.valid else {}
    return to_json(traj, episode, proposed, ev)
