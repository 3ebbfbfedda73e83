"""Tests of the full-ranking metrics: perfect / no-hit / hand-computed cases, masking, a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdtune.data import Interactions
from kdtune.model.mf import MF
from kdtune.train.evaluate import Popularity, evaluate


class FixedScores:
    """A scorer returning a given ``[n_users, n_items]`` score matrix."""

    def __init__(self, scores: torch.Tensor):
        self.scores = scores.float()

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores[users].clone()


def csr(rows: list[list[int]], n_items: int) -> Interactions:
    users = np.array([u for u, r in enumerate(rows) for _ in r], dtype=np.int64)
    items = np.array([i for r in rows for i in r], dtype=np.int64)
    return Interactions.from_arrays(users, items, len(rows), n_items)


def test_perfect_ranking_scores_one():
    train = csr([[0], [1], [2]], 6)
    test = csr([[3, 4], [5], [0, 3]], 6)
    scores = torch.zeros(3, 6)
    for u, items in enumerate([[3, 4], [5], [0, 3]]):
        scores[u, items] = 10.0
    res = evaluate(FixedScores(scores), train, test, ks=(2, 3))
    for k in (2, 3):
        for m in ("recall", "ndcg", "hr", "mrr"):
            assert res[f"{m}@{k}"] == pytest.approx(1.0), (m, k)
    assert res["n_users"] == 3


def test_no_hit_scores_zero():
    train = csr([[0], [1]], 6)
    test = csr([[5], [4]], 6)
    scores = torch.arange(6, 0, -1).repeat(2, 1)  # items 0 > 1 > ... > 5
    res = evaluate(FixedScores(scores), train, test, ks=(1, 3))
    for k in (1, 3):
        for m in ("recall", "ndcg", "hr", "mrr"):
            assert res[f"{m}@{k}"] == 0.0, (m, k)


def test_hand_computed_case():
    # User 0: train {0}; test {1, 3}. Ranking after masking item 0: 2, 3, 4, 1, 5 -> hits at ranks 2 and 4.
    # User 1: train {5}; test {0}.    Ranking after masking item 5: 1, 2, 3, 0, 4 -> hit at rank 4.
    # User 2: no test items -> skipped.
    scores = torch.tensor(
        [[9.0, 1.0, 8.0, 7.0, 2.0, 0.0], [3.0, 6.0, 5.0, 4.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    )
    train = csr([[0], [5], [1]], 6)
    test = csr([[1, 3], [0], []], 6)
    res = evaluate(FixedScores(scores), train, test, ks=(3, 5))
    assert res["n_users"] == 2

    inv_log2_3 = 1 / math.log2(3)  # 0.630930
    inv_log2_5 = 1 / math.log2(5)  # 0.430677
    # K=3. User 0: 1 hit of 2 at rank 2 -> recall 1/2, DCG 1/log2(3), IDCG 1 + 1/log2(3), MRR 1/2.
    #      User 1: no hit -> 0 everywhere.
    ndcg_u0_k3 = inv_log2_3 / (1 + inv_log2_3)  # 0.386853
    assert res["recall@3"] == pytest.approx((0.5 + 0.0) / 2)
    assert res["ndcg@3"] == pytest.approx((ndcg_u0_k3 + 0.0) / 2)
    assert res["ndcg@3"] == pytest.approx(0.193426, abs=1e-6)
    assert res["hr@3"] == pytest.approx(0.5)
    assert res["mrr@3"] == pytest.approx(0.25)
    # K=5. User 0: hits at 2 and 4 -> recall 1, DCG 1/log2(3) + 1/log2(5), IDCG 1 + 1/log2(3), MRR 1/2.
    #      User 1: hit at 4 -> recall 1, DCG 1/log2(5), IDCG 1, MRR 1/4.
    ndcg_u0_k5 = (inv_log2_3 + inv_log2_5) / (1 + inv_log2_3)  # 0.650921
    ndcg_u1_k5 = inv_log2_5  # 0.430677
    assert res["recall@5"] == pytest.approx(1.0)
    assert res["ndcg@5"] == pytest.approx((ndcg_u0_k5 + ndcg_u1_k5) / 2)
    assert res["ndcg@5"] == pytest.approx(0.540799, abs=1e-6)
    assert res["hr@5"] == pytest.approx(1.0)
    assert res["mrr@5"] == pytest.approx((0.5 + 0.25) / 2)


def test_recall_denominator_is_test_size_not_min_k():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    res = evaluate(FixedScores(scores), csr([[]], 6), csr([[0, 1, 2, 3]], 6), ks=(2,))
    assert res["recall@2"] == pytest.approx(2 / 4)  # not 2 / min(4, 2) = 1
    assert res["ndcg@2"] == pytest.approx(1.0)  # IDCG over min(|test|, K) = 2 positions


def test_seen_items_are_masked():
    # Item 0 (training) has the highest score: it must neither count nor take a top-K slot.
    scores = torch.tensor([[10.0, 9.0, 1.0, 0.0]])
    res = evaluate(FixedScores(scores), csr([[0]], 4), csr([[1]], 4), ks=(1,))
    assert res["hr@1"] == 1.0 and res["mrr@1"] == 1.0
    # A test item that is also seen is masked too, so it can never be a hit, even with K = n_items.
    res = evaluate(FixedScores(scores), csr([[0]], 4), csr([[0]], 4), ks=(1, 4))
    assert res["hr@4"] == 0.0 and res["recall@4"] == 0.0
    # Several seen splits: train and valid are both masked when testing.
    res = evaluate(FixedScores(scores), [csr([[0]], 4), csr([[1]], 4)], csr([[2]], 4), ks=(1,))
    assert res["hr@1"] == 1.0


def test_k_larger_than_catalog_raises():
    scores = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="K larger than catalog"):
        evaluate(FixedScores(scores), csr([[0]], 4), csr([[1]], 4), ks=(5,))


def test_no_test_users_gives_nan():
    res = evaluate(FixedScores(torch.zeros(2, 4)), csr([[0], [1]], 4), csr([[], []], 4), ks=(2,))
    assert res["n_users"] == 0 and math.isnan(res["recall@2"])


def reference(scores: np.ndarray, seen: list[Interactions], test: Interactions, ks: list[int]) -> dict:
    """Pure-python, per-user metrics following the definitions in ``evaluate``'s docstring."""
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hr", "mrr")}
    n = 0
    for u in range(test.n_users):
        truth = set(test.items_of(u).tolist())
        if not truth:
            continue
        n += 1
        masked = set().union(*(set(s.items_of(u).tolist()) for s in seen))
        ranking = sorted((i for i in range(test.n_items) if i not in masked), key=lambda i: -scores[u, i])
        for k in ks:
            top = ranking[:k]
            hit_ranks = [r + 1 for r, i in enumerate(top) if i in truth]
            dcg = sum(1 / math.log2(r + 1) for r in hit_ranks)
            idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(truth), k) + 1))
            sums[f"recall@{k}"] += len(hit_ranks) / len(truth)
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hr@{k}"] += float(bool(hit_ranks))
            sums[f"mrr@{k}"] += 1 / hit_ranks[0] if hit_ranks else 0.0
    return {key: v / n for key, v in sums.items()} | {"n_users": n}


def random_split(rng: np.random.Generator, n_users: int, n_items: int, p: float) -> Interactions:
    return csr([sorted(np.flatnonzero(rng.random(n_items) < p).tolist()) for _ in range(n_users)], n_items)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_bruteforce_reference(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 40
    train = random_split(rng, n_users, n_items, 0.3)
    valid = random_split(rng, n_users, n_items, 0.05)
    test = random_split(rng, n_users, n_items, 0.06)  # may overlap the seen splits, and may be empty
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)
    ks = [1, 3, 10, 40]
    got = evaluate(FixedScores(torch.from_numpy(scores)), [train, valid], test, ks=ks, batch_size=16)
    want = reference(scores, [train, valid], test, ks)
    assert got["n_users"] == want["n_users"] < n_users
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_batch_size_does_not_change_results():
    rng = np.random.default_rng(5)
    train = random_split(rng, 37, 25, 0.3)
    test = random_split(rng, 37, 25, 0.2)
    model = MF(37, 25, 8, seed=0)
    results = [evaluate(model, train, test, ks=(5, 10), batch_size=b) for b in (1, 4, 37, 1000)]
    for res in results[1:]:
        assert res.keys() == results[0].keys()
        for key in res:
            assert res[key] == pytest.approx(results[0][key], abs=1e-12), key


def test_mf_training_mode_restored_and_matches_reference():
    rng = np.random.default_rng(3)
    train = random_split(rng, 30, 20, 0.3)
    test = random_split(rng, 30, 20, 0.2)
    model = MF(30, 20, 4, seed=1)
    model.train()
    got = evaluate(model, train, test, ks=(5,))
    assert model.training
    with torch.no_grad():
        scores = model.full_scores(torch.arange(30)).numpy()
    want = reference(scores, [train], test, [5])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    model.eval()
    evaluate(model, train, test, ks=(5,))
    assert not model.training


def test_popularity_baseline():
    train = csr([[0, 1], [0, 2], [0, 1], [3]], 5)
    pop = Popularity(train)
    assert pop.full_scores(torch.tensor([0, 3])).tolist() == [[3.0, 2.0, 1.0, 1.0, 0.0]] * 2
    # User 3 has not seen item 0, the most popular: popularity puts it first.
    res = evaluate(pop, train, csr([[], [], [], [0]], 5), ks=(1,))
    assert res["hr@1"] == 1.0 and res["n_users"] == 1
