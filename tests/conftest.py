"""Shared fixtures: a tiny synthetic MovieLens-like dataset (30 users x 60 items with titles, years,
categories, ratings, dates and ML-1M-coded demographics), written as RecBole atomic files and turned into
a benchmark by the real data layer (`load_atomic_folder` + `benchmark.build`).

Users fall into three taste groups; each group mostly watches its own 20 items (one genre pair), so
collaborative signals have something to find. Item ids (`m00`..`m59`) differ from titles, so code that
prints ids and titles is exercised on both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recthinker.data.benchmark import BenchmarkConfig, build
from recthinker.data.dataset import Dataset, load_atomic_folder
from recthinker.data.prepared import Benchmark

TINY_USERS = 30
TINY_ITEMS = 60
_ADJECTIVES = [
    "Silent",
    "Crimson",
    "Golden",
    "Broken",
    "Hidden",
    "Frozen",
    "Wild",
    "Electric",
    "Lost",
    "Iron",
]
_NOUNS = ["Harbor", "Kingdom", "Signal", "Orchard", "Voyage", "Mirror"]
_GENRE_PAIRS = [("Drama", "Romance"), ("Action", "Sci-Fi"), ("Comedy", "Animation")]


def write_tiny_dataset(folder: Path, seed: int = 0) -> Path:
    """Write tiny.item / tiny.inter / tiny.user into `folder` (deterministic given `seed`)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tiny.item", "w", encoding="utf-8") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n")
        for i in range(TINY_ITEMS):
            group = i % 3
            genres = _GENRE_PAIRS[group] if i % 2 else _GENRE_PAIRS[group][:1]
            title = f"{_ADJECTIVES[i // 6]} {_NOUNS[i % 6]}"
            f.write(f"m{i:02d}\t{title}\t{1970 + (i * 7) % 36}\t{' '.join(genres)}\n")
    with open(folder / "tiny.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u in range(TINY_USERS):
            group = u % 3
            own = [i for i in range(TINY_ITEMS) if i % 3 == group]
            other = [i for i in range(TINY_ITEMS) if i % 3 != group]
            n = int(rng.integers(12, 25))
            n_own = min(len(own), int(round(0.75 * n)))
            items = list(rng.choice(own, size=n_own, replace=False))
            items += list(rng.choice(other, size=n - n_own, replace=False))
            rng.shuffle(items)
            for t, i in enumerate(items):
                rating = int(rng.integers(3, 6)) if i % 3 == group else int(rng.integers(1, 4))
                f.write(f"u{u:02d}\tm{i:02d}\t{rating}\t{9.5e8 + 86400 * t + u:.0f}\n")
    ages = [1, 18, 25, 35, 45, 50, 56]
    with open(folder / "tiny.user", "w", encoding="utf-8") as f:
        f.write("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n")
        for u in range(TINY_USERS):
            f.write(f"u{u:02d}\t{ages[u % 7]}\t{'FM'[u % 2]}\t{u % 21}\t{10000 + u}\n")
    return folder


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of RecBole atomic files for the tiny dataset."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def tiny_dataset(tiny_dataset_dir: Path) -> Dataset:
    return load_atomic_folder(tiny_dataset_dir)


@pytest.fixture(scope="session")
def tiny_benchmark(tiny_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Benchmark:
    """The tiny dataset prepared as a benchmark: dense/sparse subsets of 5 users, loo with 10 and 20 candidates."""
    root = tmp_path_factory.mktemp("tiny-bench")
    build(tiny_dataset, root, BenchmarkConfig(n_users=5, loo_sizes=(10, 20)))
    return Benchmark.open(root)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)
