"""Data layer: atomic readers (errors name file/line/field), loaders, and the benchmark builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recthinker.data.atomic import read_atomic, read_random
from recthinker.data.benchmark import BenchmarkConfig, build, select_subsets
from recthinker.data.dataset import load_atomic_folder, load_dataset, load_tables
from recthinker.data.prepared import Benchmark, read_episodes
from recthinker.errors import DataError


def write_atomic(
    folder: Path, stem: str, n_users: int = 40, n_items: int = 50, per_user: int = 12, seed: int = 0
) -> Path:
    """A small synthetic dataset in RecBole atomic format (titles with quotes, multi-genre tokens)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genres = ["Drama", "Comedy", "Action", "Sci-Fi"]
    with open(folder / f"{stem}.item", "w") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for i in range(n_items):
            f.write(f'i{i}\tThe "Movie" {i}\t{1980 + i % 20}\t{genres[i % 4]} {genres[(i + 1) % 4]}\n')
    with open(folder / f"{stem}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u in range(n_users):
            # users 0..9 share a small item block (dense); the rest spread out
            pool = np.arange(8) if u < 10 else np.arange(n_items)
            items = (
                rng.choice(pool, size=min(per_user, len(pool)), replace=False)
                if u < 10
                else rng.choice(pool, size=per_user, replace=False)
            )
            for t, i in enumerate(items):
                f.write(f"u{u}\ti{i}\t{1 + t % 5}\t{1000 + t}\n")
    return folder


def test_read_atomic_types_and_quotes(tmp_path):
    folder = write_atomic(tmp_path / "d", "toy")
    items = read_atomic(folder / "toy.item")
    assert items["movie_title"].iloc[0] == ["The", '"Movie"', "0"]
    inter = read_atomic(folder / "toy.inter")
    assert inter["rating"].dtype == np.float64 and inter["user_id"].iloc[0] == "u0"


@pytest.mark.parametrize(
    "body, message",
    [
        ("u1\ti1\t5\t100\nu2\ti2\tfive\t101\n", "toy.inter:3: field 'rating': 'five' is not a number"),
        ("u1\ti1\t5\t100\nu2\ti2\t4\n", "toy.inter:3: expected 4 tab-separated fields, found 3"),
        ("u1\ti1\t5\t100\nu2\ti2\t4\t1\textra\n", "toy.inter:3: expected 4 tab-separated fields, found 5"),
        ("u1\ti1\t5\t100\n\ti2\t4\t1\n", "toy.inter:3: field 'user_id' is empty"),
    ],
)
def test_read_atomic_errors_name_file_line_field(tmp_path, body, message):
    path = tmp_path / "toy.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + body)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        read_atomic(path, required=("user_id", "item_id"))


def test_bad_header_and_missing_field(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:tokn\n")
    with pytest.raises(DataError, match=r"x.inter:1: field 'item_id' has unknown type 'tokn'"):
        read_atomic(path)
    path.write_text("user_id:token\trating:float\nu\t1\n")
    with pytest.raises(DataError, match=r"x.inter:1: missing required field\(s\) \['item_id'\]"):
        read_atomic(path, required=("user_id", "item_id"))


def test_items_the_item_file_lacks_join_the_catalog_bare_with_one_warning(tmp_path, caplog):
    folder = write_atomic(tmp_path / "d", "toy")
    with open(folder / "toy.inter", "a") as f:
        f.write("u1\tnope\t3\t5000\n")
        f.write("u2\tnope\t3\t5001\n")
    n_lines = len((folder / "toy.inter").read_text().splitlines())
    with caplog.at_level("WARNING"):
        ds = load_atomic_folder(folder)
    warned = [r.getMessage() for r in caplog.records if "item file lacks" in r.getMessage()]
    assert (
        len(warned) == 1
        and f"2 rows name items the item file lacks (first on line {n_lines - 1})" in warned[0]
    )
    assert ds.items.loc["nope", "title"] == "nope" and ds.items.loc["nope", "categories"] == []
    assert ds.items.index.is_unique and "nope" in set(ds.log.frame["item_id"])


def test_catalog_too_small_for_a_leave_one_out_size_skips_that_size(tmp_path, caplog):
    ds = load_atomic_folder(write_atomic(tmp_path / "d", "toy"))
    n_items = len(ds.items)
    with caplog.at_level("WARNING"):
        manifest = build(ds, tmp_path / "b", BenchmarkConfig(n_users=2, loo_sizes=(3, 100), subsets=False))
    sets = set(manifest["episodes"])
    assert "loo-3/test" in sets and not any(s.startswith("loo-100") for s in sets)
    assert any(
        f"lists of 100 skipped: the catalog has {n_items} items" in r.getMessage() for r in caplog.records
    )


def test_duplicate_item_id(tmp_path):
    folder = write_atomic(tmp_path / "d", "toy")
    with open(folder / "toy.item", "a") as f:
        f.write("i3\tAgain\t1999\tDrama\n")
    with pytest.raises(DataError, match=r"toy.item:\d+: field 'item_id': duplicate id 'i3'"):
        load_atomic_folder(folder)


def test_catalog_normalized(tmp_path):
    ds = load_atomic_folder(write_atomic(tmp_path / "d", "toy"))
    row = ds.items.loc["i1"]
    assert (
        row["title"] == 'The "Movie" 1' and row["year"] == 1981 and row["categories"] == ["Comedy", "Action"]
    )


def test_read_random(tmp_path):
    path = tmp_path / "toy.random"
    path.write_text("u1\ta b c\nu2\tc d\n")
    assert read_random(path) == {"u1": ["a", "b", "c"], "u2": ["c", "d"]}
    path.write_text("u1 a b\n")
    with pytest.raises(DataError, match=r"toy.random:1"):
        read_random(path)


def test_csv_tables_with_mapping(tmp_path):
    (tmp_path / "r.csv").write_text("uid,iid,ts\n1,10,5\n1,11,6\n2,10,7\n")
    (tmp_path / "m.csv").write_text("iid,name\n10,Alpha\n11,Beta\n")
    ds = load_tables(
        tmp_path / "r.csv",
        tmp_path / "m.csv",
        columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"},
        item_columns={"item_id": "iid"},
    )
    assert ds.log.sequence("1") == ["10", "11"] and ds.items.loc["11", "title"] == "Beta"
    with pytest.raises(DataError, match=r"r.csv:1: missing column\(s\) \['user', 'item_id'\]"):
        load_tables(tmp_path / "r.csv", columns={"user_id": "user"})
    (tmp_path / "bad.csv").write_text("uid,iid,ts\n1,10,5\n1,12,x\n")
    with pytest.raises(DataError, match=r"bad.csv:3: field 'timestamp': 'x' is not a number"):
        load_tables(tmp_path / "bad.csv", columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"})


def small_cfg(**kw) -> BenchmarkConfig:
    return BenchmarkConfig(**{"n_users": 5, "loo_sizes": (10, 20), **kw})


def test_benchmark_invariants(tmp_path):
    ds = load_atomic_folder(write_atomic(tmp_path / "d", "toy"))
    manifest = build(ds, tmp_path / "out", small_cfg())
    bench = Benchmark.open(tmp_path / "out")
    seqs = ds.log.frame.groupby("user_id")["item_id"].agg(list)
    dense = bench.episodes("dense/test")
    sparse = bench.episodes("sparse/test")
    assert len(dense) == len(sparse) == 5
    assert not {e.user_id for e in dense} & {e.user_id for e in sparse}
    assert {e.user_id for e in dense} <= {f"u{i}" for i in range(10)}  # the planted overlapping block
    for e in dense + sparse + bench.episodes("dense/valid"):
        s = seqs[e.user_id]
        assert len(e.candidates) == 10 and e.candidates.count(e.target) == 1
        assert list(e.history) == s[-8:-2]
        assert e.target == (s[-1] if e.split == "test" else s[-2])
        assert not set(e.candidates) - {e.target} & set(s)  # negatives never interacted
    background = bench.background("dense/test")
    held = {(u, s[-1]) for u, s in seqs.items()} | {(u, s[-2]) for u, s in seqs.items()}
    assert not held & set(zip(background.frame.user_id, background.frame.item_id, strict=True))
    assert len(background) == len(ds.log) - 2 * len(seqs)
    loo20 = bench.episodes("loo-20/test")
    assert len(loo20) == len(seqs) and all(len(e.candidates) == 20 for e in loo20)
    # 1+9 negatives are the first 9 of the 1+19 stream
    loo10 = {e.user_id: e for e in bench.episodes("loo/test")}
    e20 = loo20[0]
    assert set(loo10[e20.user_id].candidates) <= set(e20.candidates)
    assert manifest["episodes"]["dense/test"] == "dense/test.jsonl"
    assert manifest["counts"]["episodes"]["loo/test"] == len(seqs)


def test_loo_test_sees_the_validation_item_and_valid_sees_neither(tmp_path):
    ds = load_atomic_folder(write_atomic(tmp_path / "d", "toy"))
    build(ds, tmp_path / "out", small_cfg())
    build(ds, tmp_path / "old", small_cfg(loo_test_sees_valid=False))
    bench, old = Benchmark.open(tmp_path / "out"), Benchmark.open(tmp_path / "old")
    seqs = ds.log.frame.groupby("user_id")["item_id"].agg(list)
    pairs = lambda log: set(zip(log.frame.user_id, log.frame.item_id, strict=True))  # noqa: E731
    test_bg, valid_bg = pairs(bench.background("loo/test")), pairs(bench.background("loo/valid"))
    tests, valids = {(u, s[-1]) for u, s in seqs.items()}, {(u, s[-2]) for u, s in seqs.items()}
    assert not tests & test_bg and valids <= test_bg  # test input: train + validation, never the test item
    assert not (tests | valids) & valid_bg  # validation input: train only
    assert pairs(bench.background("dense/test")) == valid_bg  # the subsets keep the AgentCF protocol
    for e in bench.episodes("loo-20/test"):
        assert e.history[-1] == seqs[e.user_id][-2] and e.target == seqs[e.user_id][-1]
    for e in bench.episodes("loo-20/valid"):
        assert e.history[-1] == seqs[e.user_id][-3] and e.target == seqs[e.user_id][-2]
    # without the switch, test and validation share the train-only background
    assert pairs(old.background("loo/test")) == valid_bg
    assert all(e.history[-1] == seqs[e.user_id][-3] for e in old.episodes("loo/test"))


def test_same_seed_same_bytes(tmp_path):
    ds = load_atomic_folder(write_atomic(tmp_path / "d", "toy"))
    build(ds, tmp_path / "a", small_cfg())
    build(ds, tmp_path / "b", small_cfg())
    build(ds, tmp_path / "c", small_cfg(seed=7))
    for name in ("manifest.json", "dense/test.jsonl", "loo/test.jsonl", "background.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "loo/test.jsonl").read_bytes() != (
        tmp_path / "c" / "loo/test.jsonl"
    ).read_bytes()
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert (
        set(m["sha256"]["inputs"]) == {"toy.inter", "toy.item"}
        and "dense/test.jsonl" in m["sha256"]["outputs"]
    )


def test_random_file_candidates(tmp_path):
    folder = write_atomic(tmp_path / "d", "toy")
    ds = load_atomic_folder(folder)
    seqs = ds.log.frame.groupby("user_id")["item_id"].agg(list)
    lines = {u: [s[-1], *(f"i{k}" for k in range(49, 30, -1))] for u, s in seqs.items()}
    with open(folder / "toy.random", "w") as f:
        for u, line in lines.items():
            f.write(f"{u}\t{' '.join(line)}\n")
    ds = load_atomic_folder(folder)
    build(ds, tmp_path / "out", small_cfg(loo=False))
    bench = Benchmark.open(tmp_path / "out")
    for e in bench.episodes("sparse/test") + bench.episodes("dense/valid"):
        expected = [i for i in dict.fromkeys(lines[e.user_id]) if i != e.target][:9]
        assert sorted(set(e.candidates) - {e.target}) == sorted(expected)


def test_background_subset_switch(tmp_path):
    ds = load_atomic_folder(write_atomic(tmp_path / "d", "toy"))
    m = build(ds, tmp_path / "out", small_cfg(background="subset", loo=False))
    bench = Benchmark.open(tmp_path / "out")
    bg = bench.background("dense/test")
    assert m["background"]["dense/test"] == "dense/background.parquet"
    assert len(bg) == 5 * 6 and set(bg.frame.user_id) == {e.user_id for e in bench.episodes("dense/test")}


def test_select_subsets_dense_overlaps_more():
    rng = np.random.default_rng(0)
    hist = {f"d{u}": [f"x{i}" for i in rng.choice(5, 3, replace=False)] for u in range(10)}
    hist |= {f"s{u}": [f"y{u}_{i}" for i in range(3)] for u in range(10)}
    dense, sparse = select_subsets(hist, 5, seed=1)
    assert all(u.startswith("d") for u in dense) and all(u.startswith("s") for u in sparse)
    with pytest.raises(DataError, match="only 20 users"):
        select_subsets(hist, 11, seed=1)


def test_presplit_and_sequential(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    (folder / "s.item").write_text(
        "item_id:token\ttitle:token\n" + "".join(f"i{i}\tT{i}\n" for i in range(30))
    )
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (folder / "s.train.inter").write_text(head + "u1\ti1 i2\ti3\nu1\ti1 i2 i3\ti4\nu2\ti5\ti6\n")
    (folder / "s.valid.inter").write_text(head + "u1\ti1 i2 i3 i4\ti5\nu2\ti5 i6\ti7\n")
    (folder / "s.test.inter").write_text(head + "u1\ti1 i2 i3 i4 i5\ti6\nu2\ti5 i6 i7\ti8\n")
    ds = load_dataset(folder)
    assert ds.splits is not None and ds.log.sequence("u1") == ["i1", "i2", "i3", "i4"]
    m = build(ds, tmp_path / "out", BenchmarkConfig(n_users=1))
    assert set(m["episodes"]) == {"valid", "test"}
    test = read_episodes(tmp_path / "out" / m["episodes"]["test"])
    assert [e.episode_id for e in test] == ["test/u1", "test/u2"]
    assert test[0].history == ("i1", "i2", "i3", "i4", "i5") and test[0].target == "i6"
    assert not {"i1", "i2", "i3", "i4", "i5"} & (set(test[0].candidates) - {"i6"})


def test_bad_episode_line(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(
        '{"episode_id": "a", "user_id": "u", "history": [], "candidates": ["x", "y"], "target": "x"}\n{oops\n'
    )
    with pytest.raises(DataError, match=r"e.jsonl:2: bad episode"):
        read_episodes(path)


@pytest.mark.realdata
def test_ml1m_benchmark_counts(tmp_path):
    from recthinker.data.prepared import ensure_benchmark

    bench = ensure_benchmark("ml-1m")
    counts = bench.manifest["counts"]
    assert counts["dataset_interactions"] == 1_000_209
    assert counts["episodes"]["dense/test"] == counts["episodes"]["sparse/test"] == 100
    assert counts["episodes"]["loo/test"] == 6040
    assert counts["background_interactions"]["full"] == 1_000_209 - 2 * 6040
    assert counts["background_interactions"]["loo-test"] == 1_000_209 - 6040
    dense = bench.episodes("dense/test")
    assert all(len(e.history) == 6 and len(e.candidates) == 10 for e in dense)
