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
    "make_scorer",
]


def fitted_ranker(name: str, log, cache_dir, seed: int, params: dict | None = None) -> ScorerRanker:
    """The `name` scorer with hyper-parameters `params` (default: its defaults) fitted on `log` (or loaded
    from `cache_dir` or the shipped fits), with seed `seed`, as a `Ranker`."""
    scorer = make_scorer(name, **(params or {}))
    return ScorerRanker(fit_or_load(scorer, log, cache_dir, np.random.default_rng(seed)), name=name)
