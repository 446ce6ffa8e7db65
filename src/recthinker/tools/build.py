"""Build, cache and load the tools' `Resources` (types in `tools/resources.py`).

The `Index` is built once per background (a few seconds on ML-1M) and cached on disk under
`<benchmark>/tools/index-<fingerprint>/`, where the fingerprint hashes the background rows, the catalog and
`INDEX_VERSION`; loading it back takes well under 2 s.

    res = load_resources(ensure_benchmark("ml-1m"), "dense/test")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import hnswlib
import numpy as np
import pandas as pd
import scipy.sparse as sp

from recthinker.baselines.tuned import tuned_params
from recthinker.data.log import InteractionLog, Vocab
from recthinker.data.prepared import Benchmark
from recthinker.errors import DataError
from recthinker.tools import collab, item
from recthinker.tools.resources import CF_MODELS, Catalog, Index, Resources

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when the index layout or any builder changes: old caches are then ignored
N_NEIGHBOURS = 50  # co-interaction neighbours stored per item
EMBED_DIM = 64  # user embedding size for the ANN index (capped by the matrix shape)


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
    import bm25s  # imported on use: its import sets the bm25s logger to DEBUG

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
    scorer_params: dict[str, dict] | None = None,
    train_log: InteractionLog | None = None,
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
        scorer_params=dict(scorer_params or {}),
        train_log=train_log,
    )


def load_resources(bench: Benchmark, episode_set: str = "dense/test", *, seed: int = 42) -> Resources:
    """Resources for the episodes of `episode_set` in `bench`: its background, catalog and users.

    The index is cached in `<bench>/tools/`, fitted CF models in `<bench>/models/` (where `recthinker
    baseline` puts them too); the CF models use the benchmark's tuned settings (`tuned_params`).
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
        scorer_params={m: tuned_params(bench, m) for m in CF_MODELS},
        train_log=bench.train_background(episode_set),
    )
