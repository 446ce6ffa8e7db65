"""JSONL files that survive a killed run: durable appends, reads that drop a truncated last line, and a
folder lock that keeps a second writer out.

Every resumable writer in the project (evaluation rows, trajectories, rollouts) goes through these
functions, so a crash mid-line is repaired the same way everywhere, and two runs never append to the same
files at once (`folder_lock`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recthinker.errors import DataError, RecThinkerError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"  # the lock file `folder_lock` creates in the folder it guards


class FolderLockedError(RecThinkerError):
    """Another run (process or thread) holds the lock of the output folder."""


@contextmanager
def folder_lock(folder: Path, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on `folder` for the block; raise `FolderLockedError` at once if it is taken.

    The lock is an `fcntl.flock` on `folder/.lock`, which holds the owner's pid (for the error message).
    The kernel drops the lock when the owner closes the file or dies, so a killed run never leaves a stale
    lock behind; the file itself stays. Two opens in one process exclude each other too (threads).

    Args:
        folder: The folder to guard (must exist).
        what: What holds the lock, for the message ("evaluate run").
    """
    path = Path(folder) / LOCK_NAME
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 -- closed in the finally below
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            raise FolderLockedError(
                f"{folder} is in use by another {what} (pid {owner}): wait for it to finish, "
                "or choose another output folder"
            ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows durably (flush + fsync) so a killed run loses at most the row in flight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Rows of `path` and whether the file was clean (no dropped last line, ends with a newline).

    Blank lines are skipped; an unparseable *last* line (a crash mid-write) is dropped with a warning; any
    other unparseable line is a `DataError` naming the file and line.
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    rows: list[dict[str, Any]] = []
    clean = text == "" or text.endswith("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                log.warning("%s: dropping truncated last line %d (interrupted run)", path, lineno)
                clean = False
                continue
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
    return rows, clean
