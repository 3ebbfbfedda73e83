"""The seeded synthetic dataset (``--data synthetic[:key=value,...]``): see `synthetic` for its design."""

from __future__ import annotations

import inspect
import typing

import numpy as np

from kdtune.data.interactions import Interactions
from kdtune.errors import DataError

GENERATOR_VERSION = 2
"""Bumped whenever the same arguments would generate different data; part of the fingerprint, so that
splits and teachers cached from an older generator are never reused."""


def synthetic(
    n_users: int = 2000,
    n_items: int = 3000,
    dim: int = 64,
    topics: int | None = None,
    topics_per_user: int = 2,
    noise: float = 0.3,
    mean_items: float = 30.0,
    activity_sigma: float = 0.8,
    popularity_exponent: float = 0.8,
    affinity: float = 8.0,
    seed: int = 0,
) -> Interactions:
    """A seeded implicit dataset whose structure needs more than a few dimensions to model.

    Why this shape: a small MF student should clearly lose to a 64-dim teacher here (otherwise a
    first search shows no gap for distillation to close), while the teacher's ranking still carries
    what the student misses, as on real data. So the taste space is high-rank, sharp and sparse:

    - ``topics`` topic centres (default: one per 40 items, between 2 and 64, so small test datasets
      keep enough items per topic to learn from), random directions in ``dim`` dimensions (nearly
      orthogonal when ``dim >= topics``), so no low-dimensional projection separates them all;
    - each item belongs to one topic (its centre plus Gaussian ``noise``); each user mixes
      ``topics_per_user`` topics with Dirichlet(1) weights (plus ``noise``), so a user's taste is a
      blend that a few dimensions cannot represent for every pair of topics;
    - item popularity is a Zipf law with ``popularity_exponent`` (a head that any model learns, and a
      long tail only the taste explains); user activity is log-normal around ``mean_items`` with
      spread ``activity_sigma`` (many users with a handful of items, a few heavy users);
    - each user draws their items without replacement with probability
      ``∝ popularity_i · exp(affinity · cos(u, i))``: a high ``affinity`` makes tastes sharp.

    Items nobody picked are dropped, so ``n_items`` is an upper bound. The data's ``origin`` (hence its
    fingerprint, and that of its splits and teachers) includes `GENERATOR_VERSION`.
    """
    if n_users < 2 or n_items < 2:
        raise DataError("synthetic data needs at least 2 users and 2 items")
    if topics is None:
        topics = min(64, max(2, n_items // 40))
    if dim < 1 or topics < 1 or topics_per_user < 1:
        raise DataError(f"synthetic data needs dim, topics and topics_per_user >= 1 "
                        f"(got {dim}, {topics}, {topics_per_user})")
    if mean_items <= 0 or noise < 0 or activity_sigma < 0:
        raise DataError("synthetic data needs mean_items > 0, noise >= 0 and activity_sigma >= 0")
    rng = np.random.default_rng(seed)
    # Scaled by 1/sqrt(dim) so that noise is relative to a unit-length centre whatever the dim.
    centers = rng.normal(size=(topics, dim)) / np.sqrt(dim)
    weights = rng.dirichlet(np.ones(topics_per_user), size=n_users)
    user_topics = rng.integers(topics, size=(n_users, topics_per_user))
    uf = np.einsum("ut,utd->ud", weights, centers[user_topics])
    uf += noise * rng.normal(size=(n_users, dim)) / np.sqrt(dim)
    itf = centers[rng.integers(topics, size=n_items)] + noise * rng.normal(size=(n_items, dim)) / np.sqrt(dim)
    uf /= np.linalg.norm(uf, axis=1, keepdims=True)
    itf /= np.linalg.norm(itf, axis=1, keepdims=True)
    log_pop = -popularity_exponent * np.log(rng.permutation(n_items) + 1)
    activity = rng.lognormal(np.log(mean_items) - activity_sigma**2 / 2, activity_sigma, size=n_users)
    activity = np.clip(np.round(activity), 3, n_items // 2).astype(np.int64)

    users_out, items_out = [], []
    block = 512  # users per block: bounded memory for the [block, n_items] logits
    for start in range(0, n_users, block):
        stop = min(n_users, start + block)
        logits = affinity * (uf[start:stop] @ itf.T) + log_pop
        # Gumbel top-k = sampling without replacement proportional to exp(logits).
        gumbel = logits + rng.gumbel(size=logits.shape)
        users, items = _top_k_rows(gumbel, activity[start:stop])
        users_out.append(users + start)
        items_out.append(items)
    users = np.concatenate(users_out)
    items = np.concatenate(items_out)
    # Drop items nobody picked so that every id is used.
    used, items = np.unique(items, return_inverse=True)
    return Interactions.from_arrays(
        users, items, n_users, len(used), None, np.arange(n_users), used,
        name=f"synthetic-v{GENERATOR_VERSION}(users={n_users}, items={n_items}, seed={seed})",
        origin=f"synthetic-v{GENERATOR_VERSION}",
    )


def _top_k_rows(scores: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, column)`` of each row's ``k[row]`` largest scores, for every row of the block at once: one
    partition at the block's largest k, one sort of that slice, then a mask of each row's own length."""
    kmax, n = int(k.max()), scores.shape[1]
    top = np.argpartition(scores, n - kmax, axis=1)[:, n - kmax:]  # no negated copy of the block
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    keep = np.arange(kmax) < k[:, None]
    rows = np.broadcast_to(np.arange(len(k))[:, None], top.shape)
    return rows[keep].astype(np.int64), top[keep].astype(np.int64)


# the options are `synthetic`'s parameters (plus two short names), typed as it declares them
_SYNTHETIC_KEYS = {"users": "n_users", "items": "n_items", **{p: p for p in inspect.signature(synthetic).parameters}}
_INT_KEYS = {p for p, t in typing.get_type_hints(synthetic).items() if t in (int, int | None)}


def parse_synthetic_spec(spec: str, seed: int) -> dict:
    """``"synthetic:users=500,topics=32"`` -> keyword arguments of `synthetic` (``seed`` unless given)."""
    kwargs: dict = {"seed": seed}
    _, _, rest = spec.partition(":")
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        arg = _SYNTHETIC_KEYS.get(key.strip())
        if not sep or arg is None:
            raise DataError(f"bad synthetic option {part!r} (expected key=value with key in "
                            f"{', '.join(sorted(_SYNTHETIC_KEYS))})")
        try:
            kwargs[arg] = int(value) if arg in _INT_KEYS else float(value)
        except ValueError:
            raise DataError(f"bad value for synthetic option {key}: {value!r}") from None
    return kwargs
