"""DE's distillation experts (Kang et al., DE-RRD, CIKM'20): small MLPs from the student's embedding
space to the teacher's, one chosen per row by a selection network reading the teacher's embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gumbel_select(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Straight-through Gumbel-softmax: one-hot rows forward, ``softmax((log p + g) / tau)`` gradient."""
    u = torch.rand(logits.shape, generator=generator, device=generator.device).to(logits.device)
    soft = torch.softmax((torch.log_softmax(logits, dim=-1) - torch.log(-torch.log(u))) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


class _SelectorSignal(torch.autograd.Function):
    """Adds 0 to the experts' output; its backward gives the selection ``sel`` ``[M, E]`` the gradient
    ``<g_m, expert_e(s_m)>`` that ``sum_e sel_e * expert_e(s)`` would give it.

    Computed in backward from two GEMMs over all experts at once (``s @ W1`` and ``g @ W2^T``, each
    ``[M, E * h]``) and one elementwise product, without autograd through the experts and without an
    ``[M, E, dt]`` tensor of every expert's output.
    """

    @staticmethod
    def forward(ctx, sel, s, w1, b1, w2, b2):
        ctx.save_for_backward(s, w1, b1, w2, b2)
        return s.new_zeros(s.shape[0], w2.shape[2])

    @staticmethod
    def backward(ctx, grad):
        s, w1, b1, w2, b2 = ctx.saved_tensors
        n_e, ds, h = w1.shape
        hidden = torch.relu(torch.addmm(b1.reshape(-1), s, w1.transpose(0, 1).reshape(ds, n_e * h)))
        # <g, W2_e^T h_e + b2_e> = <W2_e g, h_e> + <g, b2_e>, for every expert e at once
        back = grad @ w2.permute(2, 0, 1).reshape(w2.shape[2], n_e * h)  # [M, E * h]
        signal = (hidden.mul_(back)).view(-1, n_e, h).sum(-1) + grad @ b2.t()
        return signal, None, None, None, None, None


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

    def chosen_expert(self, s: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Row ``m`` mapped by expert ``choice[m]`` only: rows grouped by expert, one small MLP per group."""
        order = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice, minlength=self.w1.shape[0]).tolist()
        parts = []
        for e, x in enumerate(s.index_select(0, order).split(counts)):
            if x.shape[0]:
                hidden = torch.relu(torch.addmm(self.b1[e], x, self.w1[e]))
                parts.append(torch.addmm(self.b2[e], hidden, self.w2[e]))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(parts).index_select(0, inverse)

    def forward(
        self, s: torch.Tensor, t: torch.Tensor, tau: float, generator: torch.Generator
    ) -> torch.Tensor:
        """The selected expert's map of student embeddings ``s`` ``[M, ds]``; selection reads ``t``.

        The value is ``sum_e sel_e * expert_e(s)`` with a straight-through one-hot ``sel``
        (:func:`gumbel_select`). Its gradient reaches the experts' weights and ``s`` through the selected
        expert only (``sel_e`` is 0 for the others), so only that expert runs forward and backward; the
        selector's gradient ``d/d sel_e = <g, expert_e(s)>`` needs every expert's output but not its
        backward (:class:`_SelectorSignal`). Same value and gradients as running all experts under
        autograd, at about ``(E + 3) / 3E`` of the arithmetic.
        """
        sel = gumbel_select(self.selector(t), tau, generator)  # [M, E]
        out = self.chosen_expert(s, sel.detach().argmax(-1))
        if sel.requires_grad:
            out = out + _SelectorSignal.apply(sel, s.detach(), self.w1.detach(), self.b1.detach(),
                                              self.w2.detach(), self.b2.detach())
        return out


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
