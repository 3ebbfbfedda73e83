"""Pareto front, hypervolume and export: dominance table and hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kdtune.report.tables import plot_front, write_front
from kdtune.search.pareto import (
    default_reference,
    hypervolume,
    hypervolume_2d,
    non_dominated,
    pareto_front,
)

OBJ = {"recall@20": "max", "latency_ms": "min"}

# (case, points to minimise, expected front mask)
DOMINANCE_TABLE = [
    ("strict dominance", [[1, 1], [2, 2]], [True, False]),
    ("trade-off, both kept", [[1, 3], [2, 2], [3, 1]], [True, True, True]),
    ("weak dominance: equal x, worse y", [[1, 1], [1, 2]], [True, False]),
    ("weak dominance: equal y, worse x", [[2, 1], [1, 1]], [False, True]),
    ("exact duplicates all kept", [[1, 2], [1, 2], [2, 1]], [True, True, True]),
    ("duplicates both dominated", [[1, 1], [2, 2], [2, 2]], [True, False, False]),
    ("mixed", [[1, 5], [2, 4], [3, 4], [4, 1], [5, 5], [2, 2]], [True, False, False, True, False, True]),
    (
        "3 objectives",
        [[1, 2, 3], [2, 1, 3], [2, 2, 3], [1, 2, 2], [0, 9, 9]],
        [False, True, False, True, True],
    ),
    ("single point", [[3, 4]], [True]),
    ("single objective, ties kept", [[2], [1], [1]], [False, True, True]),
    ("NaN rows never on the front", [[1, np.nan], [2, 2], [np.nan, np.nan]], [False, True, False]),
    ("NaN row does not dominate", [[0, np.nan], [1, 1]], [False, True]),
    ("infinities", [[np.inf, 0], [0, np.inf], [1, 1]], [True, True, True]),
]


@pytest.mark.parametrize("case,points,expected", DOMINANCE_TABLE, ids=[c[0] for c in DOMINANCE_TABLE])
def test_dominance_table(case: str, points: list, expected: list) -> None:
    mask = non_dominated(np.array(points, dtype=float))
    assert mask.dtype == bool
    assert mask.tolist() == expected


def test_empty_and_1d() -> None:
    assert non_dominated(np.empty((0, 2))).shape == (0,)
    assert non_dominated(np.array([3.0, 1.0, 2.0])).tolist() == [False, True, False]


def test_large_random_matches_bruteforce() -> None:
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 6, size=(300, 2)).astype(float)  # many ties and duplicates
    expected = [
        not any((pts[j] <= pts[i]).all() and (pts[j] < pts[i]).any() for j in range(len(pts)))
        for i in range(len(pts))
    ]
    assert non_dominated(pts).tolist() == expected


def _trials() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d", "e", "f"],
            "recall@20": [0.30, 0.25, 0.20, 0.28, np.nan, 0.30],
            "latency_ms": [2.0, 1.0, 0.5, 3.0, 0.1, 2.0],
        }
    )


def test_pareto_front_directions_and_order() -> None:
    front = pareto_front(_trials(), OBJ)
    # d is dominated by a; e errored (NaN) and is ignored even though it is the fastest; a == f tie.
    assert list(front["trial_id"]) == ["a", "f", "b", "c"]
    assert list(front.index) == [0, 5, 1, 2]  # original index kept
    assert front["recall@20"].is_monotonic_decreasing


def test_pareto_front_min_first_and_flip() -> None:
    df = _trials()
    front = pareto_front(df, {"latency_ms": "min", "recall@20": "max"})
    assert list(front["trial_id"]) == ["c", "b", "a", "f"]
    # Maximising latency instead flips which rows are on the front.
    flipped = pareto_front(df, {"recall@20": "max", "latency_ms": "max"})
    assert set(flipped["trial_id"]) == {"a", "d", "f"}


def test_pareto_front_missing_values_and_errors() -> None:
    df = pd.DataFrame({"recall@20": [None, "x", 0.1], "latency_ms": [1.0, 1.0, None]})
    assert pareto_front(df, OBJ).empty
    assert pareto_front(df.iloc[0:0], OBJ).empty
    with pytest.raises(KeyError, match="ndcg@20"):
        pareto_front(df, {"ndcg@20": "max"})
    with pytest.raises(ValueError, match="latency_ms"):
        pareto_front(df, {"latency_ms": "minimize"})


def test_hypervolume_2d_hand_computed() -> None:
    assert hypervolume_2d(np.array([[1, 3], [2, 2], [3, 1]]), (4, 4)) == pytest.approx(6.0)
    # A dominated point, a duplicate and a point outside the reference change nothing.
    pts = np.array([[1, 3], [2, 2], [3, 1], [3, 3], [2, 2], [5, 0], [np.nan, 0]])
    assert hypervolume_2d(pts, (4, 4)) == pytest.approx(6.0)
    assert hypervolume_2d(np.array([[0, 0]]), (2, 3)) == pytest.approx(6.0)
    assert hypervolume_2d(np.empty((0, 2)), (1, 1)) == 0.0


def test_hypervolume_dataframe() -> None:
    df = pd.DataFrame({"recall@20": [0.3, 0.2, 0.1, np.nan], "latency_ms": [3.0, 2.0, 1.0, 0.1]})
    # Negated recall: points (-0.3,3), (-0.2,2), (-0.1,1); ref (0, 4) -> 0.3*1 + 0.2*1 + 0.1*1 = 0.6.
    assert hypervolume(df, OBJ, {"recall@20": 0.0, "latency_ms": 4.0}) == pytest.approx(0.6)
    ref = default_reference(df, OBJ)
    assert ref == {"recall@20": 0.0, "latency_ms": pytest.approx(3.3)}
    assert hypervolume(df, OBJ) == pytest.approx(0.3 * 0.3 + 0.2 * 1 + 0.1 * 1)
    with pytest.raises(KeyError):
        hypervolume(df, OBJ, {"recall@20": 0.0})


def test_hypervolume_3d_unit_cubes() -> None:
    df = pd.DataFrame({"a": [0.0, 1.0], "b": [1.0, 0.0], "c": [0.0, 0.0]})
    obj = {"a": "min", "b": "min", "c": "min"}
    # Two 1x2x2 boxes inside the 2x2x2 reference box overlapping in a 1x1x2 box: 4 + 4 - 2 = 6.
    assert hypervolume(df, obj, {"a": 2.0, "b": 2.0, "c": 2.0}) == pytest.approx(6.0)


def test_default_reference_signs() -> None:
    df = pd.DataFrame({"gain": [-2.0, 1.0], "cost": [-4.0, -1.0]})
    ref = default_reference(df, {"gain": "max", "cost": "min"})
    assert ref == {"gain": pytest.approx(-2.2), "cost": pytest.approx(-0.9)}


def test_write_front_roundtrip(tmp_path) -> None:
    trials = _trials()
    front = pareto_front(trials, OBJ)
    baselines = pd.DataFrame(
        {
            "label": ["teacher (dim 64)", "student bpr (dim 8)"],
            "recall@20": [0.35, 0.15],
            "latency_ms": [4.0, 0.6],
        }
    )
    cols = ["trial_id", "recall@20", "latency_ms", "not_a_column"]
    paths = write_front(front, tmp_path / "out", columns=cols, baselines=baselines)
    assert set(paths) == {"csv", "md", "json"}
    assert all(p.exists() for p in paths.values())

    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == ["trial_id", "recall@20", "latency_ms"]
    assert list(back["trial_id"]) == ["a", "f", "b", "c"]
    np.testing.assert_allclose(back["recall@20"], front["recall@20"])

    data = json.loads(paths["json"].read_text())
    assert [r["trial_id"] for r in data["front"]] == ["a", "f", "b", "c"]
    assert [r["recall@20"] for r in data["baselines"]] == [0.35, 0.15]
    assert "label" not in data["baselines"][0]  # columns selection applies to baselines too

    md = paths["md"].read_text()
    assert "| trial_id" in md and "Baselines" in md
    assert sum(line.startswith("|") for line in md.splitlines()) == 2 + 4 + 2 + 2

    # Without baselines: empty list in JSON, no baselines section.
    paths = write_front(front, tmp_path / "plain")
    assert json.loads(paths["json"].read_text())["baselines"] == []
    assert "Baselines" not in paths["md"].read_text()


def _is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_front_writes_png(tmp_path) -> None:
    trials = _trials()
    front = pareto_front(trials, OBJ)
    baselines = pd.DataFrame(
        {"name": ["teacher", "plain dim 8"], "recall@20": [0.35, 0.15], "latency_ms": [40.0, 0.6]}
    )
    out = plot_front(trials, front, baselines=baselines, path=tmp_path / "plots" / "pareto.png")
    assert out == tmp_path / "plots" / "pareto.png"
    assert _is_png(out)


def test_plot_front_empty_inputs(tmp_path) -> None:
    empty = pd.DataFrame(columns=["recall@20", "latency_ms"])
    assert _is_png(plot_front(empty, empty, path=tmp_path / "empty.png"))


def test_markdown_without_tabulate(tmp_path, monkeypatch) -> None:
    def missing(*args, **kwargs):
        raise ImportError("tabulate")

    monkeypatch.setattr(pd.DataFrame, "to_markdown", missing)
    front = pd.DataFrame({"name": ["a|b"], "recall@20": [0.123456], "latency_ms": [np.nan]})
    md = write_front(front, tmp_path)["md"].read_text()
    assert "| name | recall@20 | latency_ms |" in md
    assert "| a\\|b | 0.1235 |  |" in md
