"""User-side tools as pure functions: demographics, a preference summary computed from the user's
background history (top categories, release years, rating tendency, activity, sparsity), and the
history itself, newest first, with keyword filter and paging.

Everything here reads the background only: an evaluated user's validation and test interactions are
not in it, so they can never show up as history.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recthinker.tools.item import Labels, describe

if TYPE_CHECKING:
    from recthinker.tools.resources import Catalog, Resources

# MovieLens-1M codes (README of the ML-1M release).
ML1M_AGES = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATIONS = {
    0: "other or not specified",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}
GENDERS = {"F": "female", "M": "male"}
PLAUSIBLE_UNIX_TIME = 1e8  # timestamps above this are seconds since 1970 (else: positions in a sequence)


def _number(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        return float("nan")


def demographics(users: pd.DataFrame | None, user_id: str) -> dict[str, str]:
    """Readable demographic fields of a user ({} when unknown). ML-1M age/occupation codes become words.

    >>> users = pd.DataFrame({"age": ["25.0"], "gender": ["F"], "occupation": ["12.0"], "zip_code": ["02139"]},
    ...                      index=pd.Index(["u1"], name="user_id"))
    >>> demographics(users, "u1")
    {'age': '25-34', 'gender': 'female', 'occupation': 'programmer'}
    """
    if users is None or user_id not in users.index:
        return {}
    row = users.loc[user_id]
    out: dict[str, str] = {}
    for col, value in row.items():
        if col in ("zip_code", "zip") or value is None or str(value) in ("", "nan"):
            continue
        num = _number(value)
        if col == "gender":
            out[col] = GENDERS.get(str(value), str(value))
        elif col == "age" and not math.isnan(num):
            out[col] = ML1M_AGES.get(int(num), str(int(num))) if num == int(num) else str(num)
        elif col == "occupation" and not math.isnan(num) and int(num) in ML1M_OCCUPATIONS:
            out[col] = ML1M_OCCUPATIONS[int(num)]
        else:
            out[col] = str(value)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class UserSummary:
    """Preference statistics of one user over their background history."""

    n_items: int  # background interactions
    activity_pct: float  # share of background users with fewer interactions, 0-100 (NaN: not in background)
    top_categories: list[tuple[str, float]]  # (category, share of history items carrying it), best first
    year_min: float
    year_median: float
    year_max: float
    mean_rating: float  # NaN without ratings
    global_mean_rating: float
    high_share: float  # share of ratings >= 4 (NaN without ratings)

    @property
    def density(self) -> str:
        """Coarse label for how much history there is."""
        n = self.n_items
        return "very sparse" if n < 10 else "sparse" if n < 30 else "moderate" if n < 100 else "rich"


def category_shares(catalog: Catalog, items: Sequence[str]) -> dict[str, float]:
    """Share of `items` that carry each category (an item may carry several).

    >>> from recthinker.tools.resources import Catalog
    >>> cat = Catalog.from_frame(pd.DataFrame({"title": ["a", "b"], "year": [1.0, 2.0],
    ...     "categories": [["Drama"], ["Drama", "War"]]}, index=pd.Index(["a", "b"], name="item_id")))
    >>> category_shares(cat, ["a", "b"])
    {'Drama': 1.0, 'War': 0.5}
    """
    counts = Counter(c for i in items for c in catalog.cats(i))
    return {c: n / max(len(items), 1) for c, n in counts.most_common()}


def summarize(res: Resources, user_id: str, history: Sequence[str]) -> UserSummary:
    """Preference summary of `user_id` from the background (`history` for a user it does not know)."""
    rows = res.user_rows(user_id)
    items = rows["item_id"].tolist() if len(rows) else list(history)
    ratings = rows["rating"].to_numpy(dtype=float) if len(rows) else np.array([])
    ratings = ratings[~np.isnan(ratings)]
    years = np.array([res.catalog.year(i) for i in items], dtype=float)
    years = years[~np.isnan(years)]
    row = res.index.users.get(user_id)
    nan = float("nan")
    return UserSummary(
        n_items=len(items),
        activity_pct=float(res.index.user_pct[row]) if row >= 0 else nan,
        top_categories=list(category_shares(res.catalog, items).items()),
        year_min=float(years.min()) if len(years) else nan,
        year_median=float(np.median(years)) if len(years) else nan,
        year_max=float(years.max()) if len(years) else nan,
        mean_rating=float(ratings.mean()) if len(ratings) else nan,
        global_mean_rating=res.index.global_mean_rating,
        high_share=float((ratings >= 4).mean()) if len(ratings) else nan,
    )


def category_match(catalog: Catalog, summary: UserSummary, candidates: Sequence[str]) -> np.ndarray:
    """(n_candidates,) sum of the user's category shares over each candidate's categories."""
    shares = dict(summary.top_categories)
    return np.array([sum(shares.get(c, 0.0) for c in catalog.cats(i)) for i in candidates])


def render_profile(
    user_id: str, demo: dict[str, str], s: UserSummary, n_users: int, recent: list[str]
) -> str:
    lines = [
        f"User {user_id}: " + (", ".join(f"{k} {v}" for k, v in demo.items()) or "no demographics available")
    ]
    if s.n_items == 0:
        lines.append("No background interactions: this is a cold-start user.")
        return "\n".join(lines)
    pct = f", more than {s.activity_pct:.0f}% of {n_users} users" if not math.isnan(s.activity_pct) else ""
    lines.append(f"History: {s.n_items} interactions ({s.density}{pct}).")
    if s.top_categories:
        lines.append(
            "Top categories (share of history): "
            + ", ".join(f"{c} {100 * f:.0f}%" for c, f in s.top_categories[:6])
        )
    if not math.isnan(s.year_median):
        lines.append(f"Release years: {s.year_min:.0f}-{s.year_max:.0f}, median {s.year_median:.0f}.")
    if not math.isnan(s.mean_rating):
        diff = s.mean_rating - s.global_mean_rating
        tendency = "close to" if abs(diff) < 0.15 else "above" if diff > 0 else "below"
        lines.append(
            f"Ratings: mean {s.mean_rating:.2f} vs {s.global_mean_rating:.2f} for all users ({tendency} "
            f"average); {100 * s.high_share:.0f}% rated 4 or more."
        )
    if recent:
        lines.append("Most recent: " + "; ".join(recent))
    return "\n".join(lines)


# ---- history ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryRow:
    item_id: str
    timestamp: float  # NaN when unknown
    rating: float  # NaN when unknown


def history_rows(res: Resources, user_id: str, history: Sequence[str]) -> list[HistoryRow]:
    """The user's background interactions, newest first (`history` without dates for an unknown user)."""
    rows = res.user_rows(user_id)
    if not len(rows):
        return [HistoryRow(i, float("nan"), float("nan")) for i in reversed(list(history))]
    ids = rows["item_id"].to_numpy()
    ts = rows["timestamp"].to_numpy(dtype=float)
    rt = rows["rating"].to_numpy(dtype=float)
    return [HistoryRow(str(ids[j]), float(ts[j]), float(rt[j])) for j in range(len(ids) - 1, -1, -1)]


def matches(catalog: Catalog, item_id: str, keyword: str) -> bool:
    """Case-insensitive keyword match on id, title, year or a category."""
    kw = keyword.lower().strip()
    year = catalog.year(item_id)
    fields = [item_id, catalog.title(item_id), *catalog.cats(item_id)]
    if not math.isnan(year):
        fields.append(str(int(year)))
    return any(kw in f.lower() for f in fields)


def render_history(
    res: Resources, rows: list[HistoryRow], k: int, keyword: str, page: int, fmt: Labels
) -> str:
    total = len(rows)
    if keyword:
        rows = [r for r in rows if matches(res.catalog, r.item_id, keyword)]
    chunk = rows[(page - 1) * k : page * k]
    what = f"matching {keyword!r}" if keyword else "in the history"
    if not chunk:
        if not rows:
            return f"No item {what} (the history has {total} items)."
        return f"Page {page} is empty: {len(rows)} items {what}, {math.ceil(len(rows) / k)} pages of {k}."
    first = (page - 1) * k + 1
    lines = [f"Items {first}-{first + len(chunk) - 1} of {len(rows)} {what}, newest first:"]
    for r in chunk:
        extra = []
        if not math.isnan(r.rating):
            extra.append(f"rated {r.rating:g}")
        if r.timestamp > PLAUSIBLE_UNIX_TIME:
            extra.append(datetime.fromtimestamp(r.timestamp, UTC).strftime("%Y-%m-%d"))
        desc = describe(res.catalog, r.item_id)
        lines.append(" | ".join([fmt(r.item_id), *([desc] if desc else []), *extra]))
    if first + len(chunk) - 1 < len(rows):
        lines.append(f"(more: page={page + 1})")
    return "\n".join(lines)
