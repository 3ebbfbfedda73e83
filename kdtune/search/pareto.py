"""Dominance, Pareto fronts and hypervolume (numpy/pandas only, no Ray): the one home of dominance, used
by the export's front and by the scheduler's rungs (:func:`nondominated_sort`).

Every function here works on plain arrays or on the trial table (one row per trial, one column per
reported metric), so it can be tested and reused without Ray or Optuna.

Convention: the array functions (:func:`non_dominated`, :func:`nondominated_sort`, :func:`hypervolume_2d`)
*minimise every column*.
Objectives to maximise (e.g. ``recall@20``) are negated by the caller, as Optuna does internally; the
DataFrame functions take ``objectives={"recall@20": "max", "latency_ms": "min"}`` and do the negation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "check_directions",
    "non_dominated",
    "nondominated_sort",
    "to_minimisation",
    "pareto_front",
    "hypervolume_2d",
    "hypervolume",
    "default_reference",
]

_DIRECTIONS = ("max", "min")


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``points`` (``[n, m]``) that no other row dominates (minimisation).

    Row ``j`` dominates row ``i`` when it is ``<=`` in every column and ``<`` in at least one.
    Identical rows do not dominate each other, so duplicates on the front are all kept. Rows holding
    a NaN are never on the front and dominate nothing. A 1-D input is one objective (``[n] -> [n, 1]``).
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1:
        pts = pts[:, None]
    if pts.ndim != 2:
        raise ValueError(f"points must be 2-D [n, m], got shape {pts.shape}")
    n = pts.shape[0]
    mask = np.zeros(n, dtype=bool)
    valid = ~np.isnan(pts).any(axis=1)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return mask
    p = pts[idx]
    keep = np.ones(idx.size, dtype=bool)
    # Chunk the pairwise comparison so memory stays ~chunk * n * m even for large trial tables.
    chunk = max(1, 4_000_000 // max(1, idx.size * p.shape[1]))
    for start in range(0, idx.size, chunk):
        block = p[start : start + chunk]  # candidates i
        le = (p[None, :, :] <= block[:, None, :]).all(axis=2)  # [b, n]: row j <= row i everywhere
        lt = (p[None, :, :] < block[:, None, :]).any(axis=2)  # [b, n]: row j < row i somewhere
        keep[start : start + chunk] = ~(le & lt).any(axis=1)
    mask[idx] = keep
    return mask


def check_directions(objectives: Mapping[str, str]) -> None:
    """``objectives`` names at least one metric, each ``"max"`` or ``"min"`` (ValueError otherwise)."""
    if not objectives:
        raise ValueError("objectives must name at least one metric")
    for col, direction in objectives.items():
        if direction not in _DIRECTIONS:
            raise ValueError(f"objective {col!r}: direction must be 'max' or 'min', got {direction!r}")


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


def _check_objectives(df: pd.DataFrame, objectives: Mapping[str, str]) -> None:
    check_directions(objectives)
    for col in objectives:
        if col not in df.columns:
            raise KeyError(f"objective column {col!r} not in the trial table (columns: {list(df.columns)})")


def _minimisation_matrix(df: pd.DataFrame, objectives: Mapping[str, str]) -> np.ndarray:
    """Objective columns as floats, maximised ones negated; non-numeric entries become NaN."""
    cols = []
    for col, direction in objectives.items():
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        cols.append(-values if direction == "max" else values)
    return np.column_stack(cols) if cols else np.empty((len(df), 0))


def pareto_front(df: pd.DataFrame, objectives: Mapping[str, str]) -> pd.DataFrame:
    """Rows of ``df`` on the Pareto front of ``objectives`` (``{column: "max" | "min"}``).

    Rows with a missing objective (errored or unfinished trials) are ignored. The result keeps the
    original index and all columns, sorted best-first on the first objective (descending for "max",
    e.g. highest recall first), ties broken best-first on the following objectives.
    """
    _check_objectives(df, objectives)
    if len(df) == 0:
        return df.iloc[0:0].copy()
    mask = non_dominated(_minimisation_matrix(df, objectives))
    front = df.loc[mask].copy()
    cols = list(objectives)
    return front.sort_values(
        cols, ascending=[objectives[c] == "min" for c in cols], kind="mergesort", na_position="last"
    )


def hypervolume_2d(points: np.ndarray, ref: Sequence[float]) -> float:
    """Exact area dominated by ``points`` (``[n, 2]``, minimisation) and bounded by ``ref``.

    Points that do not strictly beat ``ref`` in both coordinates, and rows with NaN, add nothing.
    Sweep: sort the front by the first coordinate and add one rectangle per point.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    r = np.asarray(ref, dtype=float).reshape(2)
    pts = pts[~np.isnan(pts).any(axis=1)]
    pts = pts[(pts < r).all(axis=1)]
    if pts.size == 0:
        return 0.0
    pts = pts[non_dominated(pts)]
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]  # x ascending, so y descends along the front
    area, prev_y = 0.0, r[1]
    for x, y in pts:
        if y < prev_y:  # duplicates add nothing
            area += (r[0] - x) * (prev_y - y)
            prev_y = y
    return float(area)


def _hypervolume_nd(pts: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume in any dimension by slicing along the last objective (fine for small fronts)."""
    m = pts.shape[1]
    if pts.shape[0] == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    if m == 2:
        return hypervolume_2d(pts, ref)
    pts = pts[np.argsort(pts[:, -1])]
    volume = 0.0
    for i in range(pts.shape[0]):
        upper = pts[i + 1, -1] if i + 1 < pts.shape[0] else ref[-1]
        depth = upper - pts[i, -1]
        if depth > 0:
            # Slab between this point's last coordinate and the next: dominated by the first i+1 points.
            volume += depth * _hypervolume_nd(pts[: i + 1, :-1], ref[:-1])
    return float(volume)


def default_reference(df: pd.DataFrame, objectives: Mapping[str, str]) -> dict[str, float]:
    """Reference point for :func:`hypervolume` from the valid rows of ``df``.

    Rule, per objective, with ``worst`` the worst observed value:

    - ``"max"``: ``0`` when every value is ``>= 0`` (a ranking metric: the model that never hits);
      otherwise ``worst - 0.1 * |worst|`` (``worst - 1`` when that is 0).
    - ``"min"``: ``1.1 * worst`` when ``worst > 0`` (e.g. 1.1x the slowest latency); otherwise
      ``worst + 0.1 * |worst|`` (``worst + 1`` when that is 0).

    The reference depends on the data, so to compare hypervolumes across runs pass one fixed ``ref``.
    """
    _check_objectives(df, objectives)
    ref: dict[str, float] = {}
    for col, direction in objectives.items():
        values = pd.to_numeric(df[col], errors="coerce").dropna().to_numpy(dtype=float)
        if values.size == 0:
            raise ValueError(f"objective {col!r} has no valid values to derive a reference from")
        if direction == "max":
            worst = float(values.min())
            ref[col] = 0.0 if worst >= 0 else worst - (0.1 * abs(worst) or 1.0)
        else:
            worst = float(values.max())
            ref[col] = 1.1 * worst if worst > 0 else worst + (0.1 * abs(worst) or 1.0)
    return ref


def hypervolume(
    df: pd.DataFrame, objectives: Mapping[str, str], ref: Mapping[str, float] | None = None
) -> float:
    """Hypervolume of the rows of ``df`` w.r.t. ``ref`` (``{column: value}``, same directions as objectives).

    ``ref`` defaults to :func:`default_reference`. Rows with a missing objective are ignored. Exact for
    any number of objectives (2-D sweep; slicing above that).
    """
    _check_objectives(df, objectives)
    if ref is None:
        ref = default_reference(df, objectives)
    missing = [c for c in objectives if c not in ref]
    if missing:
        raise KeyError(f"reference point lacks objective(s) {missing}")
    pts = _minimisation_matrix(df, objectives)
    r = np.array([-ref[c] if d == "max" else ref[c] for c, d in objectives.items()], dtype=float)
    pts = pts[~np.isnan(pts).any(axis=1)]
    pts = pts[(pts < r).all(axis=1)]
    if pts.shape[0] == 0:
        return 0.0
    return _hypervolume_nd(pts[non_dominated(pts)], r)
