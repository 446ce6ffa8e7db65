"""Open, check and cache a prepared benchmark: the folder `recthinker prepare` writes (`benchmark.build`).

    bench = ensure_benchmark("ml-1m")            # built on first use, cached by the inputs' content
    bench = Benchmark.open("data/ml-1m")         # a folder prepared by `recthinker prepare --out`
    episodes = bench.episodes("dense/test")      # checked line by line, and against the manifest's sha256
    background = bench.background("dense/test")  # what tools and baselines of that set may learn from
    episodes = read_episodes("my-episodes.jsonl")  # any episodes file, checked the same way

`ensure_benchmark` keys its cache by the inputs' content and the config and checks the manifest's recorded
hashes on every load, rebuilding (with `benchmark.build`) on a mismatch. `Benchmark.open` checks the
manifest and the files it lists; every problem is a DataError that names the file (and line) and says to
re-run `recthinker prepare`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recthinker.data.benchmark import BenchmarkConfig, build, config_dict
from recthinker.data.dataset import cache_dir, dataset_files, load_dataset, sha256_file
from recthinker.data.log import InteractionLog
from recthinker.errors import DataError
from recthinker.types import Episode

log = logging.getLogger(__name__)

REPREPARE = "re-run `recthinker prepare` to rebuild the benchmark"


def read_episodes(path: str | Path, hint: str = "", items: Collection[str] | None = None) -> list[Episode]:
    """Episodes from a JSONL file, every line checked; a bad line is a DataError naming file, line and field.

    Each non-blank line is a JSON object with string `episode_id` (unique in the file), `user_id` and
    `target`, and `candidates` / `history` lists of strings (ids are never coerced: `46` is an error, write
    `"46"`); at least 2 distinct candidates, the target exactly once among them; `split` / `subset`, when
    present, are strings. A UTF-8 byte-order mark is fine; blank lines are skipped; a file without any
    episode is an error.

    Args:
        path: The JSONL file.
        hint: Appended to error messages (e.g. `REPREPARE` for a prepared benchmark's files).
        items: The known item ids (e.g. `Benchmark.items.index`); when given, an id in `candidates`,
            `target` or `history` that is not among them is a DataError naming the line and the id.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise DataError(f"{path}: {'is a folder, not an episodes file' if path.is_dir() else 'no such file'}")
    known = None if items is None else (items if isinstance(items, (set, frozenset)) else set(items))
    out: list[Episode] = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: bad episode: not valid UTF-8{tail}") from e
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: bad episode: not JSON ({e.msg}){tail}") from e
            try:
                episode = _episode_of(row, known)
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: bad episode: {e}{tail}") from e
            if episode.episode_id in first_line:
                raise DataError(
                    f"{path}:{lineno}: bad episode: field 'episode_id': {episode.episode_id!r} repeats "
                    f"line {first_line[episode.episode_id]}{tail}"
                )
            first_line[episode.episode_id] = lineno
            out.append(episode)
    if not out:
        raise DataError(f"{path}: no episodes (the file is empty){tail}")
    return out


def _episode_of(row: object, items: Collection[str] | None) -> Episode:
    """One checked episode from a parsed JSON line; ValueError says which field is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for key in ("episode_id", "user_id", "target", "history", "candidates"):
        if key not in row:
            raise ValueError(f"missing key {key!r}")
    for key in ("episode_id", "user_id", "target", "split", "subset"):
        if key in row and not isinstance(row[key], str):
            raise ValueError(f"field {key!r} must be a string, got {json.dumps(row[key])}")
    for key in ("episode_id", "user_id", "target"):
        if not row[key]:
            raise ValueError(f"field {key!r} is empty")
    for key in ("history", "candidates"):
        value = row[key]
        if not isinstance(value, list):
            raise ValueError(f"{key!r} must be a list of item ids, got {json.dumps(value)[:40]}")
        bad = next((i for i, x in enumerate(value) if not isinstance(x, str) or not x), None)
        if bad is not None:
            raise ValueError(
                f"field {key!r}: entry {bad} is {json.dumps(value[bad])}, expected a non-empty string item id"
            )
    cands, target = row["candidates"], row["target"]
    if len(cands) < 2:
        raise ValueError(f"field 'candidates': {len(cands)} candidate(s), need at least 2")
    if len(set(cands)) != len(cands):
        seen: set[str] = set()
        dup = next(c for c in cands if c in seen or seen.add(c))
        raise ValueError(f"field 'candidates': {dup!r} appears more than once")
    if target not in cands:
        raise ValueError(f"field 'target': {target!r} is not among the candidates")
    if items is not None:
        for key, ids in (("target", [target]), ("candidates", cands), ("history", row["history"])):
            unknown = next((i for i in ids if i not in items), None)
            if unknown is not None:
                raise ValueError(f"field {key!r}: unknown item id {unknown!r} (not in the catalog)")
    return Episode.from_dict(row)


def find_manifest(episodes_path: str | Path) -> Path | None:
    """The manifest.json of the benchmark an episodes file belongs to (its folder or a parent).

    Raises:
        DataError: the episodes file does not exist.
    """
    path = Path(episodes_path)
    if not path.is_file():
        raise DataError(f"{path}: {'is a folder, not an episodes file' if path.is_dir() else 'no such file'}")
    p = path.resolve().parent
    for folder in (p, *p.parents[:2]):
        if (folder / "manifest.json").is_file():
            return folder / "manifest.json"
    return None


def read_manifest(path: Path) -> dict:
    """A benchmark's manifest.json, checked for the keys `Benchmark` uses."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: corrupt manifest ({e.msg}); {REPREPARE}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the manifest ({e}); {REPREPARE}") from e
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: corrupt manifest (not a JSON object); {REPREPARE}")
    for key, kind in (("episodes", dict), ("background", dict), ("items", str)):
        if not isinstance(manifest.get(key), kind):
            raise DataError(f"{path}: corrupt manifest (no valid {key!r} entry); {REPREPARE}")
    return manifest


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {REPREPARE}") from None
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: unreadable Parquet ({e}); {REPREPARE}") from e


@dataclass(frozen=True, eq=False)
class Benchmark:
    """A prepared benchmark folder: manifest, catalog, users, and lazily loaded backgrounds."""

    root: Path
    manifest: dict
    items: pd.DataFrame
    users: pd.DataFrame | None

    @classmethod
    def open(cls, root: str | Path) -> Benchmark:
        """Open a prepared folder; a corrupt manifest or a missing file it lists is a DataError."""
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise DataError(f"{root}: no manifest.json (run `recthinker prepare` first)")
        manifest = read_manifest(path)
        listed = [manifest["items"], *manifest["episodes"].values(), *manifest["background"].values()]
        listed += [manifest["users"]] if manifest.get("users") else []
        for rel in dict.fromkeys(listed):
            if not isinstance(rel, str) or not (root / rel).is_file():
                raise DataError(f"{root / str(rel)}: missing (listed in {path}); {REPREPARE}")
        items = _read_parquet(root / manifest["items"])
        if "categories" not in items.columns:
            raise DataError(f"{root / manifest['items']}: no 'categories' column; {REPREPARE}")
        items["categories"] = [list(c) for c in items["categories"]]
        users = _read_parquet(root / manifest["users"]) if manifest.get("users") else None
        return cls(root=root, manifest=manifest, items=items, users=users)

    def episodes(self, name: str) -> list[Episode]:
        if name not in self.manifest["episodes"]:
            raise DataError(f"{self.root}: no episode set {name!r}; have {sorted(self.manifest['episodes'])}")
        rel = self.manifest["episodes"][name]
        episodes = read_episodes(self.root / rel, hint=REPREPARE)
        self._check_unchanged(rel)
        return episodes

    def _check_unchanged(self, rel: str) -> None:
        """DataError when the file `rel` (relative to the root) no longer has the sha256 the manifest
        records (hashes of large files are remembered per process, so a repeated check is cheap)."""
        recorded = self.manifest.get("sha256", {}).get("outputs", {})
        if not isinstance(recorded, dict) or rel not in recorded:
            return  # an older manifest without output hashes
        if sha256_file(self.root / rel) != recorded[rel]:
            raise DataError(
                f"{self.root / rel}: changed since `recthinker prepare` wrote it "
                "(sha256 differs from manifest.json); re-run prepare"
            )

    def background(self, name: str) -> InteractionLog:
        """The background log that episode set `name` may learn from."""
        if name not in self.manifest["background"]:
            raise DataError(f"{self.root}: no background for episode set {name!r}; {REPREPARE}")
        return _read_background(self.root / self.manifest["background"][name])

    def train_background(self, name: str) -> InteractionLog | None:
        """The validation background of test set `name` when its own background extends it (leave-one-out
        test sees the validation items), else None: what a sequential model is fitted on, reading the
        test background's users (SASRec's protocol; `baselines.fitted_scorer`)."""
        valid = name.removesuffix("/test") + "/valid"
        if not name.endswith("/test") or valid not in self.manifest["background"]:
            return None
        if self.manifest["background"][valid] == self.manifest["background"].get(name):
            return None
        return self.background(valid)

    def name_of(self, episodes_path: str | Path) -> str:
        """The episode-set name of a file of this benchmark; DataError when it is not listed in the
        manifest, or when its content changed since `recthinker prepare` wrote it (sha256)."""
        try:
            rel = Path(episodes_path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            rel = None
        for name, p in self.manifest["episodes"].items():
            if p == rel:
                self._check_unchanged(p)
                return name
        raise DataError(f"{episodes_path} is not listed in {self.root / 'manifest.json'}")


_BG_CACHE: dict[tuple, InteractionLog] = {}


def _read_background(path: Path) -> InteractionLog:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {REPREPARE}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, st.st_ino)
    if key not in _BG_CACHE:
        frame = _read_parquet(path)
        try:
            _BG_CACHE[key] = InteractionLog(frame, name=path.parent.name)
        except (DataError, ValueError, TypeError) as e:
            raise DataError(f"{path}: not a background table ({e}); {REPREPARE}") from e
    return _BG_CACHE[key]


def ensure_benchmark(
    dataset: str | Path, out: str | Path | None = None, cfg: BenchmarkConfig | None = None
) -> Benchmark:
    """Open the prepared benchmark of `dataset`, building it first when missing or stale.

    `dataset` is a bundled name (`ml-1m`), a folder of atomic files, or an already prepared benchmark folder
    (one holding manifest.json). Without `out`, the benchmark lives in
    `cache_dir()/benchmarks/<name>-seed<seed>-<key>`, where the key hashes the inputs' content (sha256 of
    every file read) and the config: a different folder with the same name, or edited files, get their own
    benchmark. Every call checks the manifest's recorded input hashes and config against the current ones
    and rebuilds on a mismatch, with one INFO line saying why.
    """
    if (Path(dataset) / "manifest.json").is_file():
        return Benchmark.open(dataset)
    cfg = cfg or BenchmarkConfig()
    files = dataset_files(dataset)
    inputs = files.hashes()
    config = config_dict(cfg)
    if out:
        root = Path(out)
    else:
        blob = json.dumps({"inputs": files.content_key(), "config": config}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        root = cache_dir() / "benchmarks" / f"{files.name}-seed{cfg.seed}-{key}"
    legacy = root.parent / f"{files.name}-seed{cfg.seed}"  # the name-keyed cache folder of older versions
    if (
        not out
        and not root.exists()
        and (legacy / "manifest.json").is_file()
        and not _stale(legacy, inputs, config)
    ):
        log.info("adopting %s (same inputs and config) as %s", legacy, root)
        os.rename(legacy, root)
    if (root / "manifest.json").is_file():
        reason = _stale(root, inputs, config)
    elif out:
        reason = "not prepared yet"
    elif root.exists():  # our own cache folder without its manifest: remove it whole and build again
        reason = "its manifest.json is missing"
        if root.is_dir() and not root.is_symlink():
            shutil.rmtree(root, ignore_errors=True)
        else:
            root.unlink()
    else:
        reason = _new_reason(root, inputs)
    if reason is None:
        try:
            return Benchmark.open(root)
        except DataError as e:
            reason = f"it is damaged ({e})"
    log.info("preparing benchmark %s in %s: %s", dataset, root, reason)
    build(load_dataset(dataset), root, cfg)
    return Benchmark.open(root)


def _stale(root: Path, inputs: dict[str, str], config: dict) -> str | None:
    """Why the benchmark in `root` does not match these inputs and config (None when it does)."""
    try:
        manifest = read_manifest(root / "manifest.json")
    except DataError as e:
        return f"its manifest is unreadable ({e})"
    changed = _changed(manifest.get("sha256", {}).get("inputs", {}), inputs)
    if changed:
        return f"the inputs changed since it was built ({', '.join(changed)})"
    if manifest.get("config") != config:
        return "it was built with another config"
    return _changed_output(root, manifest)


def _changed_output(root: Path, manifest: dict) -> str | None:
    """Why the files `build` wrote into `root` are not those the manifest records (None when they are):
    a file whose sha256 differs (hand-edited) or that is missing. Hashes of files of 1 MiB or more are
    remembered per process by (path, size, mtime, ctime, inode), so repeated loads stay fast."""
    recorded = manifest.get("sha256", {}).get("outputs")
    if not isinstance(recorded, dict):
        return None  # an older manifest without output hashes
    for rel, digest in sorted(recorded.items()):
        try:
            current = sha256_file(root / rel)
        except OSError:
            return f"{rel} is missing"
        if current != digest:
            return f"{rel} changed since it was built (sha256 differs from manifest.json)"
    return None


def _new_reason(root: Path, inputs: dict[str, str]) -> str:
    """Why a cache folder is new: nothing cached yet, or the cached benchmarks of this name and seed were
    built from other inputs (an edited folder, or another folder with the same name)."""
    prefix = root.name.rpartition("-")[0] + "-"
    others = sorted(root.parent.glob(f"{glob.escape(prefix)}*/manifest.json")) if root.parent.is_dir() else []
    for other in others:
        try:
            recorded = read_manifest(other).get("sha256", {}).get("inputs", {})
        except DataError:
            continue
        changed = _changed(recorded, inputs)
        if changed:
            return f"the inputs differ from those of the cached {other.parent.name} ({', '.join(changed)})"
    return "not prepared yet"


def _changed(recorded: dict, current: dict[str, str]) -> list[str]:
    """Input file names whose sha256 differs, that appeared, or that disappeared."""
    if not isinstance(recorded, dict):
        return ["(no input hashes recorded)"]
    names = sorted(set(recorded) | set(current))
    return [n for n in names if recorded.get(n) != current.get(n)]
