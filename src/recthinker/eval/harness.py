"""Evaluation harness: run rankers over episodes, one resumable JSONL row per episode, then a summary.

For each ranker, `evaluate` writes `out_dir/<ranker.name>/episodes.jsonl` (one row per episode: ids,
ranking, validity, target rank, HR/NDCG@{1,5,10}, MRR, latency and the ranker's `Ranking.info`), then
summarises every ranker's rows from disk into `out_dir/summary.{json,md,csv}` and `chart.png`.

Rules it enforces:
- an invalid `Ranking` scores 0 everywhere (never the candidate order); a *valid* ranking that is not a
  permutation of the candidates is a ranker bug and raises (caught at the episode boundary, see below);
- rows are appended with flush + fsync, and a rerun skips episodes already on disk, so a killed run loses
  at most the episodes in flight; a truncated last line from a crash is dropped;
- an exception inside a ranker is recorded in that episode's row (`error`, valid=False), the run goes on,
  and `evaluate` raises `RecThinkerError` at the end, after writing the summary. Rows with an `error` are
  retried by the next resumed run.

Usage::

    summary = evaluate([PopRanker(log), agent], episodes, Path("outputs/eval-test"), workers=8)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recthinker.errors import DataError, RecThinkerError
from recthinker.eval.metrics import hit_at_k, mean_ci95, mrr, ndcg_at_k, target_rank
from recthinker.eval.report import METRICS, atomic_write_bytes, write_summary
from recthinker.jsonl import load_jsonl
from recthinker.types import Episode, Ranker, Ranking

log = logging.getLogger(__name__)

KS = (1, 5, 10)
_BASE_KEYS = ("episode_id", "user_id", "split", "subset", "target", "ranking", "valid", "note", "target_rank")
_RESERVED = frozenset((*_BASE_KEYS, *METRICS, "latency_s", "error"))


def score_rank(rank: int | None) -> dict[str, float]:
    """All per-episode metrics for a target rank (None -> all zeros).

    >>> score_rank(3)["ndcg@5"], score_rank(None)["mrr"]
    (0.5, 0.0)
    """
    row = {f"hr@{k}": hit_at_k(rank, k) for k in KS}
    row.update({f"ndcg@{k}": ndcg_at_k(rank, k) for k in KS})
    row["mrr"] = mrr(rank)
    return row


def _episode_fields(episode: Episode) -> dict[str, Any]:
    return {
        "episode_id": episode.episode_id,
        "user_id": episode.user_id,
        "split": episode.split,
        "subset": episode.subset,
        "target": episode.target,
    }


def _scored_row(episode: Episode, ranking: Ranking, latency_s: float) -> dict[str, Any]:
    if not isinstance(ranking, Ranking):
        raise TypeError(f"rank() must return a Ranking, got {type(ranking).__name__}")
    items = list(ranking.items)
    if ranking.valid and (len(items) != len(episode.candidates) or set(items) != set(episode.candidates)):
        missing = sorted(set(episode.candidates) - set(items))[:5]
        extra = sorted(set(items) - set(episode.candidates))[:5]
        raise ValueError(
            f"valid ranking for episode {episode.episode_id!r} is not a permutation of its "
            f"{len(episode.candidates)} candidates (got {len(items)} items; missing {missing}, extra {extra})"
        )
    rank = target_rank(items, episode.target) if ranking.valid else None
    row = {
        **_episode_fields(episode),
        "ranking": items,
        "valid": ranking.valid,
        "note": ranking.note,
        "target_rank": rank,
        **score_rank(rank),
        "latency_s": latency_s,
    }
    clash = _RESERVED.intersection(ranking.info)
    if clash:
        raise ValueError(f"Ranking.info keys {sorted(clash)} clash with harness columns")
    row.update(ranking.info)
    return row


def _run_episode(ranker: Ranker, episode: Episode) -> tuple[str, bool]:
    """Rank one episode; returns (JSONL line, failed). Ranker exceptions are caught here, and only here."""
    start = time.perf_counter()
    try:
        ranking = ranker.rank(episode)
        row = _scored_row(episode, ranking, time.perf_counter() - start)
        line = json.dumps(row) + "\n"  # inside the boundary: non-JSON info is a ranker bug too
    except Exception as exc:
        log.warning("ranker %s failed on episode %s: %r", ranker.name, episode.episode_id, exc)
        row = {
            **_episode_fields(episode),
            "ranking": [],
            "valid": False,
            "note": "",
            "target_rank": None,
            **score_rank(None),
            "latency_s": time.perf_counter() - start,
            "error": traceback.format_exc(),
        }
        return json.dumps(row) + "\n", True
    log.debug(
        "%s %s: rank=%s valid=%s %.2fs",
        ranker.name,
        episode.episode_id,
        row["target_rank"],
        row["valid"],
        row["latency_s"],
    )
    return line, False


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Read an episodes.jsonl file, tolerating (and dropping) a truncated last line from a crash.

    Args:
        path: The JSONL file.

    Returns:
        One dict per complete row, in file order.

    Raises:
        DataError: A line other than the last is not valid JSON.
    """
    return load_jsonl(Path(path))[0]


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and 95% CIs of the per-episode metrics, plus validity, latency and tool statistics.

    Rows are sorted by episode_id first, so the result does not depend on the order they were written in.

    Args:
        rows: Per-episode rows as written by `evaluate` (at least one).

    Returns:
        `n`, one mean per metric, `<metric>_ci95: [lo, hi]`, `invalid_rate`, `n_errors`,
        `mean_latency_s`, and when rows carry `tool_calls`: `mean_tool_calls` and `tool_error_rate`.

    >>> rows = [dict(episode_id=str(i), valid=True, latency_s=1.0, **score_rank(r)) for i, r in enumerate([1, 3])]
    >>> s = summarize_rows(rows)
    >>> s["n"], s["ndcg@10"], s["hr@1"], s["invalid_rate"]
    (2, 0.75, 0.5, 0.0)
    """
    if not rows:
        raise ValueError("summarize_rows needs at least one row")
    rows = sorted(rows, key=lambda r: str(r.get("episode_id", "")))
    out: dict[str, Any] = {"n": len(rows)}
    cis: dict[str, list[float]] = {}
    for metric in METRICS:
        mean, lo, hi = mean_ci95(float(r[metric]) for r in rows)
        out[metric] = mean
        cis[f"{metric}_ci95"] = [lo, hi]
    out.update(cis)
    out["invalid_rate"] = float(np.mean([not r["valid"] for r in rows]))
    out["n_errors"] = sum(1 for r in rows if r.get("error"))
    out["mean_latency_s"] = float(np.mean([float(r.get("latency_s", 0.0)) for r in rows]))
    with_tools = [r for r in rows if "tool_calls" in r]
    if with_tools:
        calls = [_count(r["tool_calls"]) for r in with_tools]
        errors = sum(_count(r.get("tool_errors", 0)) for r in with_tools)
        out["mean_tool_calls"] = float(np.mean(calls))
        out["tool_error_rate"] = errors / sum(calls) if sum(calls) else 0.0
    taus = [float(r["tau_vs_signal"]) for r in rows if r.get("tau_vs_signal") is not None]
    if taus:  # Kendall tau between the ranking and the strongest tool signal (LLM rankers): evidence use
        out["mean_tau_vs_signal"] = float(np.mean(taus))
    return out


def _count(value: Any) -> int:
    """Tool counts may be stored as numbers or as lists of calls."""
    return len(value) if isinstance(value, list | tuple) else int(value)


def _prepare_file(path: Path, resume: bool) -> set[str]:
    """Make `path` a clean JSONL file to append to; return the episode_ids already done there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not resume or not path.exists():
        atomic_write_bytes(path, b"")
        return set()
    rows, clean = load_jsonl(path)
    kept: list[dict[str, Any]] = []
    done: set[str] = set()
    for row in rows:
        if row.get("error") or row["episode_id"] in done:  # retry failed episodes; never keep duplicates
            continue
        kept.append(row)
        done.add(row["episode_id"])
    if not clean or len(kept) != len(rows):
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return done


def _run_ranker(
    ranker: Ranker, todo: Sequence[Episode], path: Path, workers: int, progress: bool | None
) -> int:
    """Rank `todo`, appending one row per episode to `path`; return how many episodes failed."""
    lock = threading.Lock()
    failed = 0
    bar = tqdm(
        total=len(todo),
        desc=f"eval {ranker.name}",
        unit="ep",
        disable=None if progress is None else not progress,
    )
    with path.open("a", encoding="utf-8") as f, bar:

        def task(episode: Episode) -> None:
            nonlocal failed
            line, episode_failed = _run_episode(ranker, episode)
            with lock:  # one writer at a time: rows never interleave
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
                failed += episode_failed
                bar.update(1)

        if workers == 1:
            for episode in todo:
                task(episode)
            return failed
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"eval-{ranker.name}")
        try:
            for future in [pool.submit(task, e) for e in todo]:
                future.result()
        finally:  # on Ctrl-C or a write error, do not start the queued episodes
            pool.shutdown(wait=True, cancel_futures=True)
    return failed


def _check_inputs(rankers: Sequence[Ranker], episodes: Sequence[Episode], workers: int) -> None:
    if not rankers:
        raise ValueError("evaluate needs at least one ranker")
    if not episodes:
        raise ValueError("evaluate needs at least one episode")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    unlabelled = [e.episode_id for e in episodes if e.target is None]
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} episodes have no target to evaluate against, e.g. {unlabelled[0]!r}"
        )
    names = [getattr(r, "name", None) for r in rankers]
    for ranker, name in zip(rankers, names, strict=True):
        if not isinstance(ranker, Ranker):
            raise TypeError(f"{ranker!r} does not implement the Ranker protocol (name, rank)")
        if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
            raise ValueError(f"ranker name {name!r} cannot be used as a directory name")
    if len(set(names)) != len(names):
        raise ValueError(f"ranker names must be unique, got {names}")
    ids = [e.episode_id for e in episodes]
    if len(set(ids)) != len(ids):
        raise ValueError("episode_ids must be unique")


def _merged_summary(out_dir: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Summaries of `names` from disk, merged into any earlier summary.json in `out_dir`."""
    summary_path = out_dir / "summary.json"
    old: dict[str, dict[str, Any]] = {}
    if summary_path.exists():
        try:
            old = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{summary_path}: not valid JSON ({exc})") from exc
    merged: dict[str, dict[str, Any]] = {}
    for name in [*old, *(n for n in names if n not in old)]:
        path = out_dir / name / "episodes.jsonl"
        rows = read_rows(path) if path.exists() else []
        if rows:
            merged[name] = summarize_rows(rows)
        elif name in old:
            merged[name] = old[name]
    return merged


def evaluate(
    rankers: Sequence[Ranker],
    episodes: Sequence[Episode],
    out_dir: Path,
    *,
    resume: bool = True,
    workers: int = 1,
    progress: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every ranker over every episode, write per-episode rows and a summary report.

    Args:
        rankers: Rankers with unique, path-safe `name`s.
        episodes: Episodes with unique `episode_id`s.
        out_dir: Output directory; `<ranker.name>/episodes.jsonl` per ranker, summary files on top.
        resume: Keep rows already on disk and only run missing (or failed) episodes; False starts over.
        workers: Episodes ranked concurrently per ranker (threads; for rankers waiting on an LLM server).
        progress: Show a progress bar; None shows it only when stderr is a terminal.

    Returns:
        `{ranker_name: stats}` for every ranker in `out_dir/summary.json` (this call's rankers
        recomputed from disk, earlier ones kept), exactly as written there.

    Raises:
        RecThinkerError: A ranker raised on at least one episode (after all rows and the summary are written).
    """
    out_dir = Path(out_dir)
    _check_inputs(rankers, episodes, workers)
    failures: dict[str, int] = {}
    for ranker in rankers:
        path = out_dir / ranker.name / "episodes.jsonl"
        done = _prepare_file(path, resume)
        todo = [e for e in episodes if e.episode_id not in done]
        log.info(
            "%s: %d episodes to rank (%d already done)", ranker.name, len(todo), len(episodes) - len(todo)
        )
        start = time.perf_counter()
        failures[ranker.name] = _run_ranker(ranker, todo, path, workers, progress)
        log.info("%s: ranked %d episodes in %.1fs", ranker.name, len(todo), time.perf_counter() - start)
    summary = _merged_summary(out_dir, [r.name for r in rankers])
    write_summary(summary, out_dir)
    for name in failures:
        s = summary[name]
        log.info(
            "%s: n=%d NDCG@10=%.4f HR@10=%.4f MRR=%.4f invalid=%.1f%%",
            name,
            s["n"],
            s["ndcg@10"],
            s["hr@10"],
            s["mrr"],
            100 * s["invalid_rate"],
        )
    n_failed = sum(failures.values())
    if n_failed:
        detail = ", ".join(f"{name}: {n}" for name, n in failures.items() if n)
        raise RecThinkerError(
            f"{n_failed} episode(s) failed with an exception ({detail}); tracebacks are in the `error` "
            f"field of {out_dir}/<ranker>/episodes.jsonl, and a resumed run retries them"
        )
    return summary
