"""Evaluation harness: run rankers over episodes, one resumable JSONL row per episode, then a summary.

For each ranker, `evaluate` writes `out_dir/<ranker.name>/episodes.jsonl` (one row per episode: ids,
`episode_sha` (a digest of the episode), ranking, validity, target rank, HR/NDCG@{1,5,10}, MRR, latency
and the ranker's `Ranking.info`), then summarises the rows of *the requested episodes* from disk into
`out_dir/summary.{json,md,csv}` and `chart.png`. `out_dir/run.json` records which episode set the folder
holds (`set`, and the digest of every episode ever evaluated there); reading and checking those records,
and matching rows to episodes, is `rundir.py`.

Rules it enforces:
- an invalid `Ranking` scores 0 everywhere (never the candidate order); a *valid* ranking that is not a
  permutation of the candidates is a ranker bug and raises (caught at the episode boundary, see below);
- rows are appended with flush + fsync, and a rerun skips episodes already on disk, so a killed run loses
  at most the episodes in flight; a truncated last line from a crash is dropped;
- a summary counts exactly the requested episodes: rows of other episodes (an earlier, longer `--limit`)
  stay in the file but are not counted, and a folder that holds another episode set (another set name,
  or another episode under the same id) is refused (`EpisodeSetMismatchError`) unless `resume=False`;
- one run at a time per folder: a second `evaluate` into the same folder is refused (`FolderLockedError`);
- an exception inside a ranker is recorded in that episode's row (`error`, valid=False), the run goes on,
  and `evaluate` raises `RecThinkerError` at the end, after writing the summary. A failure of the model
  back end (`LLMServerError`) is recorded the same way with `backend_error: true` -- it is neither a
  model mistake nor counted as one -- and after `max_consecutive_backend_errors` of them in a row the run
  stops (`BackendUnavailableError`) instead of grinding through every episode. Rows with an `error` are
  retried by the next resumed run;
- Ctrl-C (KeyboardInterrupt) stops the run at once: finished rows stay, episodes in flight are dropped,
  no worker starts another episode, and the KeyboardInterrupt propagates.

Usage::

    summary = evaluate([PopRanker(log), agent], episodes, Path("outputs/eval-test"), workers=8)

Why ~560 lines: it holds one concept, a run of `evaluate`, and reads top to bottom: scoring one episode
(the exception boundary), summarising rows, running one ranker over its worker threads (the append, the
back-end failure count, Ctrl-C), then `evaluate` itself; the rules above span all four.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recthinker.errors import DataError, RecThinkerError
from recthinker.eval.report import METRICS, atomic_write_bytes, write_summary
from recthinker.eval.rundir import (
    EpisodeSetMismatchError,
    OutputFolderError,
    check_rows,
    check_run_file,
    clean_rows,
    episode_digest,
    read_rows,
    read_run_file,
    rows_of_episodes,
    set_fingerprint,
    write_run_file,
)
from recthinker.jsonl import FolderLockedError, folder_lock, load_jsonl
from recthinker.llm import ContextOverflowError, LLMServerError
from recthinker.metrics import hit_at_k, mean_ci95, mrr, ndcg_at_k, target_rank
from recthinker.types import Episode, Ranker, Ranking

log = logging.getLogger(__name__)

__all__ = [  # with the errors `evaluate` raises (defined beside what they are about, re-exported here)
    "BackendUnavailableError",
    "EpisodeSetMismatchError",
    "FolderLockedError",
    "OutputFolderError",
    "evaluate",
    "score_rank",
    "summarize_rows",
]

KS = (1, 5, 10)
_BASE_KEYS = (
    "episode_id",
    "episode_sha",
    "user_id",
    "split",
    "subset",
    "target",
    "ranking",
    "valid",
    "note",
    "target_rank",
)
_RESERVED = frozenset(
    (
        *_BASE_KEYS,
        *METRICS,
        "latency_s",
        "error",
        "backend_error",
        "backend_message",
        "moved",
        "unmoved_ndcg@10",
    )
)


class BackendUnavailableError(RecThinkerError):
    """The model back end failed on several episodes in a row, so `evaluate` stopped early."""


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
        "episode_sha": episode_digest(episode),
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
    unmoved = ranking.info.get("unmoved_ranking")
    if ranking.valid and unmoved is not None:  # answer form (c): what the model's own moves changed
        unmoved_rank = target_rank(list(unmoved), episode.target)
        row["moved"] = list(unmoved) != items
        row["unmoved_ndcg@10"] = score_rank(unmoved_rank)["ndcg@10"]
    return row


def is_backend_error(exc: BaseException) -> bool:
    """Whether `exc` is a failure of the model back end (not a model mistake, not our bug).

    A context overflow is the conversation's size, not the server's health: the agent loop turns it into
    an invalid answer, and one that escapes a ranker counts as a ranker error.
    """
    return isinstance(exc, LLMServerError) and not isinstance(exc, ContextOverflowError)


def _run_episode(ranker: Ranker, episode: Episode) -> tuple[str, dict[str, Any]]:
    """Rank one episode; returns (JSONL line, row). Ranker exceptions are caught here, and only here.

    A failed episode's row has `error` (the traceback) and, when the model back end failed,
    `backend_error: true` and `backend_message` (the back end's one-line message).
    """
    start = time.perf_counter()
    try:
        ranking = ranker.rank(episode)
        row = _scored_row(episode, ranking, time.perf_counter() - start)
        line = json.dumps(row) + "\n"  # inside the boundary: non-JSON info is a ranker bug too
    except Exception as exc:
        backend = is_backend_error(exc)
        # a back-end failure is counted in the summary (and 3 in a row stop the run with one line): INFO;
        # any other exception is a bug of the ranker: WARNING
        log.log(
            logging.INFO if backend else logging.WARNING,
            "ranker %s failed on episode %s%s: %r",
            ranker.name,
            episode.episode_id,
            " (model back end)" if backend else "",
            exc,
        )
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
        if backend:
            row["backend_error"] = True
            row["backend_message"] = " ".join(str(exc).split())[:500]
        return json.dumps(row) + "\n", row
    log.debug(
        "%s %s: rank=%s valid=%s %.2fs",
        ranker.name,
        episode.episode_id,
        row["target_rank"],
        row["valid"],
        row["latency_s"],
    )
    return line, row


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and 95% CIs of the per-episode metrics, plus validity, error, latency and tool statistics.

    Rows are sorted by episode_id first, so the result does not depend on the order they were written in.
    An episode whose model back end failed scores 0 like any failed episode, but is counted in
    `backend_errors`, not as an invalid answer: it never reached the model.

    Args:
        rows: Per-episode rows as written by `evaluate` (at least one).

    Returns:
        `n`, one mean per metric, `<metric>_ci95: [lo, hi]`, `invalid_rate` (invalid answers, back-end
        failures excluded), `n_errors` (ranker exceptions), `backend_errors` and `backend_error_rate`
        (episodes the model back end failed), `mean_latency_s`, and when rows carry `tool_calls`:
        `mean_tool_calls` and `tool_error_rate`.

    >>> rows = [dict(episode_id=str(i), valid=True, latency_s=1.0, **score_rank(r)) for i, r in enumerate([1, 3])]
    >>> s = summarize_rows(rows)
    >>> s["n"], s["ndcg@10"], s["hr@1"], s["invalid_rate"], s["backend_errors"]
    (2, 0.75, 0.5, 0.0, 0)
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
    backend = [bool(r.get("backend_error")) for r in rows]
    out["invalid_rate"] = float(
        np.mean([not r["valid"] and not b for r, b in zip(rows, backend, strict=True)])
    )
    out["n_errors"] = sum(1 for r, b in zip(rows, backend, strict=True) if r.get("error") and not b)
    out["backend_errors"] = sum(backend)
    out["backend_error_rate"] = float(np.mean(backend))
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
    with_claims = [r for r in rows if r.get("claims") is not None]
    if with_claims:  # numbers and labels the analysis and plan state, checked against what the model saw
        stated = sum(_count(r["claims"]) for r in with_claims)
        out["claims"] = stated
        out["claim_support"] = (
            sum(_count(r["claims_supported"]) for r in with_claims) / stated if stated else 1.0
        )
    judged = [r for r in rows if r.get("unmoved_ndcg@10") is not None]
    if judged:  # answer form (c): how often the model's promote/demote changed the order, and its worth
        moved = [r for r in judged if r["moved"]]
        out["judged"] = len(judged)
        out["moved_rate"] = len(moved) / len(judged)
        gain, lo, hi = (
            mean_ci95(float(r["ndcg@10"]) - float(r["unmoved_ndcg@10"]) for r in moved)
            if moved
            else (0.0, 0.0, 0.0)
        )
        out["move_gain_ndcg@10"] = gain
        out["move_gain_ndcg@10_ci95"] = [lo, hi]
        out["unmoved_ndcg@10"] = float(np.mean([float(r["unmoved_ndcg@10"]) for r in judged]))
    return out


def _count(value: Any) -> int:
    """Tool counts may be stored as numbers or as lists of calls."""
    return len(value) if isinstance(value, list | tuple) else int(value)


# -- running one ranker ------------------------------------------------------------------------------


@dataclass
class _Progress:
    """What one ranker's run has done so far (shared by its worker threads, guarded by `lock`)."""

    limit: int  # stop after this many back-end failures in a row
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # start no further episode
    closed: bool = False  # the file is closed: drop results that still arrive
    done: int = 0  # rows written with a result
    failed: int = 0  # rows with a ranker exception (back-end failures included)
    backend_failed: int = 0
    in_a_row: int = 0  # consecutive back-end failures, in the order rows were written
    last_backend: str = ""
    gave_up: int = 0  # > 0: stopped after this many back-end failures in a row
    crash: BaseException | None = None  # KeyboardInterrupt / SystemExit / a write error in a worker


def _run_ranker(
    ranker: Ranker, todo: Sequence[Episode], path: Path, workers: int, progress: bool | None, limit: int
) -> _Progress:
    """Rank `todo`, appending one row per episode to `path`; return what happened.

    Workers are daemon threads, so a Ctrl-C returns at once: no worker starts another episode, and
    episodes still in flight are dropped when they finish (the file is closed by then).
    """
    state = _Progress(limit=limit)
    bar = tqdm(
        total=len(todo),
        desc=f"eval {ranker.name}",
        unit="ep",
        disable=None if progress is None else not progress,
    )
    with path.open("a", encoding="utf-8") as f, bar:

        def task(episode: Episode) -> None:
            line, row = _run_episode(ranker, episode)
            with state.lock:  # one writer at a time: rows never interleave
                if state.closed:
                    return
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
                bar.update(1)
                if not row.get("error"):
                    state.done += 1
                    state.in_a_row = 0
                    return
                state.failed += 1
                if not row.get("backend_error"):
                    state.in_a_row = 0
                    return
                state.backend_failed += 1
                state.in_a_row += 1
                state.last_backend = row["backend_message"]
                if state.in_a_row >= state.limit and not state.gave_up:
                    state.gave_up = state.in_a_row
                    state.stop.set()

        try:
            if workers == 1 or len(todo) == 1:
                for episode in todo:
                    if state.stop.is_set():
                        break
                    task(episode)
            else:
                _run_threads(task, todo, workers, state, ranker.name)
        finally:
            with state.lock:  # a Ctrl-C lands here too: nothing is written after this point
                state.closed = True
                state.stop.set()
    if state.crash is not None:
        raise state.crash
    return state


def _run_threads(task, todo: Sequence[Episode], workers: int, state: _Progress, name: str) -> None:
    queue: Iterator[Episode] = iter(todo)
    take = threading.Lock()

    def worker() -> None:
        try:
            while not state.stop.is_set():
                with take:
                    episode = next(queue, None)
                if episode is None:
                    return
                task(episode)
        except BaseException as exc:  # noqa: BLE001 -- a ranker's KeyboardInterrupt or a write error:
            with state.lock:  # stop everyone, re-raised by _run_ranker in the calling thread
                state.crash = state.crash or exc
            state.stop.set()

    threads = [
        threading.Thread(target=worker, name=f"eval-{name}-{k}", daemon=True)
        for k in range(min(workers, len(todo)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # interruptible: Ctrl-C propagates from here, the workers are not waited for


def _check_inputs(rankers: Sequence[Ranker], episodes: Sequence[Episode], workers: int, limit: int) -> None:
    if not rankers:
        raise ValueError("evaluate needs at least one ranker")
    if not episodes:
        raise ValueError("evaluate needs at least one episode")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if limit < 1:
        raise ValueError(f"max_consecutive_backend_errors must be >= 1, got {limit}")
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


def _merged_summary(
    out_dir: Path, names: Sequence[str], episodes: Sequence[Episode], keep_old: bool
) -> dict[str, dict[str, Any]]:
    """Summaries of the requested episodes, from disk, for `names` and the rankers of an earlier summary.json.

    An earlier ranker whose folder is gone keeps its old entry when `keep_old` (same episode set).
    """
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
        rows = rows_of_episodes(read_rows(path), episodes) if path.exists() else []
        if rows:
            merged[name] = summarize_rows(rows)
        elif name in old and keep_old and not path.exists():
            merged[name] = old[name]
    return merged


def _backend_name(ranker: Ranker) -> str:
    """The chat model a ranker drives, when it says (its repr names the server URL), else its name."""
    for obj in (ranker, getattr(ranker, "inner", None)):
        model = getattr(obj, "model", None)
        if model is not None and type(model).__repr__ is not object.__repr__:
            return repr(model)
    return f"the back end of ranker {ranker.name!r}"


def evaluate(
    rankers: Sequence[Ranker],
    episodes: Sequence[Episode],
    out_dir: Path,
    *,
    resume: bool = True,
    workers: int = 1,
    progress: bool | None = None,
    set_name: str | None = None,
    max_consecutive_backend_errors: int = 3,
) -> dict[str, dict[str, Any]]:
    """Run every ranker over every episode, write per-episode rows and a summary report.

    Args:
        rankers: Rankers with unique, path-safe `name`s.
        episodes: Episodes with unique `episode_id`s.
        out_dir: Output directory; `<ranker.name>/episodes.jsonl` per ranker, summary files and run.json
            on top. Locked for the duration of the call.
        resume: Keep rows already on disk and only run missing (or failed) episodes; False starts over.
        workers: Episodes ranked concurrently per ranker (threads; for rankers waiting on an LLM server).
        progress: Show a progress bar; None shows it only when stderr is a terminal.
        set_name: What the episodes are (e.g. "ml-1m:dense/test"), recorded in run.json; resuming into a
            folder recorded with another name is refused.
        max_consecutive_backend_errors: Stop after this many episodes in a row failed on the model back end.

    Returns:
        `{ranker_name: stats}` for every ranker in `out_dir/summary.json` (every ranker with rows for the
        requested episodes recomputed from disk over exactly those episodes), exactly as written there.

    Raises:
        OutputFolderError: `out_dir` cannot be created.
        EpisodeSetMismatchError: Resuming into a folder that holds another episode set.
        FolderLockedError: Another run is writing into `out_dir`.
        BackendUnavailableError: The model back end failed on `max_consecutive_backend_errors` episodes in
            a row; the finished rows are kept, the summary is not rewritten.
        RecThinkerError: A ranker raised on at least one episode (after all rows and the summary are written).
        KeyboardInterrupt: Ctrl-C; the finished rows are kept.
    """
    out_dir = Path(out_dir)
    _check_inputs(rankers, episodes, workers, max_consecutive_backend_errors)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputFolderError(f"output folder {out_dir} cannot be created: a file is in the way") from exc
    except OSError as exc:
        raise OutputFolderError(f"output folder {out_dir} cannot be created: {exc.strerror}") from exc
    with folder_lock(out_dir, "evaluate run"):
        return _evaluate_locked(
            rankers, episodes, out_dir, resume, workers, progress, set_name, max_consecutive_backend_errors
        )


def _evaluate_locked(
    rankers: Sequence[Ranker],
    episodes: Sequence[Episode],
    out_dir: Path,
    resume: bool,
    workers: int,
    progress: bool | None,
    set_name: str | None,
    limit: int,
) -> dict[str, dict[str, Any]]:
    wanted = {e.episode_id: e for e in episodes}
    digests = {eid: episode_digest(e) for eid, e in wanted.items()}
    run = read_run_file(out_dir) if resume else {}
    check_run_file(out_dir, run, set_name, digests)
    # every check before any write: a refused run changes nothing
    paths = {r.name: out_dir / r.name / "episodes.jsonl" for r in rankers}
    on_disk: dict[str, tuple[list[dict[str, Any]], bool]] = {}
    if resume:
        for name, path in paths.items():
            if path.exists():
                on_disk[name] = load_jsonl(path)
                check_rows(path, on_disk[name][0], wanted, digests)
    run = {
        "set": set_name if set_name is not None else run.get("set"),
        "episodes": {**run.get("episodes", {}), **digests},
        "summary_episodes": run.get("summary_episodes"),
    }
    write_run_file(out_dir, run)

    results: dict[str, _Progress] = {}
    for ranker in rankers:
        path = paths[ranker.name]
        path.parent.mkdir(parents=True, exist_ok=True)
        rows, clean = on_disk.get(ranker.name, ([], True))
        kept = clean_rows(rows)
        if not resume or not path.exists() or not clean or len(kept) != len(rows):
            atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        done = {r["episode_id"] for r in rows_of_episodes(kept, episodes)}
        todo = [e for e in episodes if e.episode_id not in done]
        log.info("%s: %d episodes to rank (%d already done)", ranker.name, len(todo), len(done))
        start = time.perf_counter()
        state = _run_ranker(ranker, todo, path, workers, progress, limit)
        results[ranker.name] = state
        log.info("%s: ranked %d episodes in %.1fs", ranker.name, len(todo), time.perf_counter() - start)
        if state.gave_up:
            n_run = state.done + state.failed
            raise BackendUnavailableError(
                f"evaluate stopped: the model back end ({_backend_name(ranker)}) failed on {state.gave_up} "
                f"episodes in a row ({state.backend_failed} back-end failures in the {n_run} episodes ranker "
                f"{ranker.name} ran; last error: {state.last_backend}); {len(todo) - n_run} episodes were not run; the "
                f"{len(done) + state.done} finished rows are kept in {path} -- fix the back end and run the "
                "same command to resume"
            )
    summary = _merged_summary(out_dir, [r.name for r in rankers], episodes, keep_old=resume)
    write_summary(summary, out_dir)
    run["summary_episodes"] = {"n": len(episodes), "sha256": set_fingerprint(digests)}
    write_run_file(out_dir, run)
    for name in results:
        s = summary[name]
        log.info(
            "%s: n=%d NDCG@10=%.4f HR@10=%.4f MRR=%.4f invalid=%.1f%% backend errors=%d",
            name,
            s["n"],
            s["ndcg@10"],
            s["hr@10"],
            s["mrr"],
            100 * s["invalid_rate"],
            s["backend_errors"],
        )
    n_failed = sum(r.failed for r in results.values())
    if n_failed:
        n_backend = sum(r.backend_failed for r in results.values())
        detail = ", ".join(f"{name}: {r.failed}" for name, r in results.items() if r.failed)
        raise RecThinkerError(
            f"{n_failed} episode(s) failed with an exception ({detail}; {n_backend} of them on the model "
            f"back end); tracebacks are in the `error` field of {out_dir}/<ranker>/episodes.jsonl, and a "
            "resumed run retries them"
        )
    return summary
