"""Build the benchmark episodes (`recthinker prepare`): the RecThinker paper's AgentCF-style dense/sparse
100-user subsets and the standard full leave-one-out split, written as JSONL + a manifest.

Selection algorithm (documented in the README; every step is deterministic given `seed`):

1. Each user's interactions are sorted by timestamp (stable: same-second rows keep file order).
2. *Full leave-one-out*: every user with >= 3 interactions is evaluated; the last interaction is the test
   target, the second-to-last the validation target.
3. *Subsets*: the pool is every user with >= `window` (8) interactions; a user's window is their last 8
   interactions: the first 6 are the history, the 7th the validation target, the 8th the test target (so
   subset targets coincide with the leave-one-out targets). Overlap is measured on window histories: let
   M be the pool x item 0/1 matrix of history items and c the item counts over the users selected so far.
   The *dense* subset is grown greedily: start from the user whose history items are shared by the most
   other pool users, then repeatedly add the unselected user with the largest overlap M @ c with the
   selected users (ties: larger overlap with the whole pool, then a seeded random order). The *sparse*
   subset is grown the same way from the remaining users, minimising the overlap instead.
4. Candidates: target + negatives sampled uniformly, without replacement, from the items of the dataset
   the user never interacted with (at any time). One stream of 99 negatives is drawn per (user, split)
   from `default_rng([seed, crc32(user_id), split])`; a 1+N episode uses its first N, so the subsets, 1+9,
   1+19 and 1+99 share negatives. With a `.random` file, the negatives are the first N ids of the user's
   line that are not the target (AgentCF's evaluator). The candidates are then shuffled with
   `default_rng([seed, crc32(episode_id)])`.
5. *Background* (what tools and baselines may learn from): every interaction except the validation and
   test interactions of every evaluated user. With `background="subset"` the dense and sparse subsets
   instead get a background made of their own users' 6-item window histories only (AgentCF's closed
   world); leave-one-out always uses the full background.
6. An episode's `history` lists the user's most recent `history_cap` (50) background items; tools and
   baselines see the full background.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recthinker.data.dataset import Dataset, sha256_file
from recthinker.data.log import InteractionLog
from recthinker.errors import ConfigError, DataError
from recthinker.types import Episode

log = logging.getLogger(__name__)

SPLIT_CODE = {"valid": 1, "test": 2, "train": 3}
MAX_NEGATIVES = 99


@dataclass
class BenchmarkConfig:
    """How `prepare` builds episodes."""

    seed: int = 42  # seeds subset tie-breaks, negative sampling and candidate shuffles
    n_users: int = 100  # users per dense / sparse subset (AgentCF: 100)
    window: int = 8  # interactions per subset user: window-2 history + validation + test
    n_negatives: int = 9  # negatives per subset episode (1 + 9 = 10 candidates)
    loo_sizes: tuple[int, ...] = (10, 20, 100)  # candidate-list sizes for the full leave-one-out split
    background: str = "full"  # "full" | "subset": what tools and baselines learn from (see module doc)
    history_cap: int = 50  # most recent background items stored in an episode's history
    subsets: bool = True  # build the dense / sparse subsets
    loo: bool = True  # build the full leave-one-out episodes

    def __post_init__(self) -> None:
        if self.background not in ("full", "subset"):
            raise ConfigError(f"background must be 'full' or 'subset', got {self.background!r}")
        if self.window < 3:
            raise ConfigError(f"window must be >= 3, got {self.window}")
        if not 1 <= self.n_negatives <= MAX_NEGATIVES or any(
            not 2 <= n <= MAX_NEGATIVES + 1 for n in self.loo_sizes
        ):
            raise ConfigError(f"candidate lists hold 2..{MAX_NEGATIVES + 1} items")
        self.loo_sizes = tuple(self.loo_sizes)


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def sample_negatives(
    user_id: str, split: str, seen: set[str], items: np.ndarray, seed: int, n: int = MAX_NEGATIVES
) -> list[str]:
    """`n` distinct items the user never interacted with, uniformly, from the per-(user, split) stream.

    >>> items = np.array(["a", "b", "c", "d", "e"], dtype=object)
    >>> neg = sample_negatives("u", "test", {"a"}, items, seed=1, n=3)
    >>> len(neg), "a" in neg, neg == sample_negatives("u", "test", {"a"}, items, seed=1, n=3)
    (3, False, True)
    """
    # `items` holds every item of the dataset, so the user's seen items are a subset of it.
    available = len(items) - len(seen)
    if available < n:
        raise DataError(f"user {user_id!r}: only {available} unseen items to sample {n} negatives from")
    n_stream = min(
        MAX_NEGATIVES, available
    )  # one stream per (user, split) whatever n is: callers get a prefix
    rng = np.random.default_rng([seed, _crc(user_id), SPLIT_CODE[split]])
    if available < 4 * n_stream:  # small catalogs: a seeded permutation of the unseen items
        unseen = [i for i in items if i not in seen]
        return [unseen[j] for j in rng.permutation(len(unseen))[:n]]
    out: list[str] = []
    taken: set[str] = set()
    while len(out) < n_stream:
        for idx in rng.integers(0, len(items), size=2 * (n_stream - len(out)) + 8):
            item = items[idx]
            if item in seen or item in taken:
                continue
            taken.add(item)
            out.append(item)
            if len(out) == n_stream:
                break
    return out[:n]


def select_subsets(histories: dict[str, list[str]], n_users: int, seed: int) -> tuple[list[str], list[str]]:
    """Greedy dense and sparse user selection by history-item overlap (see the module docstring).

    >>> h = {"a": ["x", "y"], "b": ["x", "y"], "c": ["x", "z"], "d": ["p", "q"], "e": ["r", "s"]}
    >>> select_subsets(h, 2, seed=0)
    (['a', 'b'], ['d', 'e'])
    """
    users = sorted(histories)
    if len(users) < 2 * n_users:
        raise DataError(f"only {len(users)} users have enough interactions for two subsets of {n_users}")
    item_index: dict[str, int] = {}
    rows, cols = [], []
    for r, u in enumerate(users):
        for it in set(histories[u]):
            rows.append(r)
            cols.append(item_index.setdefault(it, len(item_index)))
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), len(item_index)))
    pool_overlap = (
        m @ np.asarray(m.sum(axis=0)).ravel() - np.asarray(m.sum(axis=1)).ravel()
    )  # shared with others
    order = np.random.default_rng(seed).permutation(len(users)).astype(np.float64)

    def grow(sign: float, excluded: np.ndarray) -> list[int]:
        taken = excluded.copy()
        counts = np.zeros(len(item_index))
        chosen: list[int] = []
        for step in range(n_users):
            primary = sign * (m @ counts) if step else np.zeros(len(users))
            # np.lexsort sorts ascending by its last key first: overlap with the selected users, then
            # overlap with the whole pool (larger first for dense, smaller for sparse), then the seeded order.
            ranked = np.lexsort((order, -sign * pool_overlap, -primary))
            pick = next(int(i) for i in ranked if not taken[i])
            taken[pick] = True
            chosen.append(pick)
            counts += m.getrow(pick).toarray().ravel()
        return chosen

    dense = grow(+1.0, np.zeros(len(users), dtype=bool))
    excluded = np.zeros(len(users), dtype=bool)
    excluded[dense] = True
    sparse = grow(-1.0, excluded)
    return [users[i] for i in dense], [users[i] for i in sparse]


def _episode(
    *,
    subset: str,
    split: str,
    user: str,
    history: Sequence[str],
    target: str,
    negatives: Sequence[str],
    seed: int,
) -> Episode:
    episode_id = f"{subset}/{split}/{user}"
    cands = [target, *negatives]
    perm = np.random.default_rng([seed, _crc(episode_id)]).permutation(len(cands))
    return Episode(
        episode_id=episode_id,
        user_id=user,
        history=tuple(history),
        candidates=tuple(cands[i] for i in perm),
        target=target,
        split=split,
        subset=subset,
    )


def _negatives_for(
    ds: Dataset, user: str, split: str, target: str, seen: set[str], items: np.ndarray, cfg, n: int
):
    if ds.negatives is not None:
        line = ds.negatives.get(user)
        if line is None:
            raise DataError(f"{ds.name}.random: no candidate line for user {user!r}")
        neg = [i for i in line if i != target][:n]
        if len(neg) < n:
            raise DataError(
                f"{ds.name}.random: user {user!r} has {len(neg)} candidates besides the target, need {n}"
            )
        return neg
    return sample_negatives(user, split, seen, items, cfg.seed, n)


def build(ds: Dataset, out: Path, cfg: BenchmarkConfig) -> dict:
    """Write episodes, background, catalog and manifest for `ds` into `out`; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if ds.splits is not None:
        return _build_presplit(ds, out, cfg)
    frame = ds.log.frame
    seqs = frame.groupby("user_id", sort=True)["item_id"].agg(list)
    items = np.array(sorted(ds.log.items.ids.tolist()), dtype=object)
    seen = {u: set(s) for u, s in seqs.items()}

    evaluated = [u for u, s in seqs.items() if len(s) >= 3]
    last_two = frame.groupby("user_id", sort=False).tail(2)
    last_two = last_two[last_two["user_id"].isin(set(evaluated))]
    background = ds.log.without(
        zip(last_two["user_id"], last_two["item_id"], last_two["timestamp"], strict=True)
    )
    bg_seqs = background.frame.groupby("user_id", sort=True)["item_id"].agg(list)

    episodes: dict[str, list[Episode]] = {}
    backgrounds: dict[str, InteractionLog] = {"full": background}
    bg_of: dict[str, str] = {}

    if cfg.subsets:
        windows = {u: s[-cfg.window :] for u, s in seqs.items() if len(s) >= cfg.window}
        dense, sparse = select_subsets({u: w[:-2] for u, w in windows.items()}, cfg.n_users, cfg.seed)
        for subset, users in (("dense", dense), ("sparse", sparse)):
            for split, pos in (("valid", -2), ("test", -1)):
                eps = []
                for u in sorted(users):
                    w = windows[u]
                    neg = _negatives_for(ds, u, split, w[pos], seen[u], items, cfg, cfg.n_negatives)
                    eps.append(
                        _episode(
                            subset=subset,
                            split=split,
                            user=u,
                            history=w[:-2],
                            target=w[pos],
                            negatives=neg,
                            seed=cfg.seed,
                        )
                    )
                episodes[f"{subset}/{split}"] = eps
            if cfg.background == "subset":
                rows = (
                    frame[frame["user_id"].isin(set(users))].groupby("user_id", sort=False).tail(cfg.window)
                )
                rows = rows.groupby("user_id", sort=False).head(cfg.window - 2)
                backgrounds[subset] = InteractionLog(rows, name=f"{ds.name}-{subset}")
                bg_of[f"{subset}/valid"] = bg_of[f"{subset}/test"] = subset
            else:
                bg_of[f"{subset}/valid"] = bg_of[f"{subset}/test"] = "full"

    if cfg.loo:
        for size in cfg.loo_sizes:
            name = "loo" if size == 10 else f"loo-{size}"
            for split, pos in (("valid", -2), ("test", -1)):
                eps = []
                for u in evaluated:
                    s = seqs[u]
                    neg = _negatives_for(ds, u, split, s[pos], seen[u], items, cfg, size - 1)
                    hist = bg_seqs.get(u, [])[-cfg.history_cap :]
                    eps.append(
                        _episode(
                            subset=name,
                            split=split,
                            user=u,
                            history=hist,
                            target=s[pos],
                            negatives=neg,
                            seed=cfg.seed,
                        )
                    )
                episodes[f"{name}/{split}"] = eps
                bg_of[f"{name}/{split}"] = "full"
    return _write(ds, out, cfg, episodes, backgrounds, bg_of)


def _build_presplit(ds: Dataset, out: Path, cfg: BenchmarkConfig) -> dict:
    """Pre-split input (NAME.train/valid/test.inter): the given rows are the targets, train is the background."""
    assert ds.splits is not None
    train_seqs = ds.log.frame.groupby("user_id", sort=True)["item_id"].agg(list)
    seen: dict[str, set[str]] = {}
    for df in ds.splits.values():
        for u, i, *rest in zip(
            df["user_id"], df["item_id"], *([df["item_id_list"]] if "item_id_list" in df else []), strict=True
        ):
            seen.setdefault(u, set()).add(i)
            if rest:
                seen[u].update(rest[0])
    # Pre-split files are often slices of a larger catalog: sample negatives from the whole catalog.
    pool = set(ds.items.index) | set(ds.log.items.ids.tolist()) | {i for s in seen.values() for i in s}
    items = np.array(sorted(pool), dtype=object)
    episodes: dict[str, list[Episode]] = {}
    for split in ("valid", "test"):
        df = ds.splits[split]
        eps, counts = [], {}
        for r in range(len(df)):
            u, target = str(df["user_id"].iloc[r]), str(df["item_id"].iloc[r])
            hist = list(df["item_id_list"].iloc[r]) if "item_id_list" in df else list(train_seqs.get(u, []))
            k = counts[u] = counts.get(u, 0) + 1  # several target rows per user: suffix #k from the 2nd on
            neg = _negatives_for(ds, u, split, target, seen[u], items, cfg, cfg.n_negatives)
            e = _episode(
                subset="",
                split=split,
                user=u,
                history=hist[-cfg.history_cap :],
                target=target,
                negatives=neg,
                seed=cfg.seed,
            )
            episode_id = f"{split}/{u}" if k == 1 else f"{split}/{u}#{k}"
            eps.append(
                Episode(
                    episode_id=episode_id,
                    user_id=u,
                    history=e.history,
                    candidates=e.candidates,
                    target=target,
                    split=split,
                    subset="",
                )
            )
        episodes[split] = eps
    return _write(ds, out, cfg, episodes, {"full": ds.log}, dict.fromkeys(episodes, "full"))


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write(ds, out, cfg, episodes, backgrounds, bg_of) -> dict:
    files: dict[str, Path] = {}
    for name, eps in episodes.items():
        path = out / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(path, (e.to_dict() for e in eps))
        files[f"episodes/{name}"] = path
    bg_paths: dict[str, str] = {}
    for key, bg in backgrounds.items():
        path = out / ("background.parquet" if key == "full" else f"{key}/background.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        bg.frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        bg_paths[key] = str(path.relative_to(out))
        files[f"background/{key}"] = path
    items = ds.items.copy()
    tmp = out / "items.parquet.tmp"
    items.to_parquet(tmp)
    os.replace(tmp, out / "items.parquet")
    files["items"] = out / "items.parquet"
    if ds.users is not None:
        ds.users.astype(str).to_parquet(out / "users.parquet.tmp")
        os.replace(out / "users.parquet.tmp", out / "users.parquet")
        files["users"] = out / "users.parquet"
    manifest = {
        "dataset": ds.name,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "episodes": {name: f"{name}.jsonl" for name in episodes},
        "background": {name: bg_paths[bg_of[name]] for name in episodes},
        "items": "items.parquet",
        "users": "users.parquet" if ds.users is not None else None,
        "counts": {
            "episodes": {name: len(eps) for name, eps in episodes.items()},
            "background_interactions": {k: len(v) for k, v in backgrounds.items()},
            "dataset_interactions": len(ds.log),
            "items": len(ds.items),
        },
        "sha256": {
            "inputs": ds.input_hashes(),
            "outputs": {str(p.relative_to(out)): sha256_file(p) for p in files.values()},
        },
    }
    _write_atomic_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d episode files to %s", len(episodes), out)
    return manifest


def read_episodes(path: str | Path) -> list[Episode]:
    """Episodes from a JSONL file; a bad line is a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such episodes file")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(Episode.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}:{lineno}: bad episode: {e}") from e
    return out


def find_manifest(episodes_path: str | Path) -> Path | None:
    """The manifest.json of the benchmark an episodes file belongs to (its folder or a parent)."""
    p = Path(episodes_path).resolve().parent
    for folder in (p, *p.parents[:2]):
        if (folder / "manifest.json").is_file():
            return folder / "manifest.json"
    return None


@dataclass(frozen=True, eq=False)
class Benchmark:
    """A prepared benchmark folder: manifest, catalog, users, and lazily loaded backgrounds."""

    root: Path
    manifest: dict
    items: pd.DataFrame
    users: pd.DataFrame | None

    @classmethod
    def open(cls, root: str | Path) -> Benchmark:
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise DataError(f"{root}: no manifest.json (run `recthinker prepare` first)")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        items = pd.read_parquet(root / manifest["items"])
        items["categories"] = [list(c) for c in items["categories"]]
        users = pd.read_parquet(root / manifest["users"]) if manifest.get("users") else None
        return cls(root=root, manifest=manifest, items=items, users=users)

    def episodes(self, name: str) -> list[Episode]:
        if name not in self.manifest["episodes"]:
            raise DataError(f"{self.root}: no episode set {name!r}; have {sorted(self.manifest['episodes'])}")
        return read_episodes(self.root / self.manifest["episodes"][name])

    def background(self, name: str) -> InteractionLog:
        """The background log that episode set `name` may learn from."""
        rel = self.manifest["background"][name]
        return _read_background(self.root / rel)

    def name_of(self, episodes_path: str | Path) -> str:
        rel = Path(episodes_path).resolve().relative_to(self.root.resolve()).as_posix()
        for name, p in self.manifest["episodes"].items():
            if p == rel:
                return name
        raise DataError(f"{episodes_path} is not listed in {self.root / 'manifest.json'}")


_BG_CACHE: dict[tuple[str, float], InteractionLog] = {}


def _read_background(path: Path) -> InteractionLog:
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _BG_CACHE:
        _BG_CACHE[key] = InteractionLog.read_parquet(path, name=path.parent.name)
    return _BG_CACHE[key]


def ensure_benchmark(
    dataset: str | Path, out: str | Path | None = None, cfg: BenchmarkConfig | None = None
) -> Benchmark:
    """Open the prepared benchmark of `dataset`, building it first when missing.

    `dataset` is a bundled name (`ml-1m`), a folder of atomic files, or an already prepared benchmark folder
    (one holding manifest.json). Without `out`, bundled datasets go to `cache_dir()/benchmarks/<name>-seed<seed>`.
    """
    from recthinker.data.dataset import cache_dir, load_dataset

    if (Path(dataset) / "manifest.json").is_file():
        return Benchmark.open(dataset)
    cfg = cfg or BenchmarkConfig()
    root = Path(out) if out else cache_dir() / "benchmarks" / f"{Path(str(dataset)).name}-seed{cfg.seed}"
    if not (root / "manifest.json").is_file():
        log.info("preparing benchmark %s in %s", dataset, root)
        build(load_dataset(dataset), root, cfg)
    return Benchmark.open(root)
