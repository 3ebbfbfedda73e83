"""BPR and the distillation losses: plain functions of tensors, registered by name.

Each registered loss is ``fn(ctx, alpha=..., T=..., **params) -> scalar`` where ``ctx`` is a
:class:`KDContext` (one BPR batch plus the teacher's knowledge). The soft parts are plain tensor
functions (``*_term``) so that they can be tested against hand-computed values; the registered
functions only gather tensors from ``ctx`` and call them.

Conventions shared by every loss:

- total = ``(1 - alpha) * BPR + alpha * soft`` (``de`` follows its paper: ``BPR + alpha * DE``), so
  ``alpha = 0`` is the plain student for every loss.
- The BPR part, ``mse_diff`` and ``soft_bce`` are per triplet: a mean over the batch's triplets.
- ``rd``, ``cd``, ``rrd`` and ``de``'s user side are **per-user** objectives in their papers (a sum over
  users of a term over that user's items). They are computed once per **distinct user of the batch**
  (``torch.unique(ctx.users)``), over that user's items, and averaged over the distinct users: a
  user with three triplets in the batch counts once, as in the papers' per-user sums (the DE-RRD
  reference code also takes ``unique`` of the batch's users). A user's weight over an epoch is
  then the number of batches it appears in, which grows with its activity but sub-linearly; computing
  the term per triplet instead recomputed an active user's items once per triplet (17x BPR's cost for
  ``rrd``). ``de``'s item side is likewise over the batch's distinct items (positives and negatives).
- ``cd`` and ``rrd`` draw their items **once per epoch for every user**, as the RRD paper's code does,
  when the training loop says which epoch it is (``ctx.epoch`` and ``ctx.draws``, set by
  :func:`kdtune.train.make_step`); a batch then gathers its users' rows. Drawing per batch instead
  (what a context without ``draws`` gets: vectorised over the batch's distinct users) draws for each
  user in every batch it appears in, about 17x more rows per epoch on CiteULike-a; the draws (rank
  race, uniform items, redraws of training positives) were ~40% of an ``rrd`` step.
- A per-user term scores its ``[U, K]`` items through the student's own forward: one gathered row per
  cell, one gradient row per cell to the optimiser. Reading each distinct item once instead (a
  deduplicated gather and a scatter of the cells onto the distinct rows) cost more than it saved at
  every dim measured (8-64, CiteULike-a, batch 4,096).
- Teacher quantities are computed under ``torch.no_grad()``: gradients reach the student (and
  ``ctx.extra``) only, even if the teacher's parameters still require grad.
- Sampling draws from ``ctx.generator`` on the generator's device (a seeded generator makes a loss
  deterministic); pass a generator on the training device to avoid host/device copies.
- ``T`` is used by ``mse_diff`` (a pure rescaling), ``soft_bce`` and ``cd`` (soft labels); the others
  accept and ignore it (``LossDef.uses_temperature`` says which, so a search need not tune it).

Sampling helpers live in :mod:`kdtune.kd_sampling` and DE's experts in :mod:`kdtune.experts`; both are
re-exported here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdtune.experts import DistillationExperts, gumbel_select, make_de_extra
from kdtune.kd_sampling import (
    rank_weights,
    sample_ranks,
    shared_uninteresting,
    sorted_topn_of,
)
from kdtune.models import MF, row_dot
from kdtune.optim import gather_rows
from kdtune.sampling import PositiveSet

__all__ = [
    "LOSSES",
    "DistillationExperts",
    "KDContext",
    "LossDef",
    "get_loss",
    "gumbel_select",
    "make_de_extra",
    "rank_weights",
    "register",
    "sample_ranks",
    "sorted_topn_of",
]


@dataclass
class KDContext:
    """What the distillation loop hands a loss for one batch."""

    student: MF
    teacher: MF  # frozen (requires_grad False), eval mode
    topn: torch.Tensor  # int64 [n_users, N]: teacher's top-N items per user, best first, train items masked
    users: torch.Tensor  # int64 [B]: a BPR batch: user,
    pos: torch.Tensor  # int64 [B]: a training positive of that user,
    neg: torch.Tensor  # int64 [B]: a uniformly drawn non-positive item
    generator: torch.Generator  # for any sampling inside the loss (seeded -> deterministic)
    extra: nn.Module | None = None  # trainable helper params of losses that need them (DE experts)
    positives: PositiveSet | None = None  # the training pairs (rrd keeps them out of its uninteresting items)
    epoch: int = 0  # which epoch the batch belongs to: per-epoch draws are renewed when it changes
    draws: dict | None = None  # per-run store for per-epoch draws; None: draw per batch instead


def _epoch_draw(
    ctx: KDContext, key: tuple, draw: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The batch's distinct users and ``draw(users)``'s tensors (one row per distinct user).

    With ``ctx.draws`` (a training loop), ``draw`` runs once per epoch for every user and the batch
    gathers its users' rows; without it, ``draw`` runs for this batch's users only. ``key`` names the
    loss and its parameters, so a changed parameter or top-N table never reuses stale draws.
    """
    users = _distinct_users(ctx)
    if ctx.draws is None:
        return users, draw(users)
    key = (*key, id(ctx.topn), ctx.topn._version)
    cached = ctx.draws.get("epoch_draw")
    if cached is None or cached[0] != (ctx.epoch, key):
        every = torch.arange(ctx.topn.shape[0], device=ctx.topn.device)
        cached = ((ctx.epoch, key), draw(every))
        ctx.draws["epoch_draw"] = cached
    return users, tuple(x.index_select(0, users) for x in cached[1])


@dataclass(frozen=True)
class LossDef:
    """A registered loss: its function, its own hyperparameters (besides alpha) and their defaults."""

    name: str
    fn: Callable[..., torch.Tensor]  # fn(ctx, alpha=..., T=..., **params) -> scalar total loss
    params: dict[str, float | int]
    uses_temperature: bool
    description: str
    # (student_dim, teacher_dim, **params) -> module holding the loss's trainable helper parameters
    make_extra: Callable[..., nn.Module] | None = None


LOSSES: dict[str, LossDef] = {}


def register(
    name: str, *, uses_temperature: bool, description: str, make_extra: Callable[..., nn.Module] | None = None
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register ``fn`` under ``name``; its keyword defaults other than alpha/T become ``params``.

    Reading the defaults from the signature keeps one source of truth for them.
    """

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        sig = inspect.signature(fn)
        params = {
            k: p.default
            for k, p in sig.parameters.items()
            if k not in ("ctx", "alpha", "T") and p.default is not inspect.Parameter.empty
        }
        LOSSES[name] = LossDef(name, fn, params, uses_temperature, description, make_extra)
        return fn

    return deco


def get_loss(name: str) -> LossDef:
    """The registered loss called ``name``; an unknown name raises ValueError listing the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}") from None


# ----------------------------------------------------------------------------- plain tensor terms


def bpr_term(s_diff: torch.Tensor) -> torch.Tensor:
    """BPR: ``mean(-log sigmoid(s_pos - s_neg))`` (softplus form, stable for large differences)."""
    return F.softplus(-s_diff).mean()


def mse_diff_term(s_diff: torch.Tensor, t_diff: torch.Tensor, T: float) -> torch.Tensor:
    """``T^2 * mean((s_diff - t_diff)^2)``; T only rescales the term (it acts as a second weight)."""
    return T * T * (s_diff - t_diff).pow(2).mean()


def soft_bce_term(s_diff: torch.Tensor, t_diff: torch.Tensor, T: float) -> torch.Tensor:
    """Pairwise Hinton KD: ``T^2 * BCE(sigmoid(s_diff / T), sigmoid(t_diff / T))``, mean over pairs.

    The ``T^2`` keeps the gradient's scale comparable across temperatures (Hinton et al., 2015).
    """
    return T * T * F.binary_cross_entropy_with_logits(s_diff / T, torch.sigmoid(t_diff / T))


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


def de_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distillation Experts: ``mean over rows of ||target - pred||^2`` (``de`` computes it fused with
    the experts, see :class:`kdtune.experts._ExpertSet`)."""
    return (target - pred).pow(2).sum(-1).mean()


# ----------------------------------------------------------------------------- registered losses


def _margin(model: MF, ctx: KDContext) -> torch.Tensor:
    """``model``'s margins ``s(u, pos) - s(u, neg)`` of the batch's triplets ``[B]`` (one forward call)."""
    s = model(ctx.users, torch.stack([ctx.pos, ctx.neg], dim=1))
    return s[:, 0] - s[:, 1]


def _bpr_margin(ctx: KDContext) -> torch.Tensor:
    """The student's margins of the batch's triplets."""
    return _margin(ctx.student, ctx)


def _distinct(ids: torch.Tensor, n: int) -> torch.Tensor:
    """The distinct values of ``ids`` (in ``0..n-1``), ascending: a mark per value rather than
    ``torch.unique``'s sort, linear in ``ids``."""
    mark = torch.zeros(n, dtype=torch.bool, device=ids.device)
    mark[ids] = True
    return mark.nonzero().squeeze(1)


def _distinct_users(ctx: KDContext) -> torch.Tensor:
    """The batch's distinct users, ascending: the rows of the per-user terms."""
    return _distinct(ctx.users, ctx.topn.shape[0])


@torch.no_grad()
def _teacher_diff(ctx: KDContext) -> torch.Tensor:
    return _margin(ctx.teacher, ctx)


def _topn_check(ctx: KDContext, k: int, what: str) -> None:
    if not 0 < k <= ctx.topn.shape[1]:
        raise ValueError(f"{what}={k} needs 1..{ctx.topn.shape[1]} (the teacher's top-N length)")


@register("bpr", uses_temperature=False, description="plain BPR student, no distillation (alpha, T ignored)")
def bpr_loss(ctx: KDContext, alpha: float = 0.5, T: float = 1.0) -> torch.Tensor:
    """The plain student: BPR on the batch's triplets."""
    return bpr_term(_bpr_margin(ctx))


@register(
    "mse_diff",
    uses_temperature=True,
    description="(1-a) BPR + a T^2 MSE(student pair margin, teacher pair margin); T only rescales",
)
def mse_diff_loss(ctx: KDContext, alpha: float = 0.5, T: float = 1.0) -> torch.Tensor:
    """Match the teacher's pair margins; ``T^2`` just scales the soft part (as specified), no softening."""
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
    pool, valid = shared_uninteresting(users, ctx.topn, ctx.student.n_items, n_l, ctx.generator, ctx.positives)
    student = ctx.student
    # Scores without the user bias: the term is invariant to adding one constant to all of a user's
    # scores (every log-denominator moves with them), so that bias gets exactly zero gradient from it.
    p = student.user_vectors(users)  # read once for both products
    s_interesting = row_dot(p, student.item_vectors(interesting))
    s_interesting = s_interesting + gather_rows(student.item_bias.weight, interesting).squeeze(-1)
    s_pool = torch.addmm(gather_rows(student.item_bias.weight, pool).T, p, student.item_vectors(pool).T)
    soft = rrd_term(s_interesting, s_pool, valid)
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * soft


@register(
    "de",
    uses_temperature=False,
    make_extra=make_de_extra,
    description="Distillation Experts (Kang et al. 2020): BPR + a ||t_emb - expert(s_emb)||^2, users and items",
)
def de_loss(
    ctx: KDContext, alpha: float = 0.5, T: float = 1.0, de_experts: int = 5, de_tau: float = 1.0
) -> torch.Tensor:
    """DE: ``BPR + alpha * (DE_users + DE_items)``, the paper's form (BPR keeps weight 1).

    Each term is ``mean ||t_emb - expert(s_emb)||^2`` over the batch's distinct users, resp. its
    distinct items (positives and negatives together). The expert is chosen per row from the teacher
    embedding by a straight-through Gumbel-softmax at temperature ``de_tau`` (not ``T``): the forward
    uses exactly one expert, as the paper's annealed (tau -> 0) selection does, while the selector
    learns through the soft relaxation; the paper instead anneals a soft mixture, which needs a
    schedule the loss cannot see.
    """
    if de_tau <= 0:
        raise ValueError(f"de_tau must be > 0, got {de_tau}")
    ex = ctx.extra
    if not isinstance(ex, DistillationExperts):
        raise ValueError(
            "loss 'de' needs ctx.extra = get_loss('de').make_extra(student_dim, teacher_dim, **params)"
        )
    if ex.n_experts != int(de_experts):
        raise ValueError(
            f"ctx.extra has {ex.n_experts} experts but de_experts={de_experts}: pass params to make_extra"
        )
    users, items = _distinct_users(ctx), _distinct(torch.cat([ctx.pos, ctx.neg]), ctx.student.n_items)
    with torch.no_grad():
        t_user, t_item = ctx.teacher.user_vectors(users), ctx.teacher.item_vectors(items)
    # each side is de_term(expert(s), t), fused; the student's rows are read in the experts' order
    soft = ex.user(users, ctx.student.user_vectors, t_user, de_tau, ctx.generator) + ex.item(
        items, ctx.student.item_vectors, t_item, de_tau, ctx.generator
    )
    return bpr_term(_bpr_margin(ctx)) + alpha * soft
