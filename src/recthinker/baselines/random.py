"""Random baseline: a seeded pseudo-random score per (user, item), the floor every model must beat.

The score is a hash of (seed, user, item), so it does not depend on the order in which users or items are
scored, and the same user gets the same order in every call. Expected NDCG@10 with 1 + 19 candidates: ~0.23.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np

from recthinker.baselines.base import fill_unknown
from recthinker.data.log import InteractionLog, Vocab


@dataclass
class RandomScorer:
    """Uniform scores in [0, 1) per (user, item); `-inf` for items the fitted log does not hold."""

    name: ClassVar[str] = "random"

    items_: Vocab = field(init=False, repr=False)
    seed_: int = field(init=False, repr=False)

    def fit(self, log: InteractionLog, *, rng: np.random.Generator) -> Self:
        self.items_ = log.items
        self.seed_ = int(rng.integers(2**63))
        return self

    def score(
        self, items: Sequence[str], *, user_id: str | None = None, history: Sequence[str] = ()
    ) -> np.ndarray:
        idx = self.items_.indices(list(items))
        user_key = user_id if user_id is not None else "\x1f".join(history)
        known = [item for item, i in zip(items, idx, strict=True) if i >= 0]
        values = [_uniform(f"{self.seed_}\x00{user_key}\x00{item}") for item in known]
        return fill_unknown(idx, np.array(values, dtype=np.float64))


def _uniform(text: str) -> float:
    """A float in [0, 1) from the first 8 bytes of a blake2b hash of `text`."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") / 2**64
