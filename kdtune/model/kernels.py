"""Serving kernels of an MF's item side at each storage precision, and the int8 row codes.

Precisions (``PRECISIONS``):

- ``fp32``: the trained tables as they are.
- ``bf16`` / ``fp16``: tables rounded to a 16-bit float; scored with a matmul in that dtype. ``bf16``
  keeps float32's range with 8 significant bits, ``fp16`` has 11 but overflows past 65504.
- ``int8``: per-row symmetric scales, ``scale = max|row| / 127`` and ``q = round(row / scale)``, so
  ``|x - q * scale| <= scale / 2`` per element. Biases stay float32 (they are ``n`` numbers, not ``n * d``).

:class:`ItemIndex` is the kernel a server would use on the device: on CPU, ``int8`` is fbgemm's dynamic
quantised linear (item table as per-channel int8 weights, the user vectors quantised per batch to 7-bit
unsigned ints), 16-bit floats a matmul in that dtype, ``fp32`` ``addmm``. ``kdtune.serving.timing`` times
this same ``ItemIndex.topk``, so a measured latency is the latency of this serving path.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

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
