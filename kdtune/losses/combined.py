"""Losses that combine the distillation terms of several papers: ``de_rrd`` (Kang et al., CIKM'20).
Conventions: :mod:`kdtune.losses.registry`."""

from __future__ import annotations

import torch

from kdtune.losses.experts import de_soft, make_de_extra
from kdtune.losses.ranking import rrd_soft
from kdtune.losses.registry import KDContext, _bpr_margin, bpr_term, register


@register(
    "de_rrd",
    uses_temperature=False, additive=True, list_params=("rrd_k",),
    make_extra=make_de_extra,
    description="DE-RRD (Kang et al. 2020): BPR + a (lambda_de DE + lambda_rrd RRD), the paper's combination",
)
def de_rrd_loss(
    ctx: KDContext,
    alpha: float = 0.5,
    T: float = 1.0,
    lambda_de: float = 1.0,
    lambda_rrd: float = 0.1,
    de_experts: int = 30,
    de_tau_start: float = 1.0,
    de_tau_end: float = 1e-10,
    de_rows: int = 0,
    rrd_k: int = 10,
    rrd_l: int = 50,
    rrd_lambda: float = 10.0,
    rrd_pool: str = "per_user",
) -> torch.Tensor:
    """DE-RRD (Kang et al., CIKM'20; SeongKu-Kang/DE-RRD_CIKM20 ``run.py``): ``BPR + alpha * (lambda_de *
    DE + lambda_rrd * RRD)``, the paper's ``L_base + lambda_DE L_DE + lambda_RRD L_RRD`` with ``alpha``
    as a common scale (``alpha = 0`` is the plain student).

    DE is :func:`~kdtune.losses.experts.de_loss`'s term (experts mixed by the annealed Gumbel-softmax, over at
    most ``de_rows`` rows when it is set), RRD
    :func:`~kdtune.losses.ranking.rrd_loss`'s (per-user uninteresting draws by default); each takes its
    loss's parameters. The weights' ratio, 10 : 1, is the reference's (``lmbda_DE`` 0.01 in
    ``main_DE.py``, ``URRD_lmbda`` 0.001 in ``main_URRD.py``; both terms are sums over a batch's rows there
    and means here, and a batch has about as many distinct users as distinct items, so the ratio carries
    over while the scale goes to ``alpha``). ``T`` is unused.
    """
    soft = lambda_de * de_soft(ctx, de_experts, de_tau_start, de_tau_end, de_rows)
    soft = soft + lambda_rrd * rrd_soft(ctx, rrd_k, rrd_l, rrd_lambda, rrd_pool)
    return bpr_term(_bpr_margin(ctx)) + alpha * soft
