"""Classic recommenders behind one `Scorer` protocol: random, pop, itemknn, ease, als, bpr, sasrec.

Each model lives in its own module with the same methods (`fit(log, rng=...)`, `score(items, user_id=...,
history=...)`); `ScorerRanker` turns any of them into a `Ranker`, and `fit_or_load` caches fitted models.
Importing this package does not import torch: `sasrec` is imported only when asked for.

>>> make_scorer("ease", lam=250.0)
EASEScorer(lam=250.0)
"""

from __future__ import annotations

import numpy as np

from recthinker.baselines.als import ALSScorer
from recthinker.baselines.base import Scorer, ScorerRanker, fit_or_load
from recthinker.baselines.bpr import BPRScorer
from recthinker.baselines.ease import EASEScorer
from recthinker.baselines.itemknn import ItemKNNScorer
from recthinker.baselines.pop import PopScorer
from recthinker.baselines.random import RandomScorer

SCORER_NAMES = ("random", "pop", "itemknn", "ease", "als", "bpr", "sasrec")


def make_scorer(name: str, **params: object) -> Scorer:
    """An unfitted scorer by its exact name, with hyper-parameters as keyword arguments.

    Raises:
        ValueError: `name` is not one of `SCORER_NAMES`.
    """
    if name == "random":
        return RandomScorer(**params)
    elif name == "pop":
        return PopScorer(**params)
    elif name == "itemknn":
        return ItemKNNScorer(**params)
    elif name == "ease":
        return EASEScorer(**params)
    elif name == "als":
        return ALSScorer(**params)
    elif name == "bpr":
        return BPRScorer(**params)
    elif name == "sasrec":
        from recthinker.baselines.sasrec import SASRecScorer  # torch is heavy: import only on demand

        return SASRecScorer(**params)
    raise ValueError(f"unknown scorer {name!r}; expected one of {SCORER_NAMES}")


__all__ = [
    "SCORER_NAMES",
    "ALSScorer",
    "BPRScorer",
    "EASEScorer",
    "ItemKNNScorer",
    "PopScorer",
    "RandomScorer",
    "Scorer",
    "ScorerRanker",
    "fit_or_load",
    "fitted_ranker",
    "fitted_scorer",
    "make_scorer",
]


def fitted_scorer(name: str, log, cache_dir, seed: int, params: dict | None = None, train_log=None):
    """The `name` scorer with hyper-parameters `params` (default: its defaults) fitted on `log` (or loaded
    from `cache_dir` or the shipped fits), with seed `seed`.

    `train_log`: the validation background, when `log` extends it (leave-one-out test: train + validation).
    A sequential model (one with `with_sequences`: SASRec) is then fitted on `train_log` and reads the users
    of `log`, as in SASRec's protocol, and the model chosen on validation is the one tested; the others are
    refitted on `log` (seconds). The classic rankers and the tools' CF scores both come from here.
    """
    scorer = make_scorer(name, **(params or {}))
    rng = np.random.default_rng(seed)
    if train_log is not None and hasattr(scorer, "with_sequences"):
        return fit_or_load(scorer, train_log, cache_dir, rng).with_sequences(log)
    return fit_or_load(scorer, log, cache_dir, rng)


def fitted_ranker(
    name: str, log, cache_dir, seed: int, params: dict | None = None, train_log=None
) -> ScorerRanker:
    """`fitted_scorer` as a `Ranker`."""
    return ScorerRanker(fitted_scorer(name, log, cache_dir, seed, params, train_log), name=name)
