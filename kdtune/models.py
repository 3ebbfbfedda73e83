"""Matrix factorisation: user/item embeddings plus biases (the teacher's and the students' architecture)."""

from __future__ import annotations

import torch
from torch import nn


def _gather(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``table[idx]`` for an index tensor of any shape."""
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[1])


class MF(nn.Module):
    """``score(u, i) = <p_u, q_i> + b_u + b_i``.

    The user bias does not change a user's ranking but is kept so that pointwise losses (``cd``) see
    calibrated scores, as in the architecture this project replaces.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float = 0.1, seed: int | None = None):
        super().__init__()
        self.n_users, self.n_items, self.dim = int(n_users), int(n_items), int(dim)
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.user_emb.weight.normal_(0.0, init_std, generator=gen)
            self.item_emb.weight.normal_(0.0, init_std, generator=gen)
            self.user_bias.weight.zero_()
            self.item_bias.weight.zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``items`` for ``users``.

        ``users`` is ``[B]``; ``items`` is ``[B]`` (one item per user -> ``[B]``) or ``[B, n]``
        (n items per user -> ``[B, n]``).
        """
        # index_select rather than nn.Embedding's forward: its backward (index_add) is several times
        # faster on CPU than the embedding's dense backward, and deterministic, unlike plain indexing's.
        p = _gather(self.user_emb.weight, users)
        q = _gather(self.item_emb.weight, items)
        bu = _gather(self.user_bias.weight, users).squeeze(-1)
        bi = _gather(self.item_bias.weight, items).squeeze(-1)
        if items.dim() == 1:
            return (p * q).sum(-1) + bu + bi
        if items.shape[1] <= 16:
            # A few items per user (pos/neg pairs): a broadcast product beats a batched matmul of
            # 1-row matrices by ~5x on CPU, forward and backward.
            dots = (p.unsqueeze(1) * q).sum(-1)
        else:
            dots = torch.bmm(q, p.unsqueeze(2)).squeeze(2)
        return dots + bu.unsqueeze(1) + bi

    score = forward

    def full_scores(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item for each of ``users``: ``[B, n_items]`` (written into ``out`` if given)."""
        p = self.user_emb(users)
        scores = torch.matmul(p, self.item_emb.weight.T, out=out)
        scores += self.item_bias.weight.T
        scores += self.user_bias(users)
        return scores

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def n_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def arch(self) -> dict:
        """What defines this model's shape (enough to rebuild it and to key latency caches)."""
        return {"n_users": self.n_users, "n_items": self.n_items, "dim": self.dim}

    @classmethod
    def from_state(cls, arch: dict, state: dict[str, torch.Tensor]) -> MF:
        model = cls(arch["n_users"], arch["n_items"], arch["dim"])
        model.load_state_dict(state)
        return model
