"""UnKD (Chen et al., WSDM'23, "Unbiased Knowledge Distillation for Recommendation"; woriazzc/KDs
``modeling/KD/cf/baseline.py`` ``UnKD``): items split into popularity groups, the teacher's ranking
distilled pairwise *within* each group, so that popular items do not crowd the distilled knowledge.
Conventions: :mod:`kdtune.losses.registry`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kdtune.losses.registry import KDContext, _bpr_margin, _epoch_draw, bpr_term, register

if TYPE_CHECKING:
    from kdtune.data.sampler import PositiveSet

# Each group's candidate list: the user's top LIST_LEN teacher items of the group. KDs keeps 1,000 and
# draws position i with p ∝ exp(-(i + 1) / RANK_SCALE); the positions past 200 carry ~5e-5 of that mass.
LIST_LEN = 200
RANK_SCALE = 20.0
USER_CHUNK = 1024  # users scored at once by the teacher when building the lists
MAX_REDRAWS = 100  # rounds of redrawing pairs whose two positions coincide


def item_popularity(positives: PositiveSet | None, topn: torch.Tensor, n_items: int) -> torch.Tensor:
    """Training interaction count of every item ``[n_items]`` (float), read from ``positives``.

    Without ``positives`` (a context built outside a training loop) the count of each item's
    appearances in the teacher's top-N lists stands in for it. A training loop could hand the counts in
    directly: ``make_step`` has the sampler's ``PositiveSet``, from which this is one ``sum``/``bincount``.
    """
    if positives is None:
        return torch.bincount(topn.reshape(-1), minlength=n_items).float()
    if positives.bitmap is not None:
        return positives.bitmap.view(-1, n_items).sum(0).float()
    return torch.bincount(positives.keys % n_items, minlength=n_items).float()


def popularity_groups(counts: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Group id of every item ``[n_items]`` (0 = most popular), KDs' ``splitGroup``: items by count,
    descending, filled into consecutive groups of about ``total / n_groups`` interactions each.

    The greedy rule is KDs': an item that takes a group past the share starts the next group (unless
    it is alone), and a last group with less than half a share joins the one before; so there may be a
    group more or less than ``n_groups``. Items without training interactions (KDs leaves them out of
    every group, so they are never distilled) join the last group.
    """
    order = torch.argsort(counts, descending=True, stable=True).tolist()
    c = counts.tolist()
    share = sum(c) / n_groups
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    seen = [i for i in order if c[i] > 0]
    for i in seen:
        current.append(i)
        total += c[i]
        if total > share:
            if len(current) == 1:
                groups.append(current)
                current, total = [], 0.0
                continue
            current.pop()
            groups.append(current)
            current, total = [i], c[i]
    if current:
        if total > share / 2 or not groups:
            groups.append(current)
        else:
            groups[-1].extend(current)
    if not groups:
        groups.append([])
    groups[-1].extend(i for i in order if c[i] <= 0)
    out = torch.empty(len(c), dtype=torch.long)
    for g, items in enumerate(groups):
        out[items] = g
    return out.to(counts.device)


def pairs_per_group(counts: torch.Tensor, group: torch.Tensor, n_pairs: int, lamda: float) -> list[int]:
    """Pairs drawn per user in each group, KDs' ``group_ratio`` and epoch loop.

    A group's share is ``(max + min - its mean popularity)`` over the groups' (the less popular, the
    more), normalised, rounded to 2 decimals, floored at 0.1, raised to ``lamda`` and normalised again;
    it gets ``round(share * n_pairs)`` pairs, and the first groups one more each while the total is
    short of ``n_pairs``. ``lamda = 0`` (KDs' CiteULike setting) shares the pairs equally.
    """
    n_g = int(group.max()) + 1
    mean = [float(counts[group == g].mean()) if bool((group == g).any()) else 0.0 for g in range(n_g)]
    lo, hi = min(mean), max(mean)
    ratio = [hi + lo - m for m in mean]
    total = sum(ratio)
    ratio = [max(round(r / total, 2), 0.1) if total > 0 else 1.0 / n_g for r in ratio]
    ratio = [math.pow(r, lamda) for r in ratio]
    ratio = [r / sum(ratio) for r in ratio]
    per = [round(r * n_pairs) for r in ratio]
    short = n_pairs - sum(per)
    return [p + (1 if g < short else 0) for g, p in enumerate(per)]


@torch.no_grad()
def group_lists(ctx: KDContext, users: torch.Tensor, group: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each group: ``(items [U, L], n_valid [U])``, each user's items of the group ranked by the
    teacher (best first), training positives left out, the first ``n_valid`` columns valid."""
    n_items, n_g = ctx.teacher.n_items, int(group.max()) + 1
    sizes = torch.bincount(group, minlength=n_g).tolist()
    out = [([], []) for _ in range(n_g)]
    every = torch.arange(n_items, device=users.device)
    for a in range(0, len(users), USER_CHUNK):
        u = users[a : a + USER_CHUNK]
        scores = ctx.teacher.full_scores(u)
        if ctx.positives is not None:
            scores.masked_fill_(ctx.positives.contains(u.unsqueeze(1).expand(-1, n_items), every), -math.inf)
        for g in range(n_g):
            length = max(1, min(LIST_LEN, sizes[g]))
            values, items = scores.masked_fill(group != g, -math.inf).topk(length, dim=1)
            out[g][0].append(items)
            out[g][1].append(torch.isfinite(values).sum(1))
    return [(torch.cat(items), torch.cat(n_valid)) for items, n_valid in out]


def draw_pairs(
    n_valid: torch.Tensor, n_pairs: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_pairs`` pairs of distinct list positions per row: ``(better [U, P], worse [U, P], valid [U, P])``.

    KDs' draw: two positions i.i.d. with ``p(i) ∝ exp(-(i + 1) / 20)`` over the row's first ``n_valid``
    positions, redrawn while equal, the better-ranked one first. Rows with fewer than two positions
    give invalid pairs.
    """
    dev = generator.device
    w = torch.exp(-torch.arange(1, LIST_LEN + 1, dtype=torch.float32, device=dev) / RANK_SCALE)
    cdf = torch.cumsum(w, 0)
    m = n_valid.to(dev).clamp(min=1)
    top = cdf[m - 1].unsqueeze(1)  # each row's total weight

    def positions(shape: tuple[int, int]) -> torch.Tensor:
        x = torch.rand(shape, generator=generator, device=dev) * top
        return torch.searchsorted(cdf, x.contiguous(), right=True).clamp_(max=m.unsqueeze(1) - 1)

    shape = (len(m), n_pairs)
    a, b = positions(shape), positions(shape)
    same = a == b
    for _ in range(MAX_REDRAWS):
        if not bool((same & (m.unsqueeze(1) > 1)).any()):
            break
        a2, b2 = positions(shape), positions(shape)  # whole tables keep the generator's stream simple
        a, b = torch.where(same, a2, a), torch.where(same, b2, b)
        same = a == b
    valid = ~same & (m.unsqueeze(1) > 1)
    return torch.minimum(a, b), torch.maximum(a, b), valid


def unkd_term(s_better: torch.Tensor, s_worse: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``mean_u mean_{valid pairs} -log sigmoid(s_better - s_worse)`` over ``[U, P]`` pairs; users
    without a valid pair are left out (0 when no user has one)."""
    v = valid.to(s_better.dtype)
    per_pair = F.softplus(s_worse - s_better) * v
    n = v.sum(1)
    has = n > 0
    per_user = per_pair.sum(1) / n.clamp(min=1)
    return per_user.sum() / has.sum().clamp(min=1)


@register(
    "unkd",
    uses_temperature=False,
    description="Unbiased KD (Chen et al. 2023): teacher's ranking distilled pairwise within item popularity groups",
)
def unkd_loss(
    ctx: KDContext,
    alpha: float = 0.5,
    T: float = 1.0,
    unkd_groups: int = 2,
    unkd_pairs: int = 2,
    unkd_lamda: float = 0.0,
) -> torch.Tensor:
    """UnKD, once per distinct user of the batch: items split into about ``unkd_groups`` groups of equal
    training interactions (:func:`popularity_groups`, popularity from ``ctx.positives``); once per epoch
    (per batch without ``ctx.draws``) each user draws ``unkd_pairs`` pairs spread over the groups
    (:func:`pairs_per_group`, ``unkd_lamda`` favours the unpopular groups), each pair two items of one
    group, the teacher's better-ranked first (:func:`draw_pairs` on the user's teacher ranking of the
    group's non-positive items). Term: BPR on those pairs (:func:`unkd_term`).

    Total ``(1 - alpha) * BPR + alpha * UnKD`` (KDs: ``BPR + lmbda * UnKD`` summed over the batch's
    triplets, ``lmbda`` 0.5). ``T`` is unused. The groups and the teacher's per-group lists are built
    once per run (``ctx.draws``).
    """
    n_groups, n_pairs = int(unkd_groups), int(unkd_pairs)
    if n_groups < 1 or n_pairs < 1:
        raise ValueError(f"unkd_groups={n_groups} and unkd_pairs={n_pairs} must be >= 1")
    key = ("unkd", n_groups, n_pairs, float(unkd_lamda))
    store = ctx.draws if ctx.draws is not None else {}
    if store.get("unkd_setup", (None,))[0] != key:
        counts = item_popularity(ctx.positives, ctx.topn, ctx.teacher.n_items)
        group = popularity_groups(counts, n_groups)
        per = pairs_per_group(counts, group, n_pairs, float(unkd_lamda))
        store["unkd_setup"] = (key, group, per, None)  # the lists: built for every user on first use
    _, group, per, lists = store["unkd_setup"]

    @torch.no_grad()
    def draw(users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if ctx.draws is not None:
            nonlocal lists
            if lists is None:
                lists = group_lists(ctx, users, group)  # every user: the epoch draw covers them all
                store["unkd_setup"] = (key, group, per, lists)
            rows = lists
        else:
            rows = group_lists(ctx, users, group)
        better, worse, valid = [], [], []
        for (items, n_valid), n in zip(rows, per, strict=True):
            if n == 0:
                continue
            b, w, v = draw_pairs(n_valid, n, ctx.generator)
            b, w = b.to(items.device), w.to(items.device)
            better.append(items.gather(1, b))
            worse.append(items.gather(1, w))
            valid.append(v.to(items.device))
        return torch.cat(better, 1), torch.cat(worse, 1), torch.cat(valid, 1)

    users, (better, worse, valid) = _epoch_draw(ctx, key, draw)
    soft = unkd_term(ctx.student(users, better), ctx.student(users, worse), valid)
    return (1 - alpha) * bpr_term(_bpr_margin(ctx)) + alpha * soft
