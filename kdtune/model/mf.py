"""Matrix factorisation: user/item embeddings plus biases (the teacher's and the students' architecture)."""

from __future__ import annotations

import torch
from torch import nn

from kdtune.model.rows import gather_rows as _gather


class _RowDot(torch.autograd.Function):
    """``out[b, j] = <p[b], q[b, j]>`` for ``p`` ``[B, d]`` and ``q`` ``[B, n, d]``, with a hand-written backward.

    Autograd's version of the broadcast product ``(p.unsqueeze(1) * q).sum(-1)`` multiplies expanded
    (stride-0) tensors in backward and then reduces one of them, and a batched matmul's autograd runs
    two more small-matrix bmm's; this backward does one broadcast product for ``q``'s gradient and, for a
    few items per user, a running ``addcmul`` for ``p``'s: ~1.6x faster fwd+bwd at n = 2 and ~2.4x at
    n = 62 on one CPU thread, dim 64. Between a batched matmul and a broadcast sum it takes whichever
    was faster at that width (torch 2.13's CPU ``bmm`` changes kernels with ``d``: for ``[2400, 10, d]``
    its forward is 2-3x slower than the sum from d = 32 on, its ``[B, 1, n] x [B, n, d]`` 2-4x slower
    below d = 48 and faster above).
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p, q)
        if p.shape[1] >= 32:
            return (q * p.unsqueeze(1)).sum(-1)
        return torch.bmm(q, p.unsqueeze(2)).squeeze(2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, q = ctx.saved_tensors
        grad_p = grad_q = None
        if ctx.needs_input_grad[0]:
            if q.shape[1] <= 4:
                grad_p = q[:, 0] * grad[:, 0:1]
                for j in range(1, q.shape[1]):
                    grad_p.addcmul_(q[:, j], grad[:, j : j + 1])
            elif q.shape[2] >= 48:
                grad_p = torch.bmm(grad.unsqueeze(1), q).squeeze(1)
            else:
                grad_p = (q * grad.unsqueeze(2)).sum(1)
        if ctx.needs_input_grad[1]:
            grad_q = grad.unsqueeze(2) * p.unsqueeze(1)
        return grad_p, grad_q


def row_dot(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = <p[b], q[b, j]>`` for ``p`` ``[B, d]`` and ``q`` ``[B, n, d]`` (see :class:`_RowDot`)."""
    return _RowDot.apply(p, q)


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
        # gather_rows rather than nn.Embedding's forward: a LazyAdamW then gets row gradients instead of
        # dense table-sized ones; otherwise it is index_select, whose backward is several times faster on
        # CPU than the embedding's and deterministic, unlike plain indexing's.
        p = _gather(self.user_emb.weight, users)
        q = _gather(self.item_emb.weight, items)
        bu = _gather(self.user_bias.weight, users).squeeze(-1)
        bi = _gather(self.item_bias.weight, items).squeeze(-1)
        if items.dim() == 1:
            return (p * q).sum(-1) + bu + bi
        return row_dot(p, q) + bu.unsqueeze(1) + bi

    score = forward

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``users`` (read like ``forward`` does, so a training optimiser sees the read)."""
        return _gather(self.user_emb.weight, users)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``items`` (read like ``forward`` does)."""
        return _gather(self.item_emb.weight, items)

    def item_bias_of(self, items: torch.Tensor) -> torch.Tensor:
        """Biases ``[n, 1]`` of ``items`` (read like ``forward`` does)."""
        return _gather(self.item_bias.weight, items)

    def row_tables(self) -> list[nn.Parameter]:
        """The tables that training reads row by row (through ``forward`` / ``*_vectors`` only)."""
        return [self.user_emb.weight, self.item_emb.weight, self.user_bias.weight, self.item_bias.weight]

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
