"""`Resources`: everything the tools read, loaded once and shared read-only by every `RecEnv` and thread.

The background log (never an evaluated user's validation or test interaction), the item catalog, the user
table, and an `Index` of arrays derived from the background: the binary user x item matrix, item popularity
and mean ratings, per-user activity, top-k co-interaction neighbours of every item, user embeddings with an
HNSW index over them, and a BM25 index over the catalog. The index is built once per background (a few
seconds on ML-1M) and cached on disk under `<benchmark>/tools/index-<fingerprint>/`, where the fingerprint
hashes the background rows, the catalog and `INDEX_VERSION`; loading it back takes well under 2 s.

    res = load_resources(ensure_benchmark("ml-1m"), "dense/test")
    env = RecEnv(res)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recthinker.data.benchmark import Benchmark
from recthinker.data.log import InteractionLog, Vocab
from recthinker.errors import DataError
from recthinker.tools import collab, item

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when the index layout or any builder changes: old caches are then ignored
N_NEIGHBOURS = 50  # co-interaction neighbours stored per item
EMBED_DIM = 64  # user embedding size for the ANN index (capped by the matrix shape)
CF_MODELS = ("als", "sasrec")  # models `cf_scores` may ask for


@dataclass(frozen=True, eq=False)
class Catalog:
    """Item metadata in arrays: `pos[id]` is the row of an item in `ids` / `titles` / `years` / `categories`."""

    ids: np.ndarray  # (n,) object: item ids
    titles: list[str]
    years: np.ndarray  # (n,) float, NaN when unknown
    categories: list[tuple[str, ...]]
    pos: dict[str, int]

    @classmethod
    def from_frame(cls, items: pd.DataFrame) -> Catalog:
        ids = np.array([str(i) for i in items.index], dtype=object)
        titles = [str(t) for t in items["title"]] if "title" in items else [str(i) for i in ids]
        years = (
            pd.to_numeric(items["year"], errors="coerce").to_numpy(dtype=float)
            if "year" in items
            else np.full(len(ids), np.nan)
        )
        cats = [tuple(str(c) for c in cs) for cs in items["categories"]] if "categories" in items else []
        return cls(
            ids=ids,
            titles=titles,
            years=years,
            categories=cats or [() for _ in ids],
            pos={i: n for n, i in enumerate(ids)},
        )

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.pos

    def title(self, item_id: str) -> str:
        return self.titles[self.pos[item_id]] if item_id in self.pos else item_id

    def year(self, item_id: str) -> float:
        return float(self.years[self.pos[item_id]]) if item_id in self.pos else float("nan")

    def cats(self, item_id: str) -> tuple[str, ...]:
        return self.categories[self.pos[item_id]] if item_id in self.pos else ()

    def fingerprint(self) -> str:
        text = json.dumps([self.ids.tolist(), self.titles, self.years.tolist(), self.categories], default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class Index:
    """Arrays derived from one background log. Row / column order: `users.ids` / `items.ids`."""

    fingerprint: str
    users: Vocab  # background users
    items: Vocab  # background items (a catalog item absent here has no interactions)
    matrix: sp.csr_matrix  # (n_users, n_items) binary, float32
    item_count: np.ndarray  # (n_items,) interactions per item
    item_mean_rating: np.ndarray  # (n_items,) NaN when no ratings
    user_count: np.ndarray  # (n_users,)
    user_mean_rating: np.ndarray  # (n_users,)
    global_mean_rating: float  # NaN when the log has no ratings
    nbr_idx: np.ndarray  # (n_items, K) int32 co-interaction neighbours, best first (-1 = none)
    nbr_sim: np.ndarray  # (n_items, K) float32 cosine of those neighbours
    user_emb: np.ndarray  # (n_users, d) float32, L2-normalised: ANN space
    item_proj: np.ndarray  # (n_items, d) float32: folds a cold user's history into the ANN space
    ann: object  # hnswlib.Index over user_emb (cosine)
    bm25: object  # bm25s.BM25 over the catalog, documents in catalog order

    @cached_property
    def matrix_csc(self) -> sp.csc_matrix:
        """Column-normalised (unit-norm item columns) matrix in CSC form: item-item cosine = dot products."""
        norms = np.sqrt(np.maximum(self.item_count, 1)).astype(np.float32)
        return sp.csc_matrix(self.matrix @ sp.diags(1.0 / norms))

    @cached_property
    def user_norms(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.user_count, 1)).astype(np.float32)

    @cached_property
    def user_pct(self) -> np.ndarray:
        """(n_users,) activity percentile in [0, 100]: share of users with fewer interactions."""
        return _percentile_of(self.user_count)

    @cached_property
    def item_pct(self) -> np.ndarray:
        """(n_items,) popularity percentile in [0, 100] among background items."""
        return _percentile_of(self.item_count)


def _percentile_of(counts: np.ndarray) -> np.ndarray:
    """Share (in %) of entries strictly below each entry.

    >>> _percentile_of(np.array([1, 5, 5, 9])).tolist()
    [0.0, 25.0, 25.0, 75.0]
    """
    s = np.sort(counts)
    return 100.0 * np.searchsorted(s, counts, side="left") / max(len(counts), 1)


@dataclass(frozen=True, eq=False)
class Resources:
    """Read-only inputs of the tools. Fitted CF models load lazily, once, under a lock (thread-safe)."""

    log: InteractionLog  # the background: the only interactions tools see
    catalog: Catalog
    users: pd.DataFrame | None  # demographics indexed by user_id, or None
    index: Index
    model_dir: Path  # where fitted CF models are cached (shared with `recthinker baseline`)
    seed: int = 42  # rng seed for CF model fits (same as the baseline verb, so fits are shared)
    name: str = ""
    _scorers: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def scorer(self, model: str):
        """The `model` scorer fitted on the background (fit once and cached in `model_dir`)."""
        if model not in CF_MODELS:
            raise ValueError(f"unknown CF model {model!r}; expected one of {CF_MODELS}")
        with self._lock:
            if model not in self._scorers:
                from recthinker.baselines import make_scorer
                from recthinker.baselines.base import fit_or_load

                self._scorers[model] = fit_or_load(
                    make_scorer(model), self.log, self.model_dir, np.random.default_rng(self.seed)
                )
            return self._scorers[model]

    def user_rows(self, user_id: str) -> pd.DataFrame:
        """This user's background rows, oldest first (empty for a user the background does not know)."""
        return self.log.user_frame(user_id)


# ---- building and caching -------------------------------------------------------------------------------


def log_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over every row of a log frame (all columns, in order)."""
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


def binary_matrix(
    user_codes: np.ndarray, item_codes: np.ndarray, n_users: int, n_items: int
) -> sp.csr_matrix:
    """(n_users, n_items) float32 0/1 matrix from per-row integer codes (repeats count once).

    >>> binary_matrix(np.array([0, 0, 1]), np.array([1, 1, 0]), 2, 2).toarray()
    array([[0., 1.],
           [1., 0.]], dtype=float32)
    """
    m = sp.csr_matrix(
        (np.ones(len(user_codes), dtype=np.float32), (user_codes, item_codes)), shape=(n_users, n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def build_index(log_: InteractionLog, catalog: Catalog, fingerprint: str, seed: int = 0) -> Index:
    """Compute every array of the `Index` from the background log and the catalog (seconds on ML-1M)."""
    frame = log_.frame
    ucodes, user_ids = pd.factorize(frame["user_id"], sort=False)
    icodes, item_ids = pd.factorize(frame["item_id"], sort=False)
    users, items = Vocab(user_ids.astype(str)), Vocab(item_ids.astype(str))
    m = binary_matrix(ucodes, icodes, len(users), len(items))
    item_count = np.diff(m.tocsc().indptr).astype(np.int64)
    user_count = np.diff(m.indptr).astype(np.int64)
    ratings = frame["rating"].to_numpy(dtype=float)
    rated = ~np.isnan(ratings)
    item_mean = _group_mean(icodes[rated], ratings[rated], len(items))
    user_mean = _group_mean(ucodes[rated], ratings[rated], len(users))
    global_mean = float(ratings[rated].mean()) if rated.any() else float("nan")
    nbr_idx, nbr_sim = collab.item_neighbours(m, N_NEIGHBOURS)
    user_emb, item_proj = collab.user_embeddings(m, EMBED_DIM, seed=seed)
    ann = collab.build_ann(user_emb, seed=seed)
    bm25 = item.build_bm25(catalog)
    return Index(
        fingerprint=fingerprint,
        users=users,
        items=items,
        matrix=m,
        item_count=item_count,
        item_mean_rating=item_mean,
        user_count=user_count,
        user_mean_rating=user_mean,
        global_mean_rating=global_mean,
        nbr_idx=nbr_idx,
        nbr_sim=nbr_sim,
        user_emb=user_emb,
        item_proj=item_proj,
        ann=ann,
        bm25=bm25,
    )


def _group_mean(codes: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    total = np.bincount(codes, weights=values, minlength=n)
    count = np.bincount(codes, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def save_index(index: Index, folder: Path) -> None:
    """Write `index` into `folder` atomically (a temporary folder renamed into place)."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.savez(
        tmp / "arrays.npz",
        user_ids=index.users.ids.astype(str),
        item_ids=index.items.ids.astype(str),
        indptr=index.matrix.indptr,
        indices=index.matrix.indices,
        item_count=index.item_count,
        item_mean_rating=index.item_mean_rating,
        user_count=index.user_count,
        user_mean_rating=index.user_mean_rating,
        global_mean_rating=np.array(index.global_mean_rating),
        nbr_idx=index.nbr_idx,
        nbr_sim=index.nbr_sim,
        user_emb=index.user_emb,
        item_proj=index.item_proj,
    )
    index.ann.save_index(str(tmp / "users.hnsw"))
    index.bm25.save(str(tmp / "bm25"))
    (tmp / "meta.json").write_text(json.dumps({"fingerprint": index.fingerprint, "version": INDEX_VERSION}))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race: its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)


def read_index(folder: Path) -> Index:
    """Load an index written by `save_index`."""
    import bm25s
    import hnswlib

    meta = json.loads((folder / "meta.json").read_text())
    a = np.load(folder / "arrays.npz", allow_pickle=False)
    users, items = Vocab(a["user_ids"].tolist()), Vocab(a["item_ids"].tolist())
    indices = a["indices"]
    m = sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, a["indptr"]), shape=(len(users), len(items))
    )
    emb = a["user_emb"]
    ann = hnswlib.Index(space="cosine", dim=emb.shape[1])
    ann.load_index(str(folder / "users.hnsw"), max_elements=len(emb))
    ann.set_num_threads(1)
    ann.set_ef(collab.ANN_POOL)
    return Index(
        fingerprint=meta["fingerprint"],
        users=users,
        items=items,
        matrix=m,
        item_count=a["item_count"],
        item_mean_rating=a["item_mean_rating"],
        user_count=a["user_count"],
        user_mean_rating=a["user_mean_rating"],
        global_mean_rating=float(a["global_mean_rating"]),
        nbr_idx=a["nbr_idx"],
        nbr_sim=a["nbr_sim"],
        user_emb=emb,
        item_proj=a["item_proj"],
        ann=ann,
        bm25=bm25s.BM25.load(str(folder / "bm25")),
    )


def build_resources(
    log_: InteractionLog,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    cache_dir: Path,
    *,
    model_dir: Path | None = None,
    seed: int = 42,
    name: str = "",
) -> Resources:
    """Resources over `log_` (the background) and the catalog `items`; the index is cached in `cache_dir`."""
    start = time.perf_counter()
    catalog = Catalog.from_frame(items)
    unknown = set(log_.frame["item_id"].unique()) - set(catalog.pos)
    if unknown:
        raise DataError(f"{len(unknown)} background items are not in the catalog, e.g. {sorted(unknown)[:3]}")
    key = hashlib.sha256(
        f"{log_fingerprint(log_.frame)}|{catalog.fingerprint()}|{INDEX_VERSION}|{seed}".encode()
    ).hexdigest()
    folder = Path(cache_dir) / f"index-{key[:16]}"
    if (folder / "meta.json").is_file():
        index = read_index(folder)
        log.info("loaded tool index %s in %.2fs", folder, time.perf_counter() - start)
    else:
        index = build_index(log_, catalog, key, seed=seed)
        save_index(index, folder)
        log.info("built tool index %s in %.2fs", folder, time.perf_counter() - start)
    # build lazily derived tables now, not inside the first tool call
    log_.user_frame("")
    _ = index.matrix_csc, index.user_norms, index.user_pct, index.item_pct
    return Resources(
        log=log_,
        catalog=catalog,
        users=users,
        index=index,
        model_dir=Path(model_dir) if model_dir else Path(cache_dir).parent / "models",
        seed=seed,
        name=name,
    )


def load_resources(bench: Benchmark, episode_set: str = "dense/test", *, seed: int = 42) -> Resources:
    """Resources for the episodes of `episode_set` in `bench`: its background, catalog and users.

    The index is cached in `<bench>/tools/`, fitted CF models in `<bench>/models/` (where `recthinker
    baseline` puts them too).
    """
    background = bench.background(episode_set)
    return build_resources(
        background,
        bench.items,
        bench.users,
        bench.root / "tools",
        model_dir=bench.root / "models",
        seed=seed,
        name=str(bench.manifest.get("dataset", bench.root.name)),
    )
