"""How training reads an embedding table: :func:`gather_rows`, the one read that an optimiser can hook.

A BPR batch reads a few thousand rows of the tables. :func:`gather_rows` reads them; a table trained by
:class:`kdtune.train.optim.TableAdamW` carries that optimiser's per-table state under :data:`ROWS_ATTR`
(``scale``: the table holds ``p / scale``; ``pending``: a list the backward appends ``(row ids,
gradient rows)`` to), so that the read applies the pending weight decay and the backward hands the
optimiser the rows' gradients (``[rows, dim]``) instead of a fresh, table-sized zero gradient. Without
that state it is ``index_select``. The model reads its tables through here and never sees the optimiser.
"""

from __future__ import annotations

from typing import Any

import torch

ROWS_ATTR = "_kdtune_rows"
"""Attribute of a table parameter holding its optimiser's row state (``scale``, ``pending``)."""


class _GatherRows(torch.autograd.Function):
    """``scale * table[idx]``; backward records ``(idx, grad)`` with the table's optimiser state."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor, state: Any) -> torch.Tensor:
        ctx.idx, ctx.state = idx, state
        out = table.index_select(0, idx)
        if state.scale != 1.0:
            out.mul_(state.scale)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.state.pending.append((ctx.idx, grad))
        return None, None, None


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``table[idx]`` (``idx`` of any shape -> ``[*idx.shape, dim]``).

    Read tables that a :class:`~kdtune.train.optim.TableAdamW` trains through this function only: it
    applies the pending weight decay and routes the gradient to the optimiser. For any other table it is
    ``index_select`` (whose backward, ``index_add``, is deterministic, unlike plain indexing's).
    """
    flat = idx.reshape(-1)
    state = getattr(table, ROWS_ATTR, None)
    rows = table.index_select(0, flat) if state is None else _GatherRows.apply(table, flat, state)
    return rows.view(*idx.shape, table.shape[1])
