"""Tests of the deployable student: round trip (flat: the evaluation's top-K; approximate: the same recall),
one-line errors for missing or damaged files, and its index searched on a GPU (Faiss GPU builds)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

import kdtune.serve
from kdtune.data.interactions import Interactions
from kdtune.errors import DataError, UsageError
from kdtune.model.mf import MF
from kdtune.serving.deploy import INDEX_FILE, MANIFEST_FILE, USERS_FILE, write_student
from kdtune.serving.index import GPU_MAX_K, describe_index, faiss_gpus
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


def test_device_must_be_cpu_cuda_or_auto(world, tmp_path):
    model, train, _ = world
    _deploy(model, train, "flat", tmp_path)
    with pytest.raises(UsageError, match="device must be"):
        kdtune.serve.load(tmp_path, device="gpu0")


@pytest.mark.skipif(faiss_gpus() > 0, reason="Faiss has GPUs here: the GPU test below runs instead")
def test_cuda_without_faiss_gpus_is_a_one_line_error_and_auto_stays_on_cpu(world, tmp_path):
    model, train, _ = world
    _, user_ids, _ = _deploy(model, train, "flat", tmp_path)
    with pytest.raises(UsageError, match=f"{INDEX_FILE}: cannot search it on cuda: no GPU 0 for Faiss") as err:
        kdtune.serve.load(tmp_path, device="cuda")
    assert "\n" not in str(err.value)
    auto = kdtune.serve.load(tmp_path, device="auto")
    assert "gpu" not in describe_index(auto.served.index)
    assert auto.recommend(user_ids, 10) == kdtune.serve.load(tmp_path).recommend(user_ids, 10)


class _Answering:
    """A stand-in for a GPU index: a CPU clone that records the k of each search it answers."""

    def __init__(self, index):
        self.index, self.ks = faiss.clone_index(index), []

    def search(self, queries, k):
        self.ks.append(k)
        return self.index.search(queries, k)


@pytest.mark.parametrize("spec", ["flat", "ivf8_np2"])
def test_a_gpu_copy_serves_like_the_cpu_index_and_long_searches_stay_on_the_cpu(world, tmp_path, monkeypatch, spec):
    """The wiring of ``device="cuda"`` on a stand-in for Faiss's GPU calls (the real ones need a GPU build):
    the same top-K, and a search longer than a GPU returns answered by the CPU original."""
    model, train, _ = world
    _, user_ids, _ = _deploy(model, train, spec, tmp_path)
    clones = []
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, gpu, index: clones.append(_Answering(index)) or clones[-1],
                        raising=False)
    on_gpu = kdtune.serve.load(tmp_path, device="cuda")
    assert describe_index(on_gpu.served.index)["gpu"] is True and len(clones) == 1
    assert on_gpu.recommend(user_ids, 10) == kdtune.serve.load(tmp_path).recommend(user_ids, 10)
    assert clones[0].ks and max(clones[0].ks) <= GPU_MAX_K
    answered = len(clones[0].ks)
    on_gpu.served.index.search(np.zeros((1, on_gpu.served.index.d), np.float32), GPU_MAX_K + 1)
    assert len(clones[0].ks) == answered  # not the GPU copy
    _deploy(model, train, "hnsw8_ef16", tmp_path / "hnsw")
    with pytest.raises(UsageError, match="no Faiss GPU form"):
        kdtune.serve.load(tmp_path / "hnsw", device="cuda")


@pytest.mark.skipif(faiss_gpus() == 0, reason="needs a Faiss build with GPU support and a GPU")
@pytest.mark.parametrize("spec", ["flat", "ivf8_np2"])
def test_faiss_gpu_index_ranks_like_the_cpu_one(world, tmp_path, spec):
    model, train, _ = world
    _, user_ids, _ = _deploy(model, train, spec, tmp_path)
    assert kdtune.serve.load(tmp_path, device="cuda").recommend(user_ids, 10) == \
        kdtune.serve.load(tmp_path).recommend(user_ids, 10)
