"""Post-training quantisation of a trained ``MF`` for serving (:class:`QuantizedMF`).

Two ways to score a ``QuantizedMF``:

- ``full_scores`` (what ``kdtune.train.evaluate.evaluate`` calls) computes the exact scores of the stored
  weights in float32, from the dequantised tables: metrics are those of the quantised model, with no
  kernel-specific rounding on top.
- ``serve_topk`` uses the serving kernel of :class:`kdtune.model.kernels.ItemIndex` (precisions and
  kernels are described there). Its scores differ from ``full_scores`` by that kernel's rounding
  (bounded in the tests).
"""

from __future__ import annotations

from typing import Any

import torch

from kdtune.model.kernels import (
    _FLOAT_DTYPES,
    ELEMENT_BYTES,
    PRECISIONS,
    ItemIndex,
    check_precision,
    dequantize_rows,
    quantize_rows,
)
from kdtune.model.mf import MF

__all__ = ["ELEMENT_BYTES", "PRECISIONS", "ItemIndex", "QuantizedMF", "check_precision", "dequantize",
           "dequantize_rows", "quantize", "quantize_rows"]


class QuantizedMF:
    """An ``MF`` stored at ``precision``: user and item tables (int8 codes + per-row scales, or a 16/32-bit
    float), biases in float32. Scores like ``MF`` (``full_scores``) and serves top-K (``serve_topk``)."""

    def __init__(
        self,
        precision: str,
        user: torch.Tensor,
        item: torch.Tensor,
        user_bias: torch.Tensor,
        item_bias: torch.Tensor,
        user_scale: torch.Tensor | None = None,
        item_scale: torch.Tensor | None = None,
    ):
        self.precision = check_precision(precision)
        if (precision == "int8") != (user_scale is not None and item_scale is not None):
            raise ValueError("int8 tables need per-row scales; other precisions take none")
        if user.shape[1] != item.shape[1]:
            raise ValueError(f"user and item tables differ in dim: {user.shape[1]} vs {item.shape[1]}")
        self.user, self.item = user, item
        self.user_bias = user_bias.detach().reshape(-1).float()
        self.item_bias = item_bias.detach().reshape(-1).float()
        self.user_scale, self.item_scale = user_scale, item_scale
        self.n_users, self.n_items = int(user.shape[0]), int(item.shape[0])
        self.dim = int(user.shape[1])
        self._float: tuple[torch.Tensor, torch.Tensor] | None = None
        self._index: dict[str, ItemIndex] = {}

    def float_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The dequantised ``(user, item)`` float32 tables (computed once)."""
        if self._float is None:
            if self.precision == "int8":
                self._float = (
                    dequantize_rows(self.user, self.user_scale),
                    dequantize_rows(self.item, self.item_scale),
                )
            else:
                self._float = (self.user.float(), self.item.float())
        return self._float

    def full_scores(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Exact float32 scores of the stored weights for every item: ``[B, n_items]``, as ``MF.full_scores``."""
        user_t, item_t = self.float_tables()
        users = users.cpu()
        scores = torch.matmul(user_t[users], item_t.T, out=out)
        scores += self.item_bias
        scores += self.user_bias[users][:, None]
        return scores

    def index(self, device: str | torch.device = "cpu") -> ItemIndex:
        """The serving-side item index on ``device`` (built once per device)."""
        key = str(torch.device(device))
        if key not in self._index:
            self._index[key] = ItemIndex.from_stored(
                self.item, self.item_bias, self.precision, device, scale=self.item_scale
            )
        return self._index[key]

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """Float32 vectors of user ids as stored (dequantised): what a server feeds its kernel."""
        return self.float_tables()[0][users.cpu()]

    def serve_topk(
        self, users: torch.Tensor, k: int, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` ``(scores, items)`` with the serving kernel. ``users``: ids ``[B]`` or vectors ``[B, dim]``.

        The user bias is left out: it shifts all of a user's scores alike and changes no ranking.
        """
        vecs = self.user_vectors(users) if users.dim() == 1 else users
        if vecs.shape[-1] != self.dim:
            raise ValueError(f"user vectors must have dim {self.dim}, got {tuple(vecs.shape)}")
        with torch.inference_mode():
            return self.index(device).topk(vecs.to(device), k)

    def n_bytes(self) -> int:
        """Stored bytes: both tables at this precision, their scales (int8) and the float32 biases."""
        tensors = [self.user, self.item, self.user_bias, self.item_bias]
        tensors += [t for t in (self.user_scale, self.item_scale) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def n_params(self) -> int:
        """Trained numbers (table entries and biases; int8 scales are storage, not parameters)."""
        return (self.n_users + self.n_items) * (self.dim + 1)

    def arch(self) -> dict:
        """``{"n_users", "n_items", "dim", "precision"}``: what defines this model's shape and kernel."""
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "dim": self.dim,
            "precision": self.precision,
        }

    def state_dict(self) -> dict[str, Any]:
        """Tensors plus the precision string: loadable with ``torch.load(..., weights_only=True)``."""
        state: dict[str, Any] = {
            "precision": self.precision,
            "user": self.user,
            "item": self.item,
            "user_bias": self.user_bias,
            "item_bias": self.item_bias,
        }
        if self.precision == "int8":
            state.update(user_scale=self.user_scale, item_scale=self.item_scale)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> QuantizedMF:
        """Rebuild from ``state_dict()``."""
        return cls(
            state["precision"], state["user"], state["item"], state["user_bias"], state["item_bias"],
            state.get("user_scale"), state.get("item_scale"),
        )  # fmt: skip


def quantize(model: MF, precision: str) -> QuantizedMF:
    """Post-training quantisation of a trained ``MF`` to ``precision`` (one of ``PRECISIONS``)."""
    check_precision(precision)
    user = model.user_emb.weight.detach().float().cpu()
    item = model.item_emb.weight.detach().float().cpu()
    ub = model.user_bias.weight.detach().float().cpu().reshape(-1)
    ib = model.item_bias.weight.detach().float().cpu().reshape(-1)
    if precision == "int8":
        (uq, us), (iq, is_) = quantize_rows(user), quantize_rows(item)
        return QuantizedMF("int8", uq, iq, ub.clone(), ib.clone(), us, is_)
    dtype = _FLOAT_DTYPES[precision]
    limit = torch.finfo(dtype).max
    if max(float(user.abs().max()), float(item.abs().max())) > limit:
        raise ValueError(f"embeddings exceed the range of {precision} (+-{limit:g}); use bf16 or int8")
    return QuantizedMF(precision, user.to(dtype).clone(), item.to(dtype).clone(), ub.clone(), ib.clone())


def dequantize(qmodel: QuantizedMF) -> MF:
    """A float32 ``MF`` with the dequantised tables (scores equal to ``qmodel.full_scores``)."""
    user_t, item_t = qmodel.float_tables()
    model = MF(qmodel.n_users, qmodel.n_items, qmodel.dim)
    with torch.no_grad():
        model.user_emb.weight.copy_(user_t)
        model.item_emb.weight.copy_(item_t)
        model.user_bias.weight.copy_(qmodel.user_bias[:, None])
        model.item_bias.weight.copy_(qmodel.item_bias[:, None])
    return model
