"""What an evaluation output folder holds: `run.json` (which episode set) and which rows belong to which episodes.

`evaluate` (`harness.py`) writes one row per episode into `<out>/<ranker>/episodes.jsonl`; a rerun resumes
there. So that a resumed run, or a summary, never mixes results of different episodes, every row carries
`episode_sha` (`episode_digest`: ids, history, candidates, target, split), and `run.json` records the set's
name and the digest of every episode ever evaluated in the folder:

    rows = rows_of_episodes(read_rows(out / "pop" / "episodes.jsonl"), episodes)   # one row per episode

`check_run_file` and `check_rows` refuse a folder that holds another episode set (`EpisodeSetMismatchError`)
before anything is written; `clean_rows` keeps what a resumed run starts from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recthinker.errors import DataError, RecThinkerError
from recthinker.eval.report import atomic_write_bytes
from recthinker.jsonl import load_jsonl
from recthinker.types import Episode

RUN_FILE = "run.json"  # which episode set an output folder holds


class OutputFolderError(RecThinkerError):
    """The output folder cannot be used (it cannot be created, or it holds another episode set)."""


class EpisodeSetMismatchError(OutputFolderError):
    """The output folder holds rows of a different episode set than the one requested."""


def episode_digest(episode: Episode) -> str:
    """A short sha256 of everything that defines the task (ids, history, candidates, target, split).

    >>> e = Episode(episode_id="u1/test", user_id="u1", history=("a",), candidates=("b", "c"), target="c")
    >>> from dataclasses import replace
    >>> len(episode_digest(e)), episode_digest(e) == episode_digest(replace(e, target="b"))
    (16, False)
    """
    text = json.dumps(episode.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def set_fingerprint(digests: Mapping[str, str]) -> str:
    """sha256 over the (episode_id, digest) pairs of a set, independent of order."""
    text = "".join(f"{eid}\t{digests[eid]}\n" for eid in sorted(digests))
    return hashlib.sha256(text.encode()).hexdigest()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Read an episodes.jsonl file, tolerating (and dropping) a truncated last line from a crash.

    Args:
        path: The JSONL file.

    Returns:
        One dict per complete row, in file order (every row on disk, whatever episode set it belongs to;
        `rows_of_episodes` keeps those of one set).

    Raises:
        DataError: A line other than the last is not valid JSON.
    """
    return load_jsonl(Path(path))[0]


def _matches(row: Mapping[str, Any], episode: Episode, digest: str) -> bool:
    """Whether a row on disk is a result for this very episode (not another one under the same id)."""
    if "episode_sha" in row:
        return row["episode_sha"] == digest
    # rows written before episode_sha existed: compare what they carry
    if row.get("user_id") != episode.user_id or row.get("target") != episode.target:
        return False
    return not row.get("valid") or sorted(row.get("ranking", ())) == sorted(episode.candidates)


def rows_of_episodes(rows: Sequence[Mapping[str, Any]], episodes: Sequence[Episode]) -> list[dict[str, Any]]:
    """The rows that are results for `episodes`: one per episode that has one, in episode order.

    Rows of other episodes, and rows under a requested id that were made for a different episode (other
    candidates or target), are left out. Of several rows for one episode the first without an `error`
    wins, else the last one.

    Args:
        rows: Rows as read by `read_rows`.
        episodes: The episodes to keep rows of.
    """
    digests = {e.episode_id: episode_digest(e) for e in episodes}
    by_id = {e.episode_id: e for e in episodes}
    chosen: dict[str, dict[str, Any]] = {}
    for row in rows:
        eid = row.get("episode_id")
        if eid not in by_id or not _matches(row, by_id[eid], digests[eid]):
            continue
        if eid not in chosen or chosen[eid].get("error"):
            chosen[eid] = dict(row)
    return [chosen[e.episode_id] for e in episodes if e.episode_id in chosen]


# -- refusing another episode set, before a resumed run writes anything ---------------------------------


def _refuse(out_dir: Path, what: str) -> EpisodeSetMismatchError:
    return EpisodeSetMismatchError(
        f"{out_dir} holds results of a different episode set ({what}); choose another output folder "
        "(--out), or pass --no-resume to start over there"
    )


def read_run_file(out_dir: Path) -> dict[str, Any]:
    """The folder's run.json (`set`, `episodes`: id -> digest, `summary_episodes`), {} when it has none."""
    path = out_dir / RUN_FILE
    if not path.exists():
        return {}
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); delete it or pass --no-resume") from exc
    if not isinstance(run, dict) or not isinstance(run.get("episodes", {}), dict):
        raise DataError(f"{path}: not a run record (no `episodes` object); delete it or pass --no-resume")
    return run


def write_run_file(out_dir: Path, run: Mapping[str, Any]) -> None:
    """Replace the folder's run.json atomically."""
    atomic_write_bytes(out_dir / RUN_FILE, (json.dumps(run, indent=1) + "\n").encode())


def check_run_file(
    out_dir: Path, run: Mapping[str, Any], set_name: str | None, digests: Mapping[str, str]
) -> None:
    """Refuse when the folder's recorded episode set is not the requested one (resume only)."""
    old_set = run.get("set")
    if set_name is not None and old_set is not None and old_set != set_name:
        raise _refuse(out_dir, f"{old_set!r}, not {set_name!r}")
    known: dict[str, str] = run.get("episodes", {})
    for eid, digest in digests.items():
        if eid in known and known[eid] != digest:
            raise _refuse(out_dir, f"episode {eid!r} there has other candidates, history or target")
    if known and not known.keys() & digests.keys():
        raise _refuse(out_dir, f"none of its {len(known)} episodes is among the {len(digests)} requested")


def check_rows(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    wanted: Mapping[str, Episode],
    digests: Mapping[str, str],
) -> None:
    """Refuse a ranker file whose rows are results for other episodes than the requested ones."""
    for lineno, row in enumerate(rows, start=1):
        eid = row.get("episode_id")
        if eid in wanted and not _matches(row, wanted[eid], digests[eid]):
            raise _refuse(path.parent.parent, f"row {lineno} of {path}: episode {eid!r} differs")
    if rows and not any(r.get("episode_id") in wanted for r in rows):
        raise _refuse(path.parent.parent, f"none of the {len(rows)} rows of {path} is a requested episode")


def clean_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows to keep on resume: no failed rows (they are retried) and one row per episode id."""
    kept: list[dict[str, Any]] = []
    done: set[str] = set()
    for row in rows:
        if row.get("error") or row["episode_id"] in done:
            continue
        kept.append(row)
        done.add(row["episode_id"])
    return kept
