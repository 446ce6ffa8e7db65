"""Ranking metrics for one relevant item per episode: HR@k, NDCG@k, MRR, plus helpers.

Every metric takes the 1-based rank of the target (or None when the ranking is invalid or lacks the
target, which scores 0). The same functions back the harness and the RL rewards, so evaluation and
training agree on what "good" means.

    >>> r = target_rank(["i3", "i7", "i1"], "i1")
    >>> r, hit_at_k(r, 1), ndcg_at_k(r, 10), mrr(r)
    (3, 0.0, 0.5, 0.3333333333333333)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats


def target_rank(ranking: Sequence[str], target: str) -> int | None:
    """1-based position of `target` in `ranking`, or None when it is absent.

    Args:
        ranking: Item ids, best first.
        target: The held-out item id.

    Returns:
        The rank (1 = first), or None if `target` is not in `ranking`.

    >>> target_rank(["a", "b", "c"], "b"), target_rank(["a"], "z")
    (2, None)
    """
    for position, item in enumerate(ranking, start=1):
        if item == target:
            return position
    return None


def _check_rank(rank: int | None) -> None:
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be >= 1 or None, got {rank}")


def hit_at_k(rank: int | None, k: int) -> float:
    """1.0 if the target is within the top `k`, else 0.0 (None -> 0.0).

    Args:
        rank: 1-based rank of the target, or None for an invalid ranking.
        k: Cut-off (>= 1).

    >>> hit_at_k(5, 5), hit_at_k(6, 5), hit_at_k(None, 10)
    (1.0, 0.0, 0.0)
    """
    _check_rank(rank)
    return 1.0 if rank is not None and rank <= k else 0.0


def ndcg_at_k(rank: int | None, k: int) -> float:
    """NDCG@k with a single relevant item: 1/log2(rank+1) if rank <= k, else 0.

    With one relevant item the ideal DCG is 1, so NDCG equals the DCG of the target alone.

    Args:
        rank: 1-based rank of the target, or None for an invalid ranking.
        k: Cut-off (>= 1).

    >>> ndcg_at_k(1, 10), ndcg_at_k(3, 10), ndcg_at_k(11, 10), ndcg_at_k(None, 10)
    (1.0, 0.5, 0.0, 0.0)
    """
    _check_rank(rank)
    if rank is None or rank > k:
        return 0.0
    return 1.0 / math.log2(rank + 1)


def mrr(rank: int | None) -> float:
    """Reciprocal rank of the target (None -> 0.0); its mean over episodes is MRR.

    >>> mrr(1), mrr(4), mrr(None)
    (1.0, 0.25, 0.0)
    """
    _check_rank(rank)
    return 0.0 if rank is None else 1.0 / rank


def rank_from_scores(scores: np.ndarray, target_index: int) -> int:
    """Rank of the target implied by candidate scores, counting ties against the target.

    rank = 1 + number of *other* candidates whose score is >= the target's. A NaN score counts against
    the target too (a NaN target ranks last), so a scorer cannot gain from ties or missing scores.

    Args:
        scores: Shape (n_candidates,), higher is better.
        target_index: Index of the target in `scores`.

    Returns:
        The 1-based pessimistic rank.

    >>> rank_from_scores(np.array([0.1, 0.9, 0.5]), 2)
    2
    >>> rank_from_scores(np.array([0.5, 0.5, 0.5, 0.2]), 0)  # two ties count as above the target
    3
    >>> rank_from_scores(np.array([1.0, np.nan]), 0)
    2
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or not 0 <= target_index < len(scores):
        raise ValueError(f"need 1-d scores and 0 <= target_index < {len(scores)}, got {target_index}")
    target_score = scores[target_index]
    if np.isnan(target_score):
        return len(scores)
    others = np.delete(scores, target_index)
    return 1 + int(np.count_nonzero((others >= target_score) | np.isnan(others)))


def kendall_tau(order_a: Sequence[str], order_b: Sequence[str]) -> float:
    """Kendall's tau between two orderings, over the items they share.

    Returns 0.0 when tau is undefined (fewer than two shared items, or scipy returns NaN).

    Args:
        order_a: Item ids, best first (e.g. the model's ranking).
        order_b: Item ids, best first (e.g. the order a tool's scores imply).

    >>> kendall_tau(["a", "b", "c"], ["a", "b", "c"]), kendall_tau(["a", "b", "c"], ["c", "b", "a"])
    (1.0, -1.0)
    >>> kendall_tau(["a", "x"], ["a", "y"])
    0.0
    """
    pos_b: dict[str, int] = {}
    for position, item in enumerate(order_b):
        pos_b.setdefault(item, position)
    seen: set[str] = set()
    xs: list[int] = []
    ys: list[int] = []
    for position, item in enumerate(order_a):
        if item in pos_b and item not in seen:
            seen.add(item)
            xs.append(position)
            ys.append(pos_b[item])
    if len(xs) < 2:
        return 0.0
    tau = stats.kendalltau(xs, ys).statistic
    return 0.0 if tau is None or np.isnan(tau) else float(tau)


def mean_ci95(values: Iterable[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% confidence interval from the t-distribution.

    With one value (or zero spread) the interval collapses to the mean.

    Args:
        values: Per-episode metric values (at least one).

    Returns:
        (mean, lo, hi).

    >>> mean_ci95([0.5])
    (0.5, 0.5, 0.5)
    >>> tuple(round(v, 3) for v in mean_ci95([0.0, 1.0, 1.0, 0.0]))
    (0.5, -0.419, 1.419)
    """
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, mean, mean
    sem = float(arr.std(ddof=1)) / math.sqrt(arr.size)
    half = float(stats.t.ppf(0.975, df=arr.size - 1)) * sem
    return mean, mean - half, mean + half
