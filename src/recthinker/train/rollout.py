"""Sample trajectories from any policy over episodes, in parallel, resumably, into JSONL.

A *policy factory* is a no-argument callable that returns the calling thread's `RecThinker`, with its own
`RecEnv`; `rollout` calls it once per worker thread (so each thread has its own environment over the
shared, read-only `Resources`). `teacher_policy` wraps the bootstrap teacher, `model_policy` any chat model
that `load_chat_model` understands (a local model/adapter folder, a .gguf file, or an OpenAI-compatible URL
such as a vLLM server running a teacher LLM); both are the per-thread agents of the rankers
`recthinker.rankers.build_ranker` builds, so a rollout and an evaluation run the same agent.

Each JSONL row is `Trajectory.to_dict()`, so `read_trajectories` reads the file back; `meta` carries the
sample index, temperature and seed, the episode's split/subset/history length, and the reward-relevant
numbers computed with `recthinker.metrics` (target_rank, ndcg@10, hr@10). Sample `k` of an episode runs with
`temperatures[k % len(temperatures)]` and seed `seeds[k % len(seeds)]` (default: `k`). A rerun skips the
(episode_id, sample) pairs already in the file; a truncated last line (killed run) is cut off first, and
rows that recorded a crash of our own code (`error`) are dropped and retried.

    factory = teacher_policy(resources, bench.items, weights)
    rollout(episodes, factory, Path("outputs/teacher/rollout.jsonl"), n_samples=2, workers=4)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from recthinker.agent.loop import AgentConfig, RecThinker, run_safely
from recthinker.agent.rankers import PerThread
from recthinker.agent.trajectory import Trajectory, read_trajectories
from recthinker.jsonl import append_jsonl, load_jsonl
from recthinker.metrics import hit_at_k, ndcg_at_k, target_rank
from recthinker.rankers import TEACHER, build_ranker
from recthinker.types import Episode

log = logging.getLogger(__name__)

PolicyFactory = Callable[[], RecThinker]


def teacher_policy(resources, items, weights, config: AgentConfig | None = None) -> PolicyFactory:
    """Factory of `RecThinker`s driven by the bootstrap teacher (`agent.teacher`), built as `evaluate`
    builds the teacher ranker."""
    ranker = build_ranker(
        TEACHER, None, resources=resources, items=items, teacher_weights=weights, config=config
    )
    return ranker.agent


def model_policy(model: str | Any, resources, items, config: AgentConfig | None = None) -> PolicyFactory:
    """Factory of `RecThinker`s over one shared chat model (`model`: a `ChatModel` or a `load_chat_model`
    spec), built as `evaluate` builds the agent ranker; `config` defaults to `AgentConfig()`."""
    ranker = build_ranker(
        "agent", None, resources=resources, items=items, model=model, config=config or AgentConfig()
    )
    return ranker.agent


def reward_fields(traj: Trajectory) -> dict[str, Any]:
    """target_rank, ndcg@10 and hr@10 of a trajectory's ranking (0 when invalid or without target)."""
    rank = target_rank(traj.ranking, traj.target) if traj.valid and traj.target is not None else None
    return {"target_rank": rank, "ndcg@10": ndcg_at_k(rank, 10), "hr@10": hit_at_k(rank, 10)}


def _read_done(path: Path) -> set[tuple[str, int]]:
    """(episode_id, sample) pairs already in `path`; repairs a truncated tail and drops crashed rows."""
    if not path.is_file():
        return set()
    rows, clean = load_jsonl(path)
    keep: list[dict[str, Any]] = []
    done: set[tuple[str, int]] = set()
    for row in rows:
        key = (str(row["episode_id"]), int(row.get("meta", {}).get("sample", 0)))
        if row.get("error") or key in done:
            continue
        done.add(key)
        keep.append(row)
    if not clean or len(keep) != len(rows):
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, path)
    return done


def rollout(
    episodes: Sequence[Episode],
    policy_factory: PolicyFactory,
    out_path: str | Path,
    n_samples: int = 1,
    temperatures: Sequence[float] = (0.0,),
    seeds: Sequence[int] | None = None,
    workers: int = 1,
) -> Path:
    """Sample `n_samples` trajectories per episode with the policy into `out_path` (JSONL, resumable).

    Args:
        episodes: Episodes with targets (training episodes, or a validation set for measurements).
        policy_factory: Called once per worker thread; returns a `RecThinker` with its own environment.
        out_path: JSONL file; rows already there are kept and their (episode, sample) pairs skipped.
        n_samples: Trajectories per episode.
        temperatures: Sample k uses temperatures[k % len(temperatures)].
        seeds: Sample k uses seeds[k % len(seeds)]; default k.
        workers: Threads.
    """
    if n_samples < 1 or workers < 1 or not temperatures:
        raise ValueError(
            f"n_samples, workers >= 1 and temperatures non-empty required: {n_samples}, {workers}"
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(out)
    todo = [(e, k) for e in episodes for k in range(n_samples) if (e.episode_id, k) not in done]

    def start() -> tuple[RecThinker, AgentConfig]:  # this thread's agent, and the config each sample varies
        agent = policy_factory()
        return agent, agent.config

    policies = PerThread(start)

    def one(episode: Episode, k: int) -> dict[str, Any]:
        agent, base = policies.get()
        temp = float(temperatures[k % len(temperatures)])
        seed = int(seeds[k % len(seeds)]) if seeds else k
        agent.config = dataclasses.replace(base, temperature=temp, seed=seed)
        traj = run_safely(agent, episode)
        traj.meta.update(
            {
                "sample": k,
                "temperature": temp,
                "seed": seed,
                "split": episode.split,
                "subset": episode.subset,
                "n_history": len(episode.history),
                **reward_fields(traj),
            }
        )
        return traj.to_dict()

    failed = 0
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(todo), desc="rollout", disable=None) as bar,
    ):
        futures = [pool.submit(one, e, k) for e, k in todo]
        for fut in as_completed(futures):
            row = fut.result()
            failed += bool(row.get("error"))
            append_jsonl(out, [row])
            bar.update(1)
    if failed:
        log.warning(
            "%d of %d rollouts failed with an error (recorded; retried on the next run)", failed, len(todo)
        )
    return out


def read_rollout(path: str | Path) -> list[Trajectory]:
    """The trajectories of a rollout file (a truncated last line is skipped)."""
    return list(read_trajectories(Path(path)))


def rows_of(trajs: Iterable[Trajectory]) -> list[dict[str, Any]]:
    """`Trajectory.to_dict()` of each trajectory."""
    return [t.to_dict() for t in trajs]
