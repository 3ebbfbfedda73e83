"""Vectorised BPR triplets: tensor draws for many batches at once, negatives never a training positive of their user."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from kdtune.config import MAX_BITMAP_CELLS
from kdtune.data.interactions import Interactions

# Triplets drawn at once by BPRSampler.epoch (a few MB of int64).
CHUNK_TRIPLETS = 262_144


class PositiveSet:
    """Membership test "is item i a training positive of user u?" for whole tensors at once."""

    def __init__(self, train: Interactions, device: torch.device | str = "cpu"):
        self.n_items = train.n_items
        keys = (train.row_ids() * train.n_items + train.indices).to(device)
        cells = train.n_users * train.n_items
        if cells <= MAX_BITMAP_CELLS:
            self.bitmap: torch.Tensor | None = torch.zeros(cells, dtype=torch.bool, device=device)
            self.bitmap[keys] = True
            self.keys = None
        else:
            self.bitmap = None
            self.keys = torch.sort(keys).values

    def rows(self, users: torch.Tensor) -> torch.Tensor:
        """Bool ``[U, n_items]``: which items each of ``users`` trained on."""
        if self.bitmap is not None:
            return self.bitmap.view(-1, self.n_items).index_select(0, users)
        every = torch.arange(self.n_items, device=users.device)
        return self.contains(users.unsqueeze(1), every.unsqueeze(0))

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.n_items + items
        if self.bitmap is not None:
            return self.bitmap[keys]
        pos = torch.searchsorted(self.keys, keys).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == keys


class BPRSampler:
    """Yields ``(users, pos, neg)`` int64 batches; one epoch visits every training interaction once.

    Positives are a seeded permutation of the training interactions (so active users weigh as much as
    their data says). Negatives are drawn uniformly over the catalogue; draws that hit a training
    positive of their user are redrawn, all colliding draws of the batch at once. A user who has seen
    (nearly) every item could make that loop long, so after ``max_redraws`` rounds the triplets still
    colliding are dropped from the batch rather than kept: no false negative ever reaches the loss.
    """

    def __init__(
        self,
        train: Interactions,
        batch_size: int = 4096,
        generator: torch.Generator | None = None,
        max_redraws: int = 30,
        device: torch.device | str = "cpu",
    ):
        if train.nnz == 0:
            raise ValueError("no training interactions to sample from")
        self.train = train
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.gen = generator if generator is not None else torch.Generator(self.device).manual_seed(0)
        self.max_redraws = max_redraws
        self.users_all = train.row_ids().to(self.device)
        self.items_all = train.indices.to(self.device)
        self.positives = PositiveSet(train, self.device)

    def __len__(self) -> int:
        return -(-self.train.nnz // self.batch_size)

    def negatives(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform negatives for ``users``; returns ``(neg, keep)`` where ``keep`` marks valid draws."""
        neg = torch.randint(self.train.n_items, users.shape, generator=self.gen, device=self.device)
        bad = self.positives.contains(users, neg)
        for _ in range(self.max_redraws):
            idx = bad.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            # Redraw only the collisions: cost proportional to the density of the data.
            neg[idx] = torch.randint(self.train.n_items, (idx.numel(),), generator=self.gen, device=self.device)
            bad[idx] = self.positives.contains(users[idx], neg[idx])
        return neg, ~bad

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # Triplets are drawn for many batches at once (about CHUNK_TRIPLETS, whole batches): the same
        # tensor ops on longer tensors, so the per-batch overhead of a dozen small ops is paid once a chunk.
        perm = torch.randperm(self.train.nnz, generator=self.gen, device=self.device)
        chunk = self.batch_size * max(1, CHUNK_TRIPLETS // self.batch_size)
        for c0 in range(0, self.train.nnz, chunk):
            idx = perm[c0 : c0 + chunk]
            users_c, pos_c = self.users_all[idx], self.items_all[idx]
            neg_c, keep_c = self.negatives(users_c)
            all_kept = bool(keep_c.all())
            for start in range(0, idx.numel(), self.batch_size):
                end = start + self.batch_size
                users, pos, neg = users_c[start:end], pos_c[start:end], neg_c[start:end]
                if not all_kept:
                    keep = keep_c[start:end]
                    users, pos, neg = users[keep], pos[keep], neg[keep]
                yield users, pos, neg
