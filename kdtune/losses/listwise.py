"""Listwise KD (Hinton et al., 2015, over the teacher's top-K list; woriazzc/KDs ``modeling/KD/cf/baseline.py``
``KD``): softmax distillation over each user's top-K teacher items. Conventions: :mod:`kdtune.losses.registry`."""

from __future__ import annotations

import torch

from kdtune.losses.registry import KDContext, _bpr_margin, _distinct_users, _topn_check, bpr_term, register


def listwise_term(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    """``T^2 * mean_u KL(softmax(t_u / T) || softmax(s_u / T))`` over each row's K items.

    ``s`` and ``t`` are ``[U, K]`` (student and teacher scores of the same items). The KL is the
    cross-entropy ``-sum_i p_t(i) log p_s(i)`` (KDs' ``F.cross_entropy(s / T, softmax(t / T))``) less the
    teacher's entropy, a constant: same gradients, and 0 when the student's list matches. ``T^2`` keeps
    the gradient's scale comparable across temperatures (Hinton et al., 2015).
    """
    p_t = torch.softmax(t / T, dim=1)
    log_p_s = torch.log_softmax(s / T, dim=1)
    # xlogy: a teacher probability that underflows to 0 contributes 0, not 0 * -inf
    kl = (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(1)
    return T * T * kl.mean()


@register(
    "listwise",
    uses_temperature=True, list_params=("listwise_k",),
    description="listwise Hinton KD: T^2 KL(softmax(t/T) || softmax(s/T)) over each user's top-K teacher items",
)
def listwise_loss(ctx: KDContext, alpha: float = 0.5, T: float = 1.0, listwise_k: int = 10) -> torch.Tensor:
    """Listwise KD, once per distinct user of the batch: the teacher's top ``listwise_k`` items (from
    ``ctx.topn``, training positives already masked) as one softmax at temperature ``T`` on both sides.

    Total ``(1 - alpha) * BPR + alpha * T^2 * KL``. KDs' ``KD`` (``kd_K`` 50) sums the cross-entropy over
    the batch's triplets and can also take the student's own top-K (``kd_guide: student``, renewed each
    epoch); here the list is the teacher's, as in Hinton's distillation of the teacher's distribution,
    and each user counts once per batch like the other per-user terms. Only the order and the relative
    gaps inside the list are taught: the BPR part keeps the list above the rest of the catalogue.
    """
    if T <= 0:
        raise ValueError(f"T must be > 0, got {T}")
    k = int(listwise_k)
    _topn_check(ctx, k, "listwise_k")
    users = _distinct_users(ctx)
    items = ctx.topn.narrow(1, 0, k).index_select(0, users)
    with torch.no_grad():
        t = ctx.teacher(users, items)
    s = ctx.student(users, items)
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * listwise_term(s, t, T)

