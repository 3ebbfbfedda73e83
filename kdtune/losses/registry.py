"""BPR and the distillation losses: plain functions of tensors, registered by name.

Each registered loss is ``fn(ctx, alpha=..., T=..., **params) -> scalar`` where ``ctx`` is a
:class:`KDContext` (one BPR batch plus the teacher's knowledge). The soft parts are plain tensor
functions (``*_term``) so that they can be tested against hand-computed values; the registered
functions only gather tensors from ``ctx`` and call them.

Conventions shared by every loss:

- total = ``(1 - alpha) * BPR + alpha * soft`` (``de`` and ``de_rrd`` follow their paper: ``BPR + alpha *
  soft``), so ``alpha = 0`` is the plain student for every loss.
- The BPR part, ``mse_diff`` and ``soft_bce`` are per triplet: a mean over the batch's triplets.
- ``rd``, ``cd``, ``rrd`` and ``de``'s user side are **per-user** objectives in their papers (a sum over
  users of a term over that user's items). They are computed once per **distinct user of the batch**
  (``torch.unique(ctx.users)``), over that user's items, and averaged over the distinct users: a
  user with three triplets in the batch counts once, as in the papers' per-user sums (the DE-RRD
  reference code also takes ``unique`` of the batch's users). A user's weight over an epoch is
  then the number of batches it appears in, which grows with its activity but sub-linearly; computing
  the term per triplet instead recomputed an active user's items once per triplet (17x BPR's cost for
  ``rrd``). ``de``'s item side is likewise over the batch's distinct positives and distinct negatives.
- ``cd``, ``rrd`` and ``rd``'s rank-estimating samples are drawn **once per epoch for every user**, as
  the RRD paper's code does, when the training loop says which epoch it is (``ctx.epoch`` and ``ctx.draws``, set by
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
- Schedules over training (``rd``'s warm-up before its dynamic weight, ``de``'s annealed temperature)
  read ``ctx.epoch`` (0-based) and ``ctx.epochs`` (the run's epoch budget), both set by ``make_step``.
- ``T`` is used by ``mse_diff`` (a pure rescaling), ``soft_bce`` and ``cd`` (soft labels); the others
  accept and ignore it (``LossDef.uses_temperature`` says which, so a search need not tune it).

The registry and what every loss shares live here; the losses themselves, one module per family:
:mod:`~kdtune.losses.pairwise` (bpr, mse_diff, soft_bce), :mod:`~kdtune.losses.ranking` (rd, cd, rrd),
:mod:`~kdtune.losses.experts` (de), :mod:`~kdtune.losses.combined` (de_rrd); their draws in
:mod:`~kdtune.losses.draws`. Each loss follows its reference code by default (its docstring's first line
names the paper and the repository); its docstring says where and why it departs from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from kdtune.data.sampler import PositiveSet
    from kdtune.model.mf import MF

__all__ = ["LOSSES", "KDContext", "LossDef", "bpr_term", "get_loss", "register"]


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
    draws: dict | None = None  # per-run store: per-epoch draws, tables derived from topn; None: per batch
    epochs: int = 1  # the run's epoch budget (``fit``'s ``cfg.epochs``): schedules over epochs (de's tau)


def _epoch_draw(
    ctx: KDContext, key: tuple, draw: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The batch's distinct users and ``draw(users)``'s tensors (one row per distinct user).

    With ``ctx.draws`` (a training loop), ``draw`` runs once per epoch for every user and the batch
    gathers its users' rows; without it, ``draw`` runs for this batch's users only. ``key`` names the
    loss and its parameters, so a changed parameter never reuses stale draws (``ctx.draws`` belongs to one
    training run, whose top-N table is fixed).
    """
    users = _distinct_users(ctx)
    if ctx.draws is None:
        return users, draw(users)
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
    params: dict[str, float | int | str]
    uses_temperature: bool
    description: str
    # (student_dim, teacher_dim, **params) -> module holding the loss's trainable helper parameters
    make_extra: Callable[..., nn.Module] | None = None
    additive: bool = False  # total = BPR + alpha * KD (its paper's form) instead of (1 - alpha) BPR + alpha KD
    list_params: tuple[str, ...] = ()  # params counting positions of the teacher's top-N list (<= its length)

    @property
    def weight_key(self) -> str:
        """The search-space name of this loss's KD weight (e.g. ``rd_weight``): each loss has its own, so
        that a sampler learns each loss's weight from that loss's trials only."""
        return f"{self.name}_weight"

    @property
    def temperature_key(self) -> str:
        """The search-space name of this loss's temperature (``cd_T``), for losses that use one."""
        return f"{self.name}_T"

    def alpha(self, weight: float) -> float:
        """The ``alpha`` of a KD weight ``lambda``, the references' form ``BPR + lambda * KD``: ``lambda``
        itself for an additive loss; ``lambda / (1 + lambda)`` for a ``(1 - alpha) BPR + alpha KD`` loss,
        whose total is then ``(BPR + lambda KD) / (1 + lambda)``, a constant factor AdamW's update ignores."""
        if weight < 0:
            raise ValueError(f"{self.weight_key} must be >= 0, got {weight}")
        return float(weight) if self.additive else float(weight) / (1.0 + float(weight))


LOSSES: dict[str, LossDef] = {}


def register(
    name: str,
    *,
    uses_temperature: bool,
    description: str,
    make_extra: Callable[..., nn.Module] | None = None,
    additive: bool = False,
    list_params: tuple[str, ...] = (),
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register ``fn`` under ``name``; its keyword defaults other than alpha/T become ``params``.

    Reading the defaults from the signature keeps one source of truth for them. ``additive``: the loss is
    ``BPR + alpha * KD`` (its paper's form); ``list_params``: its params that count positions of the
    teacher's top-N list, checked against that list's length when a space is validated.
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
        unknown = set(list_params) - set(params)
        if unknown:
            raise ValueError(f"loss {name!r}: list_params {sorted(unknown)} are not among its params")
        LOSSES[name] = LossDef(name, fn, params, uses_temperature, description, make_extra, additive,
                               tuple(list_params))
        return fn

    return deco


def get_loss(name: str) -> LossDef:
    """The registered loss called ``name``; an unknown name raises ValueError listing the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}") from None


def bpr_term(s_diff: torch.Tensor) -> torch.Tensor:
    """BPR: ``mean(-log sigmoid(s_pos - s_neg))`` (softplus form, stable for large differences)."""
    return F.softplus(-s_diff).mean()


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
