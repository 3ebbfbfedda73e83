"""DE's distillation experts (Kang et al., DE-RRD, CIKM'20; SeongKu-Kang/DE-RRD_CIKM20 ``Models/DE.py``):
small MLPs from the student's embedding space to the teacher's, mixed per row by an annealed Gumbel-softmax
over a selection network reading the teacher's embedding."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdtune.losses.draws import row_sample
from kdtune.losses.registry import KDContext, _bpr_margin, _distinct, _distinct_users, bpr_term, register


def gumbel_mixture(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """DE's soft expert selection: ``softmax((log p + g) / tau)`` per row, ``p = softmax(logits)``, ``g``
    standard Gumbel noise drawn from ``generator`` (``Models/DE.py``, ``get_DE_loss``; the reference adds
    1e-10 to ``p`` before its log, ``log_softmax`` needs no such guard). As ``tau`` goes to 0 the rows
    approach one-hot draws from ``p``."""
    u = torch.rand(logits.shape, generator=generator, device=generator.device).to(logits.device)
    g = torch.log(-torch.log(u)).neg_()
    return torch.softmax((torch.log_softmax(logits, -1) + g) / tau, -1)


def de_tau(epoch: int, epochs: int, start: float, end: float) -> float:
    """DE's annealed selection temperature of ``epoch`` (0-based) of ``epochs``: the reference's
    ``T_annealing`` (``Utils/data_utils.py``), ``start * (end / start) ** (e / epochs)``, applied as its
    training loop applies it (``run.py``, ``LOO_DE_run``): ``start`` for the first epoch, then epoch ``i``
    uses ``e = i - 1``; never below ``end``."""
    e = max(int(epoch) - 1, 0)
    return max(start * (end / start) ** (e / max(int(epochs), 1)), end)


# The mixture may skip (row, expert) pairs of weight exactly 0 (see _ExpertSet.mixture) when at most SPARSE_SHARE of
# the pairs remain (0.3: below that, one small pass per expert beats the two dense GEMMs). Off (0) by default: a
# 3-seed A/B on CiteULike-a (bench/experts.py, BENCHMARKS.md) ran DE-RRD 1.85x faster but ended 0.006 lower in
# test NDCG@20, through earlier early stops, though both paths compute the same values and gradients.
SPARSE_SHARE = 0.0


class _ExpertSet(nn.Module):
    """E experts ``Linear(ds, h) -> ReLU -> Linear(h, dt)`` batched as 3-D weights, plus a selector."""

    def __init__(self, student_dim: int, teacher_dim: int, n_experts: int):
        super().__init__()
        h = max(1, (student_dim + teacher_dim) // 2)  # the DE-RRD reference code's hidden width
        self.w1 = nn.Parameter(torch.empty(n_experts, student_dim, h))
        self.b1 = nn.Parameter(torch.empty(n_experts, h))
        self.w2 = nn.Parameter(torch.empty(n_experts, h, teacher_dim))
        self.b2 = nn.Parameter(torch.empty(n_experts, teacher_dim))
        # nn.Linear's default init, expert by expert
        for w, b, fan_in in ((self.w1, self.b1, student_dim), (self.w2, self.b2, h)):
            bound = fan_in**-0.5
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        self.selector = nn.Linear(teacher_dim, n_experts)

    def forward(
        self,
        ids: torch.Tensor,
        student_rows: Callable[[torch.Tensor], torch.Tensor],
        t: torch.Tensor,
        tau: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """DE's term ``mean_m ||t_m - sum_e w_me expert_e(s_m)||^2`` over the rows ``ids`` ``[M]``: ``t``
        ``[M, dt]`` are their teacher embeddings, ``student_rows(ids)`` reads their student embeddings
        (through the model, e.g. ``MF.user_vectors``, so that a training optimiser sees the reads).

        ``w`` ``[M, E]`` is :func:`gumbel_mixture` of the selector's logits at ``tau``. Every expert's
        hidden layer is one GEMM (``[M, ds] x [ds, E h]``); scaling each expert's block of hidden units by
        its weight makes the mixture one more GEMM (``[M, E h] x [E h, dt]``), plus ``w @ b2``: the same
        values and gradients as running every expert and summing their weighted outputs, under autograd.
        """
        w = gumbel_mixture(self.selector(t), tau, generator)  # [M, E]
        return de_term(self.mixture(student_rows(ids), w, tau), t)

    def mixture(self, s: torch.Tensor, w: torch.Tensor, tau: float | None = None) -> torch.Tensor:
        """``sum_e w_me * expert_e(s_m)`` ``[M, dt]`` for student rows ``s`` ``[M, ds]`` and weights ``w``
        ``[M, E]``.

        Dense (:meth:`dense_mixture`) while many weights are non-zero; once the annealed mixture is nearly
        one-hot (``tau`` given; the Gumbel-softmax underflows to exact zeros as ``tau`` falls), only the
        (row, expert) pairs with ``w > 0`` are computed (:meth:`sparse_mixture`). A zero weight adds nothing to
        the output and passes no gradient (the softmax's backward multiplies by ``w``), so both paths compute
        the same values and gradients up to the order of float sums (tests/test_losses.py). Dropping merely
        small weights is not the same: near one-hot, the selector's whole gradient comes from them, and AdamW
        rescales it (a 3-seed A/B in BENCHMARKS.md lost test NDCG that way). The sparse path is off unless
        ``SPARSE_SHARE`` is set above 0 (see its note)."""
        if SPARSE_SHARE > 0 and tau is not None and not w.is_cuda:  # a GPU: dense GEMMs, no host sync
            keep = w > 0
            if int(keep.sum()) <= SPARSE_SHARE * keep.numel():
                return self.sparse_mixture(s, w, keep)
        return self.dense_mixture(s, w)

    def sparse_mixture(self, s: torch.Tensor, w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The mixture over the pairs ``keep`` ``[M, E]`` only: each expert runs on the rows that keep it
        (one small two-layer pass per expert), its output scaled by the rows' weights and added up."""
        rows, experts = keep.nonzero(as_tuple=True)
        order = torch.argsort(experts, stable=True)
        rows, experts = rows[order], experts[order]
        counts = torch.bincount(experts, minlength=self.w1.shape[0]).tolist()
        out = s.new_zeros(s.shape[0], self.w2.shape[2])
        a = 0
        for e, n in enumerate(counts):
            if n:
                r = rows[a : a + n]
                hidden = torch.addmm(self.b1[e], s.index_select(0, r), self.w1[e]).relu()
                y = torch.addmm(self.b2[e], hidden, self.w2[e]) * w[r, e].unsqueeze(1)
                out = out.index_add(0, r, y)
                a += n
        return out

    def dense_mixture(self, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Every expert's hidden layer in one GEMM, the weights applied to it, then one GEMM with the
        stacked second layers."""
        n_e, ds, h = self.w1.shape
        hidden = torch.addmm(self.b1.reshape(-1), s, self.w1.transpose(0, 1).reshape(ds, n_e * h)).relu()
        mixed = (hidden.view(-1, n_e, h) * w.unsqueeze(-1)).view(-1, n_e * h)
        return torch.addmm(w @ self.b2, mixed, self.w2.reshape(n_e * h, -1))


class DistillationExperts(nn.Module):
    """DE's trainable helpers: one expert set (with its selection network) for users, one for items."""

    def __init__(self, student_dim: int, teacher_dim: int, n_experts: int = 30):
        super().__init__()
        self.n_experts = int(n_experts)
        self.user = _ExpertSet(student_dim, teacher_dim, self.n_experts)
        self.item = _ExpertSet(student_dim, teacher_dim, self.n_experts)


def make_de_extra(student_dim: int, teacher_dim: int, de_experts: int = 30, **_other_params) -> nn.Module:
    """Build DE's experts; pass the trial's params (``**params``) so that ``de_experts`` takes effect."""
    return DistillationExperts(student_dim, teacher_dim, de_experts)


def de_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distillation Experts: ``mean over rows of ||target - pred||^2``."""
    return (target - pred).pow(2).sum(-1).mean()


def de_soft(
    ctx: KDContext, de_experts: int, de_tau_start: float, de_tau_end: float, de_rows: int = 0
) -> torch.Tensor:
    """DE's term of :func:`de_loss` alone (``de_rrd`` reuses it): ``DE_users + (DE_pos + DE_neg) / 2``.

    Each mean runs over the batch's distinct users (resp. positive, negative items), as the reference;
    ``de_rows > 0`` estimates it on at most that many of them, drawn uniformly (an unbiased estimate of the
    same mean at a fraction of the experts' cost; 0, the reference, uses every row)."""
    if not 0 < de_tau_end <= de_tau_start:
        raise ValueError(f"DE needs 0 < de_tau_end <= de_tau_start, got {de_tau_end} and {de_tau_start}")
    ex = ctx.extra
    if not isinstance(ex, DistillationExperts):
        raise ValueError(
            "loss 'de' needs ctx.extra = get_loss('de').make_extra(student_dim, teacher_dim, **params)"
        )
    if ex.n_experts != int(de_experts):
        raise ValueError(
            f"ctx.extra has {ex.n_experts} experts but de_experts={de_experts}: pass params to make_extra"
        )
    tau = de_tau(ctx.epoch, ctx.epochs, de_tau_start, de_tau_end)
    n_items = ctx.student.n_items
    users, pos, neg = (row_sample(ids, int(de_rows), ctx.generator)
                       for ids in (_distinct_users(ctx), _distinct(ctx.pos, n_items), _distinct(ctx.neg, n_items)))
    with torch.no_grad():
        t_user, t_pos, t_neg = (ctx.teacher.user_vectors(users), ctx.teacher.item_vectors(pos),
                                ctx.teacher.item_vectors(neg))
    user_term = ex.user(users, ctx.student.user_vectors, t_user, tau, ctx.generator)
    pos_term = ex.item(pos, ctx.student.item_vectors, t_pos, tau, ctx.generator)
    neg_term = ex.item(neg, ctx.student.item_vectors, t_neg, tau, ctx.generator)
    return user_term + 0.5 * (pos_term + neg_term)


@register(
    "de",
    uses_temperature=False, additive=True,
    make_extra=make_de_extra,
    description="Distillation Experts (Kang et al. 2020): BPR + a ||t_emb - mix of experts(s_emb)||^2, "
    "users and items",
)
def de_loss(
    ctx: KDContext,
    alpha: float = 0.5,
    T: float = 1.0,
    de_experts: int = 30,
    de_tau_start: float = 1.0,
    de_tau_end: float = 1e-10,
    de_rows: int = 0,
) -> torch.Tensor:
    """DE (Kang et al., CIKM'20; SeongKu-Kang/DE-RRD_CIKM20 ``Models/DE.py``, ``run.py``): ``BPR + alpha *
    (DE_users + (DE_pos + DE_neg) / 2)``, the reference's form (BPR keeps weight 1).

    Each term is ``mean ||t_emb - sum_e w_e expert_e(s_emb)||^2`` over the batch's distinct users, resp.
    its distinct positive items and its distinct negative items (the reference sums over rows with a
    weight of 0.01 at batch 1,024; a mean keeps ``alpha`` independent of the batch size). ``w`` is the
    annealed Gumbel-softmax mixture :func:`gumbel_mixture` of the selection network's output on the teacher
    embedding, at the temperature :func:`de_tau` of the epoch, from ``de_tau_start`` down to ``de_tau_end``
    over the run's epochs (``ctx.epoch`` of ``ctx.epochs``); the reference's defaults (1 to 1e-10, 30
    experts). ``de_rows`` caps the rows of each mean (see :func:`de_soft`). ``T`` is unused.
    """
    soft = de_soft(ctx, de_experts, de_tau_start, de_tau_end, de_rows)
    return bpr_term(_bpr_margin(ctx)) + alpha * soft
