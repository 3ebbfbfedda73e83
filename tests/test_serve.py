"""Tests of the deployable student: round trip (flat: the evaluation's top-K; approximate: the same recall)
and one-line errors for missing or damaged files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdtune.serve
from kdtune.data.interactions import Interactions
from kdtune.errors import DataError
from kdtune.model.mf import MF
from kdtune.serving.deploy import INDEX_FILE, MANIFEST_FILE, USERS_FILE, write_student
from kdtune.serving.served import ServedStudent
from kdtune.train.evaluate import evaluate

N_USERS, N_ITEMS = 60, 400


def _interactions(rows):
    users = np.concatenate([[u] * len(r) for u, r in enumerate(rows)]).astype(np.int64)
    return Interactions.from_arrays(users, np.concatenate(rows).astype(np.int64), N_USERS, N_ITEMS)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    perm = [rng.permutation(N_ITEMS) for _ in range(N_USERS)]
    train = _interactions([p[: 2 + u % 11] for u, p in enumerate(perm)])
    test = _interactions([p[20:24] for p in perm])
    return MF(N_USERS, N_ITEMS, 8, seed=0), train, test


def _deploy(model, train, spec, path):
    served = ServedStudent.from_model(model, spec)
    user_ids = [f"u{u}" for u in range(N_USERS)]
    item_ids = [1000 + i for i in range(N_ITEMS)]
    write_student(served, train.indptr.numpy(), train.indices.numpy(), user_ids, item_ids, path)
    return served, user_ids, item_ids


def test_flat_round_trip_gives_the_evaluation_top_k(world, tmp_path):
    model, train, _ = world
    _, user_ids, item_ids = _deploy(model, train, "flat", tmp_path)
    got = kdtune.serve.load(tmp_path).recommend(user_ids, 10, exclude_seen=True)
    scores = model.full_scores(torch.arange(N_USERS)).detach()
    for u in range(N_USERS):
        scores[u, train.items_of(u)] = -float("inf")
    expected = torch.topk(scores, 10, dim=1).indices.numpy()
    assert got == [[item_ids[i] for i in row] for row in expected]
    unmasked = kdtune.serve.load(tmp_path).recommend(user_ids[:3], 5, exclude_seen=False)
    assert unmasked == [[item_ids[i] for i in row] for row in torch.topk(model.full_scores(torch.arange(3)), 5).indices.tolist()]


@pytest.mark.parametrize("spec", ["hnsw8_ef16", "ivf8_np2"])
def test_approximate_round_trip_keeps_the_recall(world, tmp_path, spec):
    model, train, test = world
    served, user_ids, item_ids = _deploy(model, train, spec, tmp_path)
    reported = evaluate(served.scorer(train, 20), train, test, ks=(20,))["recall@20"]
    got = kdtune.serve.load(tmp_path).recommend(user_ids, 20)
    recall = np.mean([len({item_ids[i] for i in test.items_of(u).tolist()} & set(got[u])) / 4 for u in range(N_USERS)])
    assert recall == pytest.approx(reported)


@pytest.mark.parametrize("name", [INDEX_FILE, USERS_FILE, MANIFEST_FILE])
def test_missing_or_damaged_files_are_one_line_errors_naming_the_file(world, tmp_path, name):
    model, train, _ = world
    _deploy(model, train, "flat", tmp_path)
    (tmp_path / name).write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match=name) as err:
        kdtune.serve.load(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / name).unlink()
    with pytest.raises(DataError, match=f"{name}: missing"):
        kdtune.serve.load(tmp_path)


def test_unknown_user_is_a_clear_error(world, tmp_path):
    model, train, _ = world
    _deploy(model, train, "flat", tmp_path)
    with pytest.raises(DataError, match="unknown user id 'nobody'"):
        kdtune.serve.load(tmp_path).recommend(["nobody"], 5)
