"""Bayesian personalised ranking matrix factorisation (Rendle et al., UAI 2009) via the `implicit` library.

    max  sum_{(u, i, j)} log sigmoid(x_u . y_i + b_i - x_u . y_j - b_j) - reg * |theta|^2
         i: an item u saw, j: a sampled item u did not see

`implicit` trains with SGD on the CPU (`threads`; keep 1-2 on shared machines) and stores the item bias as
the last column of the item factors (the matching user column is fixed at 1). `implicit` has no fold-in for
BPR, so a user the fitted log does not know gets a user vector trained here by the same BPR-SGD updates
against the frozen item factors: `iterations` full-batch steps over (history item, sampled negative) pairs.
Measured on ML-1M leave-one-out with the defaults: NDCG@10 0.637 with 1 + 19 candidates, 0.353 with 1 + 99;
fitting takes ~2 minutes on one (shared) thread. On the first 1,000 users the fold-in ranked better than the
learned user vectors (NDCG@10 0.696 vs 0.639).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np
import scipy.sparse as sp
from implicit.cpu.bpr import BayesianPersonalizedRanking

from recthinker.baselines.base import fill_unknown, user_item_indices
from recthinker.data.log import InteractionLog, Vocab


@dataclass
class BPRScorer:
    """Pairwise-ranking matrix factorisation; score = user factors . item factors + item bias."""

    name: ClassVar[str] = "bpr"

    factors: int = 64  # latent dimensions (plus one item-bias column)
    learning_rate: float = 0.01  # SGD step size
    regularization: float = 0.01  # L2 weight on factors
    iterations: int = 100  # epochs over the background interactions (also fold-in steps)
    threads: int = 1  # CPU threads used by `implicit`

    users_: Vocab = field(init=False, repr=False)
    items_: Vocab = field(init=False, repr=False)
    matrix_: sp.csr_matrix = field(init=False, repr=False)  # (n_users, n_items) binary background
    model_: BayesianPersonalizedRanking = field(init=False, repr=False)
    seed_: int = field(init=False, repr=False)  # seeds the negatives of every fold-in (deterministic scores)

    def fit(self, log: InteractionLog, *, rng: np.random.Generator) -> Self:
        self.users_, self.items_ = log.users, log.items
        self.matrix_ = log.matrix(binary=True)
        self.model_ = BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            num_threads=self.threads,
            random_state=int(rng.integers(2**31)),
        )
        self.model_.fit(self.matrix_, show_progress=False)
        self.seed_ = int(rng.integers(2**63))
        return self

    def user_vector(self, user_id: str | None = None, history: Sequence[str] = ()) -> np.ndarray:
        """The user's factors (F + 1,), last entry 1: learned for a known user, folded in from `history` otherwise."""
        if user_id is not None and user_id in self.users_:
            return self.model_.user_factors[self.users_.index(user_id)]
        profile = user_item_indices(self.users_, self.items_, self.matrix_, None, history)
        return self._fold_in(profile)

    def _fold_in(self, profile: np.ndarray) -> np.ndarray:
        item_factors = np.asarray(self.model_.item_factors, dtype=np.float64)  # (I, F + 1)
        user = np.zeros(item_factors.shape[1])  # (F + 1,)
        user[-1] = 1.0  # multiplies the item bias
        if len(profile) == 0:
            return user
        rng = np.random.default_rng(self.seed_)
        seen = np.zeros(len(item_factors), dtype=bool)
        seen[profile] = True
        for _ in range(self.iterations):
            neg = rng.integers(len(item_factors), size=len(profile))  # (n,)
            diff = item_factors[profile] - item_factors[neg]  # (n, F + 1)
            z = 1.0 / (1.0 + np.exp(diff @ user))  # (n,) = sigmoid(-x_uij), the BPR gradient weight
            z[seen[neg]] = 0.0  # a sampled "negative" the user saw teaches nothing
            step = z @ diff - self.regularization * len(profile) * user  # summed per-pair SGD updates
            step[-1] = 0.0  # the bias slot stays 1
            user += self.learning_rate * step
        return user

    def score(
        self, items: Sequence[str], *, user_id: str | None = None, history: Sequence[str] = ()
    ) -> np.ndarray:
        idx = self.items_.indices(list(items))
        user = self.user_vector(user_id, history)  # (F + 1,)
        scores = self.model_.item_factors[idx[idx >= 0]] @ user  # (n_known, F + 1) @ (F + 1,) -> (n_known,)
        return fill_unknown(idx, np.asarray(scores, dtype=np.float64))
