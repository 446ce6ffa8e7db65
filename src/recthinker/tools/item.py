"""Item-side tools as pure functions: how items are written in outputs (`Labels`), item details with
popularity and mean rating from the background, and BM25 keyword search (bm25s) over the catalog.

Popularity is counted on the background log only, so an item's count never includes a held-out
interaction of an evaluated user.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recthinker.tools.resources import Catalog, Index, Resources

STOPWORDS = frozenset(
    {"a", "an", "and", "at", "by", "for", "from", "in", "is", "it", "of", "on", "or", "the", "to", "with"}
)


class Labels:
    """How items are written in tool outputs: a candidate as `[3] <id>` (its 1-based position in the
    candidate list, as the prompt labels it), any other item as `<id>`; when the id does not already
    contain the title (numeric ids), the title and year follow it.

    >>> from recthinker.tools.resources import Catalog
    >>> import pandas as pd
    >>> cat = Catalog.from_frame(pd.DataFrame({"title": ["Heat"], "year": [1995.0], "categories": [["Crime"]]},
    ...                                       index=pd.Index(["7"], name="item_id")))
    >>> Labels(cat, ["7"])("7"), Labels(cat, ["7"]).short("7"), Labels(cat, [])("7")
    ('[1] 7 "Heat" (1995)', '[1]', '7 "Heat" (1995)')
    """

    def __init__(self, catalog: Catalog, candidates: Sequence[str]) -> None:
        self._catalog = catalog
        self.label = {c: f"[{n}]" for n, c in enumerate(candidates, start=1)}

    def short(self, item_id: str) -> str:
        return self.label.get(item_id, item_id)

    def __call__(self, item_id: str) -> str:
        title = self._catalog.title(item_id)
        text = item_id
        if title and title not in item_id:
            year = self._catalog.year(item_id)
            text += f' "{title}"' + (f" ({int(year)})" if not math.isnan(year) else "")
        return f"{self.label[item_id]} {text}" if item_id in self.label else text


# ---- details --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemStats:
    """Background statistics of one item."""

    count: int  # interactions in the background
    percentile: float  # popularity percentile among background items, 0-100
    mean_rating: float  # NaN when unrated or unknown


def item_stats(index: Index, item_id: str) -> ItemStats:
    col = index.items.get(item_id)
    if col < 0:
        return ItemStats(count=0, percentile=0.0, mean_rating=float("nan"))
    return ItemStats(
        count=int(index.item_count[col]),
        percentile=float(index.item_pct[col]),
        mean_rating=float(index.item_mean_rating[col]),
    )


def popularity(index: Index, items: Sequence[str]) -> np.ndarray:
    """(n,) background interaction count of each item (0 when unknown) -- the Pop signal."""
    cols = index.items.indices(list(items))
    return np.where(cols >= 0, index.item_count[np.maximum(cols, 0)], 0).astype(float)


def describe(catalog: Catalog, item_id: str) -> str:
    """`year | cat1, cat2` for an item (empty parts left out; no year where `Labels` already shows it)."""
    year = catalog.year(item_id)
    shown = catalog.title(item_id) not in item_id or f"({year:.0f})" in item_id
    parts = [str(int(year))] if not math.isnan(year) and not shown else []
    if catalog.cats(item_id):
        parts.append(", ".join(catalog.cats(item_id)))
    return " | ".join(parts)


def render_item_info(res: Resources, item_ids: Sequence[str], history: set[str], fmt: Labels) -> str:
    lines = []
    for item_id in item_ids:
        st = item_stats(res.index, item_id)
        rating = f", mean rating {st.mean_rating:.2f}" if not math.isnan(st.mean_rating) else ""
        seen = "; in the user's history" if item_id in history else ""
        desc = describe(res.catalog, item_id)
        lines.append(
            f"{fmt(item_id)} | {desc + ' | ' if desc else ''}{st.count} interactions "
            f"(popularity percentile {st.percentile:.0f}){rating}{seen}"
        )
    return "\n".join(lines)


# ---- BM25 search ----------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stopwords.

    >>> tokenize("The Matrix (1999) | Action, Sci-Fi")
    ['matrix', '1999', 'action', 'sci', 'fi']
    """
    return [t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in STOPWORDS]


def document(catalog: Catalog, i: int) -> list[str]:
    """Tokens BM25 indexes for catalog row `i`: title, year and categories."""
    year = catalog.years[i]
    text = f"{catalog.titles[i]} {'' if math.isnan(year) else int(year)} {' '.join(catalog.categories[i])}"
    return tokenize(text) or ["_"]


def build_bm25(catalog: Catalog):
    """A bm25s index over the catalog, one document per item in catalog order."""
    import bm25s  # imported on use: its import sets the bm25s logger to DEBUG

    bm25 = bm25s.BM25()
    bm25.index([document(catalog, i) for i in range(len(catalog.ids))], show_progress=False)
    return bm25


def search(res: Resources, query: str, among: Sequence[str] | None, k: int) -> list[tuple[str, float]]:
    """The `k` best BM25 matches of `query` as (item id, score > 0), among `among` or the whole catalog."""
    tokens = tokenize(query)
    if not tokens:
        return []
    scores = res.index.bm25.get_scores(tokens)
    if among is None:
        top = np.argpartition(-scores, min(k, len(scores) - 1))[: k + 1]
        top = top[np.lexsort((top, -scores[top]))][:k]
        return [(str(res.catalog.ids[i]), float(scores[i])) for i in top if scores[i] > 0]
    pos = np.array([res.catalog.pos.get(i, -1) for i in among])
    s = np.where(pos >= 0, scores[np.maximum(pos, 0)], 0.0)
    order = np.lexsort((np.arange(len(s)), -s))[:k]
    return [(among[i], float(s[i])) for i in order if s[i] > 0]


def render_search(
    res: Resources, query: str, scope: str, hits: list[tuple[str, float]], history: set[str], fmt: Labels
) -> str:
    if not hits:
        return f"No item in the {scope} matches {query!r}. Try other words (title words, a year, a genre)."
    lines = [f"{len(hits)} best matches for {query!r} in the {scope} (BM25 score):"]
    for item_id, score in hits:
        desc = describe(res.catalog, item_id)
        seen = " | in the user's history" if item_id in history else ""
        lines.append(f"{fmt(item_id)} | {desc} | {score:.2f}{seen}")
    return "\n".join(lines)
