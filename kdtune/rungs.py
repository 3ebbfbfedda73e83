"""The rung logic of Pareto-aware successive halving, on numbers only (numpy; no Ray).

Every column is minimised (maximised objectives are negated by :func:`to_minimisation`, as Optuna does).
At a rung, the objective vectors recorded there are ordered by non-dominated sorting, ties inside a
front broken by an epsilon-net (farthest-first traversal, MOASHA's rule), and a trial continues iff it
is in the top ``ceil(n / eta)`` of that order (:func:`promote`). :mod:`kdtune.schedulers` wraps it in
a Ray Tune ``TrialScheduler``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kdtune.pareto import check_directions, non_dominated

__all__ = ["to_minimisation", "nondominated_sort", "epsilon_net_order", "priority_rank", "promote",
           "rung_milestones"]


def to_minimisation(values: Mapping[str, Any], objectives: Mapping[str, str]) -> np.ndarray:
    """One result's objective vector in objective order, maximised metrics negated (``[m]`` floats)."""
    check_directions(objectives)
    vec = [float(values[name]) for name in objectives]
    return np.array(
        [-v if d == "max" else v for v, d in zip(vec, objectives.values(), strict=True)], dtype=float
    )


def _as_points(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1:
        pts = pts[:, None]
    if pts.ndim != 2:
        raise ValueError(f"points must be 2-D [n, m], got shape {pts.shape}")
    return pts


def nondominated_sort(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Front index of each row of ``points`` (``[n, m]``, minimised): 0 = first (non-dominated) front.

    Rows holding a NaN or an infinity cannot be compared meaningfully; they all get the rank after the
    last front of the valid rows (so they sort last). Identical rows share a front.
    """
    pts = _as_points(points)
    n = pts.shape[0]
    ranks = np.full(n, -1, dtype=int)
    remaining = np.flatnonzero(np.isfinite(pts).all(axis=1))
    front = 0
    # Peel fronts: O(fronts * n^2 * m), fine for the tens to hundreds of trials a rung holds.
    while remaining.size:
        mask = non_dominated(pts[remaining])
        ranks[remaining[mask]] = front
        remaining = remaining[~mask]
        front += 1
    ranks[ranks < 0] = front
    return ranks


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

