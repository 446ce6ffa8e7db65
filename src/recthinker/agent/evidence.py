"""Answer form (c): the model weighs the evidence and promotes or demotes named candidates; the
environment turns that into the full permutation.

    <answer>promote [3] [7]; demote [2]</answer>

The base order is the evidence the agent itself gathered in this episode: the z-scored signals of the tools
it called, each tool's as it declares it (`@tool(signal=...)` in `tools/env.py`: cf_scores -> that model's
scores, item_relations -> relation strength, similar_users -> how many similar users chose each candidate,
user_profile / user_history -> genre match, item_info -> popularity), combined by the learned fusion
(`agent/fusion.py`) when the ranker's resources carry one (`Resources.evidence_order`; the agent rankers built
over a benchmark do), else summed with equal weights. Promoted candidates then move to the top in the order
named, demoted ones to the bottom. No evidence tool called means no base order: the answer is invalid (never a fallback to candidate
order or to a signal the agent did not ask for).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recthinker.agent.parse import ParsedRanking
from recthinker.tools.env import TOOLS
from recthinker.tools.resources import EvidenceOrder

_SECTION_RE = re.compile(r"(promote|demote)\s*:?\s*((?:\[\s*\d{1,4}\s*\][\s,]*)*)", re.IGNORECASE)
_LABEL_RE = re.compile(r"\[\s*(\d{1,4})\s*\]")


def evidence_signals(calls: Sequence[tuple[str, Mapping[str, Any] | str]]) -> list[str]:
    """The signals the agent's successful tool calls revealed, in first-seen order.

    >>> evidence_signals([("cf_scores", {"model": "als"}), ("item_relations", {}), ("search_items", {})])
    ['cf_als', 'item_relations']
    """
    out: list[str] = []
    for name, args in calls:
        spec = TOOLS.get(name)
        if spec is None or not spec.signal:
            continue
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = {}
        key = spec.signal_for(args if isinstance(args, Mapping) else {})
        if key not in out:
            out.append(key)
    return out


def standardize(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-episode z-scores of the raw tool signals (popularity as log1p; unscored CF items at the minimum).

    The one z-scoring of the project: the teacher's fitted sums and answer form (c)'s equal-weight sums both
    use it. Popularity counts are heavy-tailed; as log1p their sum with another signal ranks better on ML-1M
    validation episodes in 12 of 15 measured combinations (`benchmarks/bench_zscore.py`: e.g. +0.011 NDCG@10
    with ALS on 1,000 loo/valid episodes, +0.045 on sparse/valid; it loses only when paired with genre_match).

    >>> z = standardize({"cf_als": np.array([1.0, -np.inf, 3.0]), "popularity": np.array([0.0, 0.0, 0.0])})
    >>> [round(float(v), 2) for v in z["cf_als"]], z["popularity"].tolist()
    ([-0.71, -0.71, 1.41], [0.0, 0.0, 0.0])
    """
    out = {}
    for name, x in raw.items():
        x = np.asarray(x, dtype=float).copy()
        finite = np.isfinite(x)
        x[~finite] = x[finite].min() if finite.any() else 0.0
        if name == "popularity":
            x = np.log1p(np.maximum(x, 0.0))
        sd = x.std()
        out[name] = (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x)
    return out


def base_order(signals: Mapping[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    """Candidate indices by the equal-weight sum of the z-scored `keys` signals (descending, stable).

    >>> base_order({"a": np.array([1.0, 3.0, 2.0]), "b": np.array([0.0, 0.0, 9.0])}, ["a"]).tolist()
    [1, 2, 0]
    """
    z = standardize({k: signals[k] for k in keys})
    total = np.zeros(len(next(iter(signals.values()))))
    for k in keys:
        total += z[k]
    return np.argsort(-total, kind="stable")


def environment_order(
    signals: Mapping[str, np.ndarray], keys: Sequence[str], order: EvidenceOrder | None = None
) -> np.ndarray:
    """The base order answer form (c) applies promotions to: `order` (the environment's evidence combiner,
    the learned fusion when the caller attached one to the resources) over `keys`, else `base_order`."""
    return np.asarray(order(signals, keys)) if order is not None else base_order(signals, keys)


def parse_evidence_answer(text: str | None, n: int) -> tuple[list[int], list[int], list[str]]:
    """(promoted, demoted, problems) as 0-based candidate positions.

    >>> parse_evidence_answer("promote [3] [1]; demote [2]", 4)
    ([2, 0], [1], [])
    >>> parse_evidence_answer("promote [3]; demote [3]", 4)[2]
    ['[3] is both promoted and demoted']
    """
    if text is None or not _SECTION_RE.search(text or ""):
        return [], [], ['no "promote [..]; demote [..]" answer']
    promoted: list[int] = []
    demoted: list[int] = []
    problems: list[str] = []
    for m in _SECTION_RE.finditer(text):
        target = promoted if m.group(1).lower() == "promote" else demoted
        for raw in _LABEL_RE.findall(m.group(2)):
            k = int(raw)
            if not 1 <= k <= n:
                problems.append(f"label [{k}] is not a candidate (use [1]..[{n}])")
            elif k - 1 not in target:
                target.append(k - 1)
    for k in set(promoted) & set(demoted):
        problems.append(f"[{k + 1}] is both promoted and demoted")
    return promoted, demoted, problems


def evidence_ranking(
    text: str | None,
    candidates: Sequence[str],
    signals: Mapping[str, np.ndarray],
    keys: Sequence[str],
    order: EvidenceOrder | None = None,
) -> ParsedRanking:
    """The permutation an evidence answer stands for (invalid, with problems, when it cannot be built);
    `order`: the environment's evidence combiner (see `environment_order`)."""
    promoted, demoted, problems = parse_evidence_answer(text, len(candidates))
    if not keys:
        problems.append(
            "an evidence answer needs evidence: call cf_scores, item_relations or similar_users first"
        )
    if problems:
        return ParsedRanking(items=(), problems=problems)
    base = [int(i) for i in environment_order(signals, keys, order)]
    middle = [i for i in base if i not in promoted and i not in demoted]
    ranked = promoted + middle + [i for i in base if i in demoted]
    return ParsedRanking(items=tuple(candidates[i] for i in ranked))
