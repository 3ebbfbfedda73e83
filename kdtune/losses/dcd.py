"""DCD (Lee & Kim, CIKM'21, "Dual Correction Strategy for Ranking Distillation in Top-N Recommender System";
woriazzc/KDs ``modeling/KD/cf/baseline.py`` ``DCD``): each epoch, the teacher's top-N items the student
ranks too low or too high are sampled by how far off the student is, and corrected with RRD's listwise
loss. Conventions: :mod:`kdtune.losses.registry`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from kdtune.losses.ranking import rrd_term
from kdtune.losses.registry import KDContext, _bpr_margin, _epoch_draw, _topn_check, bpr_term, register

if TYPE_CHECKING:
    from kdtune.data.sampler import PositiveSet
    from kdtune.model.mf import MF

# users scored at once when ranking the whole catalogue for the student (a [chunk, n_items] buffer)
RANK_CHUNK = 1024
# KDs floors the sampling weights at 1e-5, so that a user's items can always be drawn
MIN_WEIGHT = 1e-5


def rank_cap(n: int, t: float) -> int:
    """The student rank beyond which DCD's weights no longer change: ``n + ceil(10 t)``.

    For a teacher rank ``< n`` and a student rank ``>= n + 10 t`` the under-estimation weight is
    ``tanh(> 10) = 1`` and the over-estimation weight the floor, in float32 exactly as for the true
    rank, so ranks are counted in the student's top ``rank_cap`` only (a top-k rather than a sort of the
    catalogue).
    """
    return n + math.ceil(10 * t)


@torch.no_grad()
def student_ranks(
    student: MF, users: torch.Tensor, items: torch.Tensor, cap: int, positives: PositiveSet | None = None
) -> torch.Tensor:
    """0-based ranks of ``items`` ``[U, N]`` in each user's full student ranking, capped at ``cap``.

    The rank of item i is the number of items the student scores strictly higher (ties: the best rank).
    Training positives (``positives``) are left out of the ranking, so that student ranks count the
    same candidates as the teacher's top-N (from which the positives are masked); KDs ranks over the whole
    catalogue, positives included. Users are scored ``RANK_CHUNK`` at a time.
    """
    out = torch.empty_like(items)
    n_items = student.n_items
    cap = min(cap, n_items)
    every = torch.arange(n_items, device=items.device)
    for a in range(0, len(users), RANK_CHUNK):
        u = users[a : a + RANK_CHUNK]
        scores = student.full_scores(u)
        if positives is not None:
            seen = positives.contains(u.unsqueeze(1).expand(-1, n_items), every.expand(len(u), -1))
            scores.masked_fill_(seen, -math.inf)
        top = scores.topk(cap, dim=1).values.flip(1).contiguous()  # ascending
        mine = scores.gather(1, items[a : a + RANK_CHUNK])
        out[a : a + RANK_CHUNK] = cap - torch.searchsorted(top, mine.contiguous(), right=True)
    return out


def dcd_weights(s_rank: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DCD's sampling weights of the teacher's top-N ``[U, N]`` (teacher rank = column, 0-based):
    ``(under, over)`` = ``max(tanh(max(±(s_rank - t_rank) / t, 0)), 1e-5)``.

    ``under`` is large where the student ranks the item below the teacher, ``over`` where above.
    """
    t_rank = torch.arange(s_rank.shape[1], device=s_rank.device, dtype=torch.float32)
    diff = (s_rank.float() - t_rank) / t
    under = torch.tanh(diff.clamp(min=0)).clamp_(min=MIN_WEIGHT)
    over = torch.tanh((-diff).clamp(min=0)).clamp_(min=MIN_WEIGHT)
    return under, over


def draw_weighted(weights: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` columns per row without replacement, ``p ∝ weights``, **in draw order** (first draw first).

    The exponential race (Gumbel-top-k): sorting ``log(U) / w`` descending gives the order in which
    sequential draws without replacement (``torch.multinomial``, as KDs calls it) pick the columns.
    """
    u = torch.rand(weights.shape, generator=generator, device=generator.device).to(weights.device)
    keys = u.log_().div_(weights)
    return keys.topk(k, dim=1, sorted=True).indices


def dcd_term(s_under: torch.Tensor, s_over: torch.Tensor) -> torch.Tensor:
    """DCD's correction: the under-estimated items ``[U, K]`` (in draw order) must outrank each other in
    that order and every over-estimated item ``[U, K]``: RRD's relaxed listwise loss
    (:func:`kdtune.losses.ranking.rrd_term`), mean over users."""
    return rrd_term(s_under, s_over)


@register(
    "dcd",
    uses_temperature=False, list_params=("dcd_k",),
    description="Dual Correction Distillation (Lee & Kim 2021): teacher items the student under-/over-ranks, "
    "sampled by rank gap each epoch, listwise",
)
def dcd_loss(
    ctx: KDContext, alpha: float = 0.5, T: float = 1.0, dcd_k: int = 10, dcd_t: float = 10.0
) -> torch.Tensor:
    """DCD, as KDs implements it (user side), once per distinct user of the batch.

    Once per epoch (:func:`~kdtune.losses.registry._epoch_draw`; per batch without ``ctx.draws``), under
    ``no_grad``: the student's rank ``r_s`` of each of the user's teacher top-N items (the whole
    ``ctx.topn`` row: KDs' ``dcd_mxK``) against its teacher rank ``r_t``; ``dcd_k`` items drawn without
    replacement with ``p ∝ max(tanh(max((r_s - r_t) / dcd_t, 0)), 1e-5)`` (under-estimated) and ``dcd_k``
    with ``p ∝ max(tanh(max((r_t - r_s) / dcd_t, 0)), 1e-5)`` (over-estimated). Each batch: the
    under-estimated items, in draw order, must outrank the over-estimated ones (RRD's listwise loss).
    Total ``(1 - alpha) * BPR + alpha * DCD`` (KDs: ``BPR + lmbda * DCD`` summed over users, ``lmbda``
    0.01). ``T`` is unused (KDs' ``dcd_tau`` belongs to an ablation). The paper's item-side correction
    and the RRD term it adds the corrections to are not in KDs' implementation and not here. Use a small
    ``alpha``: early on every teacher item looks under-estimated, so both sets are uniform draws from the
    top-N and half of them are pushed down; at ``alpha = 0.5`` the student collapsed on synthetic data.
    """
    k, t = int(dcd_k), float(dcd_t)
    _topn_check(ctx, k, "dcd_k")
    if t <= 0:
        raise ValueError(f"dcd_t must be > 0, got {dcd_t}")

    @torch.no_grad()
    def draw(users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = ctx.topn.index_select(0, users)
        s_rank = student_ranks(ctx.student, users, top, rank_cap(top.shape[1], t), ctx.positives)
        under, over = dcd_weights(s_rank, t)
        return top.gather(1, draw_weighted(under, k, ctx.generator)), top.gather(
            1, draw_weighted(over, k, ctx.generator)
        )

    users, (under_items, over_items) = _epoch_draw(ctx, ("dcd", k, t), draw)
    soft = dcd_term(ctx.student(users, under_items), ctx.student(users, over_items))
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * soft
