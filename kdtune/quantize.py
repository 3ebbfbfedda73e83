"""Post-training quantisation of a trained ``MF`` for serving, and the serving kernels themselves.

Precisions (``PRECISIONS``):

- ``fp32``: the trained tables as they are.
- ``bf16`` / ``fp16``: tables rounded to a 16-bit float; scored with a matmul in that dtype. ``bf16``
  keeps float32's range with 8 significant bits, ``fp16`` has 11 but overflows past 65504.
- ``int8``: per-row symmetric scales, ``scale = max|row| / 127`` and ``q = round(row / scale)``, so
  ``|x - q * scale| <= scale / 2`` per element. Biases stay float32 (they are ``n`` numbers, not ``n * d``).

Two ways to score a ``QuantizedMF``:

- ``full_scores`` (what ``kdtune.evaluate.evaluate`` calls) computes the exact scores of the stored
  weights in float32, from the dequantised tables: metrics are those of the quantised model, with no
  kernel-specific rounding on top.
- ``serve_topk`` uses the kernel a server would use on the device (``ItemIndex``): on CPU, ``int8`` is
  fbgemm's dynamic quantised linear (item table as per-channel int8 weights, the user vectors quantised
  per batch to 7-bit unsigned ints), 16-bit floats a matmul in that dtype, ``fp32`` ``addmm``. Its scores
  differ from ``full_scores`` by that kernel's rounding (bounded in the tests). ``kdtune.latency`` times
  the same ``ItemIndex.topk``, so a measured latency is the latency of this serving path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from kdtune.models import MF

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Bytes of one stored table element at each precision (scales and biases are counted apart).
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: ``(q [n, d] int8, scale [n] float32)`` with ``x ~= q * scale[:, None]``.

    An all-zero row gets scale 1 (its codes are 0 either way), so no scale is 0 and fbgemm accepts them.
    """
    x = x.detach().float()
    scale = x.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float32 rows ``q * scale[:, None]`` (the inverse of ``quantize_rows`` up to its rounding)."""
    return q.float() * scale.float()[:, None]


class ItemIndex:
    """The item side of serving at one precision: ``topk(user_vectors, k)`` over the whole catalog.

    Build it with ``from_float`` (quantises a float table) or ``from_stored`` (tables already at the
    precision, e.g. a ``QuantizedMF``'s). The tables are laid out once, as a server would hold them.
    """

    def __init__(self, precision: str, device: torch.device, n_items: int, dim: int, **tensors: Any):
        self.precision = check_precision(precision)
        self.device = device
        self.n_items, self.dim = int(n_items), int(dim)
        self._t = tensors

    @classmethod
    def from_float(
        cls, items: torch.Tensor, bias: torch.Tensor, precision: str, device: str | torch.device = "cpu"
    ) -> ItemIndex:
        """Index of a float ``[n, d]`` item table and ``[n]`` bias, stored at ``precision``."""
        check_precision(precision)
        if precision == "int8":
            q, scale = quantize_rows(items)
            return cls.from_stored(q, bias, precision, device, scale=scale)
        return cls.from_stored(items.detach().to(_FLOAT_DTYPES[precision]), bias, precision, device)

    @classmethod
    def from_stored(
        cls,
        items: torch.Tensor,
        bias: torch.Tensor,
        precision: str,
        device: str | torch.device = "cpu",
        scale: torch.Tensor | None = None,
    ) -> ItemIndex:
        """Index of a table already at ``precision`` (``int8`` codes need their per-row ``scale``)."""
        dev = torch.device(device)
        n, d = (int(s) for s in items.shape)
        bias = bias.detach().reshape(-1).float()
        if precision == "int8":
            if scale is None:
                raise ValueError("an int8 table needs its per-row scale")
            if dev.type == "cpu":
                return cls(precision, dev, n, d, packed=_fbgemm_pack(items, scale, bias))
            # No int8 GEMM kernel is wired for accelerators here: weight-only int8, i.e. the codes are
            # held in memory and widened to fp16 inside the call (a reference path, not a tuned kernel).
            return cls(
                precision, dev, n, d, q=items.to(dev), scale=scale.to(dev).half(), bias=bias.to(dev).half()
            )
        dtype = _FLOAT_DTYPES[precision]
        # [n, d] row-major as stored; addmm takes the transposed view without copying it.
        return cls(precision, dev, n, d, items_t=items.detach().to(dev, dtype).t(), bias=bias.to(dev, dtype))

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """``[B, n_items]`` scores of user vectors ``[B, d]`` with this precision's serving kernel."""
        t = self._t
        if self.precision == "int8":
            if "packed" in t:
                # reduce_range=True: 7-bit activations, so fbgemm's u8*s8 pair sums cannot saturate int16.
                return torch.ops.quantized.linear_dynamic(users.float().contiguous(), t["packed"], True)
            w = t["q"].half() * t["scale"][:, None]
            return torch.addmm(t["bias"], users.to(self.device, torch.float16), w.t())
        dtype = t["items_t"].dtype
        return torch.addmm(t["bias"], users.to(self.device, dtype), t["items_t"])

    def topk(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [B, k], items [B, k])`` of the ``k`` best items for each user vector."""
        return torch.topk(self.scores(users), k, dim=1)


def _fbgemm_pack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> Any:
    """fbgemm's packed weights of int8 codes ``q`` with per-row (output-channel) scales, plus the bias."""
    zero_points = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # Quantised tensor construction is deprecated upstream; it is still the way into fbgemm's kernels.
        warnings.simplefilter("ignore", UserWarning)
        # Built from our int8 codes directly, so the served weights are exactly the stored ones.
        w = torch._make_per_channel_quantized_tensor(q.cpu(), scale.double().cpu(), zero_points, 0)
        return torch.ops.quantized.linear_prepack(w, bias.cpu())


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


def save(qmodel: QuantizedMF, path: str | os.PathLike) -> None:
    """Write ``qmodel.state_dict()`` with ``torch.save``."""
    torch.save(qmodel.state_dict(), Path(path))


def load(path: str | os.PathLike) -> QuantizedMF:
    """Read a quantised student written by ``save`` (``weights_only=True``: tensors and strings only)."""
    return QuantizedMF.from_state(torch.load(Path(path), weights_only=True, map_location="cpu"))
