"""The front as deployable students: ``python -m kdtune.export results/<run> --serve DIR``.

Each front member with weights is written to ``DIR/<trial_id>/`` (:mod:`kdtune.serving.deploy`: user table
and seen items in safetensors, the item index by ``faiss.write_index``, a JSON manifest) with the index it
was served through in the run (its ``index`` column), and ``DIR/manifest.json``
lists the members with their figures. Seen items are each user's training and validation items.

A deployable student holds the data's items only. A run served at a larger catalogue (``--catalog-size``)
measured its figures over those items plus drawn rows (:mod:`kdtune.serving.catalog`), which are no items
to recommend: the member's manifest says so (``figures_catalog_size``, ``figures_items``), and its index
(the same spec) is built over the data's items.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kdtune.data.interactions import Interactions
from kdtune.model.store import load_model
from kdtune.search.run import Run
from kdtune.serving.arch import index_of
from kdtune.serving.catalog import DRAWN_ROWS
from kdtune.serving.deploy import write_student
from kdtune.serving.served import served_student

FIGURES = ("kind", "dim", "loss", "latency_ms", "bytes")


def write_deployables(run: Run, front: pd.DataFrame, out: str | Path) -> list[Path]:
    """Every front member with weights, as a deployable directory under ``out``; returns the directories."""
    out = Path(out)
    indptr, indices = seen_csr(run.split.train, run.split.valid)
    inter = run.interactions
    user_ids = inter.user_ids if inter.user_ids is not None else np.arange(inter.n_users)
    item_ids = inter.item_ids if inter.item_ids is not None else np.arange(inter.n_items)
    members, written = [], []
    for row in front.to_dict("records"):
        weights = row.get("weights")
        if not isinstance(weights, str) or not (run.dir / weights).is_dir():
            continue
        served = served_student(load_model(run.dir / weights), index_of(row), run.dir / weights, seed=run.data.seed)
        name = str(row["trial_id"])
        figures = {key: _plain(row[key]) for key in (*FIGURES, f"test_recall@{run.data.k}", f"test_ndcg@{run.data.k}")
                   if key in row}
        written.append(write_student(served, indptr, indices, list(user_ids), list(item_ids), out / name,
                                     trial_id=name, k=run.data.k, figures=figures, **measured_at(run)))
        members.append({"dir": name, "index": served.spec.name, **figures})
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps({"run": run.dir.name, "members": members}, indent=1))
    return written


def measured_at(run: Run) -> dict:
    """Where a member's figures were measured: the run's catalogue size and what its items were."""
    n_data = run.interactions.n_items
    items = "the data's" if run.catalog_size <= n_data else f"the data's {n_data:,} and {DRAWN_ROWS}"
    return {"figures_catalog_size": run.catalog_size, "figures_items": items}


def seen_csr(*parts: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices)`` of each user's items over ``parts`` (sorted, unique)."""
    users = np.concatenate([p.row_ids().numpy() for p in parts])
    items = np.concatenate([p.indices.numpy() for p in parts])
    seen = Interactions.from_arrays(users, items, parts[0].n_users, parts[0].n_items)
    return seen.indptr.numpy().astype(np.int64), seen.indices.numpy().astype(np.int64)


def _plain(value):
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value
