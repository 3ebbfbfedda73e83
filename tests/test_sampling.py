import torch

from kdtune.data import Interactions, synthetic
from kdtune.data.sampler import BPRSampler, PositiveSet


def dense_data() -> Interactions:
    # Users who have seen most of a small catalogue make collisions frequent.
    g = torch.Generator().manual_seed(0)
    users, items = [], []
    for u in range(50):
        chosen = torch.randperm(40, generator=g)[: 5 + u % 30]
        users += [u] * len(chosen)
        items += chosen.tolist()
    return Interactions.from_arrays(torch.tensor(users).numpy(), torch.tensor(items).numpy(), 50, 40)


def test_no_negative_is_a_training_positive():
    data = dense_data()
    seen = {(u, int(i)) for u in range(data.n_users) for i in data.items_of(u)}
    sampler = BPRSampler(data, batch_size=128, generator=torch.Generator().manual_seed(1))
    n = 0
    for _ in range(5):
        for users, pos, neg in sampler.epoch():
            assert all((int(u), int(j)) not in seen for u, j in zip(users, neg, strict=True))
            assert all((int(u), int(i)) in seen for u, i in zip(users, pos, strict=True))
            n += len(users)
    assert n > 0.9 * 5 * data.nnz


def test_epoch_visits_every_interaction_once():
    data = synthetic(n_users=200, n_items=300, seed=3)
    sampler = BPRSampler(data, batch_size=97, generator=torch.Generator().manual_seed(0))
    pairs = torch.cat([torch.stack([u, p], 1) for u, p, _ in sampler.epoch()])
    assert len(sampler) == -(-data.nnz // 97)
    expected = torch.stack([data.row_ids(), data.indices], 1)
    assert torch.equal(torch.unique(pairs, dim=0), torch.unique(expected, dim=0))
    assert len(pairs) == data.nnz


def test_user_who_saw_everything_is_dropped_not_kept():
    # user 0 has every item: no valid negative exists, so their triplets must be dropped.
    data = Interactions.from_arrays([0, 0, 0, 1], [0, 1, 2, 0], 2, 3)
    sampler = BPRSampler(data, batch_size=8, generator=torch.Generator().manual_seed(0), max_redraws=5)
    users, pos, neg = next(iter(sampler.epoch()))
    assert users.tolist() == [1]
    assert neg.item() in (1, 2)


def test_sorted_key_fallback_matches_bitmap(monkeypatch):
    data = dense_data()
    users = torch.randint(0, 50, (2000,))
    items = torch.randint(0, 40, (2000,))
    expected = PositiveSet(data).contains(users, items)
    monkeypatch.setattr("kdtune.data.sampler.MAX_BITMAP_CELLS", 0)
    fallback = PositiveSet(data)
    assert fallback.bitmap is None
    assert torch.equal(fallback.contains(users, items), expected)


def test_sampling_is_deterministic_under_a_seed():
    data = synthetic(n_users=100, n_items=150, seed=1)
    a = [torch.cat(b) for b in BPRSampler(data, 64, torch.Generator().manual_seed(5)).epoch()]
    b = [torch.cat(b) for b in BPRSampler(data, 64, torch.Generator().manual_seed(5)).epoch()]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
