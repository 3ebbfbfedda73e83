"""The rung logic of Pareto-aware successive halving, on numbers only (numpy; no Ray).

Every column is minimised (maximised objectives are negated by :func:`kdtune.search.pareto.to_minimisation`,
as Optuna does; the fronts come from :func:`kdtune.search.pareto.nondominated_sort`).
At a rung, the objective vectors recorded there are ordered by non-dominated sorting, ties inside a
front broken by an epsilon-net (farthest-first traversal, MOASHA's rule), and a trial continues iff it
is in the top ``ceil(n / eta)`` of that order (:func:`promote`). :mod:`kdtune.search.scheduler` wraps it in
a Ray Tune ``TrialScheduler``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kdtune.search.pareto import _as_points, nondominated_sort

__all__ = ["epsilon_net_order", "priority_rank", "promote", "rung_milestones"]


def epsilon_net_order(points: np.ndarray) -> np.ndarray:
    """Indices of ``points`` (``[k, m]``, finite, already scaled) in farthest-first order.

    Seeded with the row best in the first column (the first objective), then each step takes the row
    whose distance to the nearest row already taken is largest (Clarkson's epsilon-net, as MOASHA).
    So the order spreads along the front instead of crowding one end; a duplicate of a taken row is
    at distance 0 and goes last. Ties go to the lower index, which keeps the order deterministic.
    """
    k = points.shape[0]
    if k == 0:
        return np.empty(0, dtype=int)
    order = [int(np.argmin(points[:, 0]))]
    nearest = np.linalg.norm(points - points[order[0]], axis=1)
    taken = np.zeros(k, dtype=bool)
    taken[order[0]] = True
    while len(order) < k:
        # -1 masks taken rows (distances are >= 0), so argmax picks an untaken one.
        nxt = int(np.argmax(np.where(taken, -1.0, nearest)))
        order.append(nxt)
        taken[nxt] = True
        nearest = np.minimum(nearest, np.linalg.norm(points - points[nxt], axis=1))
    return np.array(order, dtype=int)


def priority_rank(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Position (0 = best) of each row of ``points`` in a total order: fronts first, epsilon-net inside.

    Before the epsilon-net, each column is scaled to [0, 1] by its range over the finite rows: the
    objectives live on unrelated scales (recall ~0.1, latency in ms) and an unscaled distance would
    let the larger one decide alone. Non-finite rows come last, in index order.
    """
    pts = _as_points(points)
    fronts = nondominated_sort(pts)
    finite = np.isfinite(pts).all(axis=1)
    scaled = np.zeros_like(pts)
    if finite.any():
        lo, hi = pts[finite].min(axis=0), pts[finite].max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        scaled[finite] = (pts[finite] - lo) / span
    order: list[int] = []
    for f in range(int(fronts.max(initial=-1)) + 1):
        members = np.flatnonzero(fronts == f)
        if members.size and finite[members[0]]:
            order.extend(members[epsilon_net_order(scaled[members])].tolist())
        else:
            order.extend(members.tolist())
    rank = np.empty(pts.shape[0], dtype=int)
    rank[np.array(order, dtype=int)] = np.arange(len(order))
    return rank


def promote(
    recorded_points: np.ndarray | Sequence[Sequence[float]], candidate_index: int, eta: float
) -> bool:
    """True iff the candidate row ranks in the top ``ceil(n / eta)`` of the ``n`` rows recorded at a rung.

    ``recorded_points`` holds every vector recorded at the rung, the candidate's included (minimised).
    Small n: ``ceil(n / eta) >= 1``, so the first trial at a rung always continues (as Ray's ASHA
    does); with ``eta = 3`` the second and third continue only if they rank first, the fourth to
    sixth only if they rank in the top two, and so on.
    """
    if eta <= 1:
        raise ValueError(f"eta must be > 1, got {eta}")
    pts = _as_points(recorded_points)
    n = pts.shape[0]
    if not 0 <= candidate_index < n:
        raise IndexError(f"candidate_index {candidate_index} out of range for {n} points")
    return bool(priority_rank(pts)[candidate_index] < math.ceil(n / eta))


def rung_milestones(grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """Rung milestones ``grace_period * eta**i`` strictly below ``max_t`` (``max_t`` itself is the end)."""
    if grace_period <= 0 or reduction_factor <= 1 or max_t < grace_period:
        raise ValueError("need grace_period > 0, reduction_factor > 1 and max_t >= grace_period")
    out, m = [], float(grace_period)
    while m < max_t:
        out.append(int(m) if float(m).is_integer() else m)
        m *= reduction_factor
    return out

