"""Interaction data: the `Interactions` container, the synthetic generator, loaders and splits.

`load` is the single entry point (synthetic data, MovieLens by name, or a file in MovieLens, CiteULike,
CSV/TSV/Parquet format); `split` makes the seeded, cached train / valid / test split.

Everything downstream works on `Interactions`: contiguous user ids ``0..n_users-1`` and item ids
``0..n_items-1`` with each user's items stored as one CSR row (``indptr``/``indices`` int64 tensors),
sorted and unique within a row.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch


class DataError(ValueError):
    """A data problem the user can fix (missing file, malformed line, empty data...)."""


@dataclass
class Interactions:
    """Implicit feedback as a user -> items CSR matrix on tensors.

    Attributes:
        n_users: number of users (rows), ids are ``0..n_users-1``.
        n_items: number of items (columns), ids are ``0..n_items-1``.
        indptr: int64 tensor ``[n_users + 1]``; user ``u``'s items are ``indices[indptr[u]:indptr[u+1]]``.
        indices: int64 tensor ``[nnz]``, item ids, sorted and unique within each row.
        timestamps: optional float64 tensor ``[nnz]`` aligned with ``indices``.
        user_ids / item_ids: the original ids (numpy arrays) of each contiguous id, for exports.
        name: a short description of where the data came from.
    """

    n_users: int
    n_items: int
    indptr: torch.Tensor
    indices: torch.Tensor
    timestamps: torch.Tensor | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    name: str = "interactions"
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        n_users: int,
        n_items: int,
        timestamps: np.ndarray | None = None,
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
        name: str = "interactions",
    ) -> Interactions:
        """Build from contiguous-id (user, item) pairs; duplicate pairs keep their earliest timestamp."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape:
            raise DataError("users and items must have the same length")
        ts = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        # Sort by (user, item, time) so that the first of each duplicate run is the earliest event.
        order = np.lexsort((ts, items, users)) if ts is not None else np.lexsort((items, users))
        users, items = users[order], items[order]
        keep = np.ones(len(users), dtype=bool)
        keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[keep], items[keep]
        if ts is not None:
            ts = ts[order][keep]
        counts = np.bincount(users, minlength=n_users)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(
            n_users=int(n_users),
            n_items=int(n_items),
            indptr=torch.from_numpy(indptr),
            indices=torch.from_numpy(items.copy()),
            timestamps=None if ts is None else torch.from_numpy(ts.copy()),
            user_ids=user_ids,
            item_ids=item_ids,
            name=name,
        )

    @classmethod
    def from_raw(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray | None = None,
        name: str = "interactions",
    ) -> Interactions:
        """Build from arbitrary (hashable) user/item ids, remapping them to contiguous ids."""
        u_codes, u_uniques = _factorize(users)
        i_codes, i_uniques = _factorize(items)
        if len(u_codes) == 0:
            raise DataError(f"{name}: no interactions")
        return cls.from_arrays(
            u_codes, i_codes, len(u_uniques), len(i_uniques), timestamps, u_uniques, i_uniques, name
        )

    def subset(self, mask: torch.Tensor | np.ndarray, name: str | None = None) -> Interactions:
        """Keep the interactions where ``mask`` (aligned with ``indices``) is true; same id spaces."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        users = self.row_ids()[mask]
        ts = None if self.timestamps is None else self.timestamps[mask].numpy()
        return Interactions.from_arrays(
            users.numpy(), self.indices[mask].numpy(), self.n_users, self.n_items, ts,
            self.user_ids, self.item_ids, name or self.name,
        )

    # ------------------------------------------------------------------ views
    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    def user_counts(self) -> torch.Tensor:
        """Number of items of each user, int64 ``[n_users]``."""
        return self.indptr[1:] - self.indptr[:-1]

    def item_counts(self) -> torch.Tensor:
        """Number of users of each item, int64 ``[n_items]``."""
        return torch.bincount(self.indices, minlength=self.n_items)

    def row_ids(self) -> torch.Tensor:
        """User id of each stored interaction, int64 ``[nnz]`` (the COO row vector)."""
        return torch.repeat_interleave(torch.arange(self.n_users), self.user_counts())

    def items_of(self, user: int) -> torch.Tensor:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def to_sparse(self) -> torch.Tensor:
        """A ``torch.sparse_csr_tensor`` of ones, ``[n_users, n_items]``."""
        return torch.sparse_csr_tensor(
            self.indptr, self.indices, torch.ones(self.nnz), size=(self.n_users, self.n_items)
        )

    def fingerprint(self) -> str:
        """A content hash (shape + CSR arrays + timestamps) identifying this data for caches."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.n_users}:{self.n_items}:{self.nnz}".encode())
            h.update(self.indptr.numpy().tobytes())
            h.update(self.indices.numpy().tobytes())
            if self.timestamps is not None:
                h.update(self.timestamps.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> str:
        density = self.nnz / max(1, self.n_users * self.n_items)
        return (
            f"{self.name}: {self.n_users:,} users, {self.n_items:,} items, "
            f"{self.nnz:,} interactions (density {density:.4%})"
        )


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map values to contiguous codes in order of first sorted appearance."""
    uniques, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.astype(np.int64), uniques


# ---------------------------------------------------------------------- synthetic data
def synthetic(
    n_users: int = 2000,
    n_items: int = 3000,
    dim: int = 16,
    mean_items: float = 30.0,
    popularity_exponent: float = 0.8,
    affinity: float = 5.0,
    seed: int = 0,
) -> Interactions:
    """A seeded implicit dataset with real structure, so that Recall@K means something.

    Users and items get latent factors (a mixture of ``dim`` Gaussian "tastes"); each item also gets a
    popularity drawn from a Zipf law with ``popularity_exponent``. User activity is log-normal around
    ``mean_items``. Each user draws their items without replacement with probability
    ``∝ popularity_i · exp(affinity · cos(u, i))``, so both taste and popularity matter and a
    model that learns the factors beats a popularity ranking.
    """
    if n_users < 2 or n_items < 2:
        raise DataError("synthetic data needs at least 2 users and 2 items")
    rng = np.random.default_rng(seed)
    # Taste clusters make the factors low-rank but not trivially so.
    n_clusters = max(2, dim)
    centers = rng.normal(size=(n_clusters, dim))
    uf = centers[rng.integers(n_clusters, size=n_users)] + 0.5 * rng.normal(size=(n_users, dim))
    itf = centers[rng.integers(n_clusters, size=n_items)] + 0.5 * rng.normal(size=(n_items, dim))
    uf /= np.linalg.norm(uf, axis=1, keepdims=True)
    itf /= np.linalg.norm(itf, axis=1, keepdims=True)
    ranks = rng.permutation(n_items) + 1
    log_pop = -popularity_exponent * np.log(ranks)
    sigma = 0.8
    activity = rng.lognormal(np.log(mean_items) - sigma**2 / 2, sigma, size=n_users)
    activity = np.clip(np.round(activity), 3, n_items // 2).astype(np.int64)

    users_out, items_out = [], []
    block = 512  # users per block: bounded memory for the [block, n_items] logits
    for start in range(0, n_users, block):
        stop = min(n_users, start + block)
        logits = affinity * (uf[start:stop] @ itf.T) + log_pop
        # Gumbel top-k = sampling without replacement proportional to exp(logits).
        gumbel = logits + rng.gumbel(size=logits.shape)
        for row, u in enumerate(range(start, stop)):
            k = activity[u]
            chosen = np.argpartition(-gumbel[row], k - 1)[:k]
            users_out.append(np.full(k, u, dtype=np.int64))
            items_out.append(chosen.astype(np.int64))
    users = np.concatenate(users_out)
    items = np.concatenate(items_out)
    # Drop items nobody picked so that every id is used.
    used, items = np.unique(items, return_inverse=True)
    return Interactions.from_arrays(
        users, items, n_users, len(used), None, np.arange(n_users), used,
        name=f"synthetic(users={n_users}, items={n_items}, seed={seed})",
    )


# ---------------------------------------------------------------------- file loaders
FORMATS = ("movielens", "citeulike", "csv", "tsv", "parquet")
MOVIELENS_FILES = ("u.data", "ratings.dat", "ratings.csv")  # ML-100K, ML-1M/10M, ML-latest/20M/25M


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    return path


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline()
    except OSError as exc:
        raise DataError(f"could not read {path}: {exc.strerror or exc}") from exc


def _keep_rated(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray | None, ts: np.ndarray | None,
    min_rating: float | None, source: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Drop rows rated below ``min_rating``; raise if that leaves nothing."""
    if len(users) == 0:
        raise DataError(f"{source}: no interactions in the file")
    if min_rating is not None and ratings is not None:
        keep = ratings >= min_rating
        if not keep.any():
            raise DataError(f"{source}: no interaction left after min_rating={min_rating} "
                            f"(ratings range {ratings.min():g}..{ratings.max():g})")
        users, items = users[keep], items[keep]
        ts = None if ts is None else ts[keep]
    return users, items, ts


def _movielens_layout(path: Path, first_line: str) -> str:
    """``"100k"`` (tab), ``"1m"`` (``::``) or ``"csv"`` from the file name, else from the first line."""
    by_name = {"u.data": "100k", "ratings.dat": "1m", "ratings.csv": "csv"}
    if path.name in by_name:
        return by_name[path.name]
    if "::" in first_line:
        return "1m"
    if "\t" in first_line:
        return "100k"
    if "," in first_line:
        return "csv"
    raise DataError(f"{path}: not a MovieLens ratings file (expected tab, '::' or comma separated fields)")


def load_movielens(path: str | os.PathLike, min_rating: float | None = 4.0) -> Interactions:
    """Load a MovieLens ratings file: ML-100K ``u.data``, ML-1M ``ratings.dat`` or ML-latest ``ratings.csv``.

    Ratings ``>= min_rating`` become implicit positives (``None`` keeps every rating); timestamps are kept.
    """
    path = _check_file(path)
    first = _first_line(path)
    layout = _movielens_layout(path, first)
    # ML-1M's "::" separator would need pandas' slow python engine: turn it into tabs first.
    source = io.BytesIO(path.read_bytes().replace(b"::", b"\t")) if layout == "1m" else path
    header = 0 if layout == "csv" and not first.split(",")[0].strip().lstrip("-").isdigit() else None
    try:
        df = pd.read_csv(source, sep="," if layout == "csv" else "\t", header=header, usecols=[0, 1, 2, 3])
        cols = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: malformed MovieLens file ({str(exc).splitlines()[0]})") from exc
    if np.isnan(cols).any():
        bad = int(np.isnan(cols).any(axis=1).argmax()) + 1 + (header is not None)
        raise DataError(f"{path}:{bad}: missing or non-numeric field")
    users, items, ts = _keep_rated(cols[:, 0].astype(np.int64), cols[:, 1].astype(np.int64), cols[:, 2],
                                   cols[:, 3], min_rating, str(path))
    return Interactions.from_raw(users, items, ts, name=_short_name(path))


def load_citeulike(path: str | os.PathLike) -> Interactions:
    """Load a CiteULike ``users.dat``: line ``u`` (0-based) is a count followed by that many item ids.

    Users whose count is 0 (or whose line is blank) have no interactions and so vanish in the id
    remapping; item ids are the 0-based ids of the file, kept in ``item_ids``.
    """
    path = _check_file(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"could not read {path}: {exc.strerror or exc}") from exc
    users_out, items_out = [], []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = np.array(fields, dtype=np.int64)
        except ValueError:
            bad = next((f for f in fields if not f.lstrip("-").isdigit()), line.strip())
            raise DataError(f"{path}:{lineno}: expected integers, found {bad!r}") from None
        count, ids = int(values[0]), values[1:]
        if count != len(ids):
            raise DataError(f"{path}:{lineno}: count says {count} items but {len(ids)} item ids follow")
        if (ids < 0).any():
            raise DataError(f"{path}:{lineno}: negative item id {int(ids.min())}")
        users_out.append(np.full(count, lineno - 1, dtype=np.int64))
        items_out.append(ids)
    if not items_out or sum(len(i) for i in items_out) == 0:
        raise DataError(f"{path}: no interactions in the file")
    return Interactions.from_raw(np.concatenate(users_out), np.concatenate(items_out),
                                 name=_short_name(path))


def load_table(
    path: str | os.PathLike,
    fmt: str,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    min_rating: float | None = None,
) -> Interactions:
    """Load a table (``fmt`` in csv, tsv, parquet; csv/tsv with a header row) of user/item interactions.

    Rows with a missing user or item are dropped. Timestamps may be numbers or dates (converted to
    seconds since the epoch). ``min_rating`` needs ``rating_col``.
    """
    path = _check_file(path)
    if fmt not in ("csv", "tsv", "parquet"):
        raise DataError(f"unknown table format {fmt!r} (expected csv, tsv or parquet)")
    if min_rating is not None and rating_col is None:
        raise DataError("min_rating needs rating_col (the column holding the ratings)")
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep="," if fmt == "csv" else "\t")
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise DataError(f"could not read {path} as {fmt}: {reason}") from exc
    for col in (user_col, item_col, rating_col, timestamp_col):
        if col is not None and col not in df.columns:
            raise DataError(f"{path}: no column {col!r} (columns found: {', '.join(map(str, df.columns))})")
    df = df.dropna(subset=[user_col, item_col])
    for col in (user_col, item_col):  # integer ids read as floats because of missing values
        if pd.api.types.is_float_dtype(df[col]) and (df[col] % 1 == 0).all():
            df[col] = df[col].astype(np.int64)
    ratings = ts = None
    if rating_col is not None:
        ratings = pd.to_numeric(df[rating_col], errors="coerce").to_numpy(dtype=np.float64)
    if timestamp_col is not None:
        ts = _to_seconds(df[timestamp_col], path, timestamp_col)
    users, items, ts = _keep_rated(df[user_col].to_numpy(), df[item_col].to_numpy(), ratings, ts,
                                   min_rating, str(path))
    return Interactions.from_raw(users, items, ts, name=_short_name(path))


def _to_seconds(col: pd.Series, path: Path, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64)
    try:
        stamps = pd.to_datetime(col, utc=True)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: column {name!r} holds neither numbers nor dates") from exc
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)


def _table_columns(path: Path, fmt: str) -> list[str]:
    """Column names of a table without reading its rows (empty when unreadable: load_table reports it)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, sep="," if fmt == "csv" else "\t", nrows=0).columns)
    except Exception:
        return []


def _short_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def kcore_filter(data: Interactions, k: int) -> Interactions:
    """Iteratively drop users and items with fewer than ``k`` interactions, then remap the ids.

    ``user_ids``/``item_ids`` keep the original ids of the survivors; ``k <= 0`` returns ``data`` as is.
    """
    if k <= 0:
        return data
    users, items = data.row_ids().numpy(), data.indices.numpy()
    keep = np.ones(len(users), dtype=bool)
    while True:
        u_cnt = np.bincount(users[keep], minlength=data.n_users)
        i_cnt = np.bincount(items[keep], minlength=data.n_items)
        new_keep = keep & (u_cnt[users] >= k) & (i_cnt[items] >= k)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    if not keep.any():
        raise DataError(f"{data.name}: no interaction left after the {k}-core filter")
    u_used, u_codes = np.unique(users[keep], return_inverse=True)
    i_used, i_codes = np.unique(items[keep], return_inverse=True)
    ts = None if data.timestamps is None else data.timestamps.numpy()[keep]
    uid = u_used if data.user_ids is None else data.user_ids[u_used]
    iid = i_used if data.item_ids is None else data.item_ids[i_used]
    return Interactions.from_arrays(u_codes, i_codes, len(u_used), len(i_used), ts, uid, iid,
                                    name=f"{data.name} ({k}-core)")


# ---------------------------------------------------------------------- splits
@dataclass
class Split:
    """Disjoint train / valid / test interactions over the same user and item id spaces."""

    train: Interactions
    valid: Interactions
    test: Interactions
    method: str
    seed: int

    def fingerprint(self) -> str:
        """A content hash of the three parts, for caches keyed on the split (e.g. the teacher)."""
        parts = f"{self.train.fingerprint()}:{self.valid.fingerprint()}:{self.test.fingerprint()}"
        return hashlib.sha256(f"{parts}:{self.method}:{self.seed}".encode()).hexdigest()[:16]

    def describe(self) -> str:
        return (f"{self.method} split (seed {self.seed}): train {self.train.nnz:,}, "
                f"valid {self.valid.nnz:,}, test {self.test.nnz:,} interactions")


SPLIT_METHODS = ("random", "temporal")


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
            _atomic_save({"assign": assign, "nnz": data.nnz, "method": method}, cache_file)
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


# ---------------------------------------------------------------------- MovieLens download
MOVIELENS_BASE_URL = "https://files.grouplens.org/datasets/movielens"
DEFAULT_CACHE_DIR = "~/.cache/kdtune"
# SHA-256 of the official zips (as published in tensorflow_datasets' url_checksums/movielens.txt).
MOVIELENS_SHA256: dict[str, str] = {
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    "ml-latest-small": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    "ml-20m": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
    "ml-25m": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
}
_MOVIELENS_NAME = re.compile(r"^ml-[a-z0-9-]+$")


def fetch_movielens(
    name: str,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``{base_url}/{name}.zip``, verify its SHA-256, extract and cache the ratings file.

    Returns the cached ratings file (``<cache_dir>/movielens/<name>/<u.data|ratings.dat|ratings.csv>``);
    once it is there no network is used. Names in `MOVIELENS_SHA256` are checked against that table;
    for any other name the checksum seen on the first download is recorded in
    ``<cache_dir>/movielens/<name>.zip.sha256`` and later downloads must match it.
    """
    if not _MOVIELENS_NAME.match(name):
        raise DataError(f"not a MovieLens dataset name: {name!r} (e.g. ml-100k, ml-1m, ml-latest-small)")
    root = Path(cache_dir).expanduser() / "movielens"
    target_dir = root / name
    for fname in MOVIELENS_FILES:
        if (target_dir / fname).is_file():
            return target_dir / fname
    url = f"{(base_url or MOVIELENS_BASE_URL).rstrip('/')}/{name}.zip"
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f"{name}.", suffix=".zip.part")
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"could not download {url}: {reason}; pass a local file instead") from exc
        seen = digest.hexdigest()
        record = root / f"{name}.zip.sha256"
        expected = MOVIELENS_SHA256.get(name)
        if expected is None and record.is_file():
            expected = record.read_text().strip()
        if expected is not None and seen != expected:
            raise DataError(f"checksum mismatch for {url}: expected sha256 {expected}, got {seen}; "
                            "the download is corrupt or the file changed upstream")
        if expected is None:
            record.write_text(seen + "\n")
        return _extract_ratings(Path(tmp), target_dir, url)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _extract_ratings(archive: Path, target_dir: Path, url: str) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist() if Path(m).name in MOVIELENS_FILES}
            if not members:
                raise DataError(f"{url}: the archive holds no {'/'.join(MOVIELENS_FILES)} ratings file")
            fname = next(f for f in MOVIELENS_FILES if f in members)
            data = zf.read(members[fname])
    except zipfile.BadZipFile as exc:
        raise DataError(f"{url}: not a valid zip archive ({exc})") from exc
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / fname
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=fname, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------- single entry point
_SYNTHETIC_KEYS = {
    "users": "n_users", "n_users": "n_users", "items": "n_items", "n_items": "n_items", "dim": "dim",
    "mean_items": "mean_items", "popularity_exponent": "popularity_exponent", "affinity": "affinity",
    "seed": "seed",
}
_INT_KEYS = {"n_users", "n_items", "dim", "seed"}


def _parse_synthetic(spec: str, seed: int) -> dict:
    kwargs: dict = {"seed": seed}
    _, _, rest = spec.partition(":")
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        arg = _SYNTHETIC_KEYS.get(key.strip())
        if not sep or arg is None:
            raise DataError(f"bad synthetic option {part!r} (expected key=value with key in "
                            f"{', '.join(sorted(_SYNTHETIC_KEYS))})")
        try:
            kwargs[arg] = int(value) if arg in _INT_KEYS else float(value)
        except ValueError:
            raise DataError(f"bad value for synthetic option {key}: {value!r}") from None
    return kwargs


def infer_format(path: str | os.PathLike) -> str:
    """The format of a data file from its name: users.dat, u.data/ratings.dat/ratings.csv, or extension."""
    path = Path(path)
    if path.name == "users.dat":
        return "citeulike"
    if path.name in MOVIELENS_FILES:
        return "movielens"
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv", ".parquet"):
        return ext[1:]
    raise DataError(f"cannot tell the format of {path}; pass fmt= one of {', '.join(FORMATS)}")


def load(
    spec: str,
    fmt: str | None = None,
    min_rating: float | None = None,
    kcore: int = 0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Interactions:
    """Load interactions from ``spec``: ``"synthetic[:key=value,...]"``, a MovieLens name, or a path.

    A MovieLens name (``ml-100k``, ``ml-1m``, ``ml-latest-small``...) is fetched into ``cache_dir``.
    A directory is searched for ``users.dat`` or a MovieLens ratings file. Tables (csv/tsv/parquet) are
    read from columns ``user`` and ``item``, plus ``rating`` when ``min_rating`` is given and
    ``timestamp`` when present (other layouts: call `load_table`). ``min_rating`` defaults to 4.0 for
    MovieLens and to no filter elsewhere; ``kcore > 0`` then applies `kcore_filter`.
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec == "synthetic" or spec.startswith("synthetic:"):
        if min_rating is not None:
            raise DataError("min_rating does not apply to synthetic data (it has no ratings)")
        data = synthetic(**_parse_synthetic(spec, seed))
    else:
        if _MOVIELENS_NAME.match(spec) and not path.exists():
            path = fetch_movielens(spec, cache_dir or DEFAULT_CACHE_DIR)
            fmt = fmt or "movielens"
        elif path.is_dir():
            found = [path / f for f in ("users.dat", *MOVIELENS_FILES) if (path / f).is_file()]
            if not found:
                raise DataError(f"{path} is a directory without users.dat or a MovieLens ratings file")
            path = found[0]
        elif not path.exists():
            raise DataError(f"no such file or dataset: {spec!r} (expected a path, 'synthetic' or a "
                            "MovieLens name like ml-1m)")
        fmt = fmt or infer_format(path)
        if fmt == "movielens":
            data = load_movielens(path, 4.0 if min_rating is None else min_rating)
        elif fmt == "citeulike":
            if min_rating is not None:
                raise DataError("min_rating does not apply to CiteULike data (it has no ratings)")
            data = load_citeulike(path)
        elif fmt in ("csv", "tsv", "parquet"):
            present = _table_columns(path, fmt)
            data = load_table(path, fmt, min_rating=min_rating,
                              rating_col="rating" if min_rating is not None else None,
                              timestamp_col="timestamp" if "timestamp" in present else None)
        else:
            raise DataError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return kcore_filter(data, kcore)
