"""Popularity baseline: score = number of background interactions with the item (same for every user).

It ignores the user entirely, so it is the bar that personalised models must clear. Expected NDCG@10 on
ML-1M leave-one-out with 1 + 19 candidates: ~0.56.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np

from recthinker.baselines.base import fill_unknown
from recthinker.data.log import InteractionLog, Vocab


@dataclass
class PopScorer:
    """Item popularity in the fitted log."""

    name: ClassVar[str] = "pop"

    items_: Vocab = field(init=False, repr=False)
    counts_: np.ndarray = field(init=False, repr=False)  # (n_items,) interactions per item

    def fit(self, log: InteractionLog, *, rng: np.random.Generator) -> Self:
        self.items_ = log.items
        counts = log.item_counts
        self.counts_ = counts.reindex(self.items_.ids).to_numpy(dtype=np.float64)
        return self

    def score(
        self, items: Sequence[str], *, user_id: str | None = None, history: Sequence[str] = ()
    ) -> np.ndarray:
        idx = self.items_.indices(list(items))
        return fill_unknown(idx, self.counts_[idx[idx >= 0]])
