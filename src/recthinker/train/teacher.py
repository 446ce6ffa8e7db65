"""Fitting the bootstrap teacher: the weights its policy (`agent/teacher.py`) combines the signals with.

The weights of every evidence set -- genre_match plus any subset of the other signals in `SIGNALS` -- are
fitted on training episodes (`train.episodes`: drawn from the background, tools over the *training*
background) by coordinate search maximising mean NDCG@10 (`fit_weights`); `fit_teacher` caches them as
JSON under `<benchmark>/teacher/`. The command line and the training pipeline fit them here and hand them
to `recthinker.rankers` (or `agent.teacher.TeacherRanker`), which never import training.

    weights = fit_teacher(ensure_benchmark("ml-1m"))                  # cached after the first call
    ranker = build_ranker("teacher", bench, "dense/test", teacher_weights=weights)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from recthinker.agent.evidence import standardize
from recthinker.agent.teacher import SIGNALS, TeacherWeights, evidence_key
from recthinker.tools.env import RecEnv, ToolHost
from recthinker.train.episodes import make_training_episodes, training_resources
from recthinker.types import Episode

log = logging.getLogger(__name__)

GRID = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
WEIGHTS_VERSION = 1


def _mean_ndcg(scores: np.ndarray, target: np.ndarray) -> float:
    """Mean NDCG@10 with ties counted half (fitting objective); scores (n_eps, n_cands)."""
    s_t = scores[np.arange(len(target)), target][:, None]
    rank = 1 + (scores > s_t).sum(1) + 0.5 * ((scores == s_t).sum(1) - 1)
    return float(np.where(rank <= 10, 1.0 / np.log2(1.0 + rank), 0.0).mean())


def fit_weights(
    z_rows: Sequence[Mapping[str, np.ndarray]], targets: Sequence[int], passes: int = 3
) -> TeacherWeights:
    """Coordinate search (grid `GRID`, `passes` sweeps) of the weights of every evidence set that holds
    genre_match, maximising mean NDCG@10 over the episodes; `targets` are the target's candidate index."""
    t = np.asarray(targets)
    feats = {s: np.stack([r[s] for r in z_rows]) for s in SIGNALS}
    weights: dict[str, dict[str, float]] = {}
    fit: dict[str, float] = {}
    others = [s for s in SIGNALS if s != "genre_match"]
    for r in range(len(others) + 1):
        for combo in itertools.combinations(others, r):
            sigs = ("genre_match", *combo)
            alone = {s: _mean_ndcg(feats[s], t) for s in sigs}
            w = dict.fromkeys(sigs, 0.0)
            w[max(alone, key=alone.get)] = 1.0
            best = _mean_ndcg(sum(w[s] * feats[s] for s in sigs), t)
            for _ in range(passes):
                improved = False
                for s in sigs:
                    for v in GRID:
                        trial = {**w, s: v}
                        if not any(trial.values()):
                            continue
                        score = _mean_ndcg(sum(trial[x] * feats[x] for x in sigs), t)
                        if score > best + 1e-9:
                            best, w, improved = score, trial, True
                if not improved:
                    break
            key = evidence_key(sigs)
            weights[key], fit[key] = w, round(best, 4)
    return TeacherWeights(
        weights=weights, fit_ndcg=fit, meta={"n_episodes": len(t), "version": WEIGHTS_VERSION}
    )


def episode_signals(env, episode: Episode) -> dict[str, np.ndarray]:
    """Z-scored signals of `episode` under `env`'s resources (resets `env`)."""
    env.reset_episode(episode)
    return standardize(env.signals(("als",)))


def fit_on_episodes(resources, episodes: Sequence[Episode]) -> TeacherWeights:
    """Fit the teacher's weights on `episodes` (with targets) using tools over `resources`."""
    env = ToolHost(RecEnv(resources))
    rows, targets = [], []
    for e in episodes:
        rows.append(episode_signals(env, e))
        targets.append(e.candidates.index(e.target))
    return fit_weights(rows, targets)


def fit_teacher(bench, *, n_episodes: int = 1000, seed: int = 0) -> TeacherWeights:
    """Weights fitted on `n_episodes` training episodes of `bench` (tools over the training background);
    cached in `<bench>/teacher/weights-<key>.json`."""
    key = hashlib.sha256(f"{n_episodes}|{seed}|{WEIGHTS_VERSION}|{GRID}|{SIGNALS}".encode()).hexdigest()[:12]
    path = Path(bench.root) / "teacher" / f"weights-{key}.json"
    if path.is_file():
        return TeacherWeights.from_dict(json.loads(path.read_text(encoding="utf-8")))
    episodes = make_training_episodes(bench, n_episodes, seed)
    weights = fit_on_episodes(training_resources(bench, episodes), episodes)
    weights.meta.update({"seed": seed, "benchmark": str(bench.root)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(weights.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    log.info("fitted teacher weights on %d training episodes -> %s", n_episodes, path)
    return weights
