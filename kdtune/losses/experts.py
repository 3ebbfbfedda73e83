"""DE's distillation experts (Kang et al., DE-RRD, CIKM'20): small MLPs from the student's embedding
space to the teacher's, one chosen per row by a selection network reading the teacher's embedding."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kdtune.losses.registry import KDContext, _bpr_margin, _distinct, _distinct_users, bpr_term, register


def gumbel_select(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Straight-through Gumbel-softmax: one-hot rows forward, ``softmax((log p + g) / tau)`` gradient."""
    return _gumbel_select(logits, tau, generator)[0]


class _StraightThroughGumbel(torch.autograd.Function):
    """One-hot rows of ``argmax(y)`` forward, ``softmax(y)``'s gradient backward, ``y = (logits + g) / tau``.

    ``softmax((log_softmax(l) + g) / tau)`` is ``softmax((l + g) / tau)``: ``log_softmax`` only shifts
    each row by a constant, which a softmax ignores. Written out, the gradient is
    ``soft * (grad - <grad, soft>) / tau``: one function instead of an autograd chain of six operations
    over ``[M, E]`` (with the soft-max written out: torch's over rows of five is ~3x slower on CPU).
    """

    @staticmethod
    def forward(ctx, logits, noise, tau):
        y = (logits + noise).div_(tau)
        choice = y.argmax(-1)
        soft = y.sub_(y.amax(-1, keepdim=True)).exp_()
        soft.div_(soft.sum(-1, keepdim=True))
        ctx.save_for_backward(soft)
        ctx.tau = tau
        ctx.mark_non_differentiable(choice)
        return F.one_hot(choice, y.shape[-1]).to(y.dtype), choice

    @staticmethod
    def backward(ctx, grad, _choice_grad):
        (soft,) = ctx.saved_tensors
        dot = (grad * soft).sum(-1, keepdim=True)
        return (grad - dot).mul_(soft).div_(ctx.tau), None, None


def _gumbel_select(
    logits: torch.Tensor, tau: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gumbel_select` and the column each row selects."""
    u = torch.rand(logits.shape, generator=generator, device=generator.device).to(logits.device)
    return _StraightThroughGumbel.apply(logits, torch.log(-torch.log(u)).neg_(), float(tau))


def _blocks(counts: list[int]) -> Iterator[tuple[int, slice]]:
    """``(e, rows)`` for each expert with rows: ``rows`` is its slice of the rows sorted by expert."""
    a = 0
    for e, n in enumerate(counts):
        if n:
            yield e, slice(a, a + n)
            a += n


class _ExpertsTerm(torch.autograd.Function):
    """``mean_m ||t_m - sum_e sel_me * expert_e(s_m)||^2`` for a one-hot (straight-through) ``sel``
    ``[M, E]`` whose rows are sorted by their expert: expert ``e`` owns the next ``counts[e]`` rows
    (``sel``'s value is implied by ``counts``; it is an input for its gradient). Returns the scalar
    term; gradients reach ``s``, ``sel``, ``t`` and the experts' weights.

    Forward: every expert's hidden layer ``H = relu(s @ W1 + b1)`` ``[M, E * h]`` in one GEMM (the
    selection's gradient needs them all), then each block of rows through its expert's second layer.
    Backward, with ``g = 2 (out - t) / M``, block by block: ``g @ W2^T`` ``[rows, E * h]`` (every
    expert's ``W2_e g``) gives the selection its gradient ``<g, expert_e(s)> = <W2_e g, H_e> + <g, b2_e>``
    for every expert and, in the block's own expert's columns, that expert's hidden-layer gradient;
    the weights and ``s`` get theirs from the selected expert only, as ``sel_e`` is 0 for the others.
    These are the value and gradients of running every expert under autograd, without an autograd
    graph through the experts and without any expert's output for the rows that did not select it.
    """

    @staticmethod
    def forward(ctx, s, sel, t, w1, b1, w2, b2, counts):
        n_e, ds, h = w1.shape
        # the bias as one more input column against a row of ones: the product writes H directly (addmm
        # with a bias first copies the broadcast bias into the [M, E * h] result, a whole extra pass)
        s1 = torch.cat([s, s.new_ones(s.shape[0], 1)], 1)
        w1b = torch.cat([w1.transpose(0, 1).reshape(ds, n_e * h), b1.reshape(1, -1)], 0)
        hidden = torch.mm(s1, w1b).relu_()
        out = torch.empty_like(t)
        for e, rows in _blocks(counts):
            torch.addmm(b2[e], hidden[rows, e * h : (e + 1) * h], w2[e], out=out[rows])
        diff = out.sub_(t)
        flat = diff.view(-1)
        loss = torch.dot(flat, flat) / t.shape[0]  # one pass, no squared copy
        ctx.save_for_backward(s, hidden, diff.mul_(2.0 / t.shape[0]), w1, w2, b2)  # g = d loss / d out
        ctx.counts = counts
        return loss

    @staticmethod
    def backward(ctx, grad):
        s, hidden, g, w1, w2, b2 = ctx.saved_tensors
        need_s, need_sel, need_t, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:7]
        need_dh = need_s or need_w1 or need_b1
        n_e, _, h = w1.shape
        m, dt = g.shape
        w2 = w2 * grad  # the incoming scale rides on W2 (small) rather than on g
        ds = torch.empty_like(s) if need_s else None
        dw1 = torch.zeros_like(w1) if need_w1 else None
        db1 = w1.new_zeros(n_e, h) if need_b1 else None
        dw2 = torch.zeros_like(w2) if need_w2 else None
        db2 = torch.zeros_like(b2) if need_b2 else None
        dsel = g.new_empty(m, n_e) if need_sel else None
        back = g.new_empty(max(ctx.counts), n_e * h) if need_sel else None  # reused block to block
        for e, rows in _blocks(ctx.counts):
            n, cols = rows.stop - rows.start, slice(e * h, (e + 1) * h)
            h_e, g_e = hidden[rows, cols], g[rows]
            if need_w2:
                torch.mm(h_e.t(), g_e, out=dw2[e])
            if need_b2:
                torch.sum(g_e, 0, out=db2[e])
            if need_sel:
                bk = torch.mm(g_e, w2.view(n_e * h, dt).t(), out=back[:n])  # every expert's W2_e g
                dh = torch.ops.aten.threshold_backward(bk[:, cols], h_e, 0) if need_dh else None
                torch.sum(bk.mul_(hidden[rows]).view(n, n_e, h), -1, out=dsel[rows])
            elif need_dh:
                dh = torch.ops.aten.threshold_backward(torch.mm(g_e, w2[e].t()), h_e, 0)
            if need_w1:
                torch.mm(s[rows].t(), dh, out=dw1[e])
            if need_b1:
                torch.sum(dh, 0, out=db1[e])
            if need_s:
                torch.mm(dh, w1[e].t(), out=ds[rows])
        if need_sel:
            dsel.addmm_(g, (b2 * grad).t())
        if need_w2:
            dw2.mul_(grad)
        if need_b2:
            db2.mul_(grad)
        return ds, dsel, -grad * g if need_t else None, dw1, db1, dw2, db2, None


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
        """DE's term ``mean_m ||t_m - expert_m(s_m)||^2`` over the rows ``ids`` ``[M]``: ``t`` ``[M, dt]``
        are their teacher embeddings, ``student_rows(ids)`` reads their student embeddings.

        The expert of row ``m`` is chosen from ``t_m`` by a straight-through one-hot ``sel``
        (:func:`gumbel_select`, drawn in the order of ``ids``); value and gradients are those of
        ``sum_e sel_e * expert_e(s)`` under autograd. The term is a mean over rows, so the rows are
        reordered by expert and each expert maps one contiguous block (:class:`_ExpertsTerm`); the
        student's rows are read in that order (through the model, e.g. ``MF.user_vectors``, so that a
        training optimiser sees the reads).
        """
        sel, choice = _gumbel_select(self.selector(t), tau, generator)  # [M, E], [M]
        order = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice, minlength=self.w1.shape[0]).tolist()
        s = student_rows(ids.index_select(0, order))
        sel, t = sel.index_select(0, order), t.index_select(0, order)
        return _ExpertsTerm.apply(s, sel, t, self.w1, self.b1, self.w2, self.b2, counts)


class DistillationExperts(nn.Module):
    """DE's trainable helpers: one expert set (with its selection network) for users, one for items."""

    def __init__(self, student_dim: int, teacher_dim: int, n_experts: int = 5):
        super().__init__()
        self.n_experts = int(n_experts)
        self.user = _ExpertSet(student_dim, teacher_dim, self.n_experts)
        self.item = _ExpertSet(student_dim, teacher_dim, self.n_experts)


def make_de_extra(student_dim: int, teacher_dim: int, de_experts: int = 5, **_other_params) -> nn.Module:
    """Build DE's experts; pass the trial's params (``**params``) so that ``de_experts`` takes effect."""
    return DistillationExperts(student_dim, teacher_dim, de_experts)


def de_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distillation Experts: ``mean over rows of ||target - pred||^2`` (``de`` computes it fused with
    the experts, see :class:`kdtune.experts._ExpertSet`)."""
    return (target - pred).pow(2).sum(-1).mean()


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
