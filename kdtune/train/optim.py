"""AdamW for embedding tables whose gradient arrives as rows: dense (the default) or row-sparse ("lazy").

A BPR batch reads a few thousand rows of the tables. :func:`gather_rows` reads them and its backward
hands the optimiser the rows' gradients (``[rows, dim]``) instead of scattering them into a fresh,
table-sized zero gradient. :class:`TableAdamW` then either

- ``lazy=False``: adds them into a gradient buffer kept across steps and runs torch's fused AdamW on
  every parameter: exactly dense AdamW; or
- ``lazy=True``: coalesces them (repeated rows summed), runs the fused Adam kernel on the touched rows
  only and writes those rows and their moments back, so that a step costs the rows the batch touched.
  The decoupled weight decay still reaches **every** row at every step, exactly and at O(1) cost: a
  table stores ``w = p / c`` with one scalar ``c = prod_s (1 - lr_s * wd)``; decaying every row is ``c
  *= 1 - lr * wd``, and :func:`gather_rows` returns ``c * w[rows]``. :meth:`TableAdamW.sync` folds ``c``
  back into the table (``w *= c; c = 1``); it must run before anything reads the tables directly
  (evaluation, ``state_dict``), and runs by itself whenever ``c`` gets small.

Lazy mode is lazy Adam (the semantics of TensorFlow Addons' ``LazyAdam`` and torch's ``SparseAdam``)
with exact decoupled decay: a row's moments change only on the steps that touch it, so its momentum is
spent at its next touch rather than on the steps in between. On a step that touches every row it is
dense AdamW's update (tested). Whether it is faster depends on the share of rows a batch touches: the
touched rows' weights and moments are gathered and scattered row by row, which costs several times a
streaming pass per row, so it pays off only when batches touch a small part of large tables (see
BENCHMARKS.md). Parameters that are not tables (the DE experts) get torch's fused AdamW in both modes.
Deterministic on CPU: every operation is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.adam import adam as adam_functional

from kdtune.model.rows import ROWS_ATTR as _ATTR
from kdtune.model.rows import gather_rows

__all__ = ["TableAdamW", "gather_rows"]

# Fold the decay scale back into a table when it falls below this (a per-epoch sync usually comes first).
_MIN_SCALE = 1e-3


class _RowTable:
    """Optimiser state of one table: moments (lazy mode), decay scale, pending row gradients."""

    def __init__(self, param: nn.Parameter, with_state: bool = True):
        if param.dim() != 2:
            raise ValueError(f"a row table must be 2-D, got shape {tuple(param.shape)}")
        self.param = param
        if with_state:  # lazy mode keeps the moments here; dense mode leaves them to torch's AdamW
            self.m = torch.zeros_like(param, memory_format=torch.contiguous_format)
            self.v = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.scale = 1.0  # the table holds w = p / scale
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (row ids, gradient rows) per read
        self.grad_buffer: torch.Tensor | None = None  # dense mode: the table's gradient, reused every step

    def rows_and_grad(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The row ids and gradient rows of every read since the last step, concatenated."""
        dim = self.param.shape[1]
        if len(self.pending) == 1:
            idx, grad = self.pending[0]
            return idx, grad.reshape(-1, dim)
        return torch.cat([i for i, _ in self.pending]), torch.cat([g.reshape(-1, dim) for _, g in self.pending])

    def fold(self) -> None:
        if self.scale != 1.0:
            with torch.no_grad():
                self.param.mul_(self.scale)
            self.scale = 1.0


class TableAdamW:
    """AdamW for embedding tables read through :func:`gather_rows`, plus torch's fused AdamW for the
    ``dense`` parameters, behind one ``zero_grad`` / ``step`` interface.

    ``lazy=True``: row-sparse steps (see the module docstring). ``lazy=False``: the same update as
    torch's dense AdamW, with the rows' gradients accumulated into a gradient buffer kept across steps
    (no fresh table-sized allocation per step) and one fused AdamW step over everything.

    While it is attached, ``tables`` must be read through :func:`gather_rows` only; in lazy mode they
    hold ``p / scale`` until :meth:`sync`: call ``sync()`` before evaluating or saving the model, and
    ``close()`` when training ends (it syncs and detaches).
    """

    def __init__(
        self,
        tables: Iterable[nn.Parameter],
        dense: Iterable[nn.Parameter] = (),
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lazy: bool = True,
    ):
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, float(eps)
        self.lazy = bool(lazy)
        self.t = 0
        self.tables = [_RowTable(p, with_state=self.lazy) for p in tables]
        for tab in self.tables:
            if getattr(tab.param, _ATTR, None) is not None:
                raise ValueError("this table is already trained by another TableAdamW")
            setattr(tab.param, _ATTR, tab)
        dense = list(dense) + ([] if self.lazy else [tab.param for tab in self.tables])
        self.dense: torch.optim.Optimizer | None = None
        if dense:
            kw = dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
            try:  # fused: about 2x faster a step on CPU than the multi-tensor version
                self.dense = torch.optim.AdamW(dense, fused=True, **kw)
            except (RuntimeError, TypeError):
                self.dense = torch.optim.AdamW(dense, **kw)
        self._closed = False

    def set_lr(self, lr: float) -> None:
        """Learning rate of the next steps (for schedules)."""
        self.lr = float(lr)
        if self.dense is not None:
            for group in self.dense.param_groups:
                group["lr"] = self.lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for tab in self.tables:
            tab.pending.clear()
            tab.param.grad = None
        if self.dense is not None:
            self.dense.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        decay = 1.0 - self.lr * self.weight_decay
        for tab in self.tables:
            if tab.param.grad is not None:
                raise RuntimeError(
                    "a table trained by TableAdamW got a dense gradient: it was read without gather_rows"
                )
            if not self.lazy:
                tab.param.grad = self._dense_grad(tab)  # the fused step below updates it like any parameter
                continue
            new_scale = tab.scale * decay
            if tab.pending:
                self._update_rows(tab, new_scale)
            tab.scale = new_scale
            if tab.scale < _MIN_SCALE:
                tab.fold()
        if self.dense is not None:
            self.dense.step()
        for tab in self.tables:
            tab.param.grad = None

    @staticmethod
    def _dense_grad(tab: _RowTable) -> torch.Tensor:
        if tab.grad_buffer is None:
            tab.grad_buffer = torch.zeros_like(tab.param)
        else:
            tab.grad_buffer.zero_()
        dim = tab.param.shape[1]
        # each read's rows added in place (no concatenated copy); a one-wide table (a bias) as a vector,
        # whose index_add is a plain loop rather than a scatter over expanded indices (~2x faster)
        buf = tab.grad_buffer.view(-1) if dim == 1 else tab.grad_buffer
        for idx, grad in tab.pending:
            buf.index_add_(0, idx, grad.reshape(-1) if dim == 1 else grad.reshape(-1, dim))
        tab.pending.clear()
        return tab.grad_buffer

    def _update_rows(self, tab: _RowTable, new_scale: float) -> None:
        w, n, dim = tab.param, tab.param.shape[0], tab.param.shape[1]
        idx, grad = tab.rows_and_grad()
        tab.pending.clear()
        # Unique rows in ascending order and each read's slot among them, without sorting the reads:
        # a mark per table row (a few KB), its nonzero positions, and a row -> slot map.
        mark = torch.zeros(n, dtype=torch.bool, device=w.device)
        mark[idx] = True
        rows = mark.nonzero().squeeze(1)
        slot = torch.empty(n, dtype=torch.int64, device=w.device)
        slot[rows] = torch.arange(rows.numel(), device=w.device)
        g = torch.zeros(rows.numel(), dim, dtype=grad.dtype, device=w.device).index_add_(0, slot[idx], grad)

        b1, b2 = self.betas
        w_r, m_r, v_r = w.index_select(0, rows), tab.m.index_select(0, rows), tab.v.index_select(0, rows)
        # The table holds w = p / scale: AdamW's p <- decay * p - u is w <- w - u / new_scale, i.e. Adam
        # without decay at learning rate lr / new_scale (the decay itself is the scale's).
        step = torch.tensor(float(self.t - 1), device=w.device)  # the kernel counts this step itself
        adam_functional(
            [w_r], [g], [m_r], [v_r], [], [step], fused=w.device.type in ("cpu", "cuda"),
            amsgrad=False, beta1=b1, beta2=b2, lr=self.lr / new_scale, weight_decay=0.0, eps=self.eps,
            maximize=False,
        )
        w.index_copy_(0, rows, w_r)
        tab.m.index_copy_(0, rows, m_r)
        tab.v.index_copy_(0, rows, v_r)

    def sync(self) -> None:
        """Apply the pending weight decay to the tables, so that they hold the parameters' values."""
        for tab in self.tables:
            tab.fold()

    def close(self) -> None:
        """Sync and detach from the tables (they are plain parameters again). Idempotent."""
        if self._closed:
            return
        self.sync()
        for tab in self.tables:
            if getattr(tab.param, _ATTR, None) is tab:
                delattr(tab.param, _ATTR)
        self._closed = True
