"""Which popularity transform the shared z-scoring should use: raw counts or log1p, measured on ML-1M.

The teacher and answer form (c) combine per-episode z-scored tool signals with equal or fitted weights. A
single signal's order does not depend on a monotone transform, but a sum does: this measures NDCG@10 of the
equal-weight sum of popularity with each other signal (and with all of them), with popularity as raw counts
and as log1p, on the validation episodes (their targets are held out of the background the tools read).

    python benchmarks/bench_zscore.py --out outputs/bench-zscore      # ~1 minute; writes JSON + a table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recthinker.data.prepared import ensure_benchmark
from recthinker.metrics import ndcg_at_k, target_rank
from recthinker.tools.build import load_resources
from recthinker.tools.env import RecEnv, ToolHost

OTHERS = ("cf_als", "item_relations", "similar_users", "genre_match")


def zscores(x: np.ndarray, log_popularity: bool) -> np.ndarray:
    x = np.asarray(x, dtype=float).copy()
    finite = np.isfinite(x)
    x[~finite] = x[finite].min() if finite.any() else 0.0
    if log_popularity:
        x = np.log1p(np.maximum(x, 0.0))
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x)


def ndcg_of_sum(signals: dict, keys: tuple[str, ...], candidates, target, log_popularity: bool) -> float:
    total = sum(zscores(signals[k], log_popularity and k == "popularity") for k in keys)
    order = [candidates[i] for i in np.argsort(-total, kind="stable")]
    return ndcg_at_k(target_rank(order, target), 10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--loo", type=int, default=1000, help="first N loo/valid episodes")
    args = p.parse_args()
    bench = ensure_benchmark("ml-1m")
    combos = [("popularity", k) for k in OTHERS] + [("popularity", *OTHERS)]
    result = {}
    for set_name, limit in (("dense/valid", 0), ("sparse/valid", 0), ("loo/valid", args.loo)):
        episodes = bench.episodes(set_name)
        episodes = episodes[:limit] if limit else episodes
        host = ToolHost(RecEnv(load_resources(bench, set_name)))
        rows = {"+".join(c): {"raw": [], "log1p": []} for c in combos}
        for e in episodes:
            host.reset_episode(e)
            sig = host.signals(("als",))
            for c in combos:
                for name, log in (("raw", False), ("log1p", True)):
                    rows["+".join(c)][name].append(ndcg_of_sum(sig, c, e.candidates, e.target, log))
        result[set_name] = {
            combo: {
                "n": len(v["raw"]),
                "raw": float(np.mean(v["raw"])),
                "log1p": float(np.mean(v["log1p"])),
                "diff": float(np.mean(np.subtract(v["log1p"], v["raw"]))),
                "diff_ci95": float(
                    1.96 * np.std(np.subtract(v["log1p"], v["raw"]), ddof=1) / np.sqrt(len(v["raw"]))
                ),
            }
            for combo, v in rows.items()
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zscore.json").write_text(json.dumps(result, indent=1))
    lines = [
        "| set | signals | NDCG@10 raw | NDCG@10 log1p | log1p - raw (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for s, combos_ in result.items():
        for c, r in combos_.items():
            lines.append(
                f"| {s} | {c} | {r['raw']:.3f} | {r['log1p']:.3f} | {r['diff']:+.3f} ± {r['diff_ci95']:.3f} |"
            )
    (args.out / "zscore.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
