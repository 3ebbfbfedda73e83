"""Sampling helpers of the distillation losses: rank-aware draws from a top-N ranking (the teacher's, or
the student's own), uniform draws outside it (and outside the user's training positives).

Every draw is one vectorised operation over all rows of a batch (one row per distinct user), from
the caller's generator on the generator's device, so a seeded generator makes a loss deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from kdtune.config import MAX_BITMAP_CELLS

if TYPE_CHECKING:
    from kdtune.data.sampler import PositiveSet


def rank_weights(n: int, lam: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``w_r = exp(-r / lam)`` for ranks ``r = 1..n``, normalised to sum 1 (best rank first)."""
    r = torch.arange(1, n + 1, dtype=torch.float32, device=device)
    return torch.softmax(-r / lam, dim=0)


def sample_ranks(n_rows: int, n: int, k: int, lam: float, generator: torch.Generator) -> torch.Tensor:
    """``[n_rows, k]`` positions in a ranking of length ``n``, without replacement, ``p(r) ∝ exp(-r/lam)``.

    Exponential race (the Gumbel-top-k trick): the k largest ``log(U_r) / w_r`` are a draw without
    replacement. ``torch.multinomial`` runs the same race internally but from ``exponential_`` and a
    materialised ``[n_rows, n]`` probability matrix; from one ``rand`` and one ``log`` this measured
    ~2x faster (4096 x 100, k=10, one CPU thread). Rows are sorted: column 0 is the best-ranked pick.
    """
    if not 0 < k <= n:
        raise ValueError(f"cannot sample {k} of a ranking of length {n}")
    dev = generator.device
    # 1/w_r with w_0 = 1 (normalising is not needed for a race); it overflows to inf (key -inf: never
    # picked unless forced) only for r > ~88 lam, where the probability is below float32 precision anyway
    inv_w = torch.exp(torch.arange(n, dtype=torch.float32, device=dev) / lam)
    keys = torch.rand(n_rows, n, generator=generator, device=dev).log_().mul_(inv_w)
    return keys.topk(k, dim=1, sorted=False).indices.sort(dim=1).values


def shared_uninteresting(
    users: torch.Tensor,
    topn: torch.Tensor,
    n_items: int,
    n: int,
    generator: torch.Generator,
    positives: PositiveSet | None = None,
    store: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RRD's uninteresting items drawn once for all ``users`` of a batch: ``(pool [n], valid [U, n])``.

    ``pool`` is ``n`` uniform draws over the catalogue; ``valid[u, j]`` is False where ``pool[j]`` is in
    user ``u``'s top-N (``topn``) or among its training positives. So each user's valid cells are uniform
    draws outside its top-N and positives (their number varies a little: ``n`` less the hits of
    ~(N + |positives|) / n_items), while the users of a batch share the items: their scores are one dense
    ``[U, d] x [d, n]`` product instead of ``U * n`` gathered rows. Membership is one lookup per cell in
    a bitmap of the excluded (user, item) pairs, built once per run (a sorted search above
    ``MAX_BITMAP_CELLS``, as :class:`~kdtune.sampling.PositiveSet` does).
    """
    dev = topn.device
    pool = torch.randint(n_items, (n,), generator=generator, device=generator.device).to(dev)
    bits = _exclusion_bitmap(topn, positives, n_items, store)
    if bits is not None:
        # item-major: the pool's rows are n contiguous runs of n_users flags (no random access into a
        # table of n_users * n_items cells, which cost ~4 ms a batch in cache misses on CiteULike-a);
        # the users are then rows of its transpose (index_select along dim 1 of a bool tensor takes a
        # slow generic path: ~0.7 ms against ~0.15 ms a batch)
        return pool, ~bits.index_select(0, pool).T[users]
    rows = sorted_topn_of(topn, store)[users]  # [U, N], sorted by item id
    cells = pool.unsqueeze(0).expand(len(users), n).contiguous()
    at = torch.searchsorted(rows, cells).clamp_(max=rows.shape[1] - 1)
    hit = rows.gather(1, at) == cells
    if positives is not None:
        hit |= positives.contains(users.unsqueeze(1).expand_as(cells), cells)
    return pool, ~hit


def per_user_uninteresting(
    users: torch.Tensor,
    topn: torch.Tensor,
    n_items: int,
    n: int,
    generator: torch.Generator,
    positives: PositiveSet | None = None,
    store: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RRD's uninteresting items as the DE-RRD reference draws them (SeongKu-Kang/DE-RRD_CIKM20,
    ``Utils/dataset.py``, ``URRD_sampling``: ``multinomial(mask, L, replacement=False)``): for each of
    ``users``, ``n`` distinct items drawn uniformly **without replacement** from its complement (outside its
    top-N ``topn`` and its training positives). Returns ``(items [U, n], valid [U, n])``.

    One vectorised pass instead of a multinomial over a ``[users, n_items]`` mask: each row draws
    ``2 n + 16`` items uniformly with replacement and keeps, in draw order, the first ``n`` that are
    neither excluded nor a repeat of an earlier draw of the row. Skipping repeats and excluded items of an
    i.i.d. uniform stream is sequential sampling without replacement from the complement, so the kept set
    is a uniform ``n``-subset of it. A row that keeps fewer than ``n`` (a small complement, or bad luck) is
    drawn again exactly: the ``n`` smallest of uniform keys over the catalogue, excluded items keyed out.
    ``valid`` is False only where a user's complement has fewer than ``n`` items (those cells repeat a
    valid item or item 0 and must be left out of the term).
    """
    dev = topn.device
    m = 2 * n + 16
    cand = torch.randint(n_items, (len(users), m), generator=generator, device=generator.device).to(dev)
    keep = ~_excluded(users, cand, topn, n_items, positives, store)
    # a repeat is a later copy of an item drawn earlier in the row: a stable sort puts the first copy first
    vals, idx = cand.sort(dim=1, stable=True)
    keep.scatter_(1, idx[:, 1:], keep.gather(1, idx[:, 1:]) & (vals[:, 1:] != vals[:, :-1]))
    first = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n]  # kept cells first, in order
    items, valid = cand.gather(1, first), keep.gather(1, first)
    short = (~valid.all(1)).nonzero().squeeze(1)
    if len(short):
        items[short], valid[short] = _uninteresting_exact(users[short], topn, n_items, n, generator,
                                                          positives, store)
    return items, valid


def _uninteresting_exact(users: torch.Tensor, topn: torch.Tensor, n_items: int, n: int,
                         generator: torch.Generator, positives: PositiveSet | None,
                         store: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_user_uninteresting` for a few rows, over the whole catalogue: ``min(n, n_items)`` largest
    of uniform keys, excluded items keyed -1 (so they come last and are marked invalid)."""
    every = torch.arange(n_items, device=topn.device).expand(len(users), n_items)
    keys = torch.rand(len(users), n_items, generator=generator, device=generator.device).to(topn.device)
    keys.masked_fill_(_excluded(users, every, topn, n_items, positives, store), -1.0)
    top, items = keys.topk(min(n, n_items), dim=1)
    valid = top >= 0
    if n > n_items:  # more cells than items: the rest are padding, never valid
        items = torch.cat([items, items.new_zeros(len(users), n - n_items)], 1)
        valid = torch.cat([valid, valid.new_zeros(len(users), n - n_items)], 1)
    return items, valid


def uniform_non_positives(users: torch.Tensor, n_items: int, n: int, generator: torch.Generator,
                          positives: PositiveSet | None = None, max_redraws: int = 30) -> torch.Tensor:
    """``[U, n]`` items drawn uniformly (with replacement) for each of ``users``, outside its training
    positives: draws that hit a positive are redrawn, all at once, up to ``max_redraws`` rounds (a user who
    has seen nearly every item keeps its last draws)."""
    items = torch.randint(n_items, (len(users), n), generator=generator, device=generator.device)
    items = items.to(users.device)
    if positives is None:
        return items
    rows = users.unsqueeze(1).expand_as(items)
    for _ in range(max_redraws):
        bad = positives.contains(rows, items).nonzero(as_tuple=True)
        if not len(bad[0]):
            break
        redraw = torch.randint(n_items, (len(bad[0]),), generator=generator, device=generator.device)
        items[bad] = redraw.to(items.device)
    return items


@torch.no_grad()
def model_topn(model: torch.nn.Module, users: torch.Tensor, n: int, positives: PositiveSet | None = None,
               chunk: int = 1024) -> torch.Tensor:
    """Each of ``users``' top-``n`` items by ``model``'s current scores, best first, its training positives
    left out: int64 ``[U, n]`` (the student's own ranking, for ``cd``'s student-guided draws)."""
    out = torch.empty(len(users), n, dtype=torch.int64, device=users.device)
    for a in range(0, len(users), chunk):
        rows = users[a : a + chunk]
        scores = model.full_scores(rows)
        if positives is not None:
            scores.masked_fill_(positives.rows(rows), -torch.inf)
        out[a : a + chunk] = scores.topk(n, dim=1).indices
    return out


def _excluded(users: torch.Tensor, cells: torch.Tensor, topn: torch.Tensor, n_items: int,
              positives: PositiveSet | None, store: dict | None) -> torch.Tensor:
    """Bool ``[U, M]``: ``cells[r, j]`` is in user ``users[r]``'s top-N or among its training positives."""
    bits = _exclusion_bitmap(topn, positives, n_items, store)
    rows = users.unsqueeze(1).expand_as(cells)
    if bits is not None:
        return bits[cells, rows]
    sorted_rows = sorted_topn_of(topn, store)[users]  # [U, N], sorted by item id
    at = torch.searchsorted(sorted_rows, cells.contiguous()).clamp_(max=sorted_rows.shape[1] - 1)
    hit = sorted_rows.gather(1, at) == cells
    if positives is not None:
        hit |= positives.contains(rows, cells)
    return hit


def _derived(store: dict | None, name: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()``, kept in ``store`` under ``name`` when a store is given (one training run: its top-N
    table and positives are fixed), built afresh otherwise."""
    if store is None:
        return build()
    if name not in store:
        store[name] = build()
    return store[name]


def _exclusion_bitmap(topn: torch.Tensor, positives: PositiveSet | None, n_items: int,
                      store: dict | None) -> torch.Tensor | None:
    """Bool ``[n_items, n_users]`` (item-major): True for each user's top-N items and training positives.
    ``None`` when it would be too large."""
    n_users = topn.shape[0]
    # too large, or positives too many for a bitmap of their own: the caller uses the sorted search
    if n_users * n_items > MAX_BITMAP_CELLS or (positives is not None and positives.bitmap is None):
        return None

    def build() -> torch.Tensor:
        if positives is not None:
            bits = positives.bitmap.view(n_users, n_items).T.contiguous()  # the one copy, item-major
        else:
            bits = torch.zeros(n_items, n_users, dtype=torch.bool, device=topn.device)
        bits.T.scatter_(1, topn, True)  # each user's top-N, through the user-major view
        return bits

    return _derived(store, "exclusion_bitmap", build)


def sorted_topn_of(topn: torch.Tensor, store: dict | None = None) -> torch.Tensor:
    """``topn`` sorted by item id per user (kept in ``store`` for a training run).

    Sorting the batch's ``[B, N]`` rows every batch cost ~30 ms on CPU; the table is fixed for a run.
    """
    return _derived(store, "sorted_topn", lambda: topn.sort(dim=1).values)


def row_sample(ids: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    """At most ``rows`` of ``ids``, drawn uniformly without replacement (all of them when ``rows`` is 0 or
    ``ids`` is no longer): the rows a batch's DE term (``de_rows``) or
    RRD term (``rrd_users``) is estimated on."""
    if rows <= 0 or ids.numel() <= rows:
        return ids
    pick = torch.randperm(ids.numel(), generator=generator, device=generator.device)[:rows]
    return ids[pick.to(ids.device)]
