"""The catalogue extension: drawn rows follow the trained table's distribution (mean and covariance of
``[q_i, b_i]``), a seed fixes them, and a student served at a catalogue larger than the data's is scored
over its own items plus the drawn rows, which take places in a user's top-K but are never hits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdtune.data.interactions import Interactions
from kdtune.model.mf import MF
from kdtune.model.store import save_model
from kdtune.serving.catalog import draw_rows, trained_tables, with_drawn_rows
from kdtune.serving.index import augment_items, augment_users, build_index
from kdtune.serving.served import ServedStudent, save_served_index, served_student
from kdtune.train.evaluate import evaluate


def _table(n: int = 2000, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated columns, a non-zero mean and a bias that follows the first column."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dim, dim)) * 0.3
    items = (rng.standard_normal((n, dim)) @ mix + np.linspace(-0.5, 0.5, dim)).astype(np.float32)
    bias = (0.2 * items[:, 0] + 0.05 * rng.standard_normal(n) + 0.1).astype(np.float32)
    return items, bias


def test_drawn_rows_have_the_tables_mean_and_covariance():
    items, bias = _table()
    drawn, drawn_bias = draw_rows(items, bias, 200_000, np.random.default_rng(1))
    assert drawn.shape == (200_000, 6) and drawn_bias.shape == (200_000,) and drawn.dtype == np.float32
    rows = np.hstack([items, bias[:, None]]).astype(np.float64)
    got = np.hstack([drawn, drawn_bias[:, None]]).astype(np.float64)
    scale = np.sqrt(np.diag(np.cov(rows, rowvar=False)))
    np.testing.assert_allclose(got.mean(0), rows.mean(0), atol=0.02 * scale.max())
    np.testing.assert_allclose(np.cov(got, rowvar=False), np.cov(rows, rowvar=False), atol=0.02 * scale.max() ** 2)
    # the bias keeps its correlation with the vectors (a popular direction stays popular)
    assert np.corrcoef(got[:, 0], got[:, -1])[0, 1] == pytest.approx(np.corrcoef(rows[:, 0], rows[:, -1])[0, 1], abs=0.01)


def test_drawn_rows_are_not_copies_of_trained_rows():
    items, bias = _table(n=500)
    drawn, _ = draw_rows(items, bias, 500, np.random.default_rng(0))
    nearest = np.sqrt(((drawn[:, None, :] - items[None, :, :]) ** 2).sum(-1)).min(1)
    spacing = np.sqrt(((items[:, None, :] - items[None, :, :]) ** 2).sum(-1) + np.eye(500) * 1e9).min(1)
    # a drawn row is as far from its nearest trained row as trained rows are from each other
    assert np.median(nearest) > 0.5 * np.median(spacing)


def test_a_seed_fixes_the_drawn_rows_and_the_trained_rows_come_first():
    items, bias = _table(n=300)
    a_items, a_bias = with_drawn_rows(items, bias, 1000, seed=3)
    b_items, b_bias = with_drawn_rows(items, bias, 1000, seed=3)
    np.testing.assert_array_equal(a_items, b_items)
    np.testing.assert_array_equal(a_bias, b_bias)
    np.testing.assert_array_equal(a_items[:300], items)
    np.testing.assert_array_equal(a_bias[:300], bias)
    assert not np.array_equal(with_drawn_rows(items, bias, 1000, seed=4)[0], a_items)
    # as many rows as asked, or the table unchanged when it has them (never cut)
    assert a_items.shape == (1000, 6)
    for size in (None, 300, 100):
        assert with_drawn_rows(items, bias, size)[0].shape == (300, 6)
    tables = trained_tables(items, bias, seed=3)
    np.testing.assert_array_equal(tables(6, 1000)[0], trained_tables(items, bias, seed=3)(6, 1000)[0])
    assert tables(4, 1000)[0].shape == (1000, 4)


def _one_user(test_item: int, n_items: int = 3) -> tuple[list[Interactions], Interactions]:
    """User 0 has seen nothing (an empty train split) and has ``test_item`` to find."""
    empty = Interactions.from_arrays(np.array([], np.int64), np.array([], np.int64), 1, n_items)
    return [empty], Interactions.from_arrays(np.array([0]), np.array([test_item]), 1, n_items)


def test_a_drawn_row_takes_a_place_in_the_top_k_and_is_never_a_hit():
    # 3 items of the data, 2 drawn rows (ids 3, 4): the user's order is 3, 1, 4, 0, 2
    items = np.array([[0.2, 0], [0.8, 0], [0.0, 1], [1.0, 0], [0.5, 0]], np.float32)
    served = ServedStudent(np.array([[1.0, 0.0]], np.float32), build_index("flat", items), "flat")
    np.testing.assert_array_equal(served.recommend([0], 3), [[3, 1, 4]])
    for test_item, recall in ((1, 1.0), (0, 0.0), (2, 0.0)):
        seen, test = _one_user(test_item)
        got = evaluate(served.scorer(seen, 2), seen, test, ks=(2,))
        assert got["recall@2"] == recall, test_item
        # without the drawn rows item 0 is second and found
    seen, test = _one_user(0)
    alone = ServedStudent(np.array([[1.0, 0.0]], np.float32), build_index("flat", items[:3]), "flat")
    assert evaluate(alone.scorer(seen, 2), seen, test, ks=(2,))["recall@2"] == 1.0


def _student(n_users: int = 40, n_items: int = 300, dim: int = 8) -> MF:
    model = MF(n_users, n_items, dim, seed=0)
    with torch.no_grad():
        model.item_bias.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return model


def test_a_student_at_a_larger_catalogue_is_scored_over_its_items_and_drawn_rows():
    model, catalog, k = _student(), 5000, 10
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(40), 6), rng.integers(0, 300, 240)
    seen = Interactions.from_arrays(users[::2], items[::2], 40, 300)
    test = Interactions.from_arrays(users[1::2], items[1::2], 40, 300)
    served = ServedStudent.from_model(model, "flat", catalog_size=catalog)
    assert served.n_items == catalog
    # what exact search must return: the top k of the unseen items among the model's items and the drawn rows
    table, bias = with_drawn_rows(model.item_emb.weight.detach().numpy(),
                                  model.item_bias.weight.detach().numpy().reshape(-1), catalog)
    scores = augment_users(model.user_emb.weight.detach().numpy()) @ augment_items(table, bias).T
    recall = []
    for u in range(40):
        mine, wanted = set(seen.items_of(u).tolist()), set(test.items_of(u).tolist())
        if not wanted:
            continue
        top = [i for i in np.argsort(-scores[u], kind="stable") if i not in mine][:k]
        recall.append(len(wanted & set(top)) / len(wanted))
    got = evaluate(served.scorer(seen, k), seen, test, ks=(k,))
    assert got[f"recall@{k}"] == pytest.approx(np.mean(recall))
    # the drawn rows crowd real items out: fewer hits than over the data's items alone
    alone = evaluate(ServedStudent.from_model(model, "flat").scorer(seen, k), seen, test, ks=(k,))
    assert got[f"recall@{k}"] < alone[f"recall@{k}"]


def test_the_kept_index_is_reused_at_its_catalogue_only(tmp_path):
    model = _student()
    served = ServedStudent.from_model(model, "ivf8_np2", catalog_size=2000)
    save_model(model, tmp_path)
    save_served_index(served, tmp_path)
    again = served_student(model, "ivf8_np2", tmp_path, catalog_size=2000)
    assert again.index.ntotal == 2000
    users = np.arange(10)
    np.testing.assert_array_equal(again.recommend(users, 10), served.recommend(users, 10))
    # rebuilt the same way when nothing was kept: the same results
    rebuilt = served_student(model, "ivf8_np2", None, catalog_size=2000)
    np.testing.assert_array_equal(rebuilt.recommend(users, 10), served.recommend(users, 10))
    # the data's catalogue (a deployable student) does not read the larger index
    assert served_student(model, "ivf8_np2", tmp_path).index.ntotal == 300
