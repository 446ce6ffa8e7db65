"""Bad input to the data layer: every kind is one DataError naming file, line and field, or a documented
repair (duplicates dropped, a Latin-1 file read, a differently named catalog found), never a traceback, a
silently wrong value or a half-written benchmark. Small synthetic folders in tmp_path throughout."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recthinker.data.atomic import read_atomic, read_random
from recthinker.data.benchmark import BenchmarkConfig, build
from recthinker.data.dataset import load_atomic_folder, load_dataset, load_tables
from recthinker.data.prepared import Benchmark, ensure_benchmark, find_manifest, read_episodes
from recthinker.errors import DataError
from recthinker.types import Episode

INTER_HEAD = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEAD = "item_id:token\ttitle:token\tprice:float\tbrand:token\tcategories:token_seq\n"


def write_folder(
    folder: Path, stem: str = "toy", n_users: int = 24, seed: int = 0, item: bool = True
) -> Path:
    """A small atomic dataset: users 0..5 share items i0..i7 (a dense block), the rest spread out."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if item:
        rows = "".join(f"i{i}\tTitle {i}\t{i}.5\tBrand{i % 3}\tRock Pop\n" for i in range(40))
        (folder / f"{stem}.item").write_text(ITEM_HEAD + rows)
    lines = []
    for u in range(n_users):
        pool = np.arange(8) if u < 6 else np.arange(40)
        for t, i in enumerate(rng.choice(pool, size=8 if u < 6 else 10, replace=False)):
            lines.append(f"u{u}\ti{i}\t{1 + t % 5}\t{1000 + t}\n")
    (folder / f"{stem}.inter").write_text(INTER_HEAD + "".join(lines))
    return folder


def small_cfg(**kw) -> BenchmarkConfig:
    return BenchmarkConfig(**{"n_users": 3, "loo_sizes": (10, 20), **kw})


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RECTHINKER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- 1. the benchmark cache is keyed by the inputs' content --------------------------------------------


def test_cached_benchmark_follows_edited_inputs(tmp_path, cache, caplog):
    folder = write_folder(tmp_path / "toy")
    first = ensure_benchmark(folder, cfg=small_cfg())
    targets = {e.user_id: e.target for e in first.episodes("loo/test")}
    inter = folder / "toy.inter"
    text = inter.read_text()
    inter.write_text(text + "u0\ti30\t5\t9999\n")  # a new last interaction for u0
    with caplog.at_level(logging.INFO, logger="recthinker.data.prepared"):
        second = ensure_benchmark(folder, cfg=small_cfg())
    assert {e.user_id: e.target for e in second.episodes("loo/test")}["u0"] == "i30" != targets["u0"]
    assert second.manifest["sha256"]["inputs"]["toy.inter"] != first.manifest["sha256"]["inputs"]["toy.inter"]
    (line,) = [r.getMessage() for r in caplog.records if "preparing benchmark" in r.getMessage()]
    assert "toy.inter" in line and "differ" in line
    # back to the first content: the first benchmark is still valid and reused as is
    inter.write_text(text)
    assert ensure_benchmark(folder, cfg=small_cfg()).root == first.root


def test_same_folder_name_different_content_gets_its_own_benchmark(tmp_path, cache):
    a = ensure_benchmark(write_folder(tmp_path / "a" / "toy", seed=0), cfg=small_cfg())
    b = ensure_benchmark(write_folder(tmp_path / "b" / "toy", seed=1), cfg=small_cfg())
    assert a.root != b.root
    assert b.manifest["sha256"]["inputs"] == {
        "toy.inter": __import__("hashlib").sha256((tmp_path / "b/toy/toy.inter").read_bytes()).hexdigest(),
        "toy.item": __import__("hashlib").sha256((tmp_path / "b/toy/toy.item").read_bytes()).hexdigest(),
    }
    assert a.episodes("loo/test") != b.episodes("loo/test")


def test_explicit_out_is_verified_on_every_load(tmp_path, cache, caplog):
    folder = write_folder(tmp_path / "toy")
    out = tmp_path / "bench"
    ensure_benchmark(folder, out=out, cfg=small_cfg())
    with open(folder / "toy.inter", "a") as f:
        f.write("u1\ti31\t4\t9999\n")
    with caplog.at_level(logging.INFO, logger="recthinker.data.prepared"):
        bench = ensure_benchmark(folder, out=out, cfg=small_cfg())
    assert {e.user_id: e.target for e in bench.episodes("loo/test")}["u1"] == "i31"
    assert any("inputs changed" in r.getMessage() and "toy.inter" in r.getMessage() for r in caplog.records)
    # another config is another benchmark too
    assert ensure_benchmark(folder, out=out, cfg=small_cfg(seed=7)).manifest["config"]["seed"] == 7


def test_damaged_cached_benchmark_is_rebuilt(tmp_path, cache):
    folder = write_folder(tmp_path / "toy")
    bench = ensure_benchmark(folder, cfg=small_cfg())
    (bench.root / "items.parquet").unlink()
    again = ensure_benchmark(folder, cfg=small_cfg())
    assert (again.root / "items.parquet").is_file() and len(again.items) == 40


# --- 2. field values and field counts -----------------------------------------------------------------


@pytest.mark.parametrize(
    "rows, message",
    [
        ("u1\ti1\t5\t100\nu2\ti2\t\t101\n", "toy.inter:3: field 'rating' is empty"),
        ("u1\ti1\t5\t100\nu2\ti2\t4\t \n", "toy.inter:3: field 'timestamp' is empty"),
        ("u1\ti1\t5\t100\nu2\ti2\t4\tnan\n", "toy.inter:3: field 'timestamp': 'nan' is not a finite number"),
        ("u1\ti1\tinf\t100\n", "toy.inter:2: field 'rating': 'inf' is not a finite number"),
        ("u1\ti1\t5\t1e999\n", "toy.inter:2: field 'timestamp': '1e999' is not a finite number"),
        ("u1\ti1\t5\t100\n\nu2\ti2\t4\tabc\n", "toy.inter:4: field 'timestamp': 'abc' is not a number"),
        ("u1\ti1\t5\t100\nu2\t\t4\t1\n", "toy.inter:3: field 'item_id' is empty"),
        # field counts, also on the last line without a final newline and with a trailing tab
        ("u1\ti1\t5\t100\nu2\ti2\t4", "toy.inter:3: expected 4 tab-separated fields, found 3"),
        ("u1\ti1\t5\t100\nu2\ti2\t4\t101\t", "toy.inter:3: expected 4 tab-separated fields, found 5"),
        ("u1\ti1\t5\t100\t\nu2\ti2\t4\t101\n", "toy.inter:2: expected 4 tab-separated fields, found 5"),
        ("u1\ti1\t5\t100\nu2\ti2\t4\t101\textra\n", "toy.inter:3: expected 4 tab-separated fields, found 5"),
        ("u1\ti1\t5\t100\r\nu2\ti2\r4\t101\r\n", "toy.inter:3: a carriage return inside the line"),
    ],
)
def test_bad_interaction_values_name_file_line_field(tmp_path, rows, message):
    folder = write_folder(tmp_path / "d")
    (folder / "toy.inter").write_text(INTER_HEAD + rows, newline="")
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_atomic_folder(folder)


def test_missing_field_message_names_the_field(tmp_path):
    path = tmp_path / "toy.inter"
    path.write_text(INTER_HEAD + "u1\ti1\t5\n")
    with pytest.raises(DataError, match=r"toy.inter:2: .*field 'timestamp' is missing"):
        read_atomic(path)


def test_header_with_fewer_fields_than_rows(tmp_path):
    path = tmp_path / "toy.inter"
    path.write_text("user_id:token\titem_id:token\tts:float\nu1\ti1\t5\t100\n")
    with pytest.raises(DataError, match=r"toy.inter:2: expected 3 tab-separated fields, found 4"):
        read_atomic(path)


def test_empty_descriptive_item_fields_are_missing_values(tmp_path):
    folder = write_folder(tmp_path / "d")
    (folder / "toy.item").write_text(
        ITEM_HEAD + "i0\tTitle 0\t\t\t\n" + "".join(f"i{i}\tTitle {i}\t1.5\tB\tRock\n" for i in range(1, 40))
    )
    ds = load_atomic_folder(folder)
    row = ds.items.loc["i0"]
    assert np.isnan(row["price"]) and row["brand"] == "" and row["categories"] == []
    assert ds.items.loc["i1", "price"] == 1.5


@pytest.mark.parametrize(
    "row, message",
    [
        ("i40\tX\tcheap\tB\tRock\n", "toy.item:42: field 'price': 'cheap' is not a number"),
        ("i40\tX\tnan\tB\tRock\n", "toy.item:42: field 'price': 'nan' is not a finite number"),
        ("\tX\t1\tB\tRock\n", "toy.item:42: field 'item_id' is empty"),
        ("i40\tX\t1\tB\n", "toy.item:42: expected 5 tab-separated fields, found 4"),
    ],
)
def test_bad_item_values(tmp_path, row, message):
    folder = write_folder(tmp_path / "d")
    with open(folder / "toy.item", "a") as f:
        f.write(row)
    with pytest.raises(DataError, match=message):
        load_atomic_folder(folder)


@pytest.mark.parametrize(
    "body, message",
    [
        ("uid,iid,ts\n1,10,5\n1,11,6,7\n", "r.csv:3: expected 3 fields, found 4"),
        ("uid,iid,ts\n1,10,5\n1,11\n", "r.csv:3: expected 3 fields, found 2 \\(column 'ts' is missing\\)"),
        ("uid,iid,ts\n1,10,5\n1,11,\n", "r.csv:3: field 'timestamp' is empty"),
        ("uid,iid,ts\n1,10,5\n1,11,inf\n", "r.csv:3: field 'timestamp': 'inf' is not a finite number"),
        ("uid,iid,ts\n1,10,5\n,11,6\n", "r.csv:3: field 'user_id' is empty"),
    ],
)
def test_bad_csv_tables(tmp_path, body, message):
    (tmp_path / "r.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        load_tables(tmp_path / "r.csv", columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"})


def test_csv_quoted_fields_and_line_numbers(tmp_path):
    (tmp_path / "m.csv").write_text('iid,name\n10,"Alpha, the\nsequel"\n11,Beta\n12\n')
    (tmp_path / "r.csv").write_text("user_id,item_id\n1,10\n")
    with pytest.raises(DataError, match=r"m.csv:5: expected 2 fields, found 1"):
        load_tables(tmp_path / "r.csv", tmp_path / "m.csv", item_columns={"item_id": "iid"})


def test_numeric_and_string_ids_match(tmp_path):
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "timestamp": [1, 2, 3]}).to_parquet(
        tmp_path / "r.parquet"
    )
    (tmp_path / "m.csv").write_text("item_id,title\n10,Alpha\n11,Beta\n")
    ds = load_tables(tmp_path / "r.parquet", tmp_path / "m.csv")
    assert ds.log.sequence("1") == ["10", "11"] and ds.items.loc["10", "title"] == "Alpha"
    # an atomic item_id typed float matches the catalog's token ids
    folder = write_folder(tmp_path / "f")
    (folder / "toy.item").write_text("item_id:token\ttitle:token\n10\tA\n11\tB\n")
    (folder / "toy.inter").write_text("user_id:token\titem_id:float\ttimestamp:float\nu\t10\t1\nu\t11.0\t2\n")
    assert load_atomic_folder(folder).log.sequence("u") == ["10", "11"]


# --- 3. prepare is atomic -----------------------------------------------------------------------------


def _fail_mid_build(monkeypatch, exc: BaseException) -> None:
    """Fail while the episode files are written: the first set (3 episodes) is complete, the second half."""
    real = Episode.to_dict
    calls = []

    def flaky(self):
        calls.append(self.episode_id)
        if len(calls) == 5:
            raise exc
        return real(self)

    monkeypatch.setattr(Episode, "to_dict", flaky)


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_prepare_leaves_old_benchmark_byte_identical(tmp_path, monkeypatch, exc):
    ds = load_atomic_folder(write_folder(tmp_path / "d"))
    out = tmp_path / "out"
    build(ds, out, small_cfg())
    before = tree_bytes(out)
    _fail_mid_build(monkeypatch, exc)
    with pytest.raises(type(exc)):
        build(ds, out, small_cfg(seed=7))
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out"]  # no temporary folder left


def test_failed_prepare_into_new_folder_leaves_nothing(tmp_path, monkeypatch):
    ds = load_atomic_folder(write_folder(tmp_path / "d"))
    _fail_mid_build(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        build(ds, tmp_path / "new" / "deeper" / "out", small_cfg())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_prepare_replaces_old_benchmark_whole(tmp_path):
    ds = load_atomic_folder(write_folder(tmp_path / "d"))
    out = tmp_path / "out"
    build(ds, out, small_cfg(loo_sizes=(10, 20)))
    (out / "models").mkdir()  # a cache another command keeps in the benchmark folder
    (out / "models" / "ease.npz").write_bytes(b"x")
    build(ds, out, small_cfg(loo_sizes=(10,)))
    assert not (out / "loo-20").exists() and not (out / "models").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["sha256"]["outputs"]) == {str(p.relative_to(out)) for p in out.rglob("*.*")} - {
        "manifest.json"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out"]


def test_stale_temp_folder_of_killed_prepare_is_removed(tmp_path):
    ds = load_atomic_folder(write_folder(tmp_path / "d"))
    dead = tmp_path / f".out.prepare-{2**22 + 1}-abcd"
    dead.mkdir()
    (dead / "manifest.json").write_text("{")
    build(ds, tmp_path / "out", small_cfg())
    assert not dead.exists()


def test_prepare_out_that_is_a_file_or_cannot_be_created(tmp_path):
    ds = load_atomic_folder(write_folder(tmp_path / "d"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match=r"f: exists and is not a folder"):
        build(ds, tmp_path / "f", small_cfg())
    with pytest.raises(DataError, match=r"cannot create .*out: .*f is a file"):
        build(ds, tmp_path / "f" / "out", small_cfg())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"mine: not empty and not a prepared benchmark"):
        build(ds, tmp_path / "mine", small_cfg())
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_prepare_out_in_read_only_folder(tmp_path):
    ds = load_atomic_folder(write_folder(tmp_path / "d"))
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(DataError, match=r"cannot (create|write)"):
        build(ds, tmp_path / "ro" / "out", small_cfg())


# --- 4. crashes become one-line errors ----------------------------------------------------------------


def test_exact_duplicate_rows_are_dropped_with_one_warning(tmp_path, caplog):
    folder = write_folder(tmp_path / "d")
    n = len(load_atomic_folder(folder).log)
    lines = (folder / "toy.inter").read_text().splitlines(keepends=True)
    (folder / "toy.inter").write_text("".join(lines + [lines[1], lines[5], lines[1]]))
    with caplog.at_level(logging.WARNING):
        ds = load_atomic_folder(folder)
    assert len(ds.log) == n
    (msg,) = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    first = len(lines) + 1
    assert "toy.inter" in msg and "dropped 3 duplicate" in msg and f"line(s) {first}, {first + 1}" in msg


def test_conflicting_duplicate_rows_are_an_error(tmp_path):
    folder = write_folder(tmp_path / "d")
    (folder / "toy.inter").write_text(INTER_HEAD + "u1\ti1\t5\t100\nu1\ti2\t3\t101\nu1\ti1\t2\t100\n")
    with pytest.raises(DataError, match=r"toy.inter:4: field 'rating': 2.0 contradicts 5.0 on line 2"):
        load_atomic_folder(folder)


def test_presplit_without_item_file(tmp_path):
    folder = tmp_path / "ps"
    folder.mkdir()
    head = "user_id:token\titem_id:token\ttimestamp:float\n"
    train = "".join(f"u{u}\ti{u * 5 + k}\t{k}\n" for u in range(4) for k in range(12))
    (folder / "s.train.inter").write_text(head + train)
    (folder / "s.valid.inter").write_text(head + "".join(f"u{u}\ti{u * 5 + 12}\t12\n" for u in range(4)))
    (folder / "s.test.inter").write_text(head + "".join(f"u{u}\ti{u * 5 + 13}\t13\n" for u in range(4)))
    ds = load_dataset(folder)
    assert ds.splits is not None and len(ds.items) == 29 and ds.log.sequence("u0")[0] == "i0"
    m = build(ds, tmp_path / "out", BenchmarkConfig(n_users=1))
    assert m["counts"]["episodes"] == {"valid": 4, "test": 4}


def test_presplit_with_some_splits_missing(tmp_path):
    folder = tmp_path / "ps"
    folder.mkdir()
    (folder / "s.train.inter").write_text("user_id:token\titem_id:token\nu\ti\n")
    (folder / "s.test.inter").write_text("user_id:token\titem_id:token\nu\tj\n")
    with pytest.raises(
        DataError, match=r"all of s.train/valid/test.inter; found only s.train.inter, s.test.inter"
    ):
        load_dataset(folder)


def test_item_file_with_another_name_is_found(tmp_path, caplog):
    folder = write_folder(tmp_path / "d", stem="Amazon_CDs")
    for split in ("train", "valid", "test"):
        (folder / f"x.{split}.inter").write_text(
            INTER_HEAD + "".join(f"u{u}\ti{(u * 3 + k) % 40}\t4\t{k}\n" for u in range(5) for k in range(3))
        )
    (folder / "Amazon_CDs.inter").unlink()
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(folder)
    assert ds.items.loc["i3", "title"] == "Title 3"
    (msg,) = [r.getMessage() for r in caplog.records if "Amazon_CDs.item" in r.getMessage()]
    assert "x.item" in msg
    (folder / "Books.item").write_text(ITEM_HEAD)
    with pytest.raises(
        DataError, match=r"no x.item, and several .item files \(Amazon_CDs.item, Books.item\)"
    ):
        load_dataset(folder)


def test_latin1_file_is_read_with_a_warning(tmp_path, caplog):
    folder = write_folder(tmp_path / "d")
    text = (folder / "toy.item").read_text().replace("Title 3\t", "Café Noir\t")
    (folder / "toy.item").write_bytes(text.encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        ds = load_atomic_folder(folder)
    assert ds.items.loc["i3", "title"] == "Café Noir"
    (msg,) = [r.getMessage() for r in caplog.records if "UTF-8" in r.getMessage()]
    assert "toy.item" in msg and "cp1252" in msg and "line 5" in msg


def test_utf16_and_bom_files_are_read(tmp_path):
    folder = write_folder(tmp_path / "d")
    text = (folder / "toy.item").read_text()
    (folder / "toy.item").write_bytes(text.encode("utf-16"))
    assert load_atomic_folder(folder).items.loc["i1", "title"] == "Title 1"
    (folder / "toy.item").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_atomic_folder(folder).items.loc["i1", "title"] == "Title 1"


def test_gzip_and_binary_files_are_named(tmp_path):
    folder = write_folder(tmp_path / "d")
    raw = (folder / "toy.inter").read_bytes()
    (folder / "toy.inter").write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=r"toy.inter: this is gzip-compressed data, not text; decompress"):
        load_atomic_folder(folder)
    (folder / "toy.inter").write_bytes(raw[:40] + b"\x00\x01\x02" + raw[40:])
    with pytest.raises(DataError, match=r"toy.inter:\d+: binary data \(a NUL byte\)"):
        load_atomic_folder(folder)
    (folder / "toy.inter").unlink()
    (folder / "toy.inter.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=r"toy.inter.gz: compressed files are not read; decompress it"):
        load_dataset(folder)
    (folder / "toy.inter").write_bytes(raw)
    (folder / "toy.item.gz").write_bytes(b"\x1f\x8b")
    (folder / "toy.item").unlink()
    with pytest.raises(DataError, match=r"toy.item.gz: compressed files are not read"):
        load_dataset(folder)


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("toy.inter", INTER_HEAD, r"toy.inter: no interactions: the file has only a header"),
        ("toy.inter", "", r"toy.inter:1: empty header"),
        ("toy.item", ITEM_HEAD, r"toy.item: no items: the file has only a header"),
        ("toy.user", "user_id:token\tage:float\n", r"toy.user: no users: the file has only a header"),
    ],
)
def test_empty_files(tmp_path, name, body, message):
    folder = write_folder(tmp_path / "d")
    (folder / name).write_text(body)
    with pytest.raises(DataError, match=message):
        load_dataset(folder, cache=False)


def test_folder_without_inter_and_file_instead_of_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no .inter file"):
        load_dataset(tmp_path / "empty")
    folder = write_folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"toy.inter: is a file; pass the folder"):
        load_dataset(folder / "toy.inter")


@pytest.fixture
def prepared(tmp_path) -> Path:
    out = tmp_path / "bench"
    build(load_atomic_folder(write_folder(tmp_path / "d")), out, small_cfg())
    return out


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda o: (o / "manifest.json").write_text('{"episodes": {'), r"manifest.json:1: corrupt manifest"),
        (lambda o: (o / "manifest.json").write_text("[]"), r"manifest.json: corrupt manifest"),
        (lambda o: (o / "items.parquet").unlink(), r"items.parquet: missing \(listed in"),
        (lambda o: (o / "background.parquet").unlink(), r"background.parquet: missing"),
        (lambda o: (o / "loo" / "test.jsonl").unlink(), r"loo/test.jsonl: missing"),
        (lambda o: (o / "items.parquet").write_bytes(b"PAR1 garbage"), r"items.parquet: unreadable Parquet"),
    ],
)
def test_damaged_benchmark_folder(prepared, damage, message):
    damage(prepared)
    with pytest.raises(DataError, match=message) as e:
        Benchmark.open(prepared)
    assert "recthinker prepare" in str(e.value)


def test_bad_episode_lines_in_a_benchmark(prepared):
    path = prepared / "dense" / "test.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    bench = Benchmark.open(prepared)
    for bad, message in (
        ('{"episode_id": "x", "user_id"', "not JSON"),
        ('["a"]', "expected a JSON object"),
        (
            '{"episode_id": "x", "user_id": "u", "history": "abc", "candidates": ["a"], "target": "a"}',
            "'history' must be a list",
        ),
        ('{"user_id": "u", "history": [], "candidates": ["a"]}', "missing key 'episode_id'"),
    ):
        path.write_text("".join(lines[:2]) + bad + "\n")
        with pytest.raises(
            DataError, match=rf"dense/test.jsonl:3: bad episode: {message}.*recthinker prepare"
        ):
            bench.episodes("dense/test")
    path.write_bytes(b"".join(x.encode() for x in lines[:1]) + b"\xff\xfe\n")
    with pytest.raises(DataError, match=r"dense/test.jsonl:2: bad episode: not valid UTF-8"):
        bench.episodes("dense/test")


def test_missing_episodes_file(tmp_path, prepared):
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        read_episodes(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        find_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"is not listed in"):
        Benchmark.open(prepared).name_of(tmp_path / "elsewhere.jsonl")


@pytest.mark.realdata
@pytest.mark.parametrize("name, n_inter, n_items", [("ml-100k", 100_000, 1682), ("ml-1m", 1_000_209, 3883)])
def test_bundled_datasets_still_load(name, n_inter, n_items, cache):
    ds = load_dataset(name)
    assert len(ds.log) == n_inter and len(ds.items) == n_items
    assert not ds.log.frame["timestamp"].isna().any() and not ds.log.frame["rating"].isna().any()
    if name == "ml-100k":
        assert np.isnan(ds.items.loc["267", "year"])  # release_year 'unkonwn': a missing year


def test_legacy_name_keyed_cache_is_adopted_not_rebuilt(tmp_path, cache):
    folder = write_folder(tmp_path / "toy")
    legacy = cache / "benchmarks" / "toy-seed42"
    build(load_atomic_folder(folder), legacy, small_cfg())
    (legacy / "models").mkdir()  # caches kept beside the episodes survive the adoption
    bench = ensure_benchmark(folder, cfg=small_cfg())
    assert bench.root.name.startswith("toy-seed42-") and (bench.root / "models").is_dir()
    assert not legacy.exists()
    # a legacy folder built from other content is not adopted
    build(load_atomic_folder(write_folder(tmp_path / "other" / "toy", seed=3)), legacy, small_cfg())
    (folder / "toy.inter").write_text((folder / "toy.inter").read_text() + "u2\ti33\t1\t9999\n")
    assert ensure_benchmark(folder, cfg=small_cfg()).root != legacy and legacy.is_dir()


def test_compressed_catalog_with_another_name(tmp_path):
    folder = write_folder(tmp_path / "d", item=False)
    (folder / "Catalog.item.gz").write_bytes(gzip.compress(ITEM_HEAD.encode()))
    with pytest.raises(DataError, match=r"Catalog.item.gz: compressed files are not read"):
        load_dataset(folder)


@pytest.mark.parametrize(
    "setup, message",
    [
        (
            lambda d, o: (d / "toy.inter").write_text(INTER_HEAD + "u1\ti1\t5\t\n"),
            "toy.inter:2: field 'timestamp'",
        ),
        (lambda d, o: o.write_text("a file"), "exists and is not a folder"),
        (lambda d, o: (d / "toy.inter").write_bytes(gzip.compress(b"x")), "gzip-compressed"),
        (lambda d, o: (d / "toy.item").write_text(ITEM_HEAD), "no items"),
        (
            lambda d, o: (d / "toy.inter").write_text(INTER_HEAD.replace("\t", ",") + "u1,i1,5,7\n"),
            "toy.inter:1: the header's fields are separated by ',', not tabs",
        ),
        (
            lambda d, o: (d / "toy.inter").write_text(INTER_HEAD.replace("\t", "; ") + "u1; i1; 5; 7\n"),
            "separated by ';', not tabs",
        ),
    ],
)
def test_prepare_command_gives_one_line(tmp_path, capsys, setup, message):
    from recthinker.cli import main

    folder = write_folder(tmp_path / "d")
    out = tmp_path / "out"
    setup(folder, out)
    assert main(["prepare", "--dataset", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["d", "out"] if out.exists() else ["d"])


# --- episode files: every line checked ----------------------------------------------------------------

GOOD = {"episode_id": "e1", "user_id": "u1", "history": ["a"], "candidates": ["a", "b"], "target": "b"}


def _line(**changes) -> str:
    row = {**GOOD, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not ...})


@pytest.mark.parametrize(
    "row, message",
    [
        (_line(episode_id=...), r"missing key 'episode_id'"),
        (_line(user_id=7), r"field 'user_id' must be a string, got 7"),
        (_line(target=None), r"field 'target' must be a string, got null"),
        (_line(target=...), r"missing key 'target'"),
        (_line(episode_id=3), r"field 'episode_id' must be a string"),
        (_line(candidates=["a", 46]), r"field 'candidates': entry 1 is 46, expected a non-empty string"),
        (_line(history=["a", None]), r"field 'history': entry 1 is null"),
        (_line(candidates=None), r"'candidates' must be a list"),
        (_line(history=None), r"'history' must be a list"),
        (_line(candidates=["b"]), r"field 'candidates': 1 candidate\(s\), need at least 2"),
        (_line(candidates=["a", "c"]), r"field 'target': 'b' is not among the candidates"),
        (_line(candidates=["a", "b", "a"]), r"field 'candidates': 'a' appears more than once"),
    ],
)
def test_bad_episode_fields_name_line_and_field(tmp_path, row, message):
    path = tmp_path / "eps.jsonl"
    path.write_text(_line(episode_id="e0") + "\n" + row + "\n")
    with pytest.raises(DataError, match=rf"eps.jsonl:2: bad episode: {message}.*hint here"):
        read_episodes(path, hint="hint here")


def test_episode_file_empty_repeated_id_bom_and_blank_lines(tmp_path):
    path = tmp_path / "eps.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match=r"eps.jsonl: no episodes"):
        read_episodes(path)
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"eps.jsonl: no episodes"):
        read_episodes(path)
    path.write_text(_line() + "\n" + _line(episode_id="e2") + "\n" + _line() + "\n")
    with pytest.raises(DataError, match=r"eps.jsonl:3: .*'episode_id': 'e1' repeats line 1"):
        read_episodes(path)
    path.write_bytes(b"\xef\xbb\xbf" + (_line() + "\n\n" + _line(episode_id="e2") + "\n").encode())
    eps = read_episodes(path)
    assert [e.episode_id for e in eps] == ["e1", "e2"] and eps[0].candidates == ("a", "b")


def test_episode_items_unknown_to_the_catalog(tmp_path):
    path = tmp_path / "eps.jsonl"
    items = pd.Index(["a", "b", "c"])
    path.write_text(_line() + "\n")
    assert read_episodes(path, items=items)[0].target == "b"
    for row, field, unknown in (
        (_line(candidates=["a", "zz", "b"]), "candidates", "zz"),
        (_line(candidates=["a", "q"], target="q"), "target", "q"),
        (_line(history=["c", "h9"]), "history", "h9"),
    ):
        path.write_text(_line(episode_id="e0") + "\n" + row + "\n")
        with pytest.raises(
            DataError, match=rf"eps.jsonl:2: bad episode: field '{field}': unknown item id '{unknown}'"
        ):
            read_episodes(path, items=items)


def test_prepared_episode_ids_are_in_the_catalog(prepared):
    bench = Benchmark.open(prepared)
    path = prepared / "loo" / "test.jsonl"
    assert read_episodes(path, items=bench.items.index)


# --- the benchmark cache checks what it wrote ------------------------------------------------------------


def _edit_one_line(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["history"] = row["history"][1:]  # still a valid episode, just not the prepared one
    path.write_text(json.dumps(row) + "\n" + "".join(lines[1:]))


def test_hand_edited_cached_benchmark_is_rebuilt(tmp_path, cache, caplog):
    folder = write_folder(tmp_path / "toy")
    bench = ensure_benchmark(folder, cfg=small_cfg())
    original = (bench.root / "dense" / "test.jsonl").read_bytes()
    _edit_one_line(bench.root / "dense" / "test.jsonl")
    with caplog.at_level(logging.INFO, logger="recthinker.data.prepared"):
        again = ensure_benchmark(folder, cfg=small_cfg())
    assert again.root == bench.root and (again.root / "dense" / "test.jsonl").read_bytes() == original
    (line,) = [r.getMessage() for r in caplog.records if "preparing benchmark" in r.getMessage()]
    assert "dense/test.jsonl changed" in line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recthinker.data.prepared"):
        ensure_benchmark(folder, cfg=small_cfg())  # unchanged now: no rebuild
    assert not [r for r in caplog.records if "preparing benchmark" in r.getMessage()]


@pytest.mark.parametrize("manifest", [None, "{not json", "[]"])
def test_cache_folder_without_a_valid_manifest_is_rebuilt(tmp_path, cache, manifest):
    folder = write_folder(tmp_path / "toy")
    bench = ensure_benchmark(folder, cfg=small_cfg())
    (bench.root / "scores-cache.npz").write_bytes(b"kept by other commands")
    if manifest is None:
        (bench.root / "manifest.json").unlink()
    else:
        (bench.root / "manifest.json").write_text(manifest)
    again = ensure_benchmark(folder, cfg=small_cfg())
    assert again.root == bench.root and (again.root / "manifest.json").is_file()
    assert again.episodes("loo/test") == bench.episodes("loo/test")


def test_changed_episodes_file_of_an_explicit_folder(prepared):
    bench = Benchmark.open(prepared)
    bench.episodes("dense/test")
    _edit_one_line(prepared / "dense" / "test.jsonl")
    message = r"dense/test.jsonl: changed since `recthinker prepare` wrote it \(sha256 differs"
    with pytest.raises(DataError, match=message):
        Benchmark.open(prepared).episodes("dense/test")
    with pytest.raises(DataError, match=message):
        Benchmark.open(prepared).name_of(prepared / "dense" / "test.jsonl")
    # the files not read are not checked
    assert Benchmark.open(prepared).episodes("loo/test")


# --- .random candidate files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ("u0\ti1 i2 i3\nu1\ti4 nope i5\n", r"toy.random:2: item 'nope' is not one of the dataset's items"),
        ("u0\ti1 i2\nghost\ti4 i5\n", r"toy.random:2: user 'ghost' has no interactions"),
        ("u0\ti1 i2\nu1\ti4\ti5\n", r"toy.random:2: expected 2 tab-separated fields .*found 3"),
    ],
)
def test_bad_random_file(tmp_path, cache, body, message):
    folder = write_folder(tmp_path / "toy")
    (folder / "toy.random").write_text(body)
    with pytest.raises(DataError, match=message):
        load_dataset(folder)
    if "tab-separated" in message:
        with pytest.raises(DataError, match=message):
            read_random(folder / "toy.random")
