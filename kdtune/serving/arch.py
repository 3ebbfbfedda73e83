"""Architecture keys: a student's latency is that of its architecture (dim and how it is served: a serving
precision of kdtune's own kernels, or a Faiss index and its settings), so one key names it everywhere (the
run's figures, trial rows, plain students, the teacher)."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from kdtune.model.kernels import check_precision
from kdtune.serving.index import check_index


class Arch(NamedTuple):
    """``dim``, the serving ``precision`` of kdtune's kernels, and the Faiss ``index`` spec (None: no index)."""

    dim: int
    precision: str = "fp32"
    index: str | None = None


def arch_key(dim: int, precision: str = "fp32", index: str | None = None) -> str:
    """The JSON-friendly key of an architecture, e.g. ``"dim=8,precision=int8"`` or ``"dim=8,index=hnsw32_ef64"``
    (a student served through an index is trained and held in float32: the index decides its storage)."""
    if index is not None:
        return f"dim={operator.index(dim)},index={check_index(index)}"
    return f"dim={operator.index(dim)},precision={check_precision(precision)}"


def parse_arch(arch: int | str | Sequence[Any]) -> Arch:
    """The :class:`Arch` of a dim (``fp32``), a ``(dim, precision[, index])`` tuple or an ``arch_key`` string."""
    if isinstance(arch, str):
        fields = dict(part.split("=", 1) for part in arch.split(","))
        index = fields.get("index")
        return Arch(int(fields["dim"]), check_precision(fields.get("precision", "fp32")),
                    None if index is None else check_index(index))
    if isinstance(arch, Sequence):
        dim, precision, *index = arch
        index = index[0] if index else None
        return Arch(operator.index(dim), check_precision(precision), None if index is None else check_index(index))
    return Arch(operator.index(arch))


def precision_of(config: Mapping[str, Any]) -> str:
    """The serving precision of a trial (or table row): ``fp32`` when it has none."""
    value = config.get("precision")
    return value if isinstance(value, str) else "fp32"  # NaN in a table row of a plain student


def index_of(config: Mapping[str, Any]) -> str | None:
    """The serving index of a trial (or table row), or None when it is served by kdtune's own kernels."""
    value = config.get("index")
    return value if isinstance(value, str) else None


def arch_of(config: Mapping[str, Any]) -> str:
    """The latency key of a trial's (or table row's) student architecture."""
    return arch_key(int(config["dim"]), precision_of(config), index_of(config))
