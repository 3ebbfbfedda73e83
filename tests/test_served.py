"""Tests of a model served from each exact Faiss index (flat, sq8, fp16, bf16): scores within each storage
scheme's error bound, rankings like the float weights, bytes, and the index kept beside the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdtune.model.mf import MF
from kdtune.model.store import load_model, save_model
from kdtune.serving.index import IndexSpec, augment_items, augment_users, describe_index, index_width
from kdtune.serving.served import ServedStudent, save_served_index, served_student

EXACT = ["flat", "sq8", "fp16", "bf16"]
# Unit roundoff of the 16-bit floats (half an ulp at 1.0).
_EPS16 = {"bf16": 2.0**-8, "fp16": 2.0**-11}


def trained_like(n_users: int = 60, n_items: int = 700, dim: int = 16, seed: int = 0) -> MF:
    """An MF with spread-out rows and biases (row norms vary, as in trained tables)."""
    m = MF(n_users, n_items, dim, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        m.item_emb.weight.mul_(torch.rand(n_items, 1, generator=gen) * 5)
        m.user_emb.weight.mul_(torch.rand(n_users, 1, generator=gen) * 5)
        m.item_bias.weight.normal_(0, 0.05, generator=gen)
        m.user_bias.weight.normal_(0, 0.05, generator=gen)
    return m


def _exact_scores(model: MF, served: ServedStudent) -> tuple[np.ndarray, np.ndarray]:
    """``(queries [n_users, width], float32 scores [n_users, n_items])`` of the model's own weights."""
    items = augment_items(model.item_emb.weight.detach().numpy(), model.item_bias.weight.detach().numpy().reshape(-1),
                          int(served.index.d))
    queries = augment_users(served.users, int(served.index.d))
    return queries, queries @ items.T


@pytest.mark.parametrize("spec", EXACT)
def test_index_scores_within_the_storage_bound(spec):
    model = trained_like()
    served = ServedStudent.from_model(model, spec)
    queries, ref = _exact_scores(model, served)
    scores, ids = served.index.search(queries, served.n_items)
    err = np.abs(scores - np.take_along_axis(ref, ids, 1))
    items = augment_items(model.item_emb.weight.detach().numpy(), model.item_bias.weight.detach().numpy().reshape(-1),
                          int(served.index.d))
    if spec == "flat":
        assert float(err.max()) < 1e-4
    elif spec == "sq8":
        # 8 bits per dimension over its trained range: each element off by at most one step.
        step = (items.max(0) - items.min(0)) / 255
        assert bool((err <= (np.abs(queries) @ step)[:, None] + 1e-4).all())
        assert float(err.max()) > 1e-4  # really 8-bit codes, not floats
    else:
        magnitude = np.take_along_axis(np.abs(queries) @ np.abs(items).T, ids, 1)
        assert bool((err <= 2 * _EPS16[spec] * magnitude + 1e-6).all())


@pytest.mark.parametrize("spec", EXACT)
def test_index_ranks_like_the_float_weights(spec):
    model = trained_like()
    served = ServedStudent.from_model(model, spec)
    users = torch.arange(model.n_users)
    ref = torch.topk(model.full_scores(users).detach(), 20, dim=1).indices.numpy()
    got = served.recommend(users.numpy(), 20)
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(got, ref, strict=True)])
    assert overlap == 1.0 if spec == "flat" else overlap >= 0.9
    with pytest.raises(ValueError):
        served.recommend([model.n_users], 5)


@pytest.mark.parametrize("spec, element_bytes", [("flat", 4), ("sq8", 1), ("fp16", 2), ("bf16", 2)])
def test_bytes_are_the_index_size(spec, element_bytes):
    served = ServedStudent.from_model(trained_like(n_items=700, dim=16), spec)
    width = index_width(16, IndexSpec.parse(spec))  # 17 columns (the bias), 32 for the scalar quantisers
    codes = 700 * width * element_bytes
    assert served.n_bytes() == describe_index(served.index)["bytes"]
    assert codes <= served.n_bytes() <= codes + 2 * width * 4 + 1024  # codes, sq8's trained ranges, a header


@pytest.mark.parametrize("spec", EXACT)
def test_the_index_kept_beside_the_weights_is_the_one_served(tmp_path, spec):
    model = trained_like()
    served = ServedStudent.from_model(model, spec)
    save_model(model, tmp_path)
    save_served_index(served, tmp_path)
    again = served_student(load_model(tmp_path), spec, tmp_path)
    assert again.spec == served.spec
    users = np.arange(10)
    np.testing.assert_array_equal(again.recommend(users, 10), served.recommend(users, 10))
    # another spec is built anew, not read from the kept index
    other = "flat" if spec != "flat" else "sq8"
    assert served_student(load_model(tmp_path), other, tmp_path).spec.name == other
