"""Tests of the serving indexes: specs, exact search with seen items excluded, metrics through an index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdtune.data.interactions import Interactions
from kdtune.model.mf import MF
from kdtune.serving.index import IndexSpec, build_index, check_index, describe_index, search_unseen
from kdtune.serving.served import IndexScorer, ServedStudent
from kdtune.train.evaluate import evaluate


@pytest.mark.parametrize("text, settings", [("flat", {}), ("sq8", {}), ("fp16", {}), ("bf16", {}),
                                            ("ivf64_np4", {"nlist": 64, "nprobe": 4}),
                                            ("hnsw16_ef32", {"M": 16, "efSearch": 32})])
def test_spec_round_trip(text, settings):
    spec = IndexSpec.parse(text)
    assert spec.name == text and spec.settings() == settings
    assert spec.exact == (not settings)


@pytest.mark.parametrize("bad", ["ivf", "hnsw32", "ivf0_np4", "pq8", "flat,x"])
def test_unknown_specs_are_refused(bad):
    with pytest.raises(ValueError, match="index"):
        check_index(bad)


def _table(n=2000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=n).astype(np.float32) * 0.1


def test_flat_is_the_exact_top_k_of_unseen_items_with_the_bias():
    items, bias = _table()
    users = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    seen = [np.random.default_rng(u).choice(2000, size=u % 7, replace=False) for u in range(30)]
    got = search_unseen(build_index("flat", items, bias), users, 10, seen)
    scores = users @ items.T + bias
    for u in range(30):
        scores[u, seen[u]] = -np.inf
    np.testing.assert_array_equal(got, np.argsort(-scores, axis=1, kind="stable")[:, :10])


@pytest.mark.parametrize("spec", ["sq8", "fp16", "bf16", "ivf16_np16", "hnsw16_ef64"])
def test_every_index_finds_most_of_the_exact_top_k(spec):
    items, bias = _table()
    users = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
    exact = search_unseen(build_index("flat", items, bias), users, 10)
    got = search_unseen(build_index(spec, items, bias), users, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact, strict=True)])
    assert overlap > 0.8, overlap


def test_ivf_cells_fit_the_catalogue_and_are_described():
    items, bias = _table(n=400)
    info = describe_index(build_index("ivf1024_np8", items, bias))
    assert info["nlist_used"] == 400 // 39 and info["nprobe"] == 8 and info["n_items"] == 400
    assert info["bytes"] > 400 * 9 * 4


def test_short_lists_are_padded_with_minus_one():
    items, bias = _table(n=15)
    got = search_unseen(build_index("flat", items, bias), items[:2], 10, [np.arange(10), np.arange(3)])
    assert (got[0, 5:] == -1).all() and (got[0, :5] >= 10).all()
    assert (got[1] >= 3).all()


def _interactions(n_users, n_items, rows):
    users = np.concatenate([[u] * len(r) for u, r in enumerate(rows)]).astype(np.int64)
    items = np.concatenate(rows).astype(np.int64)
    return Interactions.from_arrays(users, items, n_users, n_items)


def test_metrics_through_a_flat_index_equal_the_model_metrics():
    model = MF(40, 300, 8, seed=0)
    rng = np.random.default_rng(0)
    train = _interactions(40, 300, [rng.choice(300, size=1 + u % 9, replace=False) for u in range(40)])
    test = _interactions(40, 300, [rng.choice(300, size=3, replace=False) for _ in range(40)])
    test = test.subset(~torch.from_numpy(np.isin(_pairs(test), _pairs(train))))
    served = ServedStudent.from_model(model, "flat")
    direct = evaluate(model, train, test, ks=(10,))
    through = evaluate(served.scorer(train, 10), train, test, ks=(10,))
    assert through == pytest.approx(direct)


def test_a_flat_index_is_scored_by_its_stored_vectors_as_its_search_ranks():
    """The exact shortcut for ``flat`` (FlatScorer: the index's own vectors, ranked by evaluate) gives the
    search's metrics (IndexScorer: Faiss's search, seen items dropped), seen items of two splits excluded."""
    model = MF(50, 400, 8, seed=1)
    rng = np.random.default_rng(1)
    train = _interactions(50, 400, [rng.choice(400, size=1 + u % 23, replace=False) for u in range(50)])
    valid = _interactions(50, 400, [rng.choice(400, size=2, replace=False) for _ in range(50)])
    test = _interactions(50, 400, [rng.choice(400, size=3, replace=False) for _ in range(50)])
    served = ServedStudent.from_model(model, "flat")
    for seen in (train, [train, valid]):
        shortcut = served.scorer(seen, 10)
        assert type(shortcut).__name__ == "FlatScorer"
        searched = IndexScorer(served, [seen] if isinstance(seen, Interactions) else seen, 10)
        assert evaluate(shortcut, seen, test, ks=(5, 10)) == evaluate(searched, seen, test, ks=(5, 10))
    # drawn rows past the data's items: the index's search, which may return them
    wider = ServedStudent.from_model(model, "flat", catalog_size=1000)
    assert type(wider.scorer(train, 10)).__name__ == "IndexScorer"


def _pairs(x: Interactions) -> np.ndarray:
    return x.row_ids().numpy() * x.n_items + x.indices.numpy()
