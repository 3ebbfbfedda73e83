"""The seeded synthetic dataset (``--data synthetic[:key=value,...]``)."""

from __future__ import annotations

import numpy as np

from kdtune.data.interactions import Interactions
from kdtune.errors import DataError


def synthetic(
    n_users: int = 2000,
    n_items: int = 3000,
    dim: int = 16,
    mean_items: float = 30.0,
    popularity_exponent: float = 0.8,
    affinity: float = 5.0,
    seed: int = 0,
) -> Interactions:
    """A seeded implicit dataset with real structure, so that Recall@K means something.

    Users and items get latent factors (a mixture of ``dim`` Gaussian "tastes"); each item also gets a
    popularity drawn from a Zipf law with ``popularity_exponent``. User activity is log-normal around
    ``mean_items``. Each user draws their items without replacement with probability
    ``∝ popularity_i · exp(affinity · cos(u, i))``, so both taste and popularity matter and a
    model that learns the factors beats a popularity ranking.
    """
    if n_users < 2 or n_items < 2:
        raise DataError("synthetic data needs at least 2 users and 2 items")
    rng = np.random.default_rng(seed)
    # Taste clusters make the factors low-rank but not trivially so.
    n_clusters = max(2, dim)
    centers = rng.normal(size=(n_clusters, dim))
    uf = centers[rng.integers(n_clusters, size=n_users)] + 0.5 * rng.normal(size=(n_users, dim))
    itf = centers[rng.integers(n_clusters, size=n_items)] + 0.5 * rng.normal(size=(n_items, dim))
    uf /= np.linalg.norm(uf, axis=1, keepdims=True)
    itf /= np.linalg.norm(itf, axis=1, keepdims=True)
    ranks = rng.permutation(n_items) + 1
    log_pop = -popularity_exponent * np.log(ranks)
    sigma = 0.8
    activity = rng.lognormal(np.log(mean_items) - sigma**2 / 2, sigma, size=n_users)
    activity = np.clip(np.round(activity), 3, n_items // 2).astype(np.int64)

    users_out, items_out = [], []
    block = 512  # users per block: bounded memory for the [block, n_items] logits
    for start in range(0, n_users, block):
        stop = min(n_users, start + block)
        logits = affinity * (uf[start:stop] @ itf.T) + log_pop
        # Gumbel top-k = sampling without replacement proportional to exp(logits).
        gumbel = logits + rng.gumbel(size=logits.shape)
        for row, u in enumerate(range(start, stop)):
            k = activity[u]
            chosen = np.argpartition(-gumbel[row], k - 1)[:k]
            users_out.append(np.full(k, u, dtype=np.int64))
            items_out.append(chosen.astype(np.int64))
    users = np.concatenate(users_out)
    items = np.concatenate(items_out)
    # Drop items nobody picked so that every id is used.
    used, items = np.unique(items, return_inverse=True)
    return Interactions.from_arrays(
        users, items, n_users, len(used), None, np.arange(n_users), used,
        name=f"synthetic(users={n_users}, items={n_items}, seed={seed})",
    )



_SYNTHETIC_KEYS = {
    "users": "n_users", "n_users": "n_users", "items": "n_items", "n_items": "n_items", "dim": "dim",
    "mean_items": "mean_items", "popularity_exponent": "popularity_exponent", "affinity": "affinity",
    "seed": "seed",
}
_INT_KEYS = {"n_users", "n_items", "dim", "seed"}


def parse_synthetic_spec(spec: str, seed: int) -> dict:
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
