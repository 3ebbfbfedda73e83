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


def _softmax_lse_(z: torch.Tensor, masked: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's softmax, written over ``z``, and its log-sum-exp ``[U]``; ``masked`` cells count as -inf."""
    if masked is not None:
        z.masked_fill_(masked, -torch.inf)
    top = z.amax(1, keepdim=True)
    total = z.sub_(top).exp_().sum(1, keepdim=True)
    return z.div_(total), (top + total.log()).squeeze(1)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[U]``: each row of ``a`` dotted with the same row of ``b`` (a batched matrix-vector product, no
    ``[U, n]`` temporary)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class CatalogKL(torch.autograd.Function):
    """``T^2 * mean_u KL(softmax(t_u / T) || softmax(s_u / T))`` over each row's unmasked cells, with its
    closed-form gradient ``T (softmax(s_u / T) - softmax(t_u / T)) / U`` kept from the forward pass.

    The same value and gradient as :func:`listwise_term` over the unmasked cells (tested), in about half the
    passes over the ``[U, n_items]`` scores that autograd's softmax/log-softmax chain makes. A masked cell
    (``seen``) has probability 0 on both sides, so no gradient.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, seen: torch.Tensor | None, T: float) -> torch.Tensor:
        p_s, lse_s = _softmax_lse_(s.mul(1.0 / T), seen)
        p_t, lse_t = _softmax_lse_(t.mul(1.0 / T), seen)  # 0 where masked
        # KL_u = sum_i p_t (log p_t - log p_s) = sum_i p_t (t - s) / T - lse_t + lse_s, with the unmasked scores:
        # p_t is 0 wherever they were masked, so every product is finite
        kl = (_row_dot(p_t, t) - _row_dot(p_t, s)) / T - lse_t + lse_s
        ctx.save_for_backward(p_s.sub_(p_t).mul_(T / s.shape[0]))
        return T * T * kl.mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (g,) = ctx.saved_tensors
        return g.mul_(grad), None, None, None


def catalogue_scores(model, users: torch.Tensor) -> torch.Tensor:
    """``[U, n_items]`` scores of every item for ``users`` less the user's own bias (a softmax over a user's
    row ignores it), read through the model's row gathers so that a training optimiser sees the reads."""
    items = torch.arange(model.n_items, device=users.device)
    return torch.addmm(model.item_bias_of(items).T, model.user_vectors(users), model.item_vectors(items).T)


@register(
    "catalog_kd",
    uses_temperature=True,
    description="Hinton KD over the whole catalogue: T^2 KL(softmax(t/T) || softmax(s/T)) over every unseen item",
)
def catalog_kd_loss(ctx: KDContext, alpha: float = 0.5, T: float = 0.3, catalog_kd_users: int = 128) -> torch.Tensor:
    """Hinton et al., 2015 (Distilling the Knowledge in a Neural Network) over each user's whole catalogue;
    woriazzc/KDs ``modeling/KD/cf/baseline.py`` ``KD`` with its list ``kd_K`` the whole catalogue.

    :func:`listwise_term`'s KL over every item a user has not trained on (:class:`CatalogKL`), for at most ``catalog_kd_users`` of the
    batch's distinct users (drawn without replacement from ``ctx.generator``): with the default batch of
    4,096 triplets and 128 users that is about one row per user per epoch on CiteULike-a, where every distinct
    user of every batch would cost ~20x more. Training positives are masked on both sides (as the teacher's
    top-N lists are), so the term teaches how the teacher orders the unseen catalogue and leaves the positives
    to BPR. Total ``(1 - alpha) * BPR + alpha * T^2 * KL``. Low temperatures (< 1) matter here: a BPR teacher's
    scores spread over a few units, so at ``T >= 1`` its softmax over ~17k items is nearly flat beyond the
    top (BENCHMARKS.md, "Hinton KD over the whole catalogue").
    """
    if T <= 0:
        raise ValueError(f"T must be > 0, got {T}")
    if catalog_kd_users < 1:
        raise ValueError(f"catalog_kd_users must be >= 1, got {catalog_kd_users}")
    users = _distinct_users(ctx)
    if users.numel() > catalog_kd_users:
        pick = torch.randperm(users.numel(), generator=ctx.generator, device=ctx.generator.device)
        users = users.index_select(0, pick[: int(catalog_kd_users)].to(users.device))
    with torch.no_grad():
        t = catalogue_scores(ctx.teacher, users)
        seen = ctx.positives.rows(users) if ctx.positives is not None else None
        full = seen.all(1) if seen is not None else None
        if full is not None and bool(full.any()):  # a user who trained on every item has nothing to learn
            keep = (~full).nonzero().squeeze(1)
            users, t, seen = users.index_select(0, keep), t.index_select(0, keep), seen.index_select(0, keep)
    bpr = (1 - alpha) * bpr_term(_bpr_margin(ctx))
    if users.numel() == 0:
        return bpr
    return bpr + alpha * CatalogKL.apply(catalogue_scores(ctx.student, users), t, seen, T)

