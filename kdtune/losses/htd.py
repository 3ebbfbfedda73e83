"""HTD (Kang et al., KDD'21, "Topology Distillation for Recommender System"; woriazzc/KDs
``modeling/KD/cf/baseline.py`` ``HTD``, built on DE's experts of SeongKu-Kang/DE-RRD_CIKM20 ``Models/DE.py``):
hierarchical topology distillation: entities assigned to groups by a selection network on the teacher's
embedding (with DE-style experts), the student matching the teacher's cosine topology within groups and
towards the groups' prototypes. Conventions: :mod:`kdtune.losses.registry`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdtune.losses.experts import _ExpertSet
from kdtune.losses.registry import KDContext, _bpr_margin, _distinct, _distinct_users, bpr_term, register

TAU_END = 1e-10  # KDs anneals the Gumbel-softmax temperature from 1 towards this


class SoftExperts(_ExpertSet):
    """DE's experts (:class:`kdtune.losses.experts._ExpertSet`: E experts ``Linear(ds, h) -> ReLU ->
    Linear(h, dt)``, ``h = (ds + dt) // 2`` as DE's and KDs' ``Expert``) with the selector read as
    probabilities ``softmax(Linear(dt, E))``, as HTD's group assignment reads it."""

    def assign(self, t: torch.Tensor) -> torch.Tensor:
        """The selector's probabilities ``[M, E]`` for teacher embeddings ``t`` ``[M, dt]``."""
        return torch.softmax(self.selector(t), dim=1)


class TopologyExperts(nn.Module):
    """HTD's trainable helpers: one expert set with its selector for users, one for items."""

    def __init__(self, student_dim: int, teacher_dim: int, n_experts: int = 30):
        super().__init__()
        self.n_experts = int(n_experts)
        self.user = SoftExperts(student_dim, teacher_dim, self.n_experts)
        self.item = SoftExperts(student_dim, teacher_dim, self.n_experts)


def make_htd_extra(student_dim: int, teacher_dim: int, htd_experts: int = 30, **_other_params) -> nn.Module:
    """Build HTD's experts; pass the trial's params (``**params``) so that ``htd_experts`` takes effect."""
    return TopologyExperts(student_dim, teacher_dim, htd_experts)


def anneal_tau(epoch: int, anneal_epochs: float) -> float:
    """KDs' schedule: ``tau = 1e-10 ** (epoch / anneal_epochs)`` (KDs: ``anneal_epochs`` = its epoch budget),
    floored at 1e-10."""
    return max(TAU_END ** (epoch / anneal_epochs), TAU_END)


def group_assignment_term(
    experts: SoftExperts, s: torch.Tensor, t: torch.Tensor, tau: float, generator: torch.Generator
) -> torch.Tensor:
    """HTD's adaptive group assignment (DE's objective): ``mean_m ||t_m - sum_e z_me expert_e(s_m)||^2``
    with ``z = softmax((log(v(t) + 1e-10) + g) / tau)``, ``g`` Gumbel noise (KDs' ``get_GA_loss``;
    KDs sums over rows)."""
    v = experts.assign(t)
    u = torch.rand(v.shape, generator=generator, device=generator.device).to(v.device)
    g = -torch.log(-torch.log(u))
    z = torch.softmax((torch.log(v + 1e-10) + g) / tau, dim=1)
    return (t - experts.mixture(s, z, tau)).pow(2).sum(1).mean()


def within_group_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_ij ((a a^T)_ij - (b b^T)_ij)^2`` for rows ``a`` ``[n, da]``, ``b`` ``[n, db]``, by the identity
    ``||a a^T - b b^T||_F^2 = ||a^T a||_F^2 - 2 ||a^T b||_F^2 + ||b^T b||_F^2``: ``O(n d^2)`` instead of
    the ``O(n^2 d)`` of the pair matrices (a group of a 4,096-triplet batch holds thousands of entities).
    Computed in float64, the three terms being of the order of ``n^2`` and their difference smaller."""
    a, b = a.double(), b.double()
    return (a.T @ a).pow(2).sum() - 2 * (a.T @ b).pow(2).sum() + (b.T @ b).pow(2).sum()


def topology_term(s: torch.Tensor, t: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """HTD's topology distillation, KDs' ``get_TD_loss2`` (group(P, e)), with means for KDs' sums.

    ``s`` ``[M, ds]``, ``t`` ``[M, dt]`` are the entities' embeddings (users and items together),
    ``groups`` ``[M]`` their group ids. Entity level: ``(cos_s(i, j) - cos_t(i, j))^2`` over the ordered
    pairs of each group (``i = j`` included: it is 0), mean over all such pairs. Group level: each group
    present has a prototype, the mean of its members (the student's under ``no_grad``, as in KDs);
    ``(cos(P_s, s_m) - cos(P_t, t_m))^2`` over every prototype and every entity, mean. The term is the sum
    of the two means.

    KDs keeps only the same-group pairs whose teacher similarity is positive (it masks by multiplying
    the similarity matrix by the group mask, then selects ``> 0``); here every same-group pair counts,
    as the paper's within-group topology does. A group's pairs are summed by :func:`within_group_gap`
    without forming its ``n x n`` similarity matrices.
    """
    ns, nt = F.normalize(s, dim=1), F.normalize(t, dim=1)
    order = torch.argsort(groups, stable=True)
    present, counts = torch.unique_consecutive(groups.index_select(0, order), return_counts=True)
    ns_o, nt_o = ns.index_select(0, order), nt.index_select(0, order)
    entity, a = ns.new_zeros((), dtype=torch.float64), 0
    for n in counts.tolist():
        entity = entity + within_group_gap(ns_o[a : a + n], nt_o[a : a + n])
        a += n
    entity = (entity / counts.pow(2).sum()).to(s.dtype)
    with torch.no_grad():
        member = (groups.unsqueeze(0) == present.unsqueeze(1)).to(s.dtype)  # [G, M]
        member = member / member.sum(1, keepdim=True)
        p_s, p_t = member @ s, member @ t
    group = (F.normalize(p_s, dim=1) @ ns.T - F.normalize(p_t, dim=1) @ nt.T).pow(2).mean()
    return entity + group


@register(
    "htd",
    uses_temperature=False, additive=True,
    make_extra=make_htd_extra,
    description="Hierarchical Topology Distillation (Kang et al. 2021): BPR + a [b TD + (1-b) GA], "
    "cosine topology within teacher-assigned groups",
)
def htd_loss(
    ctx: KDContext,
    alpha: float = 0.5,
    T: float = 1.0,
    htd_experts: int = 30,
    htd_beta: float = 0.9,
    htd_anneal: float = 1000.0,
) -> torch.Tensor:
    """HTD: ``BPR + alpha * (htd_beta * TD + (1 - htd_beta) * GA)``, the paper's form (BPR keeps weight 1,
    like ``de``; KDs: ``lmbda`` 0.5, ``htd_alpha`` 0.9 for our ``htd_beta``, 30 experts).

    Entities: the batch's distinct users and distinct items (positives and negatives). GA, per side:
    DE's objective with a Gumbel-softmax mixture of ``htd_experts`` experts at a temperature annealed by
    epoch, ``1e-10 ** (epoch / htd_anneal)`` (KDs: its epoch budget, 1,000). Groups: each entity's most
    probable expert under the selector (users and items in separate groups), read from the teacher
    under ``no_grad``. TD: :func:`topology_term` (KDs' default group(P, e) form; its group(P, P) form gets
    no gradient to the student, the prototypes being detached, and is left out). ``T`` is unused.
    """
    if not 0.0 <= htd_beta <= 1.0:
        raise ValueError(f"htd_beta must be in [0, 1], got {htd_beta}")
    if htd_anneal <= 0:
        raise ValueError(f"htd_anneal must be > 0, got {htd_anneal}")
    ex = ctx.extra
    if not isinstance(ex, TopologyExperts):
        raise ValueError(
            "loss 'htd' needs ctx.extra = get_loss('htd').make_extra(student_dim, teacher_dim, **params)"
        )
    if ex.n_experts != int(htd_experts):
        raise ValueError(
            f"ctx.extra has {ex.n_experts} experts but htd_experts={htd_experts}: pass params to make_extra"
        )
    users = _distinct_users(ctx)
    items = _distinct(torch.cat([ctx.pos, ctx.neg]), ctx.student.n_items)
    with torch.no_grad():
        t_user, t_item = ctx.teacher.user_vectors(users), ctx.teacher.item_vectors(items)
    s_user, s_item = ctx.student.user_vectors(users), ctx.student.item_vectors(items)
    tau = anneal_tau(ctx.epoch, float(htd_anneal))
    ga = group_assignment_term(ex.user, s_user, t_user, tau, ctx.generator)
    ga = ga + group_assignment_term(ex.item, s_item, t_item, tau, ctx.generator)
    with torch.no_grad():
        groups = torch.cat([ex.user.assign(t_user).argmax(1), ex.item.assign(t_item).argmax(1) + ex.n_experts])
    td = topology_term(torch.cat([s_user, s_item]), torch.cat([t_user, t_item]), groups)
    return bpr_term(_bpr_margin(ctx)) + alpha * (htd_beta * td + (1 - htd_beta) * ga)

