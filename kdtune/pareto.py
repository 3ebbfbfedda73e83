"""Pareto front, hypervolume and export of a finished search (numpy/pandas/matplotlib only, no Ray).

Every function here works on plain arrays or on the trial table (one row per trial, one column per
reported metric), so it can be tested and reused without Ray or Optuna.

Convention: the array functions (:func:`non_dominated`, :func:`hypervolume_2d`) *minimise every column*.
Objectives to maximise (e.g. ``recall@20``) are negated by the caller, as Optuna does internally; the
DataFrame functions take ``objectives={"recall@20": "max", "latency_ms": "min"}`` and do the negation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "non_dominated",
    "pareto_front",
    "hypervolume_2d",
    "hypervolume",
    "default_reference",
    "write_front",
    "plot_front",
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


def _select(df: pd.DataFrame, columns: Sequence[str] | None) -> pd.DataFrame:
    """``df`` restricted to ``columns`` that exist, in that order (all columns when ``None``)."""
    if columns is None:
        return df.reset_index(drop=True)
    return df[[c for c in columns if c in df.columns]].reset_index(drop=True)


def write_front(
    front: pd.DataFrame,
    out_dir: str | Path,
    columns: Sequence[str] | None = None,
    baselines: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write the front as ``pareto.csv``, ``pareto.md`` and ``pareto.json`` into ``out_dir``.

    ``columns`` selects and orders the exported columns (missing ones are skipped; ``None`` = all).
    ``baselines`` (teacher, plain students) go into a second Markdown table and the JSON key
    ``"baselines"``; the CSV holds the front only. Returns ``{"csv": path, "md": path, "json": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = _select(front, columns)
    base = _select(baselines, columns) if baselines is not None else None

    paths = {"csv": out / "pareto.csv", "md": out / "pareto.md", "json": out / "pareto.json"}
    table.to_csv(paths["csv"], index=False)

    md = ["# Pareto front", "", _markdown(table), ""]
    if base is not None and len(base):
        md += ["## Baselines", "", _markdown(base), ""]
    paths["md"].write_text("\n".join(md))

    payload = {
        "front": json.loads(table.to_json(orient="records", double_precision=15)),
        "baselines": json.loads(base.to_json(orient="records", double_precision=15)) if base is not None else [],
    }
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    return paths


def _markdown(df: pd.DataFrame) -> str:
    """Markdown table via ``DataFrame.to_markdown`` (tabulate); a plain pipe table if tabulate is absent."""
    if len(df) == 0:
        return "_(empty)_"
    try:
        return df.to_markdown(index=False, floatfmt=".4g")
    except ImportError:
        return _pipe_table(df)


def _pipe_table(df: pd.DataFrame) -> str:
    """Minimal GitHub pipe table (floats as ``.4g``, NaN as empty) used when tabulate is not installed."""

    def fmt(v: object) -> str:
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else format(float(v), ".4g")
        return str(v).replace("|", "\\|")

    header = [str(c) for c in df.columns]
    rows = [[fmt(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _label_column(df: pd.DataFrame) -> str | None:
    for col in ("label", "name", "model"):
        if col in df.columns:
            return col
    return None


def plot_front(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    x: str = "latency_ms",
    y: str = "recall@20",
    baselines: pd.DataFrame | None = None,
    path: str | Path = "pareto.png",
    title: str | None = None,
    xerr: str | None = None,
) -> Path:
    """Save a scatter of all trials (grey), the front (step line, lower ``x`` / higher ``y`` is better)
    and labelled baselines (label from a ``label``/``name``/``model`` column, else the index) to ``path``.

    ``xerr`` names a column of ``x``'s spread (e.g. the latency IQR): drawn as horizontal error bars on the
    front and the baselines, so a reader sees which latency differences are larger than the noise.
    The x axis is logarithmic when the positive ``x`` values span more than 10x. Uses the Agg canvas
    directly, so no global pyplot state or display is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    def xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        xs = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=float)
        ys = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float)
        ok = ~(np.isnan(xs) | np.isnan(ys))
        return xs[ok], ys[ok]

    all_x: list[np.ndarray] = []
    if len(trials) and x in trials and y in trials:
        tx, ty = xy(trials)
        ax.scatter(tx, ty, s=18, c="0.65", alpha=0.7, label=f"trials ({tx.size})", zorder=1)
        all_x.append(tx)
    if len(front) and x in front and y in front:
        fx, fy = xy(front)
        order = np.argsort(fx, kind="stable")
        fx, fy = fx[order], fy[order]
        # "post" step: from a front point, moving right (slower) keeps at least its y until the next one.
        ax.step(fx, fy, where="post", color="tab:blue", lw=1.5, zorder=2)
        ax.plot(fx, fy, "o", color="tab:blue", ms=6, label=f"Pareto front ({fx.size})", zorder=3)
        if xerr and xerr in front:
            ex = pd.to_numeric(front[xerr], errors="coerce").to_numpy(dtype=float)
            fx_all, fy_all = (pd.to_numeric(front[c], errors="coerce").to_numpy(dtype=float) for c in (x, y))
            ax.errorbar(fx_all, fy_all, xerr=np.nan_to_num(ex) / 2, fmt="none", ecolor="tab:blue", alpha=0.6,
                        capsize=3, zorder=3)
        all_x.append(fx)
    if baselines is not None and len(baselines) and x in baselines and y in baselines:
        markers = ["*", "s", "D", "^", "v", "P", "X", "h"]
        colors = ["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
        label_col = _label_column(baselines)
        for k, (idx, row) in enumerate(baselines.iterrows()):
            bx, by = pd.to_numeric(pd.Series([row[x], row[y]]), errors="coerce").to_numpy(dtype=float)
            if np.isnan(bx) or np.isnan(by):
                continue
            label = str(row[label_col]) if label_col else str(idx)
            color = colors[k % len(colors)]
            ax.plot(bx, by, markers[k % len(markers)], color=color, ms=10, mec="black", label=label, zorder=4)
            if xerr and xerr in baselines and pd.notna(row[xerr]):
                ax.errorbar([bx], [by], xerr=[float(row[xerr]) / 2], fmt="none", ecolor=color, capsize=3, zorder=4)
            ax.annotate(label, (bx, by), xytext=(6, 4), textcoords="offset points", fontsize=7, color=color)
            all_x.append(np.array([bx]))

    xs = np.concatenate(all_x) if all_x else np.empty(0)
    xs = xs[xs > 0]
    if xs.size and xs.max() / xs.min() > 10:
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} (lower is better)")
    ax.set_ylabel(f"{y} (higher is better)")
    ax.set_title(title or f"{y} vs {x}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
