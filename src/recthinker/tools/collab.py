"""Collaborative signals from the background log: similar users, item co-interaction relations, CF model
scores. Builders (run once per background by `build.build_index`), pure signal functions that return
numbers per candidate (the bootstrap teacher combines these), and renderers that turn them into the short
text the model sees.

Similar users: cosine over the binary user x item matrix. Candidates come from an HNSW index (hnswlib) over
64-d user embeddings (a randomized truncated SVD of the row-normalised matrix, Halko et al. 2011), then are
re-scored exactly on the binary rows; `exact_similar_users` is the brute-force reference.
Item relations: item-item cosine over the binary matrix (co-interaction), plus shared categories.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import hnswlib
import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from recthinker.tools.item import Labels
    from recthinker.tools.resources import Index, Resources

ANN_POOL = 256  # users fetched from the ANN index before exact re-scoring (recall@10 0.99 on ML-1M)


# ---- builders -------------------------------------------------------------------------------------------


def item_neighbours(m: sp.csr_matrix, k: int, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` co-interaction neighbours of every item by cosine over the binary matrix `m` (users x items).

    Returns (idx, sim), both (n_items, k), best first; -1 / 0.0 pad items with fewer than k neighbours.

    >>> m = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32))
    >>> idx, sim = item_neighbours(m, 2)
    >>> idx[0].tolist(), [round(float(x), 3) for x in sim[0]]
    ([1, -1], [0.816, 0.0])
    """
    n = m.shape[1]
    counts = np.diff(m.tocsc().indptr).astype(np.float32)
    xc = (m @ sp.diags(1.0 / np.sqrt(np.maximum(counts, 1)))).tocsr().astype(np.float32)
    xt = xc.T.tocsr()
    kk = min(k, max(n - 1, 1))
    idx = np.full((n, k), -1, dtype=np.int32)
    sim = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        s = (xt[start:stop] @ xc).toarray()  # (b, n) cosine
        s[np.arange(stop - start), np.arange(start, stop)] = 0.0
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if n > 1 else np.zeros((stop - start, 0), int)
        top_sim = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-top_sim, axis=1, kind="stable")
        top, top_sim = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sim, order, axis=1)
        keep = top_sim > 0
        idx[start:stop, :kk] = np.where(keep, top, -1)
        sim[start:stop, :kk] = np.where(keep, top_sim, 0.0)
    return idx, sim


def user_embeddings(m: sp.csr_matrix, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Randomized truncated SVD of the row-normalised matrix: (unit user embeddings, item projection).

    A user with item vector x (0/1) embeds as normalize((x / |x|) @ item_proj), so a cold user's history
    folds into the same space.
    """
    n_users, n_items = m.shape
    d = max(1, min(dim, n_users - 1, n_items - 1))
    rng = np.random.default_rng(seed)
    rows = np.sqrt(np.maximum(np.diff(m.indptr), 1)).astype(np.float32)
    xn = (sp.diags(1.0 / rows) @ m).tocsr().astype(np.float32)
    q = np.linalg.qr(xn @ rng.standard_normal((n_items, min(d + 10, n_items)), dtype=np.float32))[0]
    for _ in range(2):  # power iterations sharpen the leading subspace
        q = np.linalg.qr(xn @ np.linalg.qr(xn.T @ q)[0])[0]
    _, _, vt = np.linalg.svd(np.asarray((xn.T @ q).T), full_matrices=False)
    item_proj = np.ascontiguousarray(vt[:d].T, dtype=np.float32)  # (n_items, d)
    return _unit_rows(np.asarray(xn @ item_proj, dtype=np.float32)), item_proj


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def build_ann(emb: np.ndarray, seed: int = 0):
    """HNSW index (cosine) over the rows of `emb`, labels = row numbers; one thread."""
    ann = hnswlib.Index(space="cosine", dim=emb.shape[1])
    ann.init_index(max_elements=max(len(emb), 1), ef_construction=200, M=16, random_seed=seed)
    ann.set_num_threads(1)
    ann.add_items(emb, np.arange(len(emb)), num_threads=1)
    ann.set_ef(ANN_POOL)
    return ann


# ---- similar users --------------------------------------------------------------------------------------


def user_items(index: Index, user_id: str, history: Sequence[str]) -> tuple[int, np.ndarray]:
    """(row of the user in the background or -1, sorted item columns that describe them).

    A user the background knows is described by their background row; anyone else by `history`.
    """
    row = index.users.get(user_id)
    if row >= 0:
        return row, index.matrix.indices[index.matrix.indptr[row] : index.matrix.indptr[row + 1]]
    cols = index.items.indices(list(history))
    return -1, np.unique(cols[cols >= 0])


def _exact_cosine(index: Index, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, overlap) between the users `rows` and the item set `cols` on the binary matrix."""
    if len(cols) == 0 or len(rows) == 0:
        return np.zeros(len(rows)), np.zeros(len(rows), dtype=np.int64)
    overlap = np.asarray(index.matrix[rows][:, cols].sum(axis=1)).ravel()
    return overlap / (index.user_norms[rows] * np.sqrt(len(cols))), overlap.astype(np.int64)


def _top(rows: np.ndarray, cos: np.ndarray, overlap: np.ndarray, k: int) -> list[tuple[int, float, int]]:
    order = np.lexsort((rows, -cos))[:k]  # cosine descending, ties by row
    return [(int(rows[i]), float(cos[i]), int(overlap[i])) for i in order if cos[i] > 0]


def similar_users(index: Index, user_id: str, history: Sequence[str], k: int) -> list[tuple[int, float, int]]:
    """The `k` nearest other users as (row, cosine, shared items): ANN candidates, exact re-scoring."""
    row, cols = user_items(index, user_id, history)
    if len(cols) == 0:
        return []
    q = _unit_rows(index.item_proj[cols].sum(axis=0, keepdims=True) / np.sqrt(len(cols)))
    n = len(index.users)
    labels, _ = index.ann.knn_query(q, k=min(n, max(ANN_POOL, 4 * k + 1)), num_threads=1)
    rows = labels[0][labels[0] != row].astype(np.int64)
    cos, overlap = _exact_cosine(index, rows, cols)
    return _top(rows, cos, overlap, k)


def exact_similar_users(
    index: Index, user_id: str, history: Sequence[str], k: int
) -> list[tuple[int, float, int]]:
    """Brute-force reference for `similar_users`: exact cosine against every other background user."""
    row, cols = user_items(index, user_id, history)
    rows = np.array([r for r in range(len(index.users)) if r != row], dtype=np.int64)
    cos, overlap = _exact_cosine(index, rows, cols)
    return _top(rows, cos, overlap, k)


def neighbour_counts(index: Index, neighbour_rows: Sequence[int], candidates: Sequence[str]) -> np.ndarray:
    """(n_candidates,) how many of the given users interacted with each candidate (background only)."""
    cols = index.items.indices(list(candidates))
    out = np.zeros(len(candidates), dtype=np.int64)
    if len(neighbour_rows) and (cols >= 0).any():
        sub = index.matrix[np.asarray(neighbour_rows)][:, cols[cols >= 0]]
        out[cols >= 0] = np.asarray(sub.sum(axis=0)).ravel().astype(np.int64)
    return out


def similar_users_signal(
    index: Index, user_id: str, history: Sequence[str], candidates: Sequence[str], k: int = 10
) -> np.ndarray:
    """(n_candidates,) similarity-weighted count of the `k` nearest users who interacted with each candidate."""
    nbrs = similar_users(index, user_id, history, k)
    if not nbrs:
        return np.zeros(len(candidates))
    cols = index.items.indices(list(candidates))
    rows = np.array([r for r, _, _ in nbrs])
    weights = np.array([c for _, c, _ in nbrs])
    out = np.zeros(len(candidates))
    if (cols >= 0).any():
        sub = index.matrix[rows][:, cols[cols >= 0]].toarray()  # (k, n_known)
        out[cols >= 0] = weights @ sub
    return out


def render_similar_users(
    index: Index, nbrs: list[tuple[int, float, int]], candidates: Sequence[str], fmt: Labels
) -> str:
    if not nbrs:
        return "No similar users: this user has no background interactions to compare."
    head = ", ".join(f"{index.users.ids[r]} ({c:.2f}, {o} shared)" for r, c, o in nbrs)
    counts = neighbour_counts(index, [r for r, _, _ in nbrs], candidates)
    order = np.argsort(-counts, kind="stable")
    seen = [f"{fmt(candidates[i])}: {counts[i]}/{len(nbrs)}" for i in order if counts[i] > 0]
    unseen = [f"{fmt.short(candidates[i])} {candidates[i]}" for i in order if counts[i] == 0]
    lines = [
        f"{len(nbrs)} most similar users (cosine, shared items): {head}",
        f"Candidates they interacted with (users out of {len(nbrs)}):" + ("" if seen else " none"),
        *seen,
    ]
    if unseen:
        lines.append(f"Not interacted by any of them: {'; '.join(unseen)}")
    return "\n".join(lines)


# ---- item relations -------------------------------------------------------------------------------------


def relation_matrix(index: Index, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
    """(n_candidates, n_history) item-item cosine (co-interaction) between candidates and history items."""
    c = index.items.indices(list(candidates))
    h = index.items.indices(list(history))
    out = np.zeros((len(candidates), len(history)), dtype=np.float64)
    ci, hi = np.flatnonzero(c >= 0), np.flatnonzero(h >= 0)
    if len(ci) and len(hi):
        xc = index.matrix_csc
        out[np.ix_(ci, hi)] = (xc[:, c[ci]].T @ xc[:, h[hi]]).toarray()
    return out


def relation_signal(index: Index, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
    """(n_candidates,) summed co-interaction cosine of each candidate with the history items (item-CF)."""
    return relation_matrix(index, history, candidates).sum(axis=1)


def shared_categories(
    cats_of: Callable[[str], tuple[str, ...]], history: Sequence[str], item_id: str
) -> list[tuple[str, int]]:
    """Categories of `item_id` with how many history items carry each, most shared first."""
    counts = Counter(c for h in history for c in cats_of(h))
    return sorted(((c, counts[c]) for c in cats_of(item_id) if counts[c]), key=lambda t: (-t[1], t[0]))


def render_relations(
    res: Resources,
    history: Sequence[str],
    candidates: Sequence[str],
    fmt: Labels,
) -> str:
    """Per candidate: co-interaction strength with the recent history (and its strongest link) + shared genres."""
    rel = relation_matrix(res.index, history, candidates)
    total = rel.sum(axis=1)
    lines = [
        f"Relations of each candidate to the user's {len(history)} most recent history items "
        "(co-interaction cosine summed; strongest link; shared categories: history items with it):"
    ]
    for i in np.argsort(-total, kind="stable"):
        link = ""
        if rel.shape[1] and rel[i].max() > 0:
            j = int(np.argmax(rel[i]))
            link = f" via {history[j]} {rel[i, j]:.2f}"
        shared = shared_categories(res.catalog.cats, history, candidates[i])
        cats = ", ".join(f"{c} {n}" for c, n in shared[:3]) or "none"
        lines.append(f"{fmt(candidates[i])}: {total[i]:.2f}{link}; categories: {cats}")
    return "\n".join(lines)


def render_item_relations(
    res: Resources,
    item_id: str,
    history: Sequence[str],
    candidates: Sequence[str],
    fmt: Labels,
    n: int = 5,
) -> str:
    """One item: its nearest co-interaction neighbours in the catalog, then its links to candidates/history."""
    index = res.index
    col = index.items.get(item_id)
    lines = [f"Relations of {fmt(item_id)}:"]
    if col < 0:
        lines.append("No interactions in the background: no co-interaction neighbours.")
    else:
        nb = [
            f"{index.items.ids[j]} {s:.2f}"
            for j, s in zip(index.nbr_idx[col][:n], index.nbr_sim[col][:n], strict=True)
            if j >= 0
        ]
        lines.append("Co-interaction neighbours in the catalog: " + ("; ".join(nb) or "none"))
        others = [c for c in candidates if c != item_id]
        rel = relation_matrix(index, [item_id], others)[:, 0]
        order = [i for i in np.argsort(-rel, kind="stable") if rel[i] > 0][:n]
        lines.append(
            "With candidates: " + ("; ".join(f"{fmt(others[i])} {rel[i]:.2f}" for i in order) or "none")
        )
        hist = [h for h in history if h != item_id]
        hrel = relation_matrix(index, [item_id], hist)[0]
        order = [j for j in np.argsort(-hrel, kind="stable") if hrel[j] > 0][:3]
        lines.append("With history: " + ("; ".join(f"{hist[j]} {hrel[j]:.2f}" for j in order) or "none"))
    shared = shared_categories(res.catalog.cats, history, item_id)
    lines.append(
        f"Categories shared with the {len(history)} recent history items: "
        + (", ".join(f"{c} {k}" for c, k in shared) or "none")
    )
    return "\n".join(lines)


# ---- CF model scores ------------------------------------------------------------------------------------


def cf_model_scores(
    res: Resources, model: str, user_id: str, history: Sequence[str], candidates: Sequence[str]
) -> np.ndarray:
    """(n_candidates,) raw scores of a CF model fitted on the background (-inf: item unknown to it)."""
    return np.asarray(
        res.scorer(model).score(list(candidates), user_id=user_id, history=list(history)), dtype=float
    )


def render_cf_scores(model: str, scores: np.ndarray, candidates: Sequence[str], fmt: Labels) -> str:
    """Candidates by descending score, with min-max normalised scores in [0, 1]."""
    finite = np.isfinite(scores)
    lo, hi = (scores[finite].min(), scores[finite].max()) if finite.any() else (0.0, 0.0)
    norm = np.where(finite, (scores - lo) / (hi - lo) if hi > lo else 1.0, np.nan)
    order = np.lexsort((np.arange(len(scores)), -np.where(finite, scores, -np.inf)))
    lines = [f"{model.upper()} scores (fitted on the background; 1.00 = best candidate, 0.00 = worst):"]
    for rank, i in enumerate(order, start=1):
        s = f"{norm[i]:.2f}" if finite[i] else "unscored (no interactions in the background)"
        lines.append(f"{rank}. {fmt(candidates[i])} {s}")
    return "\n".join(lines)
