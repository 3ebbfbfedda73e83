"""Architecture keys: a student's latency is that of its architecture (its dim and the Faiss index its item
table is served from, :mod:`kdtune.serving.index`), so one key names it everywhere (the run's figures, trial
rows, plain students, the teacher)."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from kdtune.serving.index import check_index

DEFAULT_INDEX = "flat"
"""The index of a student that names none (the plain students, the teacher): exact float32 inner product."""


class Arch(NamedTuple):
    """``dim`` and the spec of the Faiss ``index`` the item table is served from."""

    dim: int
    index: str = DEFAULT_INDEX


def arch_key(dim: int, index: str = DEFAULT_INDEX) -> str:
    """The JSON-friendly key of an architecture, e.g. ``"dim=8,index=flat"`` or ``"dim=8,index=hnsw32_ef64"``."""
    return f"dim={operator.index(dim)},index={check_index(index)}"


def parse_arch(arch: int | str | Sequence[Any]) -> Arch:
    """The :class:`Arch` of a dim (``flat``), a ``(dim, index)`` tuple or an ``arch_key`` string
    (``ValueError`` for a field other than ``dim`` and ``index``)."""
    if isinstance(arch, str):
        fields = dict(part.split("=", 1) for part in arch.split(","))
        unknown = set(fields) - {"dim", "index"}
        if unknown or "dim" not in fields:
            raise ValueError(f"architecture key {arch!r}: expected dim=<int>[,index=<spec>]")
        return Arch(int(fields["dim"]), check_index(fields.get("index", DEFAULT_INDEX)))
    if isinstance(arch, Sequence):
        dim, index = arch
        return Arch(operator.index(dim), check_index(index))
    return Arch(operator.index(arch))


def index_of(config: Mapping[str, Any]) -> str:
    """The serving index of a trial (or table row): ``flat`` when it names none."""
    value = config.get("index")
    return value if isinstance(value, str) else DEFAULT_INDEX  # NaN in a table row of a plain student


def arch_of(config: Mapping[str, Any]) -> str:
    """The latency key of a trial's (or table row's) student architecture."""
    return arch_key(int(config["dim"]), index_of(config))
