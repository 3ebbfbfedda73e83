"""The front as files a person reads: CSV, Markdown, JSON and a plot (pandas/matplotlib only, no Ray)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_front", "write_front"]


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
    *,
    baseline_columns: Sequence[str] | None = None,
    note: str | None = None,
    baselines_title: str = "Baselines",
) -> dict[str, Path]:
    """Write the front as ``pareto.csv``, ``pareto.md`` and ``pareto.json`` into ``out_dir``, each once.

    ``columns`` selects and orders the exported columns (missing ones are skipped; ``None`` = all).
    ``baselines`` (teacher, plain students) go into a second Markdown table (titled ``baselines_title``)
    and the JSON key ``"baselines"``; the CSV holds the front only. The baselines get the front's
    ``columns``, unless ``baseline_columns`` is given: the Markdown table then shows those and the JSON
    keeps every column. ``note`` goes below the front's table and into the JSON key ``"latency"``.
    Returns ``{"csv": path, "md": path, "json": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = _select(front, columns)
    base = shown = None
    if baselines is not None:
        base = _select(baselines, columns if baseline_columns is None else None)
        shown = _select(baselines, columns if baseline_columns is None else baseline_columns)

    paths = {"csv": out / "pareto.csv", "md": out / "pareto.md", "json": out / "pareto.json"}
    table.to_csv(paths["csv"], index=False)

    md = ["# Pareto front", "", _markdown(table), ""]
    if note:
        md += [note, ""]
    if shown is not None and len(shown):
        md += [f"## {baselines_title}", "", _markdown(shown), ""]
    paths["md"].write_text("\n".join(md))

    payload = {
        "front": json.loads(table.to_json(orient="records", double_precision=15)),
        "baselines": json.loads(base.to_json(orient="records", double_precision=15)) if base is not None else [],
    }
    if note:
        payload["latency"] = note
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

    all_x: list[np.ndarray] = []
    if len(trials) and x in trials and y in trials:
        tx, ty = _xy(trials, x, y)
        ax.scatter(tx, ty, s=18, c="0.65", alpha=0.7, label=f"trials ({tx.size})", zorder=1)
        all_x.append(tx)
    if len(front) and x in front and y in front:
        all_x.append(_draw_front(ax, front, x, y, xerr))
    if baselines is not None and len(baselines) and x in baselines and y in baselines:
        all_x.append(_draw_baselines(ax, baselines, x, y, xerr))

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


def _xy(df: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows' ``x`` and ``y`` as floats, rows missing either left out."""
    xs = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float)
    ok = ~(np.isnan(xs) | np.isnan(ys))
    return xs[ok], ys[ok]


def _draw_front(ax, front: pd.DataFrame, x: str, y: str, xerr: str | None) -> np.ndarray:
    """The front as a step line with its points (and ``xerr`` bars); returns its x values."""
    fx, fy = _xy(front, x, y)
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
    return fx


def _draw_baselines(ax, baselines: pd.DataFrame, x: str, y: str, xerr: str | None) -> np.ndarray:
    """Each baseline as a labelled marker (and ``xerr`` bar); returns their x values."""
    markers = ["*", "s", "D", "^", "v", "P", "X", "h"]
    colors = ["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    label_col = _label_column(baselines)
    xs = []
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
        xs.append(bx)
    return np.array(xs, dtype=float)
