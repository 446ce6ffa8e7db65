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


def test_answer_form_c_ranks_by_the_environments_evidence_order():
    from recthinker.agent.loop import answer_to_ranking

    class Env:
        def __init__(self, order):
            self.evidence_order = order

        def signals(self, models=()):
            return {"item_relations": np.array([1.0, 3.0, 2.0]), "cf_als": np.array([3.0, 2.0, 1.0])}

    calls = [("item_relations", {})]
    seen = []

    def reverse_relations(signals, keys):  # the combiner gets exactly the evidence the calls revealed
        seen.append(list(keys))
        return np.argsort(signals["item_relations"], kind="stable")

    equal = answer_to_ranking(
        "promote; demote", ["a", "b", "c"], "evidence", evidence_calls=calls, env=Env(None)
    )
    fused = answer_to_ranking(
        "promote [2]; demote", ["a", "b", "c"], "evidence", evidence_calls=calls, env=Env(reverse_relations)
    )
    assert equal.items == ("b", "c", "a")  # no combiner: the equal-weight order of the evidence
    assert fused.items == ("b", "a", "c") and seen == [
        ["item_relations"]
    ]  # [2] promoted over the fused order


def test_with_fusion_attaches_a_lazy_order_once(tiny_benchmark, monkeypatch):
    from recthinker.tools.build import load_resources

    res = load_resources(tiny_benchmark, "dense/test")
    fitted = []
    monkeypatch.setattr(fz, "fit_fusion", lambda bench, seed=42: fitted.append(seed) or Fusion(None))
    attached = fz.with_fusion(res, tiny_benchmark, seed=5)
    assert res.evidence_order is None and isinstance(attached.evidence_order, fz.LazyFusionOrder)
    assert not fitted  # nothing fitted until an evidence answer needs the order
    assert fz.with_fusion(attached, tiny_benchmark) is attached


def test_a_shipped_fusion_is_used_when_the_benchmark_has_none(tiny_benchmark, tmp_path, monkeypatch):
    import shutil

    model = fit_fusion(tiny_benchmark, seed=7)
    cached = tiny_benchmark.root / "fusion" / model.meta["file"]
    monkeypatch.setattr(fz, "FITTED_DIR", tmp_path / "fitted")
    (tmp_path / "fitted").mkdir()
    shipped = fz.ship_fusion(tiny_benchmark, seed=7)
    assert sorted(p.name for p in shipped) == sorted([cached.name, cached.with_suffix(".json").name])
    shutil.rmtree(tiny_benchmark.root / "fusion")  # a fresh machine: nothing cached
    monkeypatch.setattr(fz, "train", lambda *a, **k: pytest.fail("refitted although a fusion ships"))
    again = fit_fusion(tiny_benchmark, seed=7)
    rng = np.random.default_rng(1)
    raw = {s: rng.normal(size=10) for s in SIGNALS}
    assert np.array_equal(model.score(raw), again.score(raw))


@pytest.mark.realdata
def test_ml1m_fusion_ships_with_the_package(monkeypatch):
    from recthinker.data.prepared import ensure_benchmark

    monkeypatch.setattr(fz, "train", lambda *a, **k: pytest.fail("the ML-1M fusion should ship"))
    monkeypatch.setattr(fz, "episode_signals", lambda *a, **k: pytest.fail("the ML-1M fusion should ship"))
    bench = ensure_benchmark("ml-1m")
    if (bench.root / "fusion").exists():
        monkeypatch.setattr(fz.Path, "is_file", _only_shipped(fz.Path.is_file))
    model = fit_fusion(bench)
    assert model.meta["fit_set"] == "loo/valid" and model.meta["n_episodes"] == 6040


def _only_shipped(is_file):
    """Path.is_file that hides the benchmark's own fusion cache (so the shipped copy must be found)."""

    def hidden(path):
        return False if path.parent.name == "fusion" else is_file(path)

    return hidden
