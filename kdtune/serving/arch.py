"""Architecture keys: a student's latency is that of its architecture (dim and serving precision), so one
key names it everywhere (the run's figures, trial rows, plain students, the teacher)."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

from kdtune.model.kernels import check_precision


def arch_key(dim: int, precision: str = "fp32") -> str:
    """The JSON-friendly key of an architecture, e.g. ``"dim=8,precision=int8"``."""
    return f"dim={operator.index(dim)},precision={check_precision(precision)}"


def parse_arch(arch: int | str | Sequence[Any]) -> tuple[int, str]:
    """``(dim, precision)`` from a dim (``fp32``), a ``(dim, precision)`` pair or an ``arch_key`` string."""
    if isinstance(arch, str):
        fields = dict(part.split("=", 1) for part in arch.split(","))
        return int(fields["dim"]), check_precision(fields.get("precision", "fp32"))
    if isinstance(arch, Sequence):
        dim, precision = arch
        return operator.index(dim), check_precision(precision)
    return operator.index(arch), "fp32"


def precision_of(config: Mapping[str, Any]) -> str:
    """The serving precision of a trial (or table row): ``fp32`` when it has none."""
    value = config.get("precision")
    return value if isinstance(value, str) else "fp32"  # NaN in a table row of a plain student


def arch_of(config: Mapping[str, Any]) -> str:
    """The latency key of a trial's (or table row's) student architecture."""
    return arch_key(int(config["dim"]), precision_of(config))
