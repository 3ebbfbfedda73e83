"""One latency figure per architecture per run: which architectures a run times, and timing them as a Ray task.

Every architecture a search can produce (each student ``dim`` of the space, at each serving precision it
searches) and the teacher's are timed **together**, in interleaved rounds (``kdtune.latency.
profile_interleaved``), once before the trials and once after them, while no trial runs. Trials read the
"before" figures; the exported tables, the front and the plot use the "after" figures, and ``run.json``
keeps both. One figure per architecture means two students of the same architecture can never be told
apart by measurement noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdtune import latency
from kdtune.space import SearchSpace


@dataclass
class LatencyPlan:
    """The architectures of one run and how they are timed."""

    space: SearchSpace
    teacher_dim: int
    catalog_size: int
    k: int
    device: str = "cpu"
    threads: int = 1

    def archs(self) -> list[str]:
        """Every student architecture of the space, then the teacher's (``latency.arch_key`` strings)."""
        students = [latency.arch_key(d, p) for d in self.space.dims() for p in self.space.precisions()]
        return list(dict.fromkeys([*students, self.teacher_key()]))

    def teacher_key(self) -> str:
        return latency.arch_key(self.teacher_dim, "fp32")

    def record(self) -> dict:
        """What ``run.json`` says about how latency was measured (the figures are added under
        ``before`` and ``after``)."""
        return {"catalog_size": self.catalog_size, "k": self.k, "device": self.device, "threads": self.threads,
                "batch": 1, "archs": self.archs(), "teacher": self.teacher_key()}

    def measure(self) -> dict:
        """Time every architecture in interleaved rounds, as a Ray task when Ray is up (one CPU, or a GPU
        share for ``cuda``), so it runs on a worker like the trials; in this process otherwise."""
        import ray

        args = (self.archs(), self.catalog_size, self.k, self.device, self.threads)
        if not ray.is_initialized():
            return _profile(*args)
        task = ray.remote(num_cpus=1, num_gpus=0.01 if self.device == "cuda" else 0)(_profile)
        return ray.get(task.remote(*args))


def _profile(archs: list[str], catalog: int, k: int, device: str, threads: int) -> dict:
    profiles = latency.profile_interleaved(archs, catalog, k=k, device=device, threads=threads)
    return {"profiles": profiles, "contradictions": latency.order_contradictions(profiles)}


def figures(record: dict, stage: str) -> dict[str, dict]:
    """The profiles of ``stage`` (``before`` or ``after`` the trials) keyed by arch."""
    return record.get(stage, {}).get("profiles", {})
