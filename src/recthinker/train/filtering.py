"""Keep the good trajectories and write the SFT dataset; one round of self-augmentation.

`filter_trajectories` runs these stages in order and reports how many trajectories survive each:

1. `valid`: a valid ranking, no crash of our own (`error`), no format problem shown to the model, no
   tool-call error;
2. `above_threshold`: NDCG@10 of the ranking (recomputed with `recthinker.metrics`) >= `ndcg_threshold`;
3. `per_episode`: among an episode's surviving samples, the `per_episode` with the fewest tool calls
   (then higher NDCG@10, then lower sample index);
4. `deduped`: one trajectory per identical sequence of assistant turns (text + tool calls);
5. `balanced`: when both "dense"- and "sparse"-like episodes are present (`meta["subset"]`, else the
   episode id's first part), the larger group is cut (seeded) to `balance_ratio` x the smaller one.

    kept, report = filter_trajectories(read_rollout(path), ndcg_threshold=0.63)
    write_sft_dataset(kept, Path("data/sft/teacher.jsonl"))
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recthinker.agent.trajectory import Trajectory
from recthinker.train.rollout import model_policy, read_rollout, reward_fields, rollout

STAGES = ("in", "valid", "above_threshold", "per_episode", "deduped", "balanced")


def is_valid(traj: Trajectory) -> bool:
    """A usable demonstration: valid ranking, no crash, no format problem, no tool error."""
    s = traj.summary()
    return bool(traj.valid and not traj.error and s["format_problems"] == 0 and s["tool_errors"] == 0)


def subset_of(traj: Trajectory) -> str:
    """The episode's subset ("dense" / "sparse" / ...): `meta["subset"]`, else the episode id's first part."""
    return str(traj.meta.get("subset") or traj.episode_id.split("/")[0])


def _assistant_key(traj: Trajectory) -> str:
    turns = [
        [m.get("content") or "", [c["function"] for c in m.get("tool_calls") or []]]
        for m in traj.messages
        if m.get("role") == "assistant"
    ]
    return json.dumps(turns, sort_keys=True, default=str)


def filter_trajectories(
    trajs: Sequence[Trajectory],
    ndcg_threshold: float = 0.6,
    *,
    per_episode: int = 1,
    balance: bool = True,
    balance_ratio: float = 1.0,
    seed: int = 0,
) -> tuple[list[Trajectory], dict[str, Any]]:
    """Filter `trajs` into SFT demonstrations; returns (kept, report) -- see the module docstring.

    The report holds the count after each stage (`STAGES`) and the kept count per subset.
    """
    report: dict[str, Any] = {"in": len(trajs)}
    stage = [t for t in trajs if is_valid(t)]
    report["valid"] = len(stage)
    scored = [(t, reward_fields(t)["ndcg@10"]) for t in stage]
    scored = [(t, n) for t, n in scored if n >= ndcg_threshold]
    report["above_threshold"] = len(scored)
    groups: dict[str, list[tuple[Trajectory, float]]] = defaultdict(list)
    for t, n in scored:
        groups[t.episode_id].append((t, n))
    chosen: list[Trajectory] = []
    for eid in groups:  # insertion order: first appearance in the input
        ranked = sorted(
            groups[eid], key=lambda tn: (tn[0].n_tool_calls, -tn[1], int(tn[0].meta.get("sample", 0)))
        )
        chosen += [t for t, _ in ranked[:per_episode]]
    report["per_episode"] = len(chosen)
    seen: set[str] = set()
    deduped = []
    for t in chosen:
        key = _assistant_key(t)
        if key not in seen:
            seen.add(key)
            deduped.append(t)
    report["deduped"] = len(deduped)
    kept = deduped
    if balance:
        by: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(deduped):
            by[subset_of(t)].append(i)
        dense, sparse = by.get("dense", []), by.get("sparse", [])
        if dense and sparse:
            small, large = sorted((dense, sparse), key=len)
            cap = int(np.ceil(balance_ratio * len(small)))
            if len(large) > cap:
                pick = np.random.default_rng(seed).choice(len(large), size=cap, replace=False)
                drop = set(large) - {large[i] for i in pick}
                kept = [t for i, t in enumerate(deduped) if i not in drop]
    report["balanced"] = len(kept)
    by_subset: dict[str, int] = defaultdict(int)
    for t in kept:
        by_subset[subset_of(t)] += 1
    report["by_subset"] = dict(sorted(by_subset.items()))
    report["mean_tool_calls"] = round(float(np.mean([t.n_tool_calls for t in kept])), 3) if kept else 0.0
    return kept, report


def write_sft_dataset(kept: Sequence[Trajectory], path: str | Path) -> Path:
    """Write `{"messages", "tools"}` rows (`Trajectory.to_sft_row`) to JSONL atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in kept:
            f.write(json.dumps(t.to_sft_row(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def self_augment_round(
    model_path: str | Path,
    episodes: Sequence,
    resources,
    items,
    out_dir: str | Path,
    *,
    n_samples: int = 4,
    temperatures: Sequence[float] = (0.7,),
    ndcg_threshold: float = 0.6,
    per_episode: int = 1,
    workers: int = 1,
    config=None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One self-augmentation round: sample with the model at `model_path`, filter, write the SFT rows.

    Writes `out_dir/rollout.jsonl` (resumable) and `out_dir/sft.jsonl`; returns (SFT rows, report).
    The SFT step itself is `train.sft`'s.
    """
    out_dir = Path(out_dir)
    factory = model_policy(str(model_path), resources, items, config)
    path = rollout(
        episodes,
        factory,
        out_dir / "rollout.jsonl",
        n_samples=n_samples,
        temperatures=temperatures,
        workers=workers,
    )
    kept, report = filter_trajectories(read_rollout(path), ndcg_threshold, per_episode=per_episode)
    write_sft_dataset(kept, out_dir / "sft.jsonl")
    report["model"] = str(model_path)
    return [t.to_sft_row() for t in kept], report
