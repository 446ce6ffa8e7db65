"""Training episodes built from the background only, and the background their tools may see.

Evaluation episodes (dense/sparse subsets, leave-one-out) hold out every evaluated user's validation and
test interactions; the *background* is everything else. Training episodes never touch those held-out rows:

1. Users: every background user with at least `history_len + 1` background interactions, except the users
   of the dense and sparse evaluation subsets (kept out entirely by default, `exclude_subset_users`).
2. Target: the user's *last background interaction* (for an evaluated user that is the interaction just
   before their validation target); the episode's `history` is the `history_len` items before it (6, like
   the subsets' 8-item windows minus validation and test).
3. Dense-like / sparse-like: a user's *history popularity* is the mean log(1 + interaction count) of their
   history items in the background. The pool is cut into terciles: the top third is "dense"-like (history
   of popular, widely shared items, as the greedy dense subset selects), the bottom third "sparse"-like.
   `subset_mix` gives the share of episodes drawn (seeded, without replacement) from each pool; the
   episode's `subset` field says which pool it came from.
4. Negatives: uniformly from the items the user never interacted with in the *whole* dataset -- the
   background plus every held-out target of every evaluated user (read from the benchmark's episode
   files) -- with the benchmark's own per-(user, "train") stream (`sample_negatives`), then shuffled with
   the episode's seed, exactly like benchmark episodes.
5. Tools during training (`training_background` / `training_resources`): the background minus each
   training user's target row, so neither the user's own history (which `RecEnv` reads from the log) nor
   similar users, item relations or CF models fitted on that log see the training target as an
   interaction of that user. (Other users' interactions with the same item stay: they are legitimate
   evidence.) The index and the CF fits of that log are cached by fingerprint like any background's.

    bench = ensure_benchmark("ml-1m")
    episodes = make_training_episodes(bench, 2000, seed=0)
    res = training_resources(bench, episodes)       # RecEnv(res) for teacher rollouts / GRPO
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from recthinker.data.benchmark import _episode, sample_negatives
from recthinker.data.log import InteractionLog
from recthinker.data.prepared import Benchmark
from recthinker.errors import ConfigError, DataError
from recthinker.tools.build import build_resources
from recthinker.types import Episode

log = logging.getLogger(__name__)

DEFAULT_MIX = {"dense": 0.5, "sparse": 0.5}
SUBSET_SETS = ("dense", "sparse")  # evaluation subsets whose users are kept out of training by default


def full_background(bench: Benchmark) -> InteractionLog:
    """The full training background of `bench`: what leave-one-out validation episodes and the default
    tools learn from (never a validation or test interaction; the leave-one-out *test* sets' background
    adds the validation items, so it is not this one)."""
    sets = list(bench.manifest["episodes"])
    names = [n for n in sets if n.startswith("loo") and n.endswith("/valid")] or [
        n for n in sets if n.startswith("loo")
    ]
    return bench.background((names or sets)[0])


def held_out(bench: Benchmark) -> dict[str, set[str]]:
    """user -> every item that is a validation or test target of that user in any episode set of `bench`."""
    out: dict[str, set[str]] = {}
    for name in bench.manifest["episodes"]:
        for e in bench.episodes(name):
            if e.target is not None:
                out.setdefault(e.user_id, set()).add(e.target)
    return out


def subset_users(bench: Benchmark) -> set[str]:
    """Users of the dense and sparse evaluation subsets."""
    return {
        e.user_id
        for name in bench.manifest["episodes"]
        if name.split("/")[0] in SUBSET_SETS
        for e in bench.episodes(name)
    }


def make_training_episodes(
    bench: Benchmark,
    n: int,
    seed: int,
    subset_mix: Mapping[str, float] | None = None,
    *,
    history_len: int = 6,
    n_negatives: int = 9,
    exclude_subset_users: bool = True,
) -> list[Episode]:
    """`n` training episodes (split="train") from background interactions only; see the module docstring.

    Args:
        bench: A prepared benchmark.
        n: Number of episodes (one per user).
        seed: Seeds the user draw, the negatives and the candidate shuffles.
        subset_mix: Share of "dense"-like and "sparse"-like users (default half each); a missing key is 0.
        history_len: History items stored in each episode (before the target).
        n_negatives: Negatives per episode (9 -> 10 candidates, like the subsets).
        exclude_subset_users: Keep the dense/sparse evaluation users out of training.
    """
    mix = dict(subset_mix or DEFAULT_MIX)
    if set(mix) - {"dense", "sparse"} or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ConfigError(f"subset_mix takes non-negative 'dense'/'sparse' shares, got {mix}")
    if n < 1 or history_len < 1:
        raise ConfigError(f"n and history_len must be >= 1, got n={n}, history_len={history_len}")
    bg = full_background(bench)
    seqs = bg.frame.groupby("user_id", sort=True)["item_id"].agg(list)
    excluded = subset_users(bench) if exclude_subset_users else set()
    eligible = [u for u, s in seqs.items() if len(s) > history_len and u not in excluded]
    if not eligible:
        raise DataError("no background user has enough interactions for a training episode")
    counts = bg.item_counts
    score = np.array(
        [np.log1p(counts.loc[seqs[u][-history_len - 1 : -1]].to_numpy()).mean() for u in eligible]
    )
    order = np.argsort(score, kind="stable")
    third = len(eligible) // 3
    pools = {
        "sparse": [eligible[i] for i in order[:third]],
        "dense": [eligible[i] for i in order[len(order) - third :]],
    }
    total = sum(mix.values())
    want = {k: int(round(n * mix.get(k, 0.0) / total)) for k in ("dense", "sparse")}
    want["dense"] += n - sum(want.values())
    rng = np.random.default_rng([seed, 7])
    seen_extra = held_out(bench)
    items = np.array(
        sorted(set(bg.items.ids.tolist()) | {i for s in seen_extra.values() for i in s}), dtype=object
    )
    episodes: list[Episode] = []
    for subset in ("dense", "sparse"):
        pool = pools[subset]
        k = want[subset]
        if k > len(pool):
            raise DataError(f"asked for {k} {subset}-like training users, the pool has {len(pool)}")
        for u in sorted(rng.choice(pool, size=k, replace=False).tolist()) if k else []:
            s = seqs[u]
            target = s[-1]
            seen = set(s) | seen_extra.get(u, set())
            neg = sample_negatives(u, "train", seen, items, seed, n_negatives)
            e = _episode(
                subset=subset,
                split="train",
                user=u,
                history=s[-history_len - 1 : -1],
                target=target,
                negatives=neg,
                seed=seed,
            )
            episodes.append(e)
    order_ = np.random.default_rng([seed, 8]).permutation(len(episodes))
    return [episodes[i] for i in order_]


def training_background(bench: Benchmark, episodes: Sequence[Episode]) -> InteractionLog:
    """The full background minus each training episode's target row (the user's last background row)."""
    bg = full_background(bench)
    drop = []
    for e in episodes:
        rows = bg.user_frame(e.user_id)
        if not len(rows) or rows["item_id"].iloc[-1] != e.target:
            raise DataError(f"{e.episode_id}: target {e.target!r} is not the user's last background item")
        drop.append((e.user_id, e.target, float(rows["timestamp"].iloc[-1])))
    return bg.without(drop)


def training_resources(bench: Benchmark, episodes: Sequence[Episode], *, seed: int = 42):
    """`Resources` over `training_background(bench, episodes)`: tools for training rollouts and GRPO."""
    return build_resources(
        training_background(bench, episodes),
        bench.items,
        bench.users,
        bench.root / "tools",
        model_dir=bench.root / "models",
        seed=seed,
        name=f"{bench.manifest.get('dataset', bench.root.name)}-train",
    )
