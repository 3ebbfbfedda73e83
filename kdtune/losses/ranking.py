"""Ranking distillation from the teacher's top-N list, per distinct user of the batch: ``rd`` (Tang & Wang,
KDD'18), ``cd`` (Lee et al., 2019) and ``rrd`` (Kang et al., CIKM'20). Conventions:
:mod:`kdtune.losses.registry`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdtune.losses.draws import rank_weights, sample_ranks, shared_uninteresting
from kdtune.losses.registry import (
    KDContext,
    _bpr_margin,
    _distinct_users,
    _epoch_draw,
    _topn_check,
    bpr_term,
    register,
)
from kdtune.model.mf import row_dot
from kdtune.model.rows import gather_rows


def rd_term(s_top: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Ranking Distillation: ``mean_u(-sum_r w_r log sigmoid(s(u, pi_r)))``; ``s_top`` is ``[U, K]``."""
    return -(F.logsigmoid(s_top) * weights).sum(1).mean()


def cd_term(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    """Collaborative Distillation: ``mean BCE(sigmoid(s), sigmoid(t / T))`` over the sampled items.

    ``s`` and ``t`` are ``[U, K]`` (K items per user): the mean over all cells is the mean over users of
    each user's mean over its K items.
    """
    return F.binary_cross_entropy_with_logits(s, torch.sigmoid(t / T))


class _RRDTerm(torch.autograd.Function):
    """:func:`rrd_term`'s value and its gradient with respect to the scores, written out.

    With ``Z_k = log(sum_{i>=k} exp s_i + sum_j exp u_j)`` (the log of rank k's Plackett-Luce
    denominator) the term is ``mean_u sum_k (Z_k - s_k)``; its gradient is, per user (before the 1/U),
    ``exp(s_i + A_i) - 1`` for an interesting score and ``exp(u_j + A_{K-1})`` for a valid uninteresting
    one, where ``A_i = log sum_{k<=i} exp(-Z_k)``. Every exponent is ``<= log K`` (``s_i <= Z_k`` for
    ``k <= i`` and ``u_j <= Z_k`` for all k), so nothing overflows, and an exponent that underflows is a
    term that is 0 to working precision. ``Z`` and ``A`` are running ``logaddexp``'s over the K ranks, one
    vectorised call per rank (K is ~10): exact and stable, and cheaper than torch's ``logcumsumexp``, whose
    forward and backward on CPU were ~1.5 ms of a ~14 ms ``rrd`` step at batch 4,096.
    """

    @staticmethod
    def forward(ctx, s_int: torch.Tensor, s_un: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        n_u, k = s_int.shape
        if valid is not None:
            # the dtype's lowest finite value rather than -inf: exp() of it is 0, yet a row with no valid
            # cell still has a finite log-sum-exp
            s_un = torch.where(valid, s_un, torch.finfo(s_un.dtype).min)
        # the uninteresting cells' log-sum-exp, keeping exp(u_j - max) for the backward: e <= 1, and the
        # row's largest cell contributes 1 to the sum, so the log never sees an underflow
        top = s_un.amax(1, keepdim=True)
        e = s_un.sub(top).exp_()
        below = e.sum(1).log_().add_(top.squeeze(1))
        st = s_int.T.contiguous()  # [K, U]: each rank's scores contiguous
        z = torch.empty_like(st)
        torch.logaddexp(st[k - 1], below, out=z[k - 1])
        for r in range(k - 2, -1, -1):
            torch.logaddexp(st[r], z[r + 1], out=z[r])
        ctx.save_for_backward(st, e, top, z)
        return (z.sum() - st.sum()) / n_u

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        st, e, top, z = ctx.saved_tensors
        k, n_u = st.shape
        a = z.neg()  # a[r] = log sum_{k<=r} exp(-z[k]), accumulated in place
        for r in range(1, k):
            torch.logaddexp(a[r - 1], a[r], out=a[r])
        scale = grad / n_u
        g_int = g_un = None
        if ctx.needs_input_grad[0]:
            g_int = (st + a).exp_().sub_(1).mul_(scale).T.contiguous()
        if ctx.needs_input_grad[1]:
            # exp(u_j + A_{K-1}) = e_j * exp(max + A_{K-1}), whose exponent is <= log K (masked cells: e = 0)
            g_un = e * top.add(a[k - 1].unsqueeze(1)).exp_().mul_(scale)
        return g_int, g_un, None


def rrd_term(
    s_interesting: torch.Tensor, s_uninteresting: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Relaxed ranking distillation (listwise, Plackett-Luce over the interesting items only).

    ``s_interesting`` is ``[U, K]`` sorted by teacher rank, ``s_uninteresting`` is ``[U, L]``:
    ``mean_u -sum_k [s_k - log(sum_{i>=k} exp s_i + sum_j exp s_j)]``. ``valid`` (``[U, L]`` bool)
    leaves out the uninteresting cells marked False (their ``exp s_j`` counts as 0). The gradient is
    computed in closed form (:class:`_RRDTerm`).
    """
    return _RRDTerm.apply(s_interesting, s_uninteresting, valid)


@register(
    "rd",
    uses_temperature=False,
    description="Ranking Distillation (Tang & Wang 2018): teacher's top-K as weighted extra positives",
)
def rd_loss(
    ctx: KDContext, alpha: float = 0.5, T: float = 1.0, rd_k: int = 10, rd_lambda: float = 5.0
) -> torch.Tensor:
    """RD: the teacher's top ``rd_k`` items as extra positives, weighted ``∝ exp(-r / rd_lambda)``,
    once per distinct user of the batch.

    The paper's weighted pointwise form with positives only: the BPR part already pushes a sampled
    negative down. ``rd_lambda`` defaults to ``rd_k / 2`` for the default ``rd_k``. ``T`` is unused.
    """
    k = int(rd_k)
    _topn_check(ctx, k, "rd_k")
    users = _distinct_users(ctx)
    s_top = ctx.student(users, ctx.topn.narrow(1, 0, k).index_select(0, users))
    weights = rank_weights(k, rd_lambda, s_top.device)
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * rd_term(s_top, weights)


@register(
    "cd",
    uses_temperature=True,
    description="Collaborative Distillation (Lee et al. 2019): rank-aware sampled items, soft labels sigmoid(t/T)",
)
def cd_loss(
    ctx: KDContext, alpha: float = 0.5, T: float = 1.0, cd_samples: int = 10, cd_lambda: float = 10.0
) -> torch.Tensor:
    """CD: for each distinct user of the batch, ``cd_samples`` items drawn without replacement from
    the teacher's top-N with ``p(r) ∝ exp(-r / cd_lambda)``; pointwise BCE of the student's
    ``sigmoid(s)`` (not divided by ``T``) against the soft label ``sigmoid(t / T)``.
    """
    k = int(cd_samples)
    _topn_check(ctx, k, "cd_samples")

    @torch.no_grad()
    def draw(users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cols = sample_ranks(len(users), ctx.topn.shape[1], k, cd_lambda, ctx.generator).to(ctx.topn.device)
        items = ctx.topn[users.unsqueeze(1), cols]
        return items, ctx.teacher(users, items)  # the soft labels' logits come with the draw

    users, (items, t) = _epoch_draw(ctx, ("cd", k, float(cd_lambda)), draw)
    s = ctx.student(users, items)
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * cd_term(s, t, T)


@register(
    "rrd",
    uses_temperature=False,
    description="Relaxed Ranking Distillation (Kang et al. 2020): listwise on sampled interesting items",
)
def rrd_loss(
    ctx: KDContext,
    alpha: float = 0.5,
    T: float = 1.0,
    rrd_k: int = 10,
    rrd_l: int = 50,
    rrd_lambda: float = 10.0,
) -> torch.Tensor:
    """RRD, once per distinct user of the batch: ``rrd_k`` interesting items sampled from the teacher's
    top-N (``p(r) ∝ exp(-r / rrd_lambda)``, without replacement, kept in teacher order) must outrank
    each other in that order and ``rrd_l`` uninteresting items, uniform draws outside the user's top-N
    and outside its training positives (``ctx.positives``; without it only the top-N is excluded). As in
    the paper, ``T`` is unused.

    The uninteresting items are drawn once per batch and shared by the batch's users
    (:func:`kdtune.kd_sampling.shared_uninteresting`): a draw that falls in a user's top-N or positives
    is left out of that user's term, so each user's set is still a uniform draw from its own complement
    (of ``rrd_l`` less ~(N + |positives|) / n_items of it), and the ``U x rrd_l`` scores are one dense
    product rather than ``U x rrd_l`` gathered rows: ~5x less work per step on CiteULike-a. The draws of
    different users of a batch are then correlated; each user's term is unbiased all the same.
    """
    k, n_l = int(rrd_k), int(rrd_l)
    _topn_check(ctx, k, "rrd_k")
    if n_l < 1:
        raise ValueError(f"rrd_l={n_l} must be >= 1")

    def draw(users: torch.Tensor) -> tuple[torch.Tensor]:
        # sorted positions keep the interesting items in teacher-rank order, as the listwise term needs
        cols = sample_ranks(len(users), ctx.topn.shape[1], k, rrd_lambda, ctx.generator).to(ctx.topn.device)
        return (ctx.topn[users.unsqueeze(1), cols],)

    users, (interesting,) = _epoch_draw(ctx, ("rrd", k, float(rrd_lambda)), draw)
    pool, valid = shared_uninteresting(users, ctx.topn, ctx.student.n_items, n_l, ctx.generator, ctx.positives,
                                       ctx.draws)
    student = ctx.student
    # Scores without the user bias: the term is invariant to adding one constant to all of a user's
    # scores (every log-denominator moves with them), so that bias gets exactly zero gradient from it.
    p = student.user_vectors(users)  # read once for both products
    s_interesting = row_dot(p, student.item_vectors(interesting))
    s_interesting = s_interesting + gather_rows(student.item_bias.weight, interesting).squeeze(-1)
    s_pool = torch.addmm(gather_rows(student.item_bias.weight, pool).T, p, student.item_vectors(pool).T)
    soft = rrd_term(s_interesting, s_pool, valid)
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * soft



