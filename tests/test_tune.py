"""Tuning on validation episodes (eval/tune.py) and the tuned settings every later ranker uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recthinker.baselines import make_scorer, tuned
from recthinker.baselines.base import cache_key
from recthinker.data.benchmark import BenchmarkConfig, build
from recthinker.data.prepared import Benchmark
from recthinker.errors import ConfigError
from recthinker.eval import tune as tune_mod
from recthinker.rankers import build_ranker


@pytest.fixture
def bench(tiny_dataset, tmp_path: Path) -> Benchmark:
    """A fresh benchmark per test: tuning writes tuned.json into it."""
    build(tiny_dataset, tmp_path / "bench", BenchmarkConfig(n_users=5, loo_sizes=(10, 20)))
    return Benchmark.open(tmp_path / "bench")


class NoTestData:
    """The benchmark, but reading any test episodes or a test background raises."""

    def __init__(self, bench: Benchmark) -> None:
        self._bench = bench
        self.root, self.manifest = bench.root, bench.manifest

    def episodes(self, name: str):
        assert not name.endswith("/test"), f"tuning read the test episodes {name}"
        return self._bench.episodes(name)

    def background(self, name: str):
        assert not name.endswith("/test"), f"tuning read the background of {name}"
        return self._bench.background(name)


def test_tuning_never_reads_test_data_and_picks_the_best_validation_point(bench, monkeypatch):
    monkeypatch.setitem(tuned.GRIDS, "ease", [{"lam": 1000.0}, {"lam": 1.0}, {"lam": 30.0}])
    doc = tune_mod.tune(NoTestData(bench), ["ease"], tune_set="loo/valid", budget_s=600)
    m = doc["models"]["ease"]
    tried = doc["progress"]["ease"]
    assert [t["params"]["lam"] for t in tried][0] == 1000.0  # the default first
    assert m["params"] == max(tried, key=lambda t: t["ndcg@10"])["params"]
    assert m["complete"] and m["points_tried"] == 3 and m["default_valid"] == tried[0]["ndcg@10"]
    # recomputed by hand from the validation episodes
    scorer = make_scorer("ease", **m["params"]).fit(
        bench.background("loo/valid"), rng=np.random.default_rng(42)
    )
    assert tune_mod.validation_scores(scorer, bench.episodes("loo/valid"))["ndcg@10"] == pytest.approx(
        m["valid"]["ndcg@10"]
    )
    assert json.loads((bench.root / "tuned.json").read_text())["models"]["ease"]["params"] == m["params"]


def test_a_test_set_is_refused(bench):
    with pytest.raises(ConfigError, match="validation episodes only"):
        tune_mod.tune(bench, ["ease"], tune_set="loo/test")


def test_later_rankers_and_tools_use_the_tuned_settings_and_untuned_the_defaults(bench, monkeypatch):
    monkeypatch.setitem(tuned.GRIDS, "ease", [{"lam": 1000.0}, {"lam": 3.0}])
    monkeypatch.setattr(
        tune_mod, "validation_scores", lambda s, e: {"ndcg@10": 1.0 / s.lam, "hr@10": 0, "n": 1}
    )
    tune_mod.tune(bench, ["ease"], budget_s=600)
    assert tuned.tuned_params(bench, "ease") == {"lam": 3.0}
    assert build_ranker("ease", bench, "loo/test").scorer.lam == 3.0
    assert build_ranker("ease-untuned", bench, "loo/test").scorer.lam == 1000.0
    assert tuned.tuned_params(bench, "als") == {}  # not tuned: the defaults
    from recthinker.tools.build import load_resources

    assert load_resources(bench, "dense/test").scorer_params == {"als": {}, "sasrec": {}}


def test_settings_tuned_on_other_inputs_are_ignored(bench, tmp_path, tiny_dataset):
    monkeypatch_doc = {
        "benchmark": {"dataset": "x", "inputs": {}, "config": {}},
        "models": {"ease": {"params": {"lam": 7.0}}},
    }
    (bench.root / "tuned.json").write_text(json.dumps(monkeypatch_doc))
    assert tuned.tuned_params(bench, "ease") == {}


def test_the_budget_stops_the_search_and_a_rerun_resumes_it(bench, monkeypatch):
    monkeypatch.setitem(tuned.GRIDS, "ease", [{"lam": 1000.0}, {"lam": 1.0}, {"lam": 30.0}])
    first = tune_mod.tune(bench, ["ease"], budget_s=1e-9)
    assert first["models"]["ease"]["points_tried"] == 1 and not first["models"]["ease"]["complete"]
    fitted: list[float] = []
    real = tune_mod.fit_or_load
    monkeypatch.setattr(tune_mod, "fit_or_load", lambda s, *a: fitted.append(s.lam) or real(s, *a))
    again = tune_mod.tune(bench, ["ease"], budget_s=600)
    assert again["models"]["ease"]["complete"] and 1000.0 not in fitted  # the first point was not redone


def test_sasrec_is_tuned_by_its_validation_curve_and_the_best_epoch_is_cached(bench, monkeypatch):
    monkeypatch.setitem(tuned.GRIDS, "sasrec", [{"max_len": 12, "hidden": 16, "dropout": 0.2, "lr": 1e-2}])
    monkeypatch.setattr(tune_mod, "SASREC_MAX_EPOCHS", 4)
    monkeypatch.setattr(tune_mod, "SASREC_PATIENCE", 10)
    doc = tune_mod.tune(bench, ["sasrec"], budget_s=600)
    point = doc["progress"]["sasrec"][0]
    assert [c["epoch"] for c in point["curve"]] == [1, 2, 3, 4]
    best = max(point["curve"], key=lambda c: c["ndcg@10"])
    chosen = doc["models"]["sasrec"]["params"]
    assert chosen["epochs"] == best["epoch"]
    # the cached model is exactly an unbroken fit of `epochs` = the best epoch
    background = bench.background("loo/valid")
    key = cache_key(make_scorer("sasrec", **chosen), background, np.random.default_rng(42))
    assert (bench.root / "models" / f"{key}.pkl").is_file()
    fresh = make_scorer("sasrec", **chosen).fit(background, rng=np.random.default_rng(42))
    cached = build_ranker("sasrec", bench, "loo/valid").scorer
    users = [e.user_id for e in bench.episodes("loo/valid")][:5]
    items = list(bench.items.index[:20])
    for u in users:
        np.testing.assert_allclose(cached.score(items, user_id=u), fresh.score(items, user_id=u), atol=1e-5)
    # a re-run knows the point is done (its recorded settings carry the chosen `epochs`): nothing is retrained
    import recthinker.baselines.sasrec as sasrec_module

    monkeypatch.setattr(
        sasrec_module.SASRecScorer, "_train", lambda *a, **k: pytest.fail("retrained a done point")
    )
    again = tune_mod.tune(bench, ["sasrec"], budget_s=600)
    assert again["progress"]["sasrec"] == doc["progress"]["sasrec"]


def test_loo_test_sasrec_is_the_validation_fit_reading_the_test_background(bench, monkeypatch):
    params = {"max_len": 12, "hidden": 16, "epochs": 2, "batch_size": 8, "threads": 1}
    monkeypatch.setattr(tuned, "tuned_params", lambda b, name: params if name == "sasrec" else {})
    import recthinker.rankers as rankers

    monkeypatch.setattr(rankers, "tuned_params", tuned.tuned_params)
    on_valid = build_ranker("sasrec", bench, "loo/valid").scorer
    on_test = build_ranker("sasrec", bench, "loo/test").scorer
    for a, b in zip(on_valid.model_.parameters(), on_test.model_.parameters(), strict=True):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())  # one fit, chosen on validation
    for e in bench.episodes("loo/test"):
        seq = on_test.user_seqs_[e.user_id]
        assert seq[-1] == on_test.items_.index(e.history[-1]) + 1  # the validation item is read
    assert bench.train_background("loo/test") is not None
    assert bench.train_background("dense/test") is None  # same background: fitted on it directly
    # the other scorers are refitted on the test background
    ease = build_ranker("ease", bench, "loo/test").scorer
    assert ease.matrix_.nnz == len(bench.background("loo/test"))


def test_two_tuning_runs_on_one_benchmark_keep_each_others_results(bench, monkeypatch):
    monkeypatch.setitem(tuned.GRIDS, "ease", [{"lam": 1000.0}, {"lam": 30.0}])
    monkeypatch.setitem(tuned.GRIDS, "itemknn", [{"k": 100, "shrink": 0.0}])
    tune_mod.tune(bench, ["ease"], budget_s=600)
    tune_mod.tune(bench, ["itemknn"], budget_s=600)
    on_disk = json.loads((bench.root / "tuned.json").read_text())
    assert set(on_disk["models"]) == {"ease", "itemknn"}
    assert tuned.tuned_params(bench, "ease") and tuned.tuned_params(bench, "itemknn") == {
        "k": 100,
        "shrink": 0.0,
    }


@pytest.mark.parametrize("name", [n for n in tuned.GRIDS if n != "pop"])
def test_each_grid_starts_at_the_defaults_so_a_short_budget_measures_the_untuned_ranker(name):
    from recthinker.baselines.base import hyper_parameters

    defaults = hyper_parameters(make_scorer(name))
    first = tune_mod.grid_order(name, seed=42)[0]
    assert all(defaults[k] == v for k, v in first.items())
    assert len({json.dumps(p, sort_keys=True) for p in tuned.GRIDS[name]}) == len(tuned.GRIDS[name])


def test_shipped_settings_and_fits_serve_a_fresh_machine_without_training(bench, tmp_path, monkeypatch):
    import shutil

    from recthinker.baselines import shipped
    from recthinker.baselines.sasrec import SASRecScorer

    monkeypatch.setattr(shipped, "FITTED_DIR", tmp_path / "fitted")
    monkeypatch.setattr(tuned, "FITTED_DIR", tmp_path / "fitted")
    monkeypatch.setitem(tuned.GRIDS, "sasrec", [{"max_len": 12, "hidden": 16, "dropout": 0.2, "lr": 1e-2}])
    monkeypatch.setattr(tune_mod, "SASREC_MAX_EPOCHS", 2)
    doc = tune_mod.tune(bench, ["sasrec"], budget_s=600)
    written = tune_mod.ship_fits(bench, doc)
    manifest = json.loads((tmp_path / "fitted" / "manifest.json").read_text())
    (entry,) = manifest["fits"]  # one fit: the validation background (loo test reads, not fits, its own)
    assert entry["params"] == doc["models"]["sasrec"]["params"] and entry["valid"]["n"] > 0
    assert entry["log_sha256"] and entry["fit_s"] >= 0 and len(written) == 2
    # a fresh machine: no tuned.json and no cached fits in the benchmark, only what the package ships
    (bench.root / "tuned.json").unlink()
    shutil.rmtree(bench.root / "models")
    assert tuned.tuned_params(bench, "sasrec") == doc["models"]["sasrec"]["params"]
    monkeypatch.setattr(SASRecScorer, "_train", lambda *a, **k: pytest.fail("trained instead of loading"))
    ranker = build_ranker("sasrec", bench, "loo/test")
    assert ranker.scorer.epochs == doc["models"]["sasrec"]["params"]["epochs"]
