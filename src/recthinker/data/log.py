"""`InteractionLog`: time-ordered user-item interactions, the one view of behaviour that tools and
baselines learn from (the *background*: never an evaluated user's validation or test interaction).

Rows are sorted by user, then timestamp (stable, so same-second interactions keep file order). Integer
indices for matrices come from `Vocab`s built over the log itself, so a model fitted on a log can only
score items that log contains.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recthinker.errors import DataError

COLUMNS = ("user_id", "item_id", "timestamp", "rating")


class Vocab:
    """String id <-> contiguous int index.

    >>> v = Vocab(["b", "a", "b"])
    >>> len(v), v.index("a"), v.ids[0], "z" in v
    (2, 1, 'b', False)
    """

    def __init__(self, ids: Iterable[str]) -> None:
        self._index: dict[str, int] = {}
        for i in ids:
            if i not in self._index:
                self._index[i] = len(self._index)
        self.ids: np.ndarray = np.array(list(self._index), dtype=object)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def index(self, key: str) -> int:
        """Index of `key`; KeyError if absent."""
        return self._index[key]

    def get(self, key: str, default: int = -1) -> int:
        return self._index.get(key, default)

    def indices(self, keys: Sequence[str], default: int = -1) -> np.ndarray:
        """Indices of `keys` (`default` for unknown ones)."""
        return np.fromiter((self._index.get(k, default) for k in keys), dtype=np.int64, count=len(keys))


@dataclass(frozen=True, eq=False)
class InteractionLog:
    """Time-ordered interactions with columns user_id, item_id (str), timestamp, rating (float, NaN if absent)."""

    frame: pd.DataFrame
    name: str = field(default="")

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.frame.columns]
        if missing:
            raise DataError(f"InteractionLog {self.name!r}: missing columns {missing}")
        frame = self.frame.loc[:, list(COLUMNS)].copy()
        frame["user_id"] = frame["user_id"].astype(str)
        frame["item_id"] = frame["item_id"].astype(str)
        frame["timestamp"] = frame["timestamp"].astype("float64")
        frame["rating"] = frame["rating"].astype("float64")
        frame = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
        frame.attrs = {}  # reader metadata (line numbers) does not describe the sorted frame
        object.__setattr__(self, "frame", frame)

    @classmethod
    def from_records(cls, records: Iterable[tuple], name: str = "") -> InteractionLog:
        """Build from (user, item, timestamp[, rating]) tuples -- handy for tests and small examples."""
        rows = [tuple(r) + (np.nan,) * (4 - len(r)) for r in records]
        return cls(pd.DataFrame(rows, columns=list(COLUMNS)), name=name)

    def __len__(self) -> int:
        return len(self.frame)

    @cached_property
    def users(self) -> Vocab:
        return Vocab(self.frame["user_id"])

    @cached_property
    def items(self) -> Vocab:
        return Vocab(self.frame["item_id"])

    @cached_property
    def _user_rows(self) -> dict[str, tuple[int, int]]:
        codes = self.frame["user_id"].to_numpy()
        starts = (
            np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.array([], dtype=int)
        )
        ends = np.r_[starts[1:], len(codes)]
        return {codes[s]: (int(s), int(e)) for s, e in zip(starts, ends, strict=True)}

    def user_frame(self, user_id: str) -> pd.DataFrame:
        """This user's rows, oldest first (empty frame for an unknown user)."""
        s, e = self._user_rows.get(user_id, (0, 0))
        return self.frame.iloc[s:e]

    def sequence(self, user_id: str) -> list[str]:
        """This user's items, oldest first (empty for an unknown user)."""
        s, e = self._user_rows.get(user_id, (0, 0))
        return self.frame["item_id"].iloc[s:e].tolist()

    @cached_property
    def item_counts(self) -> pd.Series:
        """Number of interactions per item, descending."""
        return self.frame["item_id"].value_counts()

    def matrix(self, binary: bool = True) -> sp.csr_matrix:
        """Users x items CSR matrix over `users` / `items` (binary: 1 per interacted pair).

        >>> InteractionLog.from_records([("u", "a", 1), ("u", "a", 2), ("v", "b", 1)]).matrix().toarray()
        array([[1., 0.],
               [0., 1.]], dtype=float32)
        """
        rows = self.users.indices(self.frame["user_id"].tolist())
        cols = self.items.indices(self.frame["item_id"].tolist())
        m = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(self.users), len(self.items))
        )
        if binary:
            m.data[:] = 1.0
        return m

    def without(self, pairs: Iterable[tuple[str, str, float]]) -> InteractionLog:
        """A copy without the given (user, item, timestamp) interactions (used to hold out targets)."""
        drop = pd.DataFrame(list(pairs), columns=["user_id", "item_id", "timestamp"])
        if drop.empty:
            return self
        merged = self.frame.merge(drop.assign(_drop=True), on=["user_id", "item_id", "timestamp"], how="left")
        return InteractionLog(self.frame[merged["_drop"].isna().to_numpy()], name=self.name)

    def to_parquet(self, path) -> None:
        self.frame.to_parquet(path, index=False)

    @classmethod
    def read_parquet(cls, path, name: str = "") -> InteractionLog:
        return cls(pd.read_parquet(path), name=name)
