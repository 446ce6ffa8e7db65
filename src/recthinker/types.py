"""The shared vocabulary of RecThinker: episodes, rankings and the `Ranker` protocol.

An `Episode` is one next-item ranking task (one user, a shuffled candidate list that holds the held-out
target exactly once). Every ranker -- classic baseline, LLM baseline or the agent -- implements `Ranker`
so that the evaluation harness treats them alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

ItemId = str
UserId = str


@dataclass(frozen=True, slots=True, kw_only=True)
class Episode:
    """One next-item ranking task: rank `candidates` for `user_id` given `history`.

    >>> e = Episode(episode_id="u1/test", user_id="u1", history=("a",), candidates=("b", "c"), target="c")
    >>> Episode.from_dict(e.to_dict()) == e
    True
    """

    episode_id: str
    user_id: UserId
    history: tuple[ItemId, ...]  # oldest -> newest, background interactions only
    candidates: tuple[ItemId, ...]  # shuffled with the episode's seed; contains target exactly once
    target: ItemId | None = None  # the held-out item; None when serving (unknown)
    split: str = "test"  # "valid" | "test" | "train" (training episodes built from the background)
    subset: str = ""  # "dense" | "sparse" | "loo" | "" -- which benchmark subset it belongs to

    def __post_init__(self) -> None:
        if self.target is not None and self.candidates.count(self.target) != 1:
            raise ValueError(
                f"episode {self.episode_id!r}: target {self.target!r} must appear exactly once in candidates"
            )
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"episode {self.episode_id!r}: duplicate candidate ids")

    def to_dict(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id,
            "user_id": self.user_id,
            "split": self.split,
            "subset": self.subset,
            "history": list(self.history),
            "candidates": list(self.candidates),
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Episode:
        return cls(
            episode_id=str(row["episode_id"]),
            user_id=str(row["user_id"]),
            history=tuple(str(i) for i in row["history"]),
            candidates=tuple(str(i) for i in row["candidates"]),
            target=None if row.get("target") is None else str(row["target"]),
            split=str(row.get("split", "test")),
            subset=str(row.get("subset", "")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Ranking:
    """The ordered candidates a ranker returns.

    `valid` is False when the ranker (a model) produced no usable ranking; such a ranking scores 0 in every
    metric -- the harness never falls back to the candidate order. `info` carries per-episode extras
    (tool calls, tokens, ...) that the harness copies into its per-episode rows.
    """

    items: tuple[ItemId, ...]
    valid: bool = True
    note: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Ranker(Protocol):
    """Anything that ranks the candidates of an episode."""

    name: str

    def rank(self, episode: Episode) -> Ranking: ...
