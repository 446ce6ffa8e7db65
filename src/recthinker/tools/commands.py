"""The `recthinker tool` and `recthinker bench tools` verbs: run one tool for one user, and measure every
tool's latency and the ranking quality of each tool's signal used alone.

    recthinker tool similar_users --dataset ml-1m --user 1m_1090 --args '{"k": 5}'
    recthinker bench tools --dataset ml-1m --out outputs/bench-tools
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from recthinker.baselines.base import tie_break_keys
from recthinker.data.prepared import Benchmark, ensure_benchmark
from recthinker.errors import ConfigError, DataError, RecThinkerError
from recthinker.metrics import ndcg_at_k, target_rank
from recthinker.tools.build import load_resources
from recthinker.tools.candidates import make_episode
from recthinker.tools.env import TOOLS, Observation, RecEnv, ToolHost
from recthinker.tools.resources import CF_MODELS, Resources
from recthinker.types import Episode

log = logging.getLogger(__name__)

TEST_SETS = ("dense/test", "sparse/test", "loo/test")
BENCH_SUBSETS = ("dense/test", "sparse/test")
LATENCY_REPEATS = 3  # timed calls per (episode, tool)


def _user_episode(bench: Benchmark, user_id: str) -> tuple[str, Episode | None]:
    """(episode set, the user's test episode) from the first of `TEST_SETS` that has one."""
    sets = [s for s in TEST_SETS if s in bench.manifest["episodes"]]
    for name in sets:
        for e in bench.episodes(name):
            if e.user_id == user_id:
                return name, e
    return (sets[-1] if sets else next(iter(bench.manifest["episodes"]))), None


class ToolError(RecThinkerError):
    """`recthinker tool` got an error observation (unknown tool, bad arguments, unknown item): exit 2.

    The message is the observation text, which says how to fix the call.
    """

    def __init__(self, observation: Observation) -> None:
        super().__init__(" ".join(observation.text.split()))
        self.observation = observation


def parse_tool_args(args: dict | str | None) -> dict:
    """Tool arguments from a dict or its JSON text (`--args`); ConfigError when the text is not JSON."""
    if args is None or (isinstance(args, str) and not args.strip()):
        return {}
    if isinstance(args, dict):
        return args
    if not isinstance(args, str):
        raise ConfigError(f'tool arguments must be a JSON object like {{"k": 5}}, got {args!r}')
    try:
        value = json.loads(args)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"tool arguments {args!r} are not valid JSON ({e.msg} at column {e.colno})"
        ) from None
    except RecursionError:
        raise ConfigError("tool arguments are nested too deeply") from None
    if not isinstance(value, dict):
        raise ConfigError(f'tool arguments must be a JSON object like {{"k": 5}}, got {args!r}')
    return value


def run_tool(
    dataset: str,
    user_id: str,
    name: str,
    args: dict | str | None = None,
    candidates: list[str] | None = None,
) -> str:
    """The text tool `name` returns for `user_id` with `args` (a dict or its JSON text).

    Without `candidates`, the candidates of the user's test episode (dense, sparse, then leave-one-out)
    are used; given ones are checked as `recommend` checks them (known, distinct item ids).

    Raises:
        ToolError: the tool answered with an error observation (unknown tool, bad arguments, unknown item).
        ConfigError: `args` is not a JSON object.
        DataError: an unknown user, an empty, unknown or repeated candidate id, or no candidates given
            for a user without a test episode.
    """
    arguments = parse_tool_args(args)
    bench = ensure_benchmark(dataset)
    episode_set, episode = _user_episode(bench, user_id)
    resources = load_resources(bench, episode_set)
    if episode is None and not resources.log.sequence(user_id):
        raise DataError(f"unknown user {user_id!r}: not in the {resources.name or dataset} dataset")
    if candidates is None:
        if episode is None:
            raise DataError(f"user {user_id!r} has no test episode in {bench.root}: pass the candidates")
    else:
        if not candidates:
            raise DataError("no candidate ids given: pass at least one, or leave out --candidates")
        history = list(episode.history) if episode else None
        episode, _ = make_episode(resources, user_id, history, candidates)  # known, distinct item ids
    env = ToolHost(RecEnv(resources))
    env.reset_episode(episode)
    observation = env.call(name, arguments)
    if not observation.ok:
        raise ToolError(observation)
    return observation.text


# ---- benchmark --------------------------------------------------------------------------------------------


def bench_arguments(env: ToolHost) -> dict[str, dict]:
    """Each tool's example arguments (`@tool(example=...)`) for the latency benchmark (one call each);
    search_items searches for the first candidate's category."""
    first_cat = next((c for i in env.candidates for c in env.resources.catalog.cats(i)), "drama")
    this_episode = {"search_items": {"query": f"{first_cat} love war"}}
    return {name: {**spec.example, **this_episode.get(name, {})} for name, spec in TOOLS.items()}


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)}


def signal_ndcg(env: ToolHost, episodes: list[Episode], models: tuple[str, ...]) -> dict[str, float]:
    """Mean NDCG@10 of each tool signal used alone as a ranker (ties broken by a hash of episode and item)."""
    totals: dict[str, list[float]] = {}
    for e in episodes:
        env.reset_episode(e)
        for name, scores in env.signals(models=models).items():
            order = np.lexsort((tie_break_keys(e.episode_id, e.candidates), -np.asarray(scores, float)))
            ranking = [e.candidates[i] for i in order]
            totals.setdefault(name, []).append(ndcg_at_k(target_rank(ranking, e.target), 10))
    return {name: round(float(np.mean(v)), 4) for name, v in totals.items()}


def bench_tools(dataset: str, out: Path, *, models: tuple[str, ...] = CF_MODELS) -> dict:
    """Per-tool latency (p50/p99, ms) and signal NDCG@10 on the dense and sparse test episodes.

    `models`: the CF models whose scores are benchmarked as signals (fitted on first use: SASRec takes
    10-15 minutes on 2 CPU cores, then it is cached).

    Writes `out/tools.json` ({"latency_ms": {tool: {p50, p99}}, "signal_ndcg@10": {subset: {signal: ndcg}}})
    and `out/tools.md`; returns the JSON content.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bench = ensure_benchmark(dataset)
    subsets = [s for s in BENCH_SUBSETS if s in bench.manifest["episodes"]]
    latency: dict[str, list[float]] = {}
    ndcg: dict[str, dict[str, float]] = {}
    load_s: dict[str, float] = {}
    resources: dict[str, Resources] = {}
    for subset in subsets:
        key = bench.manifest["background"][subset]
        if key not in resources:
            start = time.perf_counter()
            resources[key] = load_resources(bench, subset)
            load_s[key] = time.perf_counter() - start
            for m in models:  # fit or load outside the timed calls
                resources[key].scorer(m)
        env = ToolHost(RecEnv(resources[key]))
        episodes = bench.episodes(subset)
        for e in episodes:
            env.reset_episode(e)
            for name, args in bench_arguments(env).items():
                for _ in range(LATENCY_REPEATS):
                    t = time.perf_counter()
                    obs = env.call(name, args)
                    latency.setdefault(name, []).append(1000 * (time.perf_counter() - t))
                    if not obs.ok:
                        raise RuntimeError(f"bench call {name}({args}) failed on {e.episode_id}: {obs.text}")
        ndcg[subset.split("/")[0]] = signal_ndcg(env, episodes, models)
        log.info("bench tools %s: %d episodes", subset, len(episodes))
    result = {
        "latency_ms": {name: _percentiles(ms) for name, ms in latency.items()},
        "signal_ndcg@10": ndcg,
    }
    (out / "tools.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "tools.md").write_text(markdown(result, dataset, load_s))
    return result


def markdown(result: dict, dataset: str, load_s: dict[str, float]) -> str:
    lines = [
        f"# Tool benchmark: {dataset}",
        "",
        "Latency of one `ToolHost.call` in ms over the dense and sparse test episodes "
        f"({LATENCY_REPEATS} calls per episode and tool; `cf_scores` with ALS).",
        "",
        "| tool | p50 | p99 |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {t} | {v['p50']:.2f} | {v['p99']:.2f} |" for t, v in result["latency_ms"].items()]
    subsets = list(result["signal_ndcg@10"])
    signals = list(next(iter(result["signal_ndcg@10"].values()), {}))
    lines += [
        "",
        "NDCG@10 of each tool's signal used alone to order the candidates (1 target + 9 negatives; "
        "ties broken by a hash of episode and item). `similar_users`: similarity-weighted count of the 10 "
        "nearest users who interacted with the candidate; `item_relations`: summed co-interaction cosine "
        "with the 50 most recent history items; `genre_match`: the user's category shares summed over the "
        "candidate's categories; `cf_*`: model scores.",
        "",
        "| signal | " + " | ".join(subsets) + " |",
        "| --- | " + " | ".join("---:" for _ in subsets) + " |",
    ]
    for s in signals:
        lines.append(
            f"| {s} | " + " | ".join(f"{result['signal_ndcg@10'][b][s]:.4f}" for b in subsets) + " |"
        )
    lines += ["", "Resources load time: " + ", ".join(f"{k} {v:.2f}s" for k, v in load_s.items()), ""]
    return "\n".join(lines)
