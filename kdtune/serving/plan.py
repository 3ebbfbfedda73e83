"""One latency figure per architecture per run: which architectures a run times, and timing them as a Ray task.

Every architecture a search can produce (each student ``dim`` of the space, with each index it searches,
and ``flat``, which serves the plain students) and the teacher's are timed **together**, in interleaved
rounds (``kdtune.serving.interleaved.profile_interleaved``), once before the trials and once after them,
while no trial runs. Trials read the "before" figures; the exported tables, the front and the plot use the
"after" figures, and ``run.json`` keeps both. One figure per architecture means two students of the same
architecture can never be told apart by measurement noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdtune.serving.arch import DEFAULT_INDEX, arch_key, arch_of
from kdtune.serving.catalog import DRAWN_ROWS, trained_tables
from kdtune.serving.interleaved import order_contradictions, profile_interleaved


@dataclass
class LatencyPlan:
    """The architectures of one run and how they are timed (Faiss's threads on the CPU)."""

    dims: list[int]
    indexes: list[str]
    teacher_dim: int
    catalog_size: int
    k: int
    threads: int = 1
    reference: tuple[np.ndarray, np.ndarray] | None = None
    """The teacher's item table and bias: the indexes are built over tables drawn from it (projected to each
    dim, extended to the catalogue size, :func:`kdtune.serving.catalog.trained_tables`)."""

    def archs(self) -> list[str]:
        """Every student architecture of the space, then the teacher's (``arch_key`` strings). Each dim is
        also timed with ``flat``: the plain students are served so."""
        students = [arch_key(d, i) for d in self.dims for i in dict.fromkeys([*self.indexes, DEFAULT_INDEX])]
        return list(dict.fromkeys([*students, self.teacher_key()]))

    def teacher_key(self) -> str:
        return arch_key(self.teacher_dim)

    def record(self) -> dict:
        """What ``run.json`` says about how latency was measured (the figures are added under
        ``before`` and ``after``)."""
        record = {"catalog_size": self.catalog_size, "k": self.k, "device": "cpu", "threads": self.threads,
                  "batch": 1, "archs": self.archs(), "teacher": self.teacher_key()}
        if self.reference is not None:
            record["index_tables"] = f"the teacher's item table projected to each dim; {DRAWN_ROWS}"
        return record

    def measure(self) -> dict:
        """Time every architecture in interleaved rounds, as a Ray task when Ray is up (one CPU), so it runs
        on a worker like the trials; in this process otherwise."""
        import ray

        args = (self.archs(), self.catalog_size, self.k, self.threads, self.reference)
        if not ray.is_initialized():
            return _profile(*args)
        task = ray.remote(num_cpus=1)(_profile)
        return ray.get(task.remote(*args))


def _profile(archs: list[str], catalog: int, k: int, threads: int,
             reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    tables = None if reference is None else trained_tables(*reference)
    profiles = profile_interleaved(archs, catalog, k=k, threads=threads, tables=tables)
    return {"profiles": profiles, "contradictions": order_contradictions(profiles)}


def figures(record: dict, stage: str) -> dict[str, dict]:
    """The profiles of ``stage`` (``before`` or ``after`` the trials) keyed by arch."""
    return record.get(stage, {}).get("profiles", {})


def with_run_latency(df: pd.DataFrame, profiles: dict) -> pd.DataFrame:
    """``latency_ms`` (and its spread, p95, batch-256 figure) of each row's architecture from the run's
    measurement; the figure a trial reported during the search is kept as ``search_latency_ms``."""
    out = df.copy()
    if "latency_ms" in out and "search_latency_ms" not in out:
        out["search_latency_ms"] = out["latency_ms"]
    keys = [arch_of(r) for r in out.to_dict("records")]
    for col in ("latency_ms", "latency_spread_ms", "latency_p95_ms", "latency_b256_ms", "latency_b256_spread_ms",
                "bytes_per_query"):
        out[col] = [profiles.get(key, {}).get(col) for key in keys]
    return out
