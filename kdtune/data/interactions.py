"""The `Interactions` container (user -> items CSR on tensors), the `Split` of it, and their fingerprints.

Everything downstream works on `Interactions`: contiguous user ids ``0..n_users-1`` and item ids
``0..n_items-1`` with each user's items stored as one CSR row (``indptr``/``indices`` int64 tensors),
sorted and unique within a row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from kdtune.errors import DataError


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
        origin: a tag of the code that produced the data (e.g. ``synthetic-v2``), hashed into the
            fingerprint and kept by `subset`, so that caches never mix data from different generators.
    """

    n_users: int
    n_items: int
    indptr: torch.Tensor
    indices: torch.Tensor
    timestamps: torch.Tensor | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    name: str = "interactions"
    origin: str = ""
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
        origin: str = "",
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
            origin=origin,
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
            self.user_ids, self.item_ids, name or self.name, self.origin,
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
        """A content hash (shape + CSR arrays + timestamps + origin) identifying this data for caches."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.n_users}:{self.n_items}:{self.nnz}".encode())
            h.update(self.indptr.numpy().tobytes())
            h.update(self.indices.numpy().tobytes())
            if self.timestamps is not None:
                h.update(self.timestamps.numpy().tobytes())
            if self.origin:  # absent for file data, whose fingerprints stay as they were
                h.update(f"origin:{self.origin}".encode())
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
