"""Full-ranking evaluation: Recall / NDCG / HR / MRR @ K over the whole catalog, batched over users.

Every evaluated user's scores for ALL items are computed, the items the user has already seen (in any
of the ``seen`` splits) are masked out, one ``topk`` at the largest K is taken, and hits are looked up
in the user's test items. Nothing is sampled: no negative sampling, no candidate subsets.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from kdtune.data.interactions import Interactions, Split


class Scorer(Protocol):
    """Anything that scores the full catalog for a batch of users."""

    def full_scores(self, users: torch.Tensor) -> torch.Tensor: ...


def evaluate(
    model: Scorer,
    seen: Interactions | Sequence[Interactions],
    test: Interactions,
    ks: Sequence[int] = (20,),
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    users: torch.Tensor | None = None,
) -> dict[str, float]:
    """Full-ranking top-K metrics of ``model`` on ``test``, averaged over users with test items.

    Args:
        model: any object with ``full_scores(users) -> [B, n_items]`` (an ``MF``, a ``Popularity``...).
            If it accepts ``out=``, scores are written into one preallocated buffer. The returned tensor is
            modified in place (masking). Modules are put in eval mode for the call, then restored.
        seen: the split(s) whose items are excluded from each user's ranking: the training split when
            validating, ``[train, valid]`` when testing.
        test: the held-out items; users without any test item are skipped.
        ks: cut-offs; one ``topk`` at ``max(ks)`` serves them all.
        batch_size: users scored at once (memory is ``~batch_size * n_items * 5`` bytes); default: as many
            as the device's budget holds (:func:`chunk_users`).
        device: where scores are computed; defaults to the model's device (the model is not moved).
        users: evaluate only these users (those of them with test items); default all users. A fixed
            sample makes a cheap, comparable signal (early stopping, a scheduler's rungs); the published
            figures are over all users.

    Returns:
        ``{"recall@K", "ndcg@K", "hr@K", "mrr@K"}`` for each K, plus ``"n_users"``, the number of users
        evaluated. Metrics are ``nan`` when no user has a test item.

    Definitions, for a user ``u`` with test items ``T_u`` and ``hit_r = 1`` if the item ranked ``r``
    (among items not in ``seen``) is in ``T_u``:

    - ``Recall@K = sum_{r<=K} hit_r / |T_u|``. The denominator is ``|T_u|``, so a user with more than
      K test items cannot reach 1. (The alternative, ``/ min(|T_u|, K)``, as in some papers and in
      implicit's ``precision_at_k``, is not used.)
    - ``NDCG@K = DCG / IDCG`` with binary gains, ``DCG = sum_{r<=K} hit_r / log2(r + 1)`` and IDCG the
      DCG of a perfect ranking, i.e. over the first ``min(|T_u|, K)`` positions.
    - ``HR@K = 1`` if any of the top K is a test item, else 0.
    - ``MRR@K = 1 / r`` for the rank ``r`` of the first hit within the top K, else 0.

    Seen items get a score of ``-inf``; if K exceeds the number of unseen items, the ``-inf`` slots
    never count as hits, even for a test item that is also in ``seen``.
    """
    seen_splits = [seen] if isinstance(seen, Interactions) else list(seen)
    n_items = test.n_items
    dev = torch.device(device) if device is not None else _device_of(model)
    batch_size = chunk_users(n_items, dev) if batch_size is None else batch_size
    ks = _checked_ks(ks, seen_splits, test, batch_size)
    users_all = _users_to_score(test, users, dev)
    n_eval = int(users_all.numel())
    if n_eval == 0:
        return {**{f"{name}@{k}": math.nan for k in ks for name in METRICS}, "n_users": 0}

    # CSR arrays on the evaluation device once, not per batch.
    seen_csr = [(s.indptr.to(dev), s.indices.to(dev)) for s in seen_splits]
    test_csr = (test.indptr.to(dev), test.indices.to(dev))
    test_counts = test.user_counts().to(dev)
    metrics = _RankMetrics(ks, dev)
    bs = min(batch_size, n_eval)
    score_buf = torch.empty(bs, n_items, device=dev) if _accepts_out(model) else None
    member = torch.zeros(bs, n_items, dtype=torch.bool, device=dev)
    was_training = bool(getattr(model, "training", False))
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n_eval, bs):
                batch = users_all[start : start + bs]
                scores = _masked_scores(model, batch, score_buf, seen_csr, n_items)
                top_scores, top_items = torch.topk(scores, ks[-1], dim=1)
                # Dense membership of the batch's test items: one gather answers "is it a hit?".
                test_pos = _batch_flat_positions(*test_csr, batch, n_items)
                flat_member = member[: len(batch)].view(-1)
                flat_member[test_pos] = True
                hits = member[: len(batch)].gather(1, top_items) & (top_scores > -math.inf)
                flat_member[test_pos] = False  # reset only what was set, cheaper than zeroing the buffer
                metrics.add(hits, test_counts[batch].to(torch.float64))
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return {**metrics.means(n_eval), "n_users": n_eval}


METRICS = ("recall", "ndcg", "hr", "mrr")
CHUNK_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}
"""Memory of one chunk of scored users (scores, mask, membership); a GPU is shared by many trials."""
MAX_CHUNK_USERS = {"cpu": 1024, "cuda": 8192}


def chunk_users(n_items: int, device: torch.device | str = "cpu", bytes_per_cell: int = 5) -> int:
    """Users scored at once over ``n_items`` on ``device``: as many as :data:`CHUNK_BYTES` holds (a catalogue
    of millions of items still scores a few users at a time), at most :data:`MAX_CHUNK_USERS`."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return max(1, min(MAX_CHUNK_USERS[kind], CHUNK_BYTES[kind] // max(1, n_items * bytes_per_cell)))


def _checked_ks(ks: Sequence[int], seen: list[Interactions], test: Interactions, batch_size: int) -> list[int]:
    """The cut-offs, ascending; ValueError for a bad K, mismatched splits or batch size."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    n_users, n_items = test.n_users, test.n_items
    if ks[-1] > n_items:
        raise ValueError(f"K larger than catalog: max K = {ks[-1]} > n_items = {n_items}")
    for s in seen:
        if (s.n_users, s.n_items) != (n_users, n_items):
            raise ValueError(f"seen split has shape ({s.n_users}, {s.n_items}), test has ({n_users}, {n_items})")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return ks


def _users_to_score(test: Interactions, users: torch.Tensor | None, dev: torch.device) -> torch.Tensor:
    """The users with test items (among ``users`` when given), on ``dev``."""
    has_test = test.user_counts() > 0
    if users is not None:
        chosen = torch.zeros(test.n_users, dtype=torch.bool)
        chosen[users.cpu().long()] = True
        has_test &= chosen
    return torch.nonzero(has_test).flatten().to(dev)


def _masked_scores(model: Scorer, users: torch.Tensor, score_buf: torch.Tensor | None, seen_csr: list,
                   n_items: int) -> torch.Tensor:
    """``[B, n_items]`` scores of ``users`` with every seen item at ``-inf``."""
    nb = int(users.numel())
    if score_buf is not None:
        scores = model.full_scores(users, out=score_buf[:nb])  # type: ignore[call-arg]
    else:
        scores = model.full_scores(users)
    if scores.shape != (nb, n_items):
        raise ValueError(f"full_scores returned {tuple(scores.shape)}, expected {(nb, n_items)}")
    scores = scores.contiguous()
    flat_scores = scores.view(-1)
    for indptr, indices in seen_csr:
        flat_scores.index_fill_(0, _batch_flat_positions(indptr, indices, users, n_items), -math.inf)
    return scores


class _RankMetrics:
    """Sums of Recall/NDCG/HR/MRR at each K over the users scored so far (float64)."""

    def __init__(self, ks: list[int], dev: torch.device):
        self.ks = ks
        self.discount = 1.0 / torch.log2(torch.arange(2, ks[-1] + 2, device=dev, dtype=torch.float64))
        self.ideal = torch.cumsum(self.discount, 0)  # ideal[n-1] = IDCG with n relevant items in the top K
        self.sums = {name: torch.zeros(len(ks), dtype=torch.float64, device=dev) for name in METRICS}

    def add(self, hits: torch.Tensor, n_test: torch.Tensor) -> None:
        """One batch: ``hits`` ``[B, Kmax]`` (bool, best rank first), ``n_test`` its users' test counts."""
        hits_f = hits.to(torch.float64)
        cum_hits = torch.cumsum(hits_f, 1)
        cum_dcg = torch.cumsum(hits_f * self.discount, 1)
        # Rank of the first hit (inf when none), so that first <= K tells whether it counts at K.
        first = torch.where(hits.any(1), hits.to(torch.int8).argmax(1).to(torch.float64) + 1, math.inf)
        for j, k in enumerate(self.ks):
            n_hit = cum_hits[:, k - 1]
            self.sums["recall"][j] += (n_hit / n_test).sum()
            idcg = self.ideal[torch.clamp(n_test, max=k).long() - 1]
            self.sums["ndcg"][j] += (cum_dcg[:, k - 1] / idcg).sum()
            self.sums["hr"][j] += (n_hit > 0).sum()
            self.sums["mrr"][j] += torch.where(first <= k, 1.0 / first, 0.0).sum()

    def means(self, n_users: int) -> dict[str, float]:
        means = {name: (v / n_users).tolist() for name, v in self.sums.items()}
        return {f"{name}@{k}": float(means[name][j]) for j, k in enumerate(self.ks) for name in METRICS}


def _batch_flat_positions(
    indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor, n_items: int
) -> torch.Tensor:
    """Flat positions ``row * n_items + item`` in a ``[len(users), n_items]`` buffer of the users' CSR rows."""
    starts = indptr[users]
    counts = indptr[users + 1] - starts
    total = int(counts.sum())
    rows = torch.repeat_interleave(
        torch.arange(users.numel(), device=users.device), counts, output_size=total
    )
    # Entry j of the batch sits at indices[starts[row] + (j - first entry of its row in the batch)].
    shift = starts - (torch.cumsum(counts, 0) - counts)
    src = torch.arange(total, device=users.device) + shift[rows]
    return rows * n_items + indices[src]


def _device_of(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return torch.device("cpu")


def _accepts_out(model: Any) -> bool:
    try:
        return "out" in inspect.signature(model.full_scores).parameters
    except (TypeError, ValueError):
        return False


class Popularity(nn.Module):
    """Baseline scorer: every user gets the items' training interaction counts as scores."""

    def __init__(self, train: Interactions):
        super().__init__()
        self.n_items = train.n_items
        self.register_buffer("counts", train.item_counts().to(torch.float32))

    def full_scores(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[len(users), n_items]`` item counts (written into ``out`` if given)."""
        shape = (int(users.numel()), self.n_items)
        if out is None:
            return self.counts.expand(shape).clone()
        out.copy_(self.counts.expand(shape))
        return out


def sample_users(test: Interactions, n: int | None, seed: int = 0) -> torch.Tensor | None:
    """A fixed, seeded sample of ``n`` users that have test items (sorted ids), or ``None`` for all of them.

    The same ``(test, n, seed)`` always gives the same users, so every epoch and every trial of a search
    is compared on the same sample. ``n`` of 0/None, or at least the number of such users, means all.
    """
    candidates = torch.nonzero(test.user_counts() > 0).flatten()
    if not n or n >= candidates.numel():
        return None
    gen = torch.Generator().manual_seed(seed)
    return candidates[torch.randperm(candidates.numel(), generator=gen)[:n]].sort().values


def test_scores(model: Scorer, split: Split, k: int) -> dict:
    """``model`` scored once on the test split (train and validation items masked), ``test_``-prefixed."""
    return {f"test_{m}": v for m, v in evaluate(model, [split.train, split.valid], split.test, ks=(k,)).items()}
