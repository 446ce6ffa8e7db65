"""Readers for RecBole atomic files (`.inter`, `.item`, `.user`, `.random`) and plain CSV/Parquet tables.

An atomic file is tab-separated with a typed header (`name:token`, `name:token_seq`, `name:float`,
`name:float_seq`). Titles contain quote characters, so quoting is disabled. Every problem is a `DataError`
naming the file, the line (1-based, header = line 1) and the field. The rules:

- **Bytes.** UTF-8 (a BOM is fine). A file that is not valid UTF-8 is read as cp1252 (latin-1 where cp1252
  leaves a byte undefined; Latin-1 is the original MovieLens encoding), with one WARNING naming the file and
  the encoding; UTF-16 with a BOM is read too. Compressed files (gzip, bzip2, xz, zip, zstd: by their magic
  bytes, whatever the name), Parquet files and binary files (a NUL byte) are errors that say what the file
  looks like: compressed files are not read transparently, so the folder's names say what is read and the
  manifest's sha256 is that of the text itself.
- **Shape.** Every non-blank line after the header has exactly the header's number of fields: a missing
  field, an extra one and a trailing tab are errors (also on the last line). CRLF line ends are fine; a lone
  CR inside a line is an error. Blank lines are skipped but still counted in line numbers.
- **Types.** `float` holds a finite number (`nan`, `inf` and text are errors), `float_seq` space-separated
  finite numbers, `token` any text, `token_seq` space-separated tokens. A wrong type is always an error.
- **Empty values.** The fields a loader uses must not be empty: the `required` ids, and in interaction
  files `INTER_FIELDS` (user_id, item_id, item_id_list, rating, timestamp, label). Any other empty value --
  the optional descriptive fields of `.item`/`.user` files (price, brand, categories, ...) -- is a missing
  value: `""` for token, NaN for float, `[]` for the sequences.
- **Ids** are the text as written. An id column typed `float` (or numeric in Parquet) becomes text with
  integral values written without `.0`, so `42` in one file matches `42` written as a number in another.

CSV/TSV tables (`read_table`) follow the same rules for bytes and shape (quotes allowed, as CSV does).
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recthinker.errors import DataError

log = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
ID_FIELDS = ("user_id", "item_id", "item_id_list")
INTER_FIELDS = ("user_id", "item_id", "item_id_list", "rating", "timestamp", "label")  # never empty in .inter

# Magic bytes of files that are not text: what the file looks like, for the error message.
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip -k FILE)"),
    (b"BZh", "bzip2-compressed", "decompress it first (bunzip2 -k FILE)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz -k FILE)"),
    (b"PK\x03\x04", "a zip archive", "extract it first (unzip FILE)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (unzstd FILE)"),
    (b"PAR1", "a Parquet file", "atomic files are tab-separated text"),
)
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")


def read_text(path: str | Path) -> str:
    """The text of a data file, decoded as described in the module docstring (one WARNING on a fallback).

    Raises:
        DataError: missing or unreadable file, a compressed, Parquet or binary file.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    for magic, kind, hint in _MAGIC:
        if data.startswith(magic):
            raise DataError(f"{path}: this is {kind} data, not text; {hint}")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: starts with a UTF-16 byte-order mark but is not valid UTF-16") from e
        log.warning("%s is UTF-16 encoded: read it as UTF-16 (UTF-8 is the expected encoding)", path)
        return text
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DataError(f"{path}:{line}: binary data (a NUL byte), not tab-separated text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        try:
            text, encoding = data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            text, encoding = data.decode("latin-1"), "latin-1"
        log.warning(
            "%s is not valid UTF-8 (byte %r on line %d): read it as %s",
            path,
            data[e.start : e.start + 1],
            line,
            encoding,
        )
        return text


def _lines(path: Path, text: str) -> list[str]:
    """The file's lines without line ends (CRLF or LF); a lone CR inside a line is an error."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if text.endswith("\r"):
            text = text[:-1]
        if "\r" in text:
            line = text.count("\n", 0, text.index("\r")) + 1
            raise DataError(
                f"{path}:{line}: a carriage return inside the line; save the file with LF line ends"
            )
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_header(path: Path, header: str) -> dict[str, str]:
    """Field name -> type from an atomic file's header line."""
    if not header.strip():
        raise DataError(f"{path}:1: empty header (expected tab-separated name:type fields)")
    other = re.search(r":(?:token_seq|token|float_seq|float)\s*([,; |])\s*\w", header)
    if "\t" not in header and other:
        raise DataError(
            f"{path}:1: the header's fields are separated by {other.group(1)!r}, not tabs "
            "(RecBole atomic files are tab-separated)"
        )
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


def read_header(path: str | Path) -> dict[str, str]:
    """Field name -> type from the first line of an atomic file."""
    path = Path(path)
    lines = _lines(path, read_text(path))
    return parse_header(path, lines[0] if lines else "")


def read_atomic(
    path: str | Path, required: tuple[str, ...] = (), nonempty: Iterable[str] = ()
) -> pd.DataFrame:
    """Read one atomic file into a DataFrame with untyped column names.

    token -> str, float -> float64, token_seq -> list[str] (space-separated), float_seq -> list[float].
    Blank lines are skipped. `df.attrs["line_numbers"]` holds each row's line number.

    Args:
        path: The file.
        required: Fields the header must have; their values must not be empty.
        nonempty: Fields whose values must not be empty when the header has them (`INTER_FIELDS`).

    Raises:
        DataError: unreadable file, malformed header, wrong field count, a value of the wrong type, an empty
            value where one is needed, a missing required field.
    """
    path = Path(path)
    lines = _lines(path, read_text(path))
    fields = parse_header(path, lines[0] if lines else "")
    missing = [r for r in required if r not in fields]
    if missing:
        raise DataError(f"{path}:1: missing required field(s) {missing}; header has {list(fields)}")
    names = list(fields)
    n = len(names)
    counts = [line.count("\t") for line in lines]
    keep = [i for i in range(1, len(lines)) if counts[i] or lines[i].strip(" ")]
    bad = next((i for i in keep if counts[i] != n - 1), None)
    if bad is not None:
        got = counts[bad] + 1
        if got < n:
            detail = f"field {names[got]!r} is missing"
        elif lines[bad].endswith("\t"):
            detail = f"a value after the last field {names[-1]!r}: a trailing tab?"
        else:
            detail = f"{got - n} value(s) after the last field {names[-1]!r}"
        raise DataError(f"{path}:{bad + 1}: expected {n} tab-separated fields, found {got} ({detail})")
    df = _split(lines, keep, names)
    line_numbers = np.array([i + 1 for i in keep], dtype=np.int64)
    must_fill = set(required) | set(nonempty)
    for name, ftype in fields.items():
        col = df[name]
        empty = (col.str.strip() == "").to_numpy(dtype=bool) if len(col) else np.zeros(0, dtype=bool)
        if name in must_fill and empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise DataError(f"{path}:{line_numbers[i]}: field {name!r} is empty")
        if ftype == "float":
            values = to_numbers(col, empty, path, name, line_numbers)
            df[name] = id_strings(pd.Series(values)) if name in ID_FIELDS else values
        elif ftype == "float_seq":
            parsed = []
            for i, v in enumerate(col):
                try:
                    nums = [float(x) for x in v.split()]
                except ValueError:
                    nums = [np.nan]
                if not all(np.isfinite(nums)):
                    raise DataError(
                        f"{path}:{line_numbers[i]}: field {name!r}: {v!r} is not finite numbers separated by spaces"
                    )
                parsed.append(nums)
            df[name] = pd.Series(parsed, index=df.index, dtype=object)
        elif ftype == "token_seq":
            df[name] = pd.Series([v.split() for v in col], index=df.index, dtype=object)
        else:
            df[name] = col.astype(object)
    df.attrs["line_numbers"] = line_numbers
    df.attrs["path"] = str(path)
    return df


def _split(lines: list[str], keep: list[int], names: list[str]) -> pd.DataFrame:
    """The kept lines split on tabs into string columns (the C parser when it agrees with `keep`)."""
    if not keep:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in names})
    df = pd.read_csv(
        io.StringIO("\n".join(lines[i] for i in keep)),
        sep="\t",
        header=None,
        names=names,
        dtype=str,
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        na_filter=False,
        skip_blank_lines=False,
        engine="c",
    )
    if len(df) != len(keep):  # a parser quirk we did not foresee: split exactly, in Python
        df = pd.DataFrame([lines[i].split("\t") for i in keep], columns=names, dtype=object)
    return df


def to_numbers(
    col: pd.Series, empty: np.ndarray, path: Path, name: str, line_numbers: np.ndarray
) -> np.ndarray:
    """Text values as float64, NaN where `empty`; a value that is not a finite number is a DataError."""
    values = pd.to_numeric(col.where(~empty, "0"), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    bad = ~empty & ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        text = col.iloc[i]
        nan_text = str(text).strip().lower().lstrip("+-") in ("nan", "inf", "infinity")
        what = "not a finite number" if np.isinf(values[i]) or nan_text else "not a number"
        raise DataError(f"{path}:{line_numbers[i]}: field {name!r}: {text!r} is {what}")
    values[empty] = np.nan
    return values


def id_strings(values: pd.Series) -> pd.Series:
    """Ids as text: numbers become their shortest text, integral ones without `.0` (42.0 -> "42").

    >>> id_strings(pd.Series([42.0, 7.5])).tolist(), id_strings(pd.Series(["042"])).tolist()
    (['42', '7.5'], ['042'])
    """
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return values.astype(object).map(lambda v: "" if v is None or v is pd.NA else str(v))
    out = []
    for v in values.to_numpy(dtype=np.float64, na_value=np.nan):
        if not np.isfinite(v):
            out.append("")
        elif float(v).is_integer() and abs(v) < 2**63:
            out.append(str(int(v)))
        else:
            out.append(repr(float(v)))
    return pd.Series(out, index=values.index, dtype=object)


def read_random(
    path: str | Path, items: Collection[str] | None = None, users: Collection[str] | None = None
) -> dict[str, list[str]]:
    """A `.random` candidate file: one line per user, `user_id<TAB>space-separated item ids`.

    A first line that looks like a typed header (`user_id:token ...`) is skipped. With `items` (the
    dataset's item ids) and `users` (the users of its interactions), an unknown item id or user is a
    DataError naming the line; so is a line with more than 2 tab-separated fields.
    """
    path = Path(path)
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(_lines(path, read_text(path)), start=1):
        if not line.strip():
            continue
        if lineno == 1 and ":token" in line:
            continue
        user, sep, ids = line.partition("\t")
        if not sep or not user.strip():
            raise DataError(f"{path}:{lineno}: expected 'user_id<TAB>item ids', got {line[:80]!r}")
        if "\t" in ids:
            raise DataError(
                f"{path}:{lineno}: expected 2 tab-separated fields (user_id, item ids), "
                f"found {line.count(chr(9)) + 1}"
            )
        if user in out:
            raise DataError(f"{path}:{lineno}: user {user!r} listed twice")
        if users is not None and user not in users:
            raise DataError(f"{path}:{lineno}: user {user!r} has no interactions in the dataset")
        row = list(dict.fromkeys(ids.split()))  # a repeated id counts once
        if items is not None:
            unknown = next((i for i in row if i not in items), None)
            if unknown is not None:
                raise DataError(f"{path}:{lineno}: item {unknown!r} is not one of the dataset's items")
        out[user] = row
    if not out:
        raise DataError(f"{path}: no candidate lines (expected 'user_id<TAB>item ids' per line)")
    return out


def read_table(
    path: str | Path, columns: Mapping[str, str] | None = None, sep: str | None = None
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table and rename columns (`columns` maps our name -> the file's name).

    CSV/TSV values are strings (quotes as CSV has them); every row must have the header's number of fields.
    The id columns (user_id, item_id after renaming) become text as `id_strings` writes them.

    Raises:
        DataError: unreadable file, a row whose field count differs from the header, or a mapped column
            that the file lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
    if path.suffix in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: cannot read Parquet: {e}") from e
        line_numbers = np.arange(2, len(df) + 2)  # row i is "line" i + 2, as if the file had a header
    else:
        delimiter = sep or ("\t" if path.suffix in (".tsv", ".tab") else ",")
        df, line_numbers = _read_delimited(path, delimiter)
    mapping = dict(columns or {})
    missing = [theirs for theirs in mapping.values() if theirs not in df.columns]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {missing}; the file has {list(df.columns)}")
    df = df.rename(columns={theirs: ours for ours, theirs in mapping.items()})
    for key in ("user_id", "item_id"):
        if key in df.columns:
            df[key] = id_strings(df[key])
    df.attrs["line_numbers"] = line_numbers
    df.attrs["path"] = str(path)
    return df


def _read_delimited(path: Path, delimiter: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A CSV/TSV file as string columns, checking every row's field count against the header's."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    try:
        header = next(reader, [])
        if not header or all(not h.strip() for h in header):
            raise DataError(f"{path}:1: empty header (expected column names)")
        rows: list[list[str]] = []
        starts: list[int] = []
        last = reader.line_num
        for row in reader:
            start, last = last + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(header):
                hint = " (an unclosed quote?)" if any("\n" in v for v in row) else ""
                detail = (
                    f"column {header[len(row)]!r} is missing"
                    if len(row) < len(header)
                    else f"a value after the last column {header[-1]!r}"
                )
                raise DataError(
                    f"{path}:{start}: expected {len(header)} fields, found {len(row)} ({detail}){hint}"
                )
            rows.append(row)
            starts.append(start)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: cannot parse: {e}") from e
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}:1: column(s) {dup} appear twice in the header")
    df = pd.DataFrame(rows, columns=header, dtype=object)
    return df, np.array(starts, dtype=np.int64)
