"""Random and temporal train / valid / test splits, cached on disk keyed on the data's fingerprint."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kdtune.config import SPLIT_METHODS
from kdtune.data.interactions import Interactions, Split
from kdtune.errors import DataError


def split(
    data: Interactions,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    method: str = "random",
    cache_dir: str | os.PathLike | None = None,
) -> Split:
    """Split each user's interactions into train / valid / test.

    ``random``: a user with ``n`` items gets ``floor(n * r_test)`` test and ``floor(n * r_valid)`` valid
    items chosen at random (seeded); a user with ``n >= 3`` gets at least one of each (for a non-zero
    ratio) and always keeps one train item; users with fewer than 3 items are train-only.
    ``temporal``: leave-one-out by timestamp (ratios ignored): each user with ``n >= 3`` items has their
    last item in test and the second last in valid; equal timestamps are ordered by item id (higher id
    = later); users with fewer than 3 items are train-only. Needs timestamps.
    With ``cache_dir`` the assignment is stored as ``split-<key>.pt`` keyed on the data's fingerprint,
    ratios, seed and method, and loaded from there on later calls.
    """
    if method not in SPLIT_METHODS:
        raise DataError(f"unknown split method {method!r} (expected one of {', '.join(SPLIT_METHODS)})")
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise DataError(f"ratios must be (train, valid, test), non-negative, train > 0, summing to 1; "
                        f"got {ratios}")
    if method == "temporal" and data.timestamps is None:
        raise DataError(f"{data.name}: a temporal split needs timestamps and this data has none")
    cache_file = None
    assign = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{data.fingerprint()}|{ratios}|{seed}|{method}".encode()).hexdigest()[:16]
        cache_file = Path(cache_dir).expanduser() / f"split-{key}.pt"
        assign = _load_split(cache_file, data.nnz)
    if assign is None:
        assign = _random_assign(data, ratios, seed) if method == "random" else _temporal_assign(data)
        if cache_file is not None:
            try:
                _atomic_save({"assign": assign, "nnz": data.nnz, "method": method}, cache_file)
            except OSError as exc:  # the user's --cache-dir: a file, read-only, full...
                raise DataError(f"could not write the split cache {cache_file}: {exc.strerror or exc} "
                                "(choose another cache folder)") from exc
    return Split(
        train=data.subset(assign == 0, name=f"{data.name} [train]"),
        valid=data.subset(assign == 1, name=f"{data.name} [valid]"),
        test=data.subset(assign == 2, name=f"{data.name} [test]"),
        method=method,
        seed=seed,
    )


def _rank_in_row(data: Interactions, keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """Position of each interaction within its user's row when the row is sorted by ``keys``."""
    users = data.row_ids().numpy()
    order = np.lexsort((*keys, users))  # np.lexsort sorts by the last key first: user, then keys
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - data.indptr.numpy()[users[order]]
    return rank


def _held_out_counts(n: np.ndarray, r_valid: float, r_test: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (n_valid, n_test) under the small-user rule documented in `split`."""
    eps = 1e-9  # so that e.g. 30 * 0.1 = 2.9999... still floors to 3
    n_test = np.floor(n * r_test + eps).astype(np.int64)
    n_valid = np.floor(n * r_valid + eps).astype(np.int64)
    big = n >= 3
    if r_test > 0:
        n_test = np.where(big, np.maximum(n_test, 1), 0)
    if r_valid > 0:
        n_valid = np.where(big, np.maximum(n_valid, 1), 0)
    # One train item always stays; trim test first so that valid keeps its minimum.
    n_test = np.minimum(n_test, np.maximum(n - 1 - (n_valid > 0), 0))
    n_valid = np.minimum(n_valid, np.maximum(n - 1 - n_test, 0))
    return n_valid, n_test


def _random_assign(data: Interactions, ratios: tuple[float, ...], seed: int) -> torch.Tensor:
    """0 / 1 / 2 (train / valid / test) per interaction: a random rank in the row, cut by counts."""
    rng = np.random.default_rng(seed)
    rank = _rank_in_row(data, (rng.random(data.nnz),))
    return _cut(data, rank, *_held_out_counts(data.user_counts().numpy(), ratios[1], ratios[2]))


def _temporal_assign(data: Interactions) -> torch.Tensor:
    n = data.user_counts().numpy()
    # Rank by (-time, -item): rank 0 is the latest interaction, ties go to the higher item id.
    rank = _rank_in_row(data, (-data.indices.numpy(), -data.timestamps.numpy()))
    big = (n >= 3).astype(np.int64)
    return _cut(data, rank, big, big)


def _cut(data: Interactions, rank: np.ndarray, n_valid: np.ndarray, n_test: np.ndarray) -> torch.Tensor:
    users = data.row_ids().numpy()
    t, v = n_test[users], n_valid[users]
    assign = np.zeros(data.nnz, dtype=np.int8)
    assign[rank < t + v] = 1
    assign[rank < t] = 2
    return torch.from_numpy(assign)


def _load_split(path: Path, nnz: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, weights_only=True)
    except Exception:  # a corrupt or foreign cache file is recomputed, not fatal
        return None
    assign = obj.get("assign") if isinstance(obj, dict) else None
    if not isinstance(assign, torch.Tensor) or assign.numel() != nnz:
        return None
    return assign


def _atomic_save(obj: dict, path: Path) -> None:
    """Write via a temporary file + rename so that concurrent readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
