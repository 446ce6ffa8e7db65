"""A request's episode: the user's history, the candidates given or proposed, every item id checked.

`recommend` (CLI and service) and `recthinker tool` build the episode to run here. Without given candidates,
`k` are proposed -- the user's top unseen items under ALS fitted on the background plus sampled unseen items,
shuffled. A user outside the dataset can be described by an explicit history.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from recthinker.errors import DataError
from recthinker.types import Episode


def propose_candidates(
    resources, user_id: str, history: Sequence[str], *, k: int = 10, n_cf: int = 7, seed: int = 42
) -> list[str]:
    """`n_cf` top unseen items by ALS on the background + `k - n_cf` uniformly sampled unseen items, shuffled."""
    items = np.array(sorted(resources.catalog.pos), dtype=object)
    known = set(resources.log.items.ids.tolist())
    seen = set(history) | set(resources.log.sequence(user_id))
    pool = np.array([i for i in items if i in known and i not in seen], dtype=object)
    if len(pool) < k:
        raise DataError(f"user {user_id!r}: only {len(pool)} unseen items to propose from")
    scores = resources.scorer("als").score(
        list(pool), user_id=user_id if resources.log.sequence(user_id) else None, history=list(history)
    )
    top = [pool[i] for i in np.argsort(-scores, kind="stable")[:n_cf]]
    rng = np.random.default_rng([seed, zlib.crc32(user_id.encode())])
    rest = [i for i in pool[rng.permutation(len(pool))] if i not in top][: k - n_cf]
    out = top + rest
    return [out[i] for i in rng.permutation(len(out))]


def make_episode(
    resources,
    user_id: str,
    history: Sequence[str] | None,
    candidates: Sequence[str] | None,
    *,
    seed: int = 42,
) -> tuple[Episode, bool]:
    """The episode to run and whether its candidates were proposed by us (not given)."""
    catalog = resources.catalog
    for i in [*(history or ()), *(candidates or ())]:
        if i not in catalog:
            raise DataError(f"unknown item id {i!r} (not in the {resources.name or 'dataset'} catalog)")
    known_user = len(resources.log.sequence(user_id)) > 0
    if not known_user and not history:
        raise DataError(f"unknown user {user_id!r}: give --history for a user outside the dataset")
    hist = list(history) if history else resources.log.sequence(user_id)[-50:]
    proposed = not candidates
    cands = list(candidates) if candidates else propose_candidates(resources, user_id, hist, seed=seed)
    if len(set(cands)) != len(cands):
        raise DataError("candidate ids must be distinct")
    return Episode(
        episode_id=f"recommend/{user_id}",
        user_id=user_id,
        history=tuple(hist),
        candidates=tuple(cands),
        target=None,
        split="serve",
    ), proposed
