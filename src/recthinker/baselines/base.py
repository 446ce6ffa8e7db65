"""The `Scorer` protocol that every classic baseline implements, its `Ranker` adapter and a fit cache.

A scorer is fitted on an `InteractionLog` (the background) and then scores any list of item ids for a user:
a user the log knows is scored from their full background row (or sequence); any other user from the
`history` passed in (a cold fold-in). Items the fitted log does not contain score `-inf`, so they always
rank last.

    scorer = fit_or_load(EASEScorer(), log, Path("cache/baselines"), rng=np.random.default_rng(42))
    ranking = ScorerRanker(scorer).rank(episode)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recthinker.baselines.fingerprint import source_fingerprint
from recthinker.baselines.shipped import load_shipped
from recthinker.data.log import InteractionLog, Vocab
from recthinker.types import Episode, Ranking

logger = logging.getLogger(__name__)  # not `log`: that name is the InteractionLog here


@runtime_checkable
class Scorer(Protocol):
    """A fitted-on-a-log model that scores items for a user (higher is better)."""

    name: str

    def fit(self, log: InteractionLog, *, rng: np.random.Generator) -> Self: ...

    def score(
        self, items: Sequence[str], *, user_id: str | None = None, history: Sequence[str] = ()
    ) -> np.ndarray: ...


# ---- helpers the scorers share ----------------------------------------------------------------------


def user_item_indices(
    users: Vocab, items: Vocab, matrix: sp.csr_matrix, user_id: str | None, history: Sequence[str]
) -> np.ndarray:
    """Item indices that describe a user: their background row if the log knows them, else `history`.

    History items unknown to the log are dropped; the result is sorted and unique.
    """
    if user_id is not None and user_id in users:
        row = users.index(user_id)
        return np.sort(matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]])
    idx = items.indices(list(history))
    return np.unique(idx[idx >= 0])


def fill_unknown(item_idx: np.ndarray, known_scores: np.ndarray) -> np.ndarray:
    """Scores aligned with `item_idx`: `known_scores` where the index is >= 0, `-inf` elsewhere.

    >>> fill_unknown(np.array([2, -1, 0]), np.array([0.5, 0.1]))
    array([ 0.5, -inf,  0.1])
    """
    out = np.full(len(item_idx), -np.inf, dtype=np.float64)
    out[item_idx >= 0] = known_scores
    return out


def hyper_parameters(scorer: Scorer) -> dict[str, object]:
    """The scorer's hyper-parameters: its dataclass fields that `__init__` takes."""
    return {f.name: getattr(scorer, f.name) for f in dataclasses.fields(scorer) if f.init}  # type: ignore[arg-type]


# ---- the Ranker adapter -----------------------------------------------------------------------------


def tie_break_keys(episode_id: str, items: Sequence[str]) -> np.ndarray:
    """A deterministic pseudo-random key per (episode, item): orders equal scores without using candidate order."""
    keys = [
        int.from_bytes(hashlib.blake2b(f"{episode_id}\x00{i}".encode(), digest_size=8).digest(), "little")
        for i in items
    ]
    return np.array(keys, dtype=np.uint64)


class ScorerRanker:
    """`Ranker` over a fitted `Scorer`: candidates by score, descending; ties by a hash of (episode, item)."""

    def __init__(self, scorer: Scorer, name: str | None = None) -> None:
        self.scorer = scorer
        self.name = name or scorer.name

    def rank(self, episode: Episode) -> Ranking:
        candidates = list(episode.candidates)
        scores = self.scorer.score(candidates, user_id=episode.user_id, history=episode.history)
        if np.isnan(scores).any():
            raise ValueError(f"{self.name}: NaN scores for episode {episode.episode_id!r}")
        return Ranking(items=ranked_by_score(episode.episode_id, candidates, scores))


def ranked_by_score(episode_id: str, candidates: Sequence[str], scores: np.ndarray) -> tuple[str, ...]:
    """The candidates by score, descending; ties by a hash of (episode, item), never by candidate order."""
    # lexsort sorts by the last key first: score descending, then the hash key
    order = np.lexsort((tie_break_keys(episode_id, candidates), -scores))
    return tuple(candidates[i] for i in order)


# ---- fit cache --------------------------------------------------------------------------------------

_FINGERPRINTS: weakref.WeakKeyDictionary[InteractionLog, str] = weakref.WeakKeyDictionary()


def log_fingerprint(log: InteractionLog) -> str:
    """sha256 over the log's rows (all columns, in order); computed once per log object."""
    if log not in _FINGERPRINTS:
        row_hashes = pd.util.hash_pandas_object(log.frame, index=False).to_numpy()
        _FINGERPRINTS[log] = hashlib.sha256(row_hashes.tobytes()).hexdigest()
    return _FINGERPRINTS[log]


def cache_key(scorer: Scorer, log: InteractionLog, rng: np.random.Generator) -> str:
    """File stem for a fitted scorer: the log, the hyper-parameters, the rng state and the model's code.

    The code of the scorer's module (`source_fingerprint`: comments and docstrings do not count) is part of
    the key, so changing the model invalidates its cache and editing its documentation does not.
    """
    module_file = sys.modules[type(scorer).__module__].__file__
    parts = {
        "log": log_fingerprint(log),
        "class": type(scorer).__qualname__,
        "params": hyper_parameters(scorer),
        "rng": rng.bit_generator.state,
        "source": source_fingerprint(module_file) if module_file else "",
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return f"{scorer.name}-{digest[:20]}"


def fit_or_load(scorer: Scorer, log: InteractionLog, cache_dir: Path, rng: np.random.Generator) -> Scorer:
    """`scorer` fitted on `log`: from `cache_dir`, else from the fits shipped in the package, else fitted now
    and pickled into `cache_dir` atomically.

    A shipped fit (`baselines/fitted/`, see `shipped.py`) is used only when its recorded cache key equals
    this one: the same log rows, hyper-parameters, seed and model code. A scorer with `resumable = True`
    (SASRec) checkpoints every epoch into `cache_dir/<key>.ckpt` and, after a kill, the same call continues
    from the last finished epoch. On a cache hit `rng` is left untouched (a fit would have drawn from it).
    Pickles are trusted: only point `cache_dir` at a folder this project writes.
    """
    cache_dir = Path(cache_dir)
    key = cache_key(scorer, log, rng)
    path = cache_dir / f"{key}.pkl"
    if path.exists():
        with path.open("rb") as f:
            fitted = pickle.load(f)
        logger.info("loaded %s from %s", scorer.name, path)
        return fitted
    shipped = load_shipped(scorer, log, key)
    if shipped is not None:
        return shipped
    start = time.perf_counter()
    checkpoint = cache_dir / f"{key}.ckpt"
    if getattr(scorer, "resumable", False):
        fitted = scorer.fit(log, rng=rng, checkpoint=checkpoint)  # type: ignore[call-arg]
    else:
        fitted = scorer.fit(log, rng=rng)
    logger.info("fitted %s in %.1fs", scorer.name, time.perf_counter() - start)
    save_fitted(fitted, path)
    checkpoint.unlink(missing_ok=True)
    return fitted


def save_fitted(fitted: Scorer, path: Path) -> None:
    """Pickle a fitted scorer to `path` atomically (a temporary sibling, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(fitted, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
