"""Tests of post-training quantisation: error bounds, serving kernels vs a float reference, evaluation
from the quantised weights, and save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdtune.data import Interactions
from kdtune.model.mf import MF
from kdtune.model.quantized import (
    PRECISIONS,
    QuantizedMF,
    dequantize,
    dequantize_rows,
    quantize,
    quantize_rows,
)
from kdtune.model.store import load_model, save_model
from kdtune.train.evaluate import evaluate

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


def test_int8_rows_within_half_a_scale():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 24, generator=gen) * torch.logspace(-4, 2, 200)[:, None]
    x[7] = 0.0  # an all-zero row
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and scale.shape == (200,) and bool((scale > 0).all())
    assert int(q.abs().max()) == 127  # the largest element of a row maps to +-127
    err = (x - dequantize_rows(q, scale)).abs()
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5)).all())
    assert float(err[7].max()) == 0.0


@pytest.mark.parametrize("precision", PRECISIONS)
def test_model_round_trip_within_the_scheme_bound(precision):
    m = trained_like()
    deq = dequantize(quantize(m, precision))
    for name in ("user_emb", "item_emb"):
        x = getattr(m, name).weight.detach()
        err = (x - getattr(deq, name).weight.detach()).abs()
        if precision == "fp32":
            assert bool((err == 0).all())
        elif precision == "int8":
            bound = x.abs().amax(1, keepdim=True) / 127 / 2
            assert bool((err <= bound * (1 + 1e-5)).all())
        else:
            # Relative roundoff, plus half fp16's subnormal spacing for tiny values.
            tiny = 2.0**-25 if precision == "fp16" else 0.0
            assert bool((err <= x.abs() * _EPS16[precision] + tiny).all())
    # Biases are kept in float32 at every precision.
    assert torch.equal(deq.item_bias.weight, m.item_bias.weight)
    assert torch.equal(deq.user_bias.weight, m.user_bias.weight)


def test_int8_serving_kernel_matches_the_dequantised_reference():
    q = quantize(trained_like(), "int8")
    users = torch.arange(q.n_users)
    user_t, item_t = q.float_tables()
    ref = user_t[users] @ item_t.T + q.item_bias
    served = q.index().scores(user_t[users])
    # fbgemm quantises the batch of user vectors to 7 bits, affinely over [min(u, 0), max(u, 0)]: each
    # element is off by at most half a step, so a score by at most step / 2 * ||item||_1 (+ float rounding).
    u = user_t[users]
    step = (u.max().clamp(min=0) - u.min().clamp(max=0)) / 127
    bound = step / 2 * item_t.abs().sum(1) + 1e-4 * (ref.abs() + 1)
    err = (served - ref).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    assert float(err.max()) > 0  # the kernel really is the int8 one, not a float matmul


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_16bit_serving_kernel_matches_the_float_reference(precision):
    q = quantize(trained_like(), precision)
    user_t, item_t = q.float_tables()
    ref = user_t @ item_t.T + q.item_bias
    served = q.index().scores(user_t).float()
    assert served.dtype == torch.float32
    # Rounding the bias, the accumulation and the output to the 16-bit float: a few units of roundoff
    # of the magnitudes summed.
    magnitude = user_t.abs() @ item_t.abs().T + q.item_bias.abs()
    assert bool(((served - ref).abs() <= 4 * _EPS16[precision] * magnitude + 1e-6).all())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_serve_topk_ranks_like_the_stored_weights(precision):
    q = quantize(trained_like(), precision)
    users = torch.arange(q.n_users)
    scores, items = q.serve_topk(users, 20)
    assert scores.shape == items.shape == (q.n_users, 20)
    ref_items = torch.topk(q.full_scores(users), 20, dim=1).indices
    overlap = np.mean(
        [len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(items, ref_items, strict=True)]
    )
    assert overlap == 1.0 if precision == "fp32" else overlap >= 0.9
    # Ids or vectors: the same answer.
    by_vec = q.serve_topk(q.user_vectors(users), 20)
    assert torch.equal(by_vec[1], items)
    with pytest.raises(ValueError):
        q.serve_topk(torch.zeros(2, q.dim + 1), 5)


def _split(n_users: int, n_items: int, seed: int) -> tuple[Interactions, Interactions]:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 12)
    items = rng.integers(n_items, size=users.size)
    test = rng.random(users.size) < 0.25
    return (
        Interactions.from_arrays(users[~test], items[~test], n_users, n_items),
        Interactions.from_arrays(users[test], items[test], n_users, n_items),
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_evaluate_reads_the_quantised_weights(precision):
    m = trained_like(n_users=80, n_items=300, dim=8)
    train, test = _split(80, 300, seed=1)
    q = quantize(m, precision)
    got = evaluate(q, train, test, ks=(5, 20), batch_size=32)
    # A float MF built by hand from the dequantised tables (not through dequantize()).
    user_t, item_t = q.float_tables()
    ref = MF(80, 300, 8)
    with torch.no_grad():
        ref.user_emb.weight.copy_(user_t)
        ref.item_emb.weight.copy_(item_t)
        ref.user_bias.weight.copy_(m.user_bias.weight)
        ref.item_bias.weight.copy_(m.item_bias.weight)
    assert got == evaluate(ref, train, test, ks=(5, 20), batch_size=32)
    assert got == evaluate(dequantize(q), train, test, ks=(5, 20), batch_size=32)
    assert torch.equal(q.full_scores(torch.arange(80)), dequantize(q).full_scores(torch.arange(80)))


def test_quantised_scores_differ_from_the_float_model():
    m = trained_like()
    users = torch.arange(m.n_users)
    with torch.no_grad():
        assert not torch.equal(quantize(m, "int8").full_scores(users), m.full_scores(users))
        assert torch.equal(quantize(m, "fp32").full_scores(users), m.full_scores(users))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_save_load_round_trip(tmp_path, precision):
    q = quantize(trained_like(), precision)
    save_model(q, tmp_path)
    state = torch.load(tmp_path / "student.pt", weights_only=True)
    assert state["precision"] == precision
    back = load_model(tmp_path)
    assert isinstance(back, QuantizedMF) and back.arch() == q.arch()
    for key, value in q.state_dict().items():
        assert (
            value == back.state_dict()[key]
            if isinstance(value, str)
            else torch.equal(value, back.state_dict()[key])
        )
    assert torch.equal(back.serve_topk(torch.arange(5), 10)[1], q.serve_topk(torch.arange(5), 10)[1])


def test_bytes_arch_and_invalid_precision():
    m = trained_like(n_users=60, n_items=700, dim=16)
    rows = 60 + 700
    assert quantize(m, "fp32").n_bytes() == m.n_bytes() == rows * 16 * 4 + rows * 4
    assert quantize(m, "bf16").n_bytes() == quantize(m, "fp16").n_bytes() == rows * 16 * 2 + rows * 4
    assert quantize(m, "int8").n_bytes() == rows * 16 + rows * 4 + rows * 4  # codes, biases, scales
    assert quantize(m, "int8").arch() == {"n_users": 60, "n_items": 700, "dim": 16, "precision": "int8"}
    with pytest.raises(ValueError):
        quantize(m, "int4")
    with torch.no_grad():
        m.item_emb.weight[0, 0] = 1e5
    with pytest.raises(ValueError):
        quantize(m, "fp16")  # beyond fp16's range: would become inf
    with pytest.raises(ValueError):
        QuantizedMF("int8", torch.zeros(2, 3, dtype=torch.int8), torch.zeros(4, 3, dtype=torch.int8),
                    torch.zeros(2), torch.zeros(4))  # fmt: skip
