"""A student as it is served: its user table and its item table in a Faiss index (:mod:`kdtune.serving.index`).

:class:`ServedStudent` is what a trial's metrics are measured through, what the export re-scores on test,
and what :mod:`kdtune.serve` loads from a deployable directory: one search path (``search_unseen``) for all.

A run measured at a catalogue larger than the data's (``--catalog-size``) serves each student over its own
item table extended with drawn rows (:func:`kdtune.serving.catalog.with_drawn_rows`): item ids past the
data's are drawn rows, which a user's recommendations may hold but which are never relevant, so the recall
a trial reports is what a user of a catalogue of that size would see through its index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdtune.data.interactions import Interactions
from kdtune.serving.catalog import with_drawn_rows
from kdtune.serving.index import IndexSpec, augment_users, build_index, describe_index, search_unseen


class ServedStudent:
    """User vectors ``[n_users, dim]`` (float32) and an item index of ``spec`` over the same dim."""

    def __init__(self, users: np.ndarray, index: Any, spec: str):
        self.users = np.ascontiguousarray(users, dtype=np.float32)
        self.index = index
        self.spec = IndexSpec.parse(spec)
        if int(index.d) < self.users.shape[1] + 1:
            raise ValueError(f"the index has {int(index.d)} columns, too few for user vectors of dim {self.users.shape[1]}")

    @classmethod
    def from_model(cls, model: Any, spec: str, seed: int = 0, catalog_size: int | None = None) -> ServedStudent:
        """The served form of an ``MF``: its item table, extended to ``catalog_size`` items with drawn rows
        when that is larger (``None``: its own items only), indexed by ``spec``."""
        users, items, bias = _float_tables(model)
        items, bias = with_drawn_rows(items, bias, catalog_size, seed)
        return cls(users, build_index(spec, items, bias, seed=seed), spec)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    def n_bytes(self) -> int:
        """The index's serialized size (the item side a server holds)."""
        return describe_index(self.index)["bytes"]

    def recommend(self, users: Sequence[int] | np.ndarray, k: int, seen: Sequence[np.ndarray] | None = None
                  ) -> np.ndarray:
        """``[B, k]`` internal item ids of each user's top ``k``, ``seen[b]`` excluded (``-1`` pads a short list)."""
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if users.size and (users.min() < 0 or users.max() >= len(self.users)):
            raise ValueError(f"user ids must be in [0, {len(self.users)}), got {users.min()}..{users.max()}")
        return search_unseen(self.index, self.users[users], k, seen)

    def scorer(self, seen: Interactions | Sequence[Interactions], k: int) -> IndexScorer | FlatScorer:
        """An object ``kdtune.train.evaluate.evaluate`` scores: its top ``k`` through this index.

        A ``flat`` index over exactly the data's items is scored by :class:`FlatScorer` (the inner products
        of its own stored vectors, ranked by ``evaluate``: the same top ``k`` as its search, several times
        faster over thousands of users); any other index, or drawn rows past the data's items, by
        :class:`IndexScorer` (its search)."""
        seen = [seen] if isinstance(seen, Interactions) else list(seen)
        if self.spec.kind == "flat" and self.n_items == seen[0].n_items:
            return FlatScorer(self)
        return IndexScorer(self, seen, k)


SERVED_INDEX_FILE = "index.faiss"


def save_served_index(served: ServedStudent, directory: Path) -> Path:
    """Keep a student's built index next to its weights (``index.faiss``), so it is built once per trial."""
    import faiss

    path = Path(directory) / SERVED_INDEX_FILE
    faiss.write_index(served.index, str(path))
    (Path(directory) / (SERVED_INDEX_FILE + ".spec")).write_text(served.spec.name)
    return path


def served_student(model: Any, spec: str, directory: Path | None = None, seed: int = 0,
                   catalog_size: int | None = None) -> ServedStudent:
    """The student served through ``spec`` at ``catalog_size`` (as :meth:`ServedStudent.from_model`): the
    index kept in ``directory`` when it was built with that spec over that many items, else built now."""
    import faiss

    n_items = max(int(model.item_emb.weight.shape[0]), catalog_size or 0)
    path = None if directory is None else Path(directory) / SERVED_INDEX_FILE
    tag = None if path is None else path.with_name(SERVED_INDEX_FILE + ".spec")
    if path is not None and path.is_file() and tag.is_file() and tag.read_text() == IndexSpec.parse(spec).name:
        index = faiss.read_index(str(path))
        if int(index.ntotal) == n_items:
            return ServedStudent(_float_tables(model)[0], index, spec)
    return ServedStudent.from_model(model, spec, seed=seed, catalog_size=catalog_size)


def _float_tables(model: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User table, item table and item biases of an ``MF``, float32 numpy."""
    users, items, bias = model.user_emb.weight, model.item_emb.weight, model.item_bias.weight.reshape(-1)
    return tuple(t.detach().float().cpu().numpy() for t in (users, items, bias))


class FlatScorer:
    """``full_scores`` of a :class:`ServedStudent` whose index is ``flat`` (``IndexFlatIP``) over the data's items:
    the inner products of its queries ``[p_u, 1]`` with the ``[q_i, b_i]`` the index stores (read back from
    it), every item. ``evaluate`` masks the seen items and takes the top ``k``: exactly the ranking the index's
    own exhaustive inner-product search returns (:func:`~kdtune.serving.index.search_unseen`), without its
    per-query heap of ``k +`` seen items, which costs several times the matrix product on one core."""

    def __init__(self, served: ServedStudent):
        index = served.index
        self.items = torch.from_numpy(index.reconstruct_n(0, int(index.ntotal)))
        self.queries = torch.from_numpy(augment_users(served.users, int(index.d)))

    def full_scores(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.matmul(self.queries[users.cpu()], self.items.T, out=out)


class IndexScorer:
    """``full_scores`` of a :class:`ServedStudent` for ``evaluate``: the ``k`` items the index returns for each
    user (seen ones dropped by :func:`search_unseen`) get descending scores ``k, k-1, ...``, every other item
    ``-inf`` (never a hit in ``evaluate``), so the evaluation's top ``k`` is the index's, in its order. Scores
    cover the data's items (those of ``seen``): a drawn row past them that the index returns takes its place
    in the top ``k`` and is never a hit."""

    def __init__(self, served: ServedStudent, seen: list[Interactions], k: int):
        self.served, self.seen, self.k = served, seen, k

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        ids = users.cpu().numpy()
        seen = [np.unique(np.concatenate([s.indices[s.indptr[u]: s.indptr[u + 1]].numpy() for s in self.seen]))
                for u in ids]
        top = self.served.recommend(ids, self.k, seen)
        n_items = self.seen[0].n_items
        scores = torch.full((len(ids), n_items), -float("inf"))
        rank_score = torch.arange(self.k, 0, -1, dtype=torch.float32).expand(len(ids), -1)
        found = torch.from_numpy((top >= 0) & (top < n_items))
        rows = torch.arange(len(ids))[:, None].expand(-1, self.k)
        scores[rows[found], torch.from_numpy(top)[found]] = rank_score[found]
        return scores
