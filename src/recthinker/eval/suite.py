"""Run several rankers over several episode sets of one benchmark and write one comparison table.

    recthinker bench baselines --dataset ml-1m --out outputs/baselines

Each set gets its own harness folder (`<out>/<set>/`, resumable); the combined results go to
`<out>/results.json` (`{set: {ranker: summary}}`) and `<out>/results.md` (one table per set, plus a compact
NDCG@10 matrix), together with the environment they were measured in.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from recthinker.eval.harness import evaluate
from recthinker.eval.report import atomic_write_bytes, markdown_table
from recthinker.eval.rundir import read_rows
from recthinker.metrics import mean_ci95
from recthinker.types import Ranker

log = logging.getLogger(__name__)

DEFAULT_SETS = ("dense/test", "sparse/test", "loo/test", "loo-20/test", "loo-100/test")


def run_suite(
    bench,
    sets: Sequence[str],
    rankers: Sequence[str],
    out: Path,
    make_ranker: Callable[[str, str], Ranker],
    *,
    workers: int = 1,
    limit: int = 0,
) -> dict[str, dict[str, dict]]:
    """Evaluate every ranker on every set; returns `{set: {ranker: summary}}` and writes results.{json,md}."""
    out = Path(out)
    results: dict[str, dict[str, dict]] = {}
    fit_s: dict[str, float] = {}
    for name in sets:
        episodes = bench.episodes(name)
        if limit:
            episodes = episodes[:limit]
        built = []
        for r in rankers:
            t0 = time.perf_counter()
            built.append(make_ranker(r, name))
            fit_s[r] = max(fit_s.get(r, 0.0), time.perf_counter() - t0)
        log.info("%s: %d episodes x %d rankers", name, len(episodes), len(built))
        folder = out / name.replace("/", "-")
        set_name = f"{bench.manifest.get('dataset')}:{name}"
        summary = evaluate(built, episodes, folder, workers=workers, set_name=set_name)
        results[name] = {r.name: summary[r.name] for r in built}
    meta = {
        "dataset": bench.manifest.get("dataset"),
        "benchmark": str(bench.root),
        "seed": bench.manifest.get("config", {}).get("seed"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "setup_s (fit or load)": {k: round(v, 2) for k, v in fit_s.items()},
    }
    paired = paired_untuned(out, results)
    atomic_write_bytes(
        out / "results.json",
        json.dumps({"meta": meta, "results": results, "tuned_minus_untuned": paired}, indent=2).encode(),
    )
    atomic_write_bytes(out / "results.md", (results_markdown(results) + paired_markdown(paired)).encode())
    return results


def paired_untuned(out: Path, results: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """NDCG@10 of each tuned ranker minus its `-untuned` twin on the same episodes: the mean paired
    difference with a 95% t-interval, per set (`{set: {ranker: {diff, lo, hi, n}}}`)."""
    paired: dict[str, dict[str, dict]] = {}
    for set_name, rankers in results.items():
        folder = out / set_name.replace("/", "-")
        for r in rankers:
            if f"{r}-untuned" not in rankers:
                continue
            a = {row["episode_id"]: row["ndcg@10"] for row in read_rows(folder / r / "episodes.jsonl")}
            b = {
                row["episode_id"]: row["ndcg@10"]
                for row in read_rows(folder / f"{r}-untuned" / "episodes.jsonl")
            }
            both = sorted(set(a) & set(b))
            if both:
                diff, lo, hi = mean_ci95([a[e] - b[e] for e in both])
                paired.setdefault(set_name, {})[r] = {"diff": diff, "lo": lo, "hi": hi, "n": len(both)}
    return paired


def paired_markdown(paired: dict[str, dict[str, dict]]) -> str:
    """The paired differences as one table: rankers x sets, `+0.004 [-0.001, +0.009]`."""
    if not paired:
        return ""
    sets = list(paired)
    rankers = list(dict.fromkeys(r for s in sets for r in paired[s]))
    lines = [
        "\n### Tuned minus untuned (NDCG@10, paired over the same episodes, 95% CI)\n",
        "| ranker | " + " | ".join(sets) + " |",
        "|" + "---|" * (1 + len(sets)),
    ]
    for r in rankers:
        cells = []
        for s in sets:
            d = paired[s].get(r)
            cells.append("–" if d is None else f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(results: dict[str, dict[str, dict]]) -> str:
    """A compact NDCG@10 / HR@5 matrix (rankers x sets) followed by one full table per set.

    HR@5 rather than HR@10: with 1 + 9 candidates every ranker has HR@10 = 1.
    """
    sets = list(results)
    rankers = list(dict.fromkeys(r for s in sets for r in results[s]))
    head = "| ranker | " + " | ".join(f"{s} NDCG@10 | {s} HR@5" for s in sets) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(sets))]
    for r in rankers:
        cells = []
        for s in sets:
            st = results[s].get(r)
            cells += ["–", "–"] if st is None else [f"{st['ndcg@10']:.3f}", f"{st['hr@5']:.3f}"]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    parts = ["\n".join(lines) + "\n"]
    for s in sets:
        parts.append(f"\n### {s}\n\n" + markdown_table(results[s]))
    return "".join(parts)
