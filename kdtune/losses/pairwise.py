"""Pairwise losses on the BPR batch's (user, positive, negative) triplets: the plain student (``bpr``) and
the margin-matching distillation losses (``mse_diff``, ``soft_bce``). Conventions: :mod:`kdtune.losses.registry`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdtune.losses.registry import KDContext, _bpr_margin, _teacher_diff, bpr_term, register


def mse_diff_term(s_diff: torch.Tensor, t_diff: torch.Tensor, T: float) -> torch.Tensor:
    """``T^2 * mean((s_diff - t_diff)^2)``; T only rescales the term (it acts as a second weight)."""
    return T * T * (s_diff - t_diff).pow(2).mean()


def soft_bce_term(s_diff: torch.Tensor, t_diff: torch.Tensor, T: float) -> torch.Tensor:
    """Pairwise Hinton KD: ``T^2 * BCE(sigmoid(s_diff / T), sigmoid(t_diff / T))``, mean over pairs.

    The ``T^2`` keeps the gradient's scale comparable across temperatures (Hinton et al., 2015).
    """
    return T * T * F.binary_cross_entropy_with_logits(s_diff / T, torch.sigmoid(t_diff / T))


@register("bpr", uses_temperature=False, description="plain BPR student, no distillation (alpha, T ignored)")
def bpr_loss(ctx: KDContext, alpha: float = 0.5, T: float = 1.0) -> torch.Tensor:
    """The plain student: BPR on the batch's triplets."""
    return bpr_term(_bpr_margin(ctx))


@register(
    "mse_diff",
    uses_temperature=False,
    description="(1-a) BPR + a MSE(student pair margin, teacher pair margin); no temperature (T^2 would only "
    "rescale the term, a second weight)",
)
def mse_diff_loss(ctx: KDContext, alpha: float = 0.5, T: float = 1.0) -> torch.Tensor:
    """Match the teacher's pair margins. ``T`` (1 unless given) would only scale the soft part by ``T^2``,
    a second KD weight, so the loss does not count as using a temperature and a search never tunes it."""
    s_diff = _bpr_margin(ctx)
    return (1 - alpha) * bpr_term(s_diff) + alpha * mse_diff_term(s_diff, _teacher_diff(ctx), T)


@register(
    "soft_bce",
    uses_temperature=True,
    description="(1-a) BPR + a T^2 BCE(sigmoid(ds/T), sigmoid(dt/T)) on the BPR pair (pairwise Hinton KD)",
)
def soft_bce_loss(ctx: KDContext, alpha: float = 0.5, T: float = 1.0) -> torch.Tensor:
    """Hinton KD on the BPR pair's "pos beats neg" probability, softened by ``T`` on both sides."""
    s_diff = _bpr_margin(ctx)
    return (1 - alpha) * bpr_term(s_diff) + alpha * soft_bce_term(s_diff, _teacher_diff(ctx), T)
