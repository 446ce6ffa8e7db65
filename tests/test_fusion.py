"""The learned evidence fusion (agent/fusion.py): features, missing evidence, training, caching, no leak."""

from __future__ import annotations

import numpy as np
import pytest

from recthinker.agent import fusion as fz
from recthinker.agent.fusion import SIGNALS, Fusion, features, fit_fusion, fit_set, train


def test_features_mark_missing_signals_and_unscored_items():
    raw = {"cf_als": np.array([0.2, -np.inf, 0.9, 0.9]), "popularity": np.array([10.0, 0.0, 3.0, 1.0])}
    f = features(raw, ["cf_als"])
    j = 3 * SIGNALS.index("cf_als")
    assert np.isnan(f[1, j]) and f[2, j] == 0.9  # raw: an unscored item is missing, not -inf
    assert f[:, j + 2].tolist() == [1 / 3, 0.0, 5 / 6, 5 / 6]  # within-episode rank, ties averaged
    p = 3 * SIGNALS.index("popularity")
    assert np.isnan(f[:, p : p + 3]).all()  # not asked for: missing
    assert not np.isnan(features(raw)[:, p : p + 3]).any()  # default: every signal given
    with pytest.raises(ValueError, match="unknown evidence signals"):
        features({"cf_bpr": np.zeros(3)})


def synthetic(n: int, seed: int) -> tuple[list[dict], list[int]]:
    """Episodes of 10 candidates: cf_sasrec points at the target (noisily), cf_als weakly, the rest is noise."""
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    for _ in range(n):
        t = int(rng.integers(10))
        hit = np.eye(10)[t]
        row = {s: rng.normal(size=10) for s in SIGNALS}
        row["cf_sasrec"] = row["cf_sasrec"] * 0.6 + 2.0 * hit
        row["cf_als"] = row["cf_als"] + 1.0 * hit
        row["popularity"] = np.abs(row["popularity"]) * 100
        rows.append(row)
        targets.append(t)
    return rows, targets


def hit_rate(model: Fusion, rows, targets, keys=None) -> float:
    return float(np.mean([model.order(r, keys)[0] == t for r, t in zip(rows, targets, strict=True)]))


def test_training_learns_the_informative_signal_and_copes_with_missing_evidence():
    rows, targets = synthetic(600, seed=0)
    model = train(rows, targets, seed=1)
    test_rows, test_targets = synthetic(300, seed=2)
    full = hit_rate(model, test_rows, test_targets)
    als_only = hit_rate(model, test_rows, test_targets, ["cf_als"])
    noise_only = hit_rate(model, test_rows, test_targets, ["genre_match"])
    assert full > 0.75  # cf_sasrec alone puts the target first ~85% of the time here
    assert 0.3 < als_only < full  # trained for a missing cf_sasrec: it falls back on cf_als
    assert noise_only < 0.25  # noise stays noise (chance is 0.1)
    # deterministic: the same data and seed give the same model
    again = train(rows, targets, seed=1)
    assert np.array_equal(model.score(test_rows[0]), again.score(test_rows[0]))


def test_fit_fusion_reads_validation_episodes_only_and_is_cached(tiny_benchmark, monkeypatch):
    read = []
    original = type(tiny_benchmark).episodes

    def spy(self, name):
        read.append(name)
        return original(self, name)

    monkeypatch.setattr(type(tiny_benchmark), "episodes", spy)
    assert fit_set(tiny_benchmark) == "loo/valid"
    model = fit_fusion(tiny_benchmark, seed=3)
    assert read and all(name.endswith("/valid") for name in read)  # a test target never reaches a feature
    assert model.meta["fit_set"] == "loo/valid" and model.meta["n_episodes"] > 0
    calls = []
    monkeypatch.setattr(fz, "train", lambda *a, **k: calls.append(1))
    cached = fit_fusion(tiny_benchmark, seed=3)  # from <bench>/fusion/, not refitted
    assert not calls
    ep = tiny_benchmark.episodes("loo/valid")[0]
    rng = np.random.default_rng(0)
    raw = {s: rng.normal(size=len(ep.candidates)) for s in SIGNALS}
    assert np.array_equal(model.score(raw), cached.score(raw))


def test_fusion_ranker_ranks_every_candidate(tiny_benchmark):
    from recthinker.rankers import build_ranker

    ranker = build_ranker("fusion", tiny_benchmark, "dense/test", seed=3)
    for ep in tiny_benchmark.episodes("dense/test"):
        ranking = ranker.rank(ep)
        assert ranking.valid and sorted(ranking.items) == sorted(ep.candidates)
    assert ranker.name == "fusion"
