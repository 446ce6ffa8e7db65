"""Which evidence carries the learned fusion: its order over subsets of the tools' signals, on ML-1M.

The fusion (`agent/fusion.py`) is trained with signals left missing, so it ranks over whatever evidence an
agent asked for. This scores the fused order over each subset (the rest missing) on a seeded random sample of
`loo/test` episodes, paired against all six signals with a 95% t-interval: how many calls reach the whole
fusion.

    python benchmarks/bench_fusion_subsets.py --out outputs/bench-fusion-subsets   # ~1 minute; JSON + a table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recthinker.agent.fusion import episode_signals, fit_fusion
from recthinker.data.prepared import ensure_benchmark
from recthinker.metrics import mean_ci95, ndcg_at_k, target_rank
from recthinker.tools.build import load_resources
from recthinker.tools.env import RecEnv, ToolHost

SUBSETS = {
    "all six": None,
    "sasrec": ("cf_sasrec",),
    "sasrec + als": ("cf_sasrec", "cf_als"),
    "sasrec + genre": ("cf_sasrec", "genre_match"),
    "sasrec + als + genre": ("cf_sasrec", "cf_als", "genre_match"),
    "sasrec + similar users": ("cf_sasrec", "similar_users"),
    "sasrec + item relations": ("cf_sasrec", "item_relations"),
    "als": ("cf_als",),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", default="loo/test")
    p.add_argument("--n", type=int, default=2000, help="episodes sampled from the set (seeded)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    bench = ensure_benchmark("ml-1m")
    fusion = fit_fusion(bench)
    episodes = bench.episodes(args.set)
    pick = np.random.default_rng(args.seed).choice(len(episodes), min(args.n, len(episodes)), replace=False)
    host = ToolHost(RecEnv(load_resources(bench, args.set)))
    ndcg: dict[str, list[float]] = {name: [] for name in SUBSETS}
    for i in pick:
        e = episodes[int(i)]
        raw = episode_signals(host, e)
        for name, keys in SUBSETS.items():
            order = [e.candidates[j] for j in fusion.order(raw, keys)]
            ndcg[name].append(ndcg_at_k(target_rank(order, e.target), 10))
    result = {}
    for name, values in ndcg.items():
        diff, lo, hi = mean_ci95(np.subtract(values, ndcg["all six"]))
        result[name] = {"n": len(values), "ndcg@10": float(np.mean(values)), "vs_all": [diff, lo, hi]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_subsets.json").write_text(json.dumps({"set": args.set, "results": result}, indent=1))
    lines = ["| signals | n | NDCG@10 | minus all six (95% CI) |", "|---|---|---|---|"]
    for name, r in result.items():
        d, lo, hi = r["vs_all"]
        lines.append(f"| {name} | {r['n']} | {r['ndcg@10']:.3f} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    (args.out / "fusion_subsets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
