"""Benchmark the RecEnv tools: per-tool latency (p50/p99) and each tool's signal used alone as a ranker
(NDCG@10 on the dense and sparse test episodes). Writes OUT/tools.json and OUT/tools.md.

    python benchmarks/bench_tools.py --dataset ml-1m --out outputs/bench-tools

The first run on a dataset builds the tool index (seconds) and fits ALS and SASRec on the background
(SASRec: about 10-15 minutes on 2 CPU cores); later runs load them from the benchmark's cache.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from recthinker.tools.commands import bench_tools


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--dataset", default="ml-1m", help="bundled dataset name, atomic-file folder or benchmark folder"
    )
    p.add_argument("--out", default="outputs/bench-tools", help="folder for tools.json and tools.md")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = bench_tools(args.dataset, Path(args.out))
    print(json.dumps(result, indent=2))
    print((Path(args.out) / "tools.md").read_text())


if __name__ == "__main__":
    main()
