"""Readers for RecBole atomic files (`.inter`, `.item`, `.user`, `.random`) and plain CSV/Parquet tables.

An atomic file is tab-separated with a typed header (`name:token`, `name:token_seq`, `name:float`,
`name:float_seq`). Titles contain quote characters, so quoting is disabled. Every problem is reported as a
`DataError` naming the file, the line (1-based, header = line 1) and the field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recthinker.errors import DataError

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


def read_header(path: Path) -> dict[str, str]:
    """Field name -> type from the first line of an atomic file."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").rstrip("\r")
    fields: dict[str, str] = {}
    for col, spec in enumerate(header.split("\t"), start=1):
        name, sep, ftype = spec.rpartition(":")
        if not sep or not name:
            raise DataError(f"{path}:1: header column {col} {spec!r} is not of the form name:type")
        if ftype not in FIELD_TYPES:
            raise DataError(
                f"{path}:1: field {name!r} has unknown type {ftype!r} (expected one of {FIELD_TYPES})"
            )
        if name in fields:
            raise DataError(f"{path}:1: field {name!r} appears twice in the header")
        fields[name] = ftype
    return fields


def _find_bad_line(path: Path, n_fields: int) -> tuple[int, int]:
    """(line number, field count) of the first line whose field count differs from the header's."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if lineno > 1 and line and line.count("\t") + 1 != n_fields:
                return lineno, line.count("\t") + 1
    return 0, n_fields


def read_atomic(path: str | Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read one atomic file into a DataFrame with untyped column names.

    token -> str, float -> float64, token_seq -> list[str] (space-separated), float_seq -> list[float].
    Blank lines are skipped.

    Raises:
        DataError: unreadable file, malformed header, wrong field count, bad float, missing required field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fields = read_header(path)
    missing = [r for r in required if r not in fields]
    if missing:
        raise DataError(f"{path}:1: missing required field(s) {missing}; header has {list(fields)}")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from e
    try:
        df = pd.read_csv(
            io.StringIO(raw),
            sep="\t",
            header=None,
            skiprows=1,
            names=list(fields),
            dtype=str,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=True,
            engine="c",
        )
    except pd.errors.ParserError as e:
        lineno, got = _find_bad_line(path, len(fields))
        raise DataError(f"{path}:{lineno}: expected {len(fields)} tab-separated fields, found {got}") from e
    # Lines with too few fields come back padded with "" by the C parser: find them explicitly.
    if len(df) and len(fields) > 1:
        short = raw.count("\n")  # cheap pre-check before the exact scan
        if short and (df.iloc[:, -1] == "").any():
            lineno, got = _find_bad_line(path, len(fields))
            if lineno:
                raise DataError(f"{path}:{lineno}: expected {len(fields)} tab-separated fields, found {got}")
    line_numbers = _line_numbers(raw, len(df))
    for name, ftype in fields.items():
        col = df[name]
        if ftype == "float":
            values = pd.to_numeric(col.replace("", np.nan), errors="coerce")
            bad = values.isna() & (col != "")
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{path}:{line_numbers[i]}: field {name!r}: {col.iloc[i]!r} is not a number")
            df[name] = values.astype("float64")
        elif ftype == "token_seq":
            df[name] = [v.split() for v in col]
        elif ftype == "float_seq":
            try:
                df[name] = [[float(x) for x in v.split()] for v in col]
            except ValueError as e:
                i = next(j for j, v in enumerate(col) if not _floats_ok(v))
                raise DataError(
                    f"{path}:{line_numbers[i]}: field {name!r}: {col.iloc[i]!r} is not numbers"
                ) from e
        else:
            df[name] = col.astype(object)
    for name in required:
        if fields[name] == "token":
            empty = (df[name] == "").to_numpy()
            if empty.any():
                i = int(np.flatnonzero(empty)[0])
                raise DataError(f"{path}:{line_numbers[i]}: field {name!r} is empty")
    df.attrs["line_numbers"] = line_numbers
    df.attrs["path"] = str(path)
    return df


def _floats_ok(v: str) -> bool:
    try:
        [float(x) for x in v.split()]
    except ValueError:
        return False
    return True


def _line_numbers(raw: str, n_rows: int) -> np.ndarray:
    """1-based file line number of each data row (blank lines are skipped by the parser)."""
    lines = raw.split("\n")[1:]
    nums = np.array([i + 2 for i, line in enumerate(lines) if line.strip("\r") != ""], dtype=np.int64)
    return nums[:n_rows]


def read_random(path: str | Path) -> dict[str, list[str]]:
    """A `.random` candidate file: one line per user, `user_id<TAB>space-separated item ids`.

    A first line that looks like a typed header (`user_id:token ...`) is skipped.
    """
    path = Path(path)
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            if lineno == 1 and ":token" in line:
                continue
            user, sep, items = line.partition("\t")
            if not sep or not user:
                raise DataError(f"{path}:{lineno}: expected 'user_id<TAB>item ids', got {line[:80]!r}")
            if user in out:
                raise DataError(f"{path}:{lineno}: user {user!r} listed twice")
            out[user] = list(dict.fromkeys(items.split()))  # a repeated id counts once
    return out


def read_table(
    path: str | Path, columns: Mapping[str, str] | None = None, sep: str | None = None
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table and rename columns (`columns` maps our name -> the file's name).

    Raises:
        DataError: unreadable file, or a mapped column that the file lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(
                path,
                sep=sep or ("\t" if path.suffix in (".tsv", ".tab") else ","),
                dtype=str,
                keep_default_na=False,
            )
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read table: {e}") from e
    mapping = dict(columns or {})
    missing = [theirs for theirs in mapping.values() if theirs not in df.columns]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {missing}; the file has {list(df.columns)}")
    df = df.rename(columns={theirs: ours for ours, theirs in mapping.items()})
    df.attrs["line_numbers"] = np.arange(2, len(df) + 2)
    df.attrs["path"] = str(path)
    return df
