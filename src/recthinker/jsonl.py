"""JSONL files that survive a killed run: durable appends, and reads that drop a truncated last line.

Every resumable writer in the project (evaluation rows, trajectories, rollouts) goes through these two
functions, so a crash mid-line is repaired the same way everywhere.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recthinker.errors import DataError

log = logging.getLogger(__name__)


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
