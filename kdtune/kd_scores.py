"""Scores of many items per user, ``s(u, i) = <p_u, q_i> + b_u + b_i``, for the per-user losses.

:meth:`kdtune.models.MF.forward` gathers one item row per (user, item) cell and its backward hands
the optimiser one gradient row per cell: for the teacher-ranked items of ``rd``, ``cd`` and ``rrd`` (10
or more items for each of ~2,400 distinct users of a batch) that is tens of thousands of table-wide
gradient rows. :func:`user_item_scores` reads each distinct item once (the optimiser gets one gradient
row per distinct item): the forward gathers the items' rows in cache-sized chunks, the backward is a
sparse-dense product for the users and one scatter of the cells' rows onto the distinct items.
"""

from __future__ import annotations

import warnings

import torch

from kdtune.models import MF
from kdtune.optim import gather_rows

# Floats gathered per chunk in forward (1 MB): small enough to stay in cache and to reuse memory.
CHUNK_FLOATS = 1 << 18


def distinct_slots(items: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, slot)``: the distinct ids in ``items`` (ascending) and each cell's index into ``rows``.

    A mark per catalogue item instead of ``torch.unique``'s sort: linear in the cells.
    """
    mark = torch.zeros(n_items, dtype=torch.bool, device=items.device)
    mark[items.reshape(-1)] = True
    rows = mark.nonzero().squeeze(1)
    slot_of = torch.empty(n_items, dtype=torch.int64, device=items.device)
    slot_of[rows] = torch.arange(rows.numel(), device=items.device)
    return rows, slot_of[items]


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # torch flags sparse CSR as beta on every construction
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape)


class _CellDot(torch.autograd.Function):
    """``out[u, j] = <p[u], q[slot[u, j]]>`` for ``p`` ``[U, d]``, ``q`` ``[R, d]``, ``slot`` ``[U, n]``.

    Forward gathers the item rows a chunk of users at a time (about ``CHUNK_FLOATS`` floats, so the
    temporary stays in cache). Backward treats the cells' gradients as a sparse ``[U, R]`` matrix ``G``
    with n entries a row (a repeated item in a row simply adds up): a sparse-dense product ``G @ q`` for
    ``p``, and ``G^T @ p`` for ``q`` as one ``index_add_`` of the cells' rows onto their items (at the
    ~24k cells of a batch that is cheaper than sorting the cells by item for a transposed product). torch's
    sampled dense-dense product would do the forward without gathering, but it rejects rows with a
    repeated column, which uniform draws with replacement produce.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, q: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        n_u, n = slot.shape
        n_r, dim = q.shape
        out = torch.empty(n_u, n, dtype=p.dtype, device=p.device)
        step = max(1, CHUNK_FLOATS // (n * dim))
        for a in range(0, n_u, step):
            b = min(a + step, n_u)
            rows = q.index_select(0, slot[a:b].reshape(-1)).view(b - a, n, dim)
            torch.sum(rows.mul_(p[a:b].unsqueeze(1)), dim=2, out=out[a:b])
        ctx.save_for_backward(p, q, slot)
        ctx.n_r = n_r
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, q, slot = ctx.saved_tensors
        (n_u, n), n_r = slot.shape, ctx.n_r
        col = slot.reshape(-1)
        crow = torch.arange(0, n_u * n + 1, n, device=slot.device)
        values = grad.reshape(-1)
        grad_p = grad_q = None
        if ctx.needs_input_grad[0]:
            grad_p = torch.sparse.mm(_csr(crow, col, values, (n_u, n_r)), q)
        if ctx.needs_input_grad[1]:
            # G^T @ p as a scatter of the cells' rows g[u, j] * p[u] onto their items: one [U * n, d]
            # temporary, cheaper than sorting the cells by item for a transposed sparse product
            cells = (grad.unsqueeze(2) * p.unsqueeze(1)).reshape(n_u * n, -1)
            grad_q = torch.zeros(n_r, p.shape[1], dtype=p.dtype, device=p.device).index_add_(0, col, cells)
        return grad_p, grad_q, None


def user_item_scores(model: MF, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``[U, n]`` scores of ``items`` (``[U, n]``) for ``users`` (``[U]``): the value of
    ``model(users, items)`` with gradients to the same parameters, read through the same
    :func:`~kdtune.optim.gather_rows` (so a :class:`~kdtune.optim.TableAdamW` sees the reads), but
    with one gradient row per distinct item and no per-cell temporaries (see the module docstring).
    """
    rows, slot = distinct_slots(items, model.n_items)
    p = gather_rows(model.user_emb.weight, users)
    q = gather_rows(model.item_emb.weight, rows)
    b_u = gather_rows(model.user_bias.weight, users)  # [U, 1]
    b_i = gather_rows(model.item_bias.weight, rows)  # [R, 1]
    # the item bias rides along as one more column against a constant 1 on the user side
    ones = torch.ones(p.shape[0], 1, dtype=p.dtype, device=p.device)
    return _CellDot.apply(torch.cat([p, ones], 1), torch.cat([q, b_i], 1), slot) + b_u
