"""`Resources`: everything the tools read, loaded once and shared read-only by every `RecEnv` and thread.

This module holds the types (`Catalog`, `Index`, `Resources`); `tools/build.py` builds, caches and loads
them (`load_resources`), so the tool modules can name these types without importing their builders.

The background log (never an evaluated user's validation or test interaction), the item catalog, the user
table, and an `Index` of arrays derived from the background: the binary user x item matrix, item popularity
and mean ratings, per-user activity, top-k co-interaction neighbours of every item, user embeddings with an
HNSW index over them, and a BM25 index over the catalog. The index is built once per background (a few
seconds on ML-1M) and cached on disk under `<benchmark>/tools/index-<fingerprint>/`, where the fingerprint
hashes the background rows, the catalog and `INDEX_VERSION`; loading it back takes well under 2 s.

    res = load_resources(ensure_benchmark("ml-1m"), "dense/test")    # from recthinker.tools.build
    host = ToolHost(RecEnv(res))                                      # from recthinker.tools.env
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recthinker.baselines import fitted_scorer
from recthinker.data.log import InteractionLog, Vocab

log = logging.getLogger(__name__)

CF_MODELS = ("als", "sasrec")  # models `cf_scores` may ask for

# candidate indices, best first, from the signals `keys` of a {signal: per-candidate values} mapping
EvidenceOrder = Callable[[Mapping[str, np.ndarray], Sequence[str]], np.ndarray]


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
    scorer_params: dict[str, dict] = field(
        default_factory=dict
    )  # model -> tuned settings (default: defaults)
    train_log: InteractionLog | None = None  # leave-one-out test: the validation background SASRec fits on
    # answer form (c)'s base order (the learned fusion's `order`, attached by the composition root); None:
    # the equal-weight sum of the z-scored signals
    evidence_order: EvidenceOrder | None = None
    _scorers: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def scorer(self, model: str):
        """The `model` scorer fitted on the background (fit once and cached in `model_dir`); with a
        `train_log`, as the classic ranker of the same set is (`baselines.fitted_scorer`)."""
        if model not in CF_MODELS:
            raise ValueError(f"unknown CF model {model!r}; expected one of {CF_MODELS}")
        with self._lock:
            if model not in self._scorers:
                self._scorers[model] = fitted_scorer(
                    model,
                    self.log,
                    self.model_dir,
                    self.seed,
                    self.scorer_params.get(model, {}),
                    self.train_log,
                )
            return self._scorers[model]

    def user_rows(self, user_id: str) -> pd.DataFrame:
        """This user's background rows, oldest first (empty for a user the background does not know)."""
        return self.log.user_frame(user_id)
