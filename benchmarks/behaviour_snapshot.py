"""Record, or compare, what the teacher, the default agent and the fixed-workflow baseline do on fixed episodes.

A refactoring must not change behaviour: record a snapshot before the first move, another after the last,
and compare them. The snapshot holds, per ranker and episode, the ranking and the full trajectory (every
message, tool call and observation), with timings removed; it is produced through the public command line
(`recthinker evaluate`), so it survives any change to the modules behind it.

    python benchmarks/behaviour_snapshot.py record outputs/snapshot-before            # ~35 min on 2 cores
    python benchmarks/behaviour_snapshot.py record outputs/snapshot-after
    python benchmarks/behaviour_snapshot.py compare outputs/snapshot-before outputs/snapshot-after

`record` evaluates the first 20 ML-1M dense/valid and 20 sparse/valid episodes (`--limit`, `--set`,
`--ranker` change that) and writes `<out>/snapshot.jsonl`, one canonical JSON line per (ranker, episode),
sorted, and `<out>/snapshot.sha256`, one `ranker set episode_id sha256` line per row: the digests can be
committed (the rows quote MovieLens titles, which may not be redistributed). `compare` takes two snapshot
folders or digest files, exits 1 and names the first differing episode (and field, given two folders).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

RANKERS = ("teacher", "agent", "fixed-workflow")
SETS = ("dense/valid", "sparse/valid")
# Wall-clock measurements differ run to run; everything else is deterministic (greedy decoding, seeds).
TIMING = re.compile(r"(latency|seconds|_s$|_ms$|per_s|tokens_per|timing|elapsed|duration|started|time)")


def strip_timings(value: Any) -> Any:
    """`value` without dict keys that hold wall-clock measurements (recursively)."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def record(out: Path, sets: list[str], rankers: list[str], limit: int, threads: int) -> Path:
    runs = out / "runs"
    argv = [sys.executable, "-m", "recthinker.cli", "evaluate", "--dataset", "ml-1m", "--limit", str(limit)]
    argv += [f"--threads={threads}", "--out", str(runs)]
    for s in sets:
        argv += ["--set", s]
    for r in rankers:
        argv += ["--ranker", r]
    subprocess.run(argv, check=True)
    lines = []
    for s in sets:
        folder = runs if len(sets) == 1 else runs / s.replace("/", "-")
        for r in rankers:
            for line in (folder / r / "episodes.jsonl").read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                keep = {"set": s, "ranker": r, **strip_timings(row)}
                lines.append(json.dumps(keep, sort_keys=True, ensure_ascii=False))
    lines.sort()
    path = out / "snapshot.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "snapshot.sha256").write_text("".join(digest_line(line) for line in lines), encoding="utf-8")
    print(f"wrote {path} and snapshot.sha256 ({len(lines)} rows)")
    return path


def digest_line(line: str) -> str:
    row = json.loads(line)
    return (
        f"{row['ranker']} {row['set']} {row.get('episode_id')} {hashlib.sha256(line.encode()).hexdigest()}\n"
    )


def digests(path: Path) -> list[str]:
    """Digest lines of a snapshot folder (computed from its rows) or of a digest file."""
    if path.is_dir():
        rows = (path / "snapshot.jsonl").read_text(encoding="utf-8").splitlines()
        return [digest_line(line) for line in rows]
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """A path to the first place where `a` and `b` differ, or None."""
    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}.{k}: only in {'second' if k not in a else 'first'}"
            d = first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None if len(a) == len(b) else f"{where}: {len(a)} vs {len(b)} entries"
    return None if a == b else f"{where}: {str(a)[:200]!r} vs {str(b)[:200]!r}"


def compare(a: Path, b: Path) -> int:
    da, db = digests(a), digests(b)
    if not (a.is_dir() and b.is_dir()):
        if len(da) != len(db):
            print(f"different row counts: {len(da)} vs {len(db)}")
            return 1
        for x, y in zip(da, db, strict=True):
            if x != y:
                print(f"differs: {x.strip()} vs {y.strip()}")
                return 1
        print(f"identical: {len(da)} rows (digests of rankings and trajectories, timings aside)")
        return 0
    rows_a = [json.loads(x) for x in (a / "snapshot.jsonl").read_text(encoding="utf-8").splitlines()]
    rows_b = [json.loads(x) for x in (b / "snapshot.jsonl").read_text(encoding="utf-8").splitlines()]
    if len(rows_a) != len(rows_b):
        print(f"different row counts: {len(rows_a)} vs {len(rows_b)}")
        return 1
    for ra, rb in zip(rows_a, rows_b, strict=True):
        d = first_difference(ra, rb)
        if d:
            print(f"{ra['ranker']} {ra['set']} {ra.get('episode_id')}: differs at {d}")
            return 1
    print(f"identical: {len(rows_a)} rows (rankings and trajectories, timings aside)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("record")
    r.add_argument("out", type=Path)
    r.add_argument("--set", action="append", default=None)
    r.add_argument("--ranker", action="append", default=None)
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args()
    if args.verb == "record":
        record(args.out, args.set or list(SETS), args.ranker or list(RANKERS), args.limit, args.threads)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
