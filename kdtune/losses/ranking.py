"""Ranking distillation from the teacher's top-N list, per distinct user of the batch: ``rd`` (Tang & Wang,
KDD'18), ``cd`` (Lee et al., ICDM'19) and ``rrd`` (Kang et al., CIKM'20). Conventions:
:mod:`kdtune.losses.registry`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdtune.losses.draws import (
    model_topn,
    per_user_uninteresting,
    rank_weights,
    row_sample,
    sample_ranks,
    shared_uninteresting,
    uniform_non_positives,
)
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


def rd_dynamic_weights(s_top: torch.Tensor, s_samples: torch.Tensor, n_items: int, mu: float) -> torch.Tensor:
    """RD's dynamic (rank-discrepancy) weights ``[U, K]`` of the teacher's top-K items, as rank_distill's
    ``distill_caser.py`` computes them: ``tanh(max(mu * (rank_hat_r - r), 0))`` for the item at teacher rank
    ``r`` (0-based), where the student's rank of that item is estimated from ``s_samples`` ``[U, S]``, the
    student's scores of S uniformly sampled items: ``rank_hat = floor((n_items - 1) * #{s_j > s_r} / S)``.
    An item the student already ranks as high as the teacher does gets weight 0."""
    above = (s_samples.unsqueeze(1) > s_top.unsqueeze(2)).sum(2).to(s_top.dtype)  # [U, K]
    rank_hat = torch.floor((n_items - 1) * above / s_samples.shape[1])
    r = torch.arange(s_top.shape[1], dtype=s_top.dtype, device=s_top.device)
    return torch.tanh((mu * (rank_hat - r)).clamp_(min=0.0))


def cd_term(s: torch.Tensor, t: torch.Tensor, T: float, shift: float = 0.0) -> torch.Tensor:
    """Collaborative Distillation: ``mean BCE(sigmoid(s), sigmoid((t + shift) / T))`` over the sampled items.

    The soft label is woriazzc/KDs' (``modeling/KD/cf/baseline.py``, ``CD.get_loss``: ``sigmoid((t + t2)
    / t1)``, ``t1`` our ``T``, ``t2`` our ``shift``). ``s`` and ``t`` are ``[U, K]`` (K items per user):
    the mean over all cells is the mean over users of each user's mean over its K items.
    """
    return F.binary_cross_entropy_with_logits(s, torch.sigmoid((t + shift) / T))


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
    uses_temperature=False, list_params=("rd_k",),
    description="Ranking Distillation (Tang & Wang 2018): teacher's top-K as extra positives, hybrid weights",
)
def rd_loss(
    ctx: KDContext,
    alpha: float = 0.5,
    T: float = 1.0,
    rd_k: int = 10,
    rd_lambda: float = 5.0,
    rd_mu: float = 0.1,
    rd_dynamic_samples: int = 100,
    rd_warmup: int = 10,
) -> torch.Tensor:
    """RD (Tang & Wang, KDD'18; graytowne/rank_distill ``distill_caser.py``): the teacher's top ``rd_k``
    items as extra positives with the paper's *hybrid* weight, once per distinct user of the batch.

    Weight of teacher rank ``r`` = static ``∝ exp(-r / rd_lambda)`` (normalised over the K ranks) times,
    after ``rd_warmup`` epochs of static weights only, the dynamic weight :func:`rd_dynamic_weights`
    (``rd_mu``; the student's rank estimated from ``rd_dynamic_samples`` uniform non-positive items per
    user, drawn once per epoch as the reference does, scored by the current student). The hybrid is not
    renormalised (the reference's ``_weight_renormalize = False``) and carries no gradient. ``rd_mu``,
    ``rd_dynamic_samples`` and ``rd_warmup`` default to the reference's (0.1, 100, 10); a ``rd_warmup`` past
    the run's epochs keeps the static weight only. The paper's weighted pointwise form with positives only:
    the BPR part already pushes a sampled negative down. ``T`` is unused.
    """
    k, n_dyn = int(rd_k), int(rd_dynamic_samples)
    _topn_check(ctx, k, "rd_k")
    users = _distinct_users(ctx)
    s_top = ctx.student(users, ctx.topn.narrow(1, 0, k).index_select(0, users))
    weights = rank_weights(k, rd_lambda, s_top.device).expand_as(s_top)
    if ctx.epoch >= int(rd_warmup):
        if n_dyn < 1:
            raise ValueError(f"rd_dynamic_samples={n_dyn} must be >= 1")
        n_items = ctx.student.n_items

        def draw(rows: torch.Tensor) -> tuple[torch.Tensor]:
            return (uniform_non_positives(rows, n_items, n_dyn, ctx.generator, ctx.positives),)

        _, (samples,) = _epoch_draw(ctx, ("rd", n_dyn), draw)
        with torch.no_grad():
            dynamic = rd_dynamic_weights(s_top.detach(), ctx.student(users, samples), n_items, rd_mu)
        weights = weights * dynamic
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * rd_term(s_top, weights)


CD_GUIDES = ("teacher", "student", "hybrid")


@register(
    "cd",
    uses_temperature=True, list_params=("cd_samples",),
    description="Collaborative Distillation (Lee et al. 2019): rank-aware sampled items, soft labels "
    "sigmoid((t+shift)/T)",
)
def cd_loss(
    ctx: KDContext,
    alpha: float = 0.5,
    T: float = 1.0,
    cd_samples: int = 10,
    cd_lambda: float = 10.0,
    cd_guide: str = "student",
    cd_shift: float = 0.0,
) -> torch.Tensor:
    """CD (Lee et al., ICDM'19; woriazzc/KDs ``modeling/KD/cf/baseline.py``, ``CD``): for each distinct user
    of the batch, ``cd_samples`` items drawn without replacement from a top-N ranking with
    ``p(r) ∝ exp(-r / cd_lambda)``; pointwise BCE of the student's ``sigmoid(s)`` (not divided by ``T``)
    against the teacher's soft label ``sigmoid((t + cd_shift) / T)`` (:func:`cd_term`).

    ``cd_guide`` says whose ranking the items come from: ``teacher`` (the teacher's top-N, ``ctx.topn``),
    ``student`` (the student's current top-N, training positives left out, ranked once per epoch for every
    user: the reference's default strategy, "student guide", re-ranked each epoch) or ``hybrid`` (half
    of the items, rounded up, from the teacher's ranking and the rest from the student's, so an item both
    rank high may be drawn twice; kdtune's mix, the references have the two pure strategies only). N is the teacher's top-N length. The reference draws
    from its guide's top 3,000 by a better-of-two race instead of ``exp(-r / lambda)`` over the top-N.
    """
    k = int(cd_samples)
    _topn_check(ctx, k, "cd_samples")
    if cd_guide not in CD_GUIDES:
        raise ValueError(f"cd_guide={cd_guide!r}; known: {', '.join(CD_GUIDES)}")
    n = ctx.topn.shape[1]
    k_teacher = {"teacher": k, "student": 0, "hybrid": math.ceil(k / 2)}[cd_guide]

    @torch.no_grad()
    def draw(users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        if k_teacher:
            cols = sample_ranks(len(users), n, k_teacher, cd_lambda, ctx.generator).to(ctx.topn.device)
            parts.append(ctx.topn[users.unsqueeze(1), cols])
        if k - k_teacher:
            ranking = model_topn(ctx.student, users, n, ctx.positives)
            cols = sample_ranks(len(users), n, k - k_teacher, cd_lambda, ctx.generator).to(ranking.device)
            parts.append(ranking.gather(1, cols))
        items = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return items, ctx.teacher(users, items)  # the soft labels' logits come with the draw

    users, (items, t) = _epoch_draw(ctx, ("cd", k, float(cd_lambda), cd_guide), draw)
    s = ctx.student(users, items)
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * cd_term(s, t, T, cd_shift)


RRD_POOLS = ("per_user", "shared")


def rrd_soft(
    ctx: KDContext, rrd_k: int, rrd_l: int, rrd_lambda: float, rrd_pool: str, rrd_users: int = 0
) -> torch.Tensor:
    """The RRD term of :func:`rrd_loss` alone (``de_rrd`` reuses it); ``rrd_users > 0`` estimates the
    batch's mean over its distinct users on at most that many of them, drawn uniformly without
    replacement (an unbiased estimate of the mean; 0, the reference's, takes every one)."""
    k, n_l = int(rrd_k), int(rrd_l)
    _topn_check(ctx, k, "rrd_k")
    if n_l < 1:
        raise ValueError(f"rrd_l={n_l} must be >= 1")
    if rrd_pool not in RRD_POOLS:
        raise ValueError(f"rrd_pool={rrd_pool!r}; known: {', '.join(RRD_POOLS)}")
    per_user = rrd_pool == "per_user"
    n_items = ctx.student.n_items

    def draw(users: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # sorted positions keep the interesting items in teacher-rank order, as the listwise term needs
        cols = sample_ranks(len(users), ctx.topn.shape[1], k, rrd_lambda, ctx.generator).to(ctx.topn.device)
        interesting = ctx.topn[users.unsqueeze(1), cols]
        if not per_user:
            return (interesting,)
        return interesting, *per_user_uninteresting(users, ctx.topn, n_items, n_l, ctx.generator,
                                                    ctx.positives, ctx.draws)

    key = ("rrd", k, float(rrd_lambda), rrd_pool, n_l if per_user else None)
    users, drawn = _epoch_draw(ctx, key, draw)
    if 0 < int(rrd_users) < len(users):
        keep = row_sample(torch.arange(len(users), device=users.device), int(rrd_users), ctx.generator)
        users, drawn = users[keep], tuple(x[keep] for x in drawn)
    student = ctx.student
    # Scores without the user bias: the term is invariant to adding one constant to all of a user's
    # scores (every log-denominator moves with them), so that bias gets exactly zero gradient from it.
    p = student.user_vectors(users)  # read once for both products
    s_interesting = row_dot(p, student.item_vectors(drawn[0]))
    s_interesting = s_interesting + gather_rows(student.item_bias.weight, drawn[0]).squeeze(-1)
    if per_user:
        un, valid = drawn[1], drawn[2]
        s_un = row_dot(p, student.item_vectors(un)) + gather_rows(student.item_bias.weight, un).squeeze(-1)
        return rrd_term(s_interesting, s_un, None if bool(valid.all()) else valid)
    pool, valid = shared_uninteresting(users, ctx.topn, n_items, n_l, ctx.generator, ctx.positives, ctx.draws)
    s_pool = torch.addmm(gather_rows(student.item_bias.weight, pool).T, p, student.item_vectors(pool).T)
    return rrd_term(s_interesting, s_pool, valid)


@register(
    "rrd",
    uses_temperature=False, list_params=("rrd_k",),
    description="Relaxed Ranking Distillation (Kang et al. 2020): listwise on sampled interesting items",
)
def rrd_loss(
    ctx: KDContext,
    alpha: float = 0.5,
    T: float = 1.0,
    rrd_k: int = 10,
    rrd_l: int = 50,
    rrd_lambda: float = 10.0,
    rrd_pool: str = "per_user",
    rrd_users: int = 0,
) -> torch.Tensor:
    """RRD (Kang et al., CIKM'20; SeongKu-Kang/DE-RRD_CIKM20 ``Utils/loss.py``, ``Utils/dataset.py``), once
    per distinct user of the batch: ``rrd_k`` interesting items sampled from the teacher's top-N
    (``p(r) ∝ exp(-r / rrd_lambda)``, without replacement, kept in teacher order) must outrank each other in
    that order and ``rrd_l`` uninteresting items (:func:`rrd_term`). As in the paper, ``T`` is unused.

    ``rrd_pool="per_user"`` (the reference's): each user's uninteresting items are drawn without replacement
    from its own complement (outside its top-N and its training positives ``ctx.positives``; without them
    only the top-N is excluded), once per epoch for every user like the interesting items
    (:func:`kdtune.losses.draws.per_user_uninteresting`).

    ``rrd_pool="shared"`` (faster, kdtune's): ``rrd_l`` uniform draws once per batch, shared by the batch's
    users (:func:`kdtune.losses.draws.shared_uninteresting`); a draw that falls in a user's top-N or
    positives is left out of that user's term, so each user's set is a uniform draw with replacement from
    its own complement (of ``rrd_l`` less ~(N + |positives|) / n_items of it), and the ``U x rrd_l`` scores
    are one dense product rather than ``U x rrd_l`` gathered rows: ~5x less work per step on CiteULike-a.
    The draws of different users of a batch are then correlated; each user's term is unbiased all the same.

    ``rrd_users`` (0, the reference's: every distinct user of the batch) caps the users a batch's term is
    estimated on (:func:`rrd_soft`).
    """
    soft = rrd_soft(ctx, rrd_k, rrd_l, rrd_lambda, rrd_pool, rrd_users)
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * soft
