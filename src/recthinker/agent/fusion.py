"""The learned evidence fusion: a LambdaRank model (LightGBM) over the tools' per-candidate signals.

    fusion = fit_fusion(bench)                      # fitted on bench's loo/valid episodes, cached
    order = fusion.order(host.signals(("als", "sasrec")), keys=("cf_sasrec", "cf_als"))

Features: each signal of `SIGNALS` three ways -- its raw value, its per-episode z-score
(`evidence.standardize`) and its within-episode rank (1 = the top candidate, 0 = the bottom) -- so the model
sees both how a candidate compares with the others and how strong the evidence is in absolute terms. A
signal the agent did not ask for is *missing* (NaN, which LightGBM routes by a learned default); the model
is trained for that: every training episode appears once with every signal and `MASKS_PER_EPISODE` more
times with a random non-empty subset (seeded), so any evidence set an agent gathers has been seen.

Fitted on validation-type episodes (`fit_set`: `loo/valid` when the benchmark has it, else its first
`*/valid` set) whose targets the background excludes, with the tools over that set's background: the
targets never reach a feature. Cached as LightGBM's text model under `<benchmark>/fusion/`, keyed by the
background, the episodes file, the CF models' settings, the seed and `FUSION_VERSION`.

Two users: the classic ranker `fusion` (`FusionRanker`: every signal, no LLM) and answer form (c), whose
base order is this model over exactly the signals the agent's successful calls revealed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recthinker.agent.evidence import standardize
from recthinker.agent.rankers import PerThread
from recthinker.baselines.base import log_fingerprint, ranked_by_score
from recthinker.baselines.shipped import FITTED_DIR
from recthinker.baselines.tuned import tuned_params
from recthinker.errors import ConfigError
from recthinker.tools.build import load_resources
from recthinker.tools.env import CF_MODELS, RecEnv, ToolHost
from recthinker.types import Episode, Ranking

log = logging.getLogger(__name__)

SIGNALS = ("cf_sasrec", "cf_als", "item_relations", "similar_users", "genre_match", "popularity")
FUSION_VERSION = 1
MASKS_PER_EPISODE = 3  # random evidence subsets per training episode, besides the full set
PARAMS = {  # LightGBM LambdaRank, as measured in issue 14: 300 trees of 7 leaves
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "num_leaves": 7,
    "learning_rate": 0.05,
    "min_data_in_leaf": 50,
    "feature_fraction": 1.0,
    "deterministic": True,
    "force_col_wise": True,
    "verbosity": -1,
}
ROUNDS = 300


def feature_names() -> list[str]:
    return [f"{s}__{kind}" for s in SIGNALS for kind in ("raw", "z", "rank")]


def features(raw: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> np.ndarray:
    """(n candidates, 3 x len(SIGNALS)) features of one episode; signals outside `keys` (default: every
    signal in `raw`) are NaN.

    >>> f = features({"cf_als": np.array([0.1, 0.5, 0.3]), "popularity": np.array([9.0, 1.0, 3.0])}, ["cf_als"])
    >>> f.shape, f[:, 3:6].round(2).tolist()[1], bool(np.isnan(f[:, 15:]).all())
    ((3, 18), [0.5, 1.22, 1.0], True)
    """
    keys = [k for k in (raw if keys is None else keys) if k in raw]
    unknown = [k for k in keys if k not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown evidence signals {unknown}; the fusion knows {SIGNALS}")
    n = len(next(iter(raw.values())))
    out = np.full((n, 3 * len(SIGNALS)), np.nan)
    z = standardize({k: raw[k] for k in keys})
    for k in keys:
        j = 3 * SIGNALS.index(k)
        x = np.asarray(raw[k], dtype=float)
        finite = np.isfinite(x)
        out[:, j] = np.where(finite, x, np.nan)  # an unscored item: missing, not -inf
        out[:, j + 1] = z[k]
        # within-episode rank: 1 = highest value, 0 = lowest (ties share their average rank)
        ranks = _average_ranks(np.where(finite, x, -np.inf))
        out[:, j + 2] = (ranks - 1) / max(n - 1, 1)
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ascending ranks with ties averaged (scipy.stats.rankdata's 'average', without scipy)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


@dataclass
class Fusion:
    """A fitted fusion model: scores candidates from whatever evidence is at hand."""

    booster: object  # lightgbm.Booster
    meta: dict = field(default_factory=dict)

    def score(self, raw: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> np.ndarray:
        """One score per candidate (higher is better) from the signals `keys` of `raw` (default: all)."""
        return np.asarray(self.booster.predict(features(raw, keys), num_threads=1), dtype=float)

    def order(self, raw: Mapping[str, np.ndarray], keys: Sequence[str] | None = None) -> np.ndarray:
        """Candidate indices by score, descending (stable)."""
        return np.argsort(-self.score(raw, keys), kind="stable")

    @classmethod
    def load(cls, path: Path) -> Fusion:
        import lightgbm as lgb  # heavy: loaded when a fusion model is used

        text = Path(path).read_text(encoding="utf-8")
        meta = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
        return cls(lgb.Booster(model_str=text), {**meta, "file": Path(path).name})


def train(rows: Sequence[Mapping[str, np.ndarray]], targets: Sequence[int], *, seed: int = 42) -> Fusion:
    """Fit the fusion on episodes' raw signals (`rows`) and their targets' candidate indices.

    Each episode enters once with every signal and `MASKS_PER_EPISODE` times with a random non-empty
    subset of its signals (each kept with probability 1/2), so the model ranks well from partial evidence.
    """
    import lightgbm as lgb  # heavy: loaded when a fusion model is fitted

    if len(rows) != len(targets) or not rows:
        raise ValueError(
            f"fusion needs episodes with targets, got {len(rows)} rows and {len(targets)} targets"
        )
    rng = np.random.default_rng([seed, FUSION_VERSION])
    xs, ys, groups = [], [], []
    for raw, t in zip(rows, targets, strict=True):
        have = [s for s in SIGNALS if s in raw]
        subsets = [have]
        for _ in range(MASKS_PER_EPISODE):
            keep = [s for s in have if rng.random() < 0.5] or [have[int(rng.integers(len(have)))]]
            subsets.append(keep)
        for keys in subsets:
            x = features(raw, keys)
            y = np.zeros(len(x))
            y[t] = 1.0
            xs.append(x)
            ys.append(y)
            groups.append(len(x))
    data = lgb.Dataset(
        np.concatenate(xs), np.concatenate(ys), group=groups, feature_name=feature_names(), free_raw_data=True
    )
    params = {**PARAMS, "seed": seed, "num_threads": 0}
    booster = lgb.train(params, data, num_boost_round=ROUNDS)
    meta = {"version": FUSION_VERSION, "signals": list(SIGNALS), "n_episodes": len(rows), "seed": seed}
    return Fusion(booster, meta)


def episode_signals(host: ToolHost, episode: Episode) -> dict[str, np.ndarray]:
    """Every signal of `SIGNALS` for `episode` (resets `host`)."""
    host.reset_episode(episode)
    raw = host.signals(tuple(s.removeprefix("cf_") for s in SIGNALS if s.startswith("cf_")))
    return {s: raw[s] for s in SIGNALS}


def fit_set(bench) -> str:
    """The validation episodes a benchmark's fusion is fitted on: loo/valid, else its first */valid set."""
    sets = sorted(bench.manifest["episodes"])
    if "loo/valid" in sets:
        return "loo/valid"
    valid = [s for s in sets if s.endswith("/valid") or s == "valid"]
    if not valid:
        raise ConfigError(f"{bench.root}: no validation episodes to fit the fusion on; have {sets}")
    return valid[0]


def fit_fusion(bench, *, seed: int = 42, limit: int = 0) -> Fusion:
    """The fusion fitted on `bench`'s validation episodes (`fit_set`), cached in `<bench>/fusion/`."""
    name = fit_set(bench)
    rel = bench.manifest["episodes"][name]
    background = bench.background(name)
    settings = {m: tuned_params(bench, m) for m in CF_MODELS}
    ident = json.dumps(
        [
            log_fingerprint(background),
            bench.manifest.get("sha256", {}).get("outputs", {}).get(rel, rel),
            settings,
            seed,
            limit,
            FUSION_VERSION,
            SIGNALS,
            PARAMS,
            ROUNDS,
            MASKS_PER_EPISODE,
        ],
        sort_keys=True,
        default=str,
    )
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    path = Path(bench.root) / "fusion" / f"fusion-{key}.txt"
    for p in (path, FITTED_DIR / path.name):  # the benchmark's cache, then the fusions shipped in the package
        if p.is_file() and p.with_suffix(".json").is_file():
            return Fusion.load(p)
    episodes = bench.episodes(name)
    episodes = episodes[:limit] if limit else episodes
    host = ToolHost(RecEnv(load_resources(bench, name, seed=seed)))
    t0 = time.perf_counter()
    rows = [episode_signals(host, e) for e in episodes]
    targets = [e.candidates.index(e.target) for e in episodes]
    t1 = time.perf_counter()
    fusion = train(rows, targets, seed=seed)
    fusion.meta.update(
        {
            "fit_set": name,
            "file": path.name,
            "signals_s": round(t1 - t0, 1),
            "fit_s": round(time.perf_counter() - t1, 1),
        }
    )
    _save(fusion, path)
    log.info("fitted the fusion on %d %s episodes -> %s", len(episodes), name, path)
    return fusion


def ship_fusion(bench, *, seed: int = 42) -> list[Path]:
    """Copy `bench`'s fusion (fitted now when not cached) into the package (`baselines/fitted/`), where
    `fit_fusion` finds it on a machine that has not fitted it: keyed by the same inputs, so used only for
    the very same benchmark, settings and seed."""
    fusion = fit_fusion(bench, seed=seed)
    path = FITTED_DIR / fusion.meta["file"]
    _save(fusion, path)
    written = [path, path.with_suffix(".json")]
    for p in written:
        p.chmod(0o644)  # package data: readable by everyone who installs it
    return written


def _save(fusion: Fusion, path: Path) -> None:
    """Model text and its meta, each written atomically (the meta last: it marks the pair complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for p, text in (
        (path, fusion.booster.model_to_string()),
        (path.with_suffix(".json"), json.dumps(fusion.meta, indent=2, sort_keys=True) + "\n"),
    ):
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)


class FusionRanker:
    """The classic ranker `fusion`: every tool signal through the fitted fusion, no LLM."""

    def __init__(self, resources, fusion: Fusion, name: str = "fusion") -> None:
        self.hosts = PerThread(lambda: ToolHost(RecEnv(resources)))  # a tool host holds one episode
        self.fusion = fusion
        self.name = name

    def rank(self, episode: Episode) -> Ranking:
        raw = episode_signals(self.hosts.get(), episode)
        scores = self.fusion.score(raw)
        return Ranking(items=ranked_by_score(episode.episode_id, list(episode.candidates), scores))


class LazyFusionOrder:
    """`Fusion.order` of a benchmark's fusion, fitted (or loaded) on first use: an agent that answers in
    form (ranking) never pays for it. Thread-safe; the value of `Resources.evidence_order`."""

    def __init__(self, bench, seed: int = 42) -> None:
        self.bench, self.seed = bench, seed
        self._fusion: Fusion | None = None
        self._lock = threading.Lock()

    def __call__(self, signals: Mapping[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._fusion is None:
                self._fusion = fit_fusion(self.bench, seed=self.seed)
        return self._fusion.order(signals, keys)


def with_fusion(resources, bench, seed: int = 42):
    """`resources` whose answer-form-(c) base order is `bench`'s learned fusion (unchanged when they
    already carry an evidence order)."""
    if resources.evidence_order is not None:
        return resources
    return dataclasses.replace(resources, evidence_order=LazyFusionOrder(bench, seed))
