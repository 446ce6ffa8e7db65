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
   world); leave-one-out validation uses the full background, and leave-one-out *test* episodes (with
   `loo_test_sees_valid`, the default) a background that also holds every user's validation interaction,
   as in SASRec's protocol (Kang & McAuley 2018: the test input holds the training and validation actions):
   a model is chosen on validation, then refitted on train + validation and tested on the last item.
6. An episode's `history` lists the user's most recent `history_cap` (50) background items; tools and
   baselines see the full background.

Writing: `check_out` checks the output folder before any work; `build` writes into a hidden temporary
sibling folder and swaps it in by rename, so an output folder holds one complete benchmark or its previous
one, never a mix. The manifest records the config and the sha256 of every input and output file.
Opening, checking and caching a prepared folder (`Benchmark`, `read_episodes`, `ensure_benchmark`) is the
other side, in `prepared.py`.

    recthinker prepare --dataset ml-1m --out data/ml-1m
    build(load_dataset("ml-1m"), check_out("data/ml-1m"), BenchmarkConfig())   # the same, in Python

Why ~530 lines: it holds one concept, building a benchmark, and reads top to bottom: the config, negative
sampling and subset selection, `build` with its atomic write-and-swap (~130 lines, which make `prepare`
safe to interrupt and serve only `build`), then the two input shapes and the files and manifest they write.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    loo_test_sees_valid: bool = (
        True  # leave-one-out test input includes the validation item (SASRec's protocol)
    )

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
        raise DataError(
            f"user {user_id!r}: only {available} unseen items to sample {n} negatives from "
            "(--n-negatives sets how many per episode)"
        )
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


def _loo_sizes_the_catalog_allows(ds, cfg, items: np.ndarray, seen: dict, evaluated) -> list[int]:
    """`cfg.loo_sizes` without the list sizes a small catalog cannot fill for every user (each skipped with
    one WARNING): a leave-one-out set holds every evaluated user, so a user who has seen all but a few
    items would otherwise stop the whole `prepare`. A `.random` file brings its own candidates."""
    if ds.negatives is not None or not evaluated:
        return list(cfg.loo_sizes)
    most = max(evaluated, key=lambda u: len(seen[u]))
    left = len(items) - len(seen[most])
    sizes = []
    for size in cfg.loo_sizes:
        if left >= size - 1:
            sizes.append(size)
        else:
            log.warning(
                "leave-one-out lists of %d skipped: the catalog has %d items and user %r has seen %d, "
                "leaving %d to sample %d negatives from (--loo-sizes sets the list sizes)",
                size,
                len(items),
                most,
                len(seen[most]),
                left,
                size - 1,
            )
    return sizes


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
    """Write episodes, background, catalog and manifest for `ds` into `out`; returns the manifest.

    Atomic: everything is written into a hidden sibling folder (`.OUT.prepare-PID-XXXX`) that then replaces
    `out` by rename, so `out` keeps its old benchmark, byte for byte, until the new one is complete. A failed
    or interrupted build removes its temporary folder and any parent folder it created; one killed outright
    leaves a hidden folder that the next build next to it removes. `out` may be missing, empty, or a
    prepared benchmark (a folder with manifest.json: replaced whole, with the caches other commands keep
    in it, which describe the old episodes); a file or any other folder is a DataError.
    """
    out = check_out(out)
    created = _make_parents(out)
    _clean_stale(out)
    tmp = out.parent / f".{out.name}.prepare-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        try:
            tmp.mkdir()
        except OSError as e:
            raise DataError(f"{out}: cannot write into {out.parent}: {e.strerror or e}") from e
        manifest = _build_presplit(ds, tmp, cfg) if ds.splits is not None else _build_full(ds, tmp, cfg)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):  # deepest first; stops at one that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    log.info("wrote %d episode files to %s", len(manifest["episodes"]), out)
    return manifest


def check_out(out: str | Path) -> Path:
    """The absolute output folder of `build`, checked before any work: it must be missing (and creatable),
    an empty folder or a prepared benchmark. Raises DataError otherwise."""
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        out = out.resolve()
    if not out.exists():
        existing = next((p for p in out.parents if p.exists()), Path(out.anchor))
        if not existing.is_dir():
            raise DataError(f"cannot create {out}: {existing} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise DataError(f"cannot create {out}: {existing} is not writable")
        return out
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output folder")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise DataError(f"cannot replace {out}: {out.parent} is not writable")
    if (out / "manifest.json").exists() or not any(out.iterdir()):
        return out
    # A folder a killed older prepare left (episodes and Parquet files, no manifest) is replaceable too.
    other = next((p for p in out.rglob("*") if p.is_file() and not _benchmark_file(p.name)), None)
    if other is not None:
        raise DataError(
            f"{out}: not empty and not a prepared benchmark (no manifest.json; it holds {other.name}); "
            "choose a new or empty folder"
        )
    return out


def _benchmark_file(name: str) -> bool:
    return name.endswith((".jsonl", ".parquet")) or ".tmp" in name


def _make_parents(out: Path) -> list[Path]:
    """Create `out`'s missing parent folders; returns those created, outermost first."""
    created = []
    for folder in [p for p in reversed(out.parents) if not p.exists()]:
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # created meanwhile by someone else
        except OSError as e:
            for done in reversed(created):
                done.rmdir()
            raise DataError(f"cannot create {out}: {e.strerror or e}") from e
        created.append(folder)
    return created


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by the complete folder `tmp` (two renames; the old folder is kept until the second)."""
    try:
        if not out.exists():
            os.rename(tmp, out)
            return
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
    except OSError as e:
        raise DataError(f"cannot replace {out}: {e.strerror or e}") from e
    shutil.rmtree(old, ignore_errors=True)


def _clean_stale(out: Path) -> None:
    """Remove what a killed build next to `out` left: its temporary folder, or the old folder it had moved
    aside (put back when `out` is missing)."""
    for p in out.parent.iterdir():
        for kind in ("prepare", "old"):
            prefix = f".{out.name}.{kind}-"
            if not p.name.startswith(prefix):
                continue
            pid = p.name[len(prefix) :].partition("-")[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                log.warning("restoring %s, which an interrupted build had moved to %s", out, p)
                try:
                    os.rename(p, out)
                except OSError as e:
                    raise DataError(f"cannot restore {out} from {p}: {e.strerror or e}") from e
            else:
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _build_full(ds: Dataset, out: Path, cfg: BenchmarkConfig) -> dict:
    """Leave-one-out and dense/sparse episodes of a single interaction log (see the module docstring)."""
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

    if cfg.loo and cfg.loo_test_sees_valid:
        last = frame.groupby("user_id", sort=False).tail(1)
        last = last[last["user_id"].isin(set(evaluated))]
        backgrounds["loo-test"] = ds.log.without(
            zip(last["user_id"], last["item_id"], last["timestamp"], strict=True)
        )
        test_seqs = backgrounds["loo-test"].frame.groupby("user_id", sort=True)["item_id"].agg(list)
    else:
        test_seqs = bg_seqs
    if cfg.loo:
        for size in _loo_sizes_the_catalog_allows(ds, cfg, items, seen, evaluated):
            name = "loo" if size == 10 else f"loo-{size}"
            for split, pos in (("valid", -2), ("test", -1)):
                eps = []
                split_seqs = test_seqs if split == "test" else bg_seqs
                for u in evaluated:
                    s = seqs[u]
                    neg = _negatives_for(ds, u, split, s[pos], seen[u], items, cfg, size - 1)
                    hist = split_seqs.get(u, [])[-cfg.history_cap :]
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
                bg_of[f"{name}/{split}"] = (
                    "loo-test" if split == "test" and cfg.loo_test_sees_valid else "full"
                )
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


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write(ds, out, cfg, episodes, backgrounds, bg_of) -> dict:
    """Write every file of the benchmark into `out` (a fresh temporary folder: see `build`)."""
    files: dict[str, Path] = {}
    for name, eps in episodes.items():
        path = out / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_jsonl(path, (e.to_dict() for e in eps))
        files[f"episodes/{name}"] = path
    bg_paths: dict[str, str] = {}
    for key, bg in backgrounds.items():
        path = out / ("background.parquet" if key == "full" else f"{key}/background.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        bg.frame.to_parquet(path, index=False)
        bg_paths[key] = str(path.relative_to(out))
        files[f"background/{key}"] = path
    ds.items.to_parquet(out / "items.parquet")
    files["items"] = out / "items.parquet"
    if ds.users is not None:
        ds.users.astype(str).to_parquet(out / "users.parquet")
        files["users"] = out / "users.parquet"
    manifest = {
        "dataset": ds.name,
        "config": config_dict(cfg),
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
    (out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return manifest


def config_dict(cfg: BenchmarkConfig) -> dict:
    """The config as the manifest records it (JSON types: tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}
