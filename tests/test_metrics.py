"""Hand-computed cases for the ranking metrics (LensKit style)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recthinker.metrics import (
    hit_at_k,
    kendall_tau,
    mean_ci95,
    mrr,
    ndcg_at_k,
    rank_from_scores,
    target_rank,
)


def test_target_rank_is_one_based_and_none_when_absent():
    assert target_rank(["a", "b", "c"], "a") == 1
    assert target_rank(["a", "b", "c"], "c") == 3
    assert target_rank(["a", "b", "c"], "z") is None
    assert target_rank([], "a") is None


@pytest.mark.parametrize(
    ("rank", "k", "expected"),
    [(1, 1, 1.0), (2, 1, 0.0), (5, 5, 1.0), (6, 5, 0.0), (10, 10, 1.0), (11, 10, 0.0), (None, 10, 0.0)],
)
def test_hit_at_k(rank, k, expected):
    assert hit_at_k(rank, k) == expected


@pytest.mark.parametrize(
    ("rank", "k", "expected"),
    [
        (1, 10, 1.0),
        (2, 10, 1 / math.log2(3)),  # 0.6309...
        (3, 10, 0.5),  # 1/log2(4)
        (7, 10, 1 / 3),  # 1/log2(8)
        (10, 10, 1 / math.log2(11)),
        (11, 10, 0.0),  # just outside the cut-off
        (3, 2, 0.0),
        (None, 10, 0.0),
    ],
)
def test_ndcg_at_k(rank, k, expected):
    assert ndcg_at_k(rank, k) == pytest.approx(expected)


def test_mrr():
    assert mrr(1) == 1.0
    assert mrr(4) == 0.25
    assert mrr(None) == 0.0


def test_rank_zero_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        ndcg_at_k(0, 10)


def test_rank_from_scores_strict_order():
    scores = np.array([0.3, 0.9, 0.1, 0.5])
    assert [rank_from_scores(scores, i) for i in range(4)] == [3, 1, 4, 2]


def test_rank_from_scores_ties_are_pessimistic():
    # target at index 1 ties with two others and is beaten by one: 1 + 3 = 4, not 2
    scores = np.array([0.5, 0.5, 0.9, 0.5, 0.1])
    assert rank_from_scores(scores, 1) == 4
    # all-equal scores put the target last, so a constant scorer earns nothing
    assert rank_from_scores(np.zeros(100), 42) == 100


def test_rank_from_scores_nan_counts_against_target():
    assert rank_from_scores(np.array([0.2, np.nan, 0.1]), 0) == 2
    assert rank_from_scores(np.array([np.nan, 0.1, 0.2]), 0) == 3


def test_rank_from_scores_bad_index():
    with pytest.raises(ValueError):
        rank_from_scores(np.array([1.0, 2.0]), 2)


def test_kendall_tau_hand_computed():
    # positions of common items a,b,c,d: A = 0,1,2,3; B = 1,0,2,3 -> 5 concordant, 1 discordant pair
    assert kendall_tau(["a", "b", "c", "d"], ["b", "a", "c", "d"]) == pytest.approx(4 / 6)
    assert kendall_tau(["a", "b", "c"], ["c", "b", "a"]) == pytest.approx(-1.0)


def test_kendall_tau_uses_common_items_only_and_is_nan_safe():
    assert kendall_tau(["a", "x", "b", "c"], ["a", "b", "y", "c"]) == pytest.approx(1.0)
    assert kendall_tau(["a"], ["a"]) == 0.0
    assert kendall_tau(["a", "b"], ["c", "d"]) == 0.0
    assert kendall_tau([], []) == 0.0


def test_mean_ci95_single_value_collapses():
    assert mean_ci95([0.7]) == (0.7, 0.7, 0.7)


def test_mean_ci95_hand_computed():
    # mean 0.5, sd = sqrt(1/3), sem = sd/2, t(0.975, df=3) = 3.182446...
    mean, lo, hi = mean_ci95([0.0, 1.0, 1.0, 0.0])
    half = 3.182446305284263 * math.sqrt(1 / 3) / 2
    assert mean == pytest.approx(0.5)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))


def test_mean_ci95_zero_spread_and_empty():
    assert mean_ci95([0.25, 0.25, 0.25]) == pytest.approx((0.25, 0.25, 0.25))
    with pytest.raises(ValueError):
        mean_ci95([])
