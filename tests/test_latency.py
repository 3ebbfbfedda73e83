"""Tests of the latency benchmark: structure, analytic cost, thread handling and the profile cache."""

from __future__ import annotations

import math

import pytest
import torch

from kdtune import latency
from kdtune.latency import LatencyResult, analytic_cost, measure, profile
from kdtune.models import MF


@pytest.fixture(autouse=True)
def _fresh_cache():
    latency.clear_cache()
    yield
    latency.clear_cache()


def test_measure_returns_positive_finite_timings():
    r = measure(16, n_items=2000, k=10, batch_size=4, warmup=2, runs=15)
    assert isinstance(r, LatencyResult)
    for v in (r.median_ms, r.p95_ms, r.mean_ms):
        assert math.isfinite(v) and v > 0
    assert r.p95_ms >= r.median_ms
    assert (r.runs, r.batch_size, r.k, r.n_items, r.dim, r.device) == (15, 4, 10, 2000, 16, "cpu")
    assert r.macs_per_query == 2000 * 16 + 2000
    assert r.bytes_per_query == 2000 * 17 * 4 + 16 * 4
    assert set(r.to_dict()) == {
        "median_ms", "p95_ms", "mean_ms", "runs", "batch_size", "k", "n_items", "dim", "threads",
        "device", "macs_per_query", "bytes_per_query",
    }  # fmt: skip


def test_measure_accepts_a_model():
    model = MF(50, 300, 8, seed=0)
    r = measure(model, k=5, warmup=1, runs=5)
    assert (r.n_items, r.dim) == (300, 8)
    with pytest.raises(ValueError):
        measure(model, n_items=301, runs=1)


def test_time_budget_caps_runs():
    r = measure(8, n_items=1000, warmup=1, runs=1000, max_seconds=0.0)
    assert r.runs == 5


def test_invalid_arguments():
    with pytest.raises(ValueError):
        measure(8, n_items=10, k=11, runs=1)
    with pytest.raises(ValueError):
        measure(8, runs=1)  # n_items required for a dim


def test_threads_fixed_during_and_restored_after():
    before = torch.get_num_threads()
    r = measure(8, n_items=500, warmup=1, runs=3, threads=1)
    assert r.threads == 1
    assert torch.get_num_threads() == before
    assert measure(8, n_items=500, warmup=1, runs=3).threads == before


def test_analytic_cost_grows_with_dim_and_catalog():
    assert analytic_cost(128, 200_000) > analytic_cost(4, 200_000)
    assert analytic_cost(64, 1_000_000)[0] > analytic_cost(64, 10_000)[0]
    assert analytic_cost(64, 1_000_000)[1] > analytic_cost(64, 10_000)[1]


def test_big_dim_not_faster_at_a_big_catalog():
    # 32x the bytes to read; the bound is loose on purpose (timings on shared CPUs are noisy).
    small = measure(4, n_items=200_000, k=20, warmup=2, runs=7)
    big = measure(128, n_items=200_000, k=20, warmup=2, runs=7)
    assert big.macs_per_query > small.macs_per_query
    assert big.median_ms > 0.5 * small.median_ms


def test_profile_keys_and_cache():
    p = profile(16, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1)
    assert set(p) == {
        "latency_ms", "latency_p95_ms", "latency_b256_ms", "latency_b256_per_user_us",
        "macs_per_query", "bytes_per_query", "threads", "device",
    }  # fmt: skip
    assert p["latency_p95_ms"] >= p["latency_ms"] > 0
    assert p["latency_b256_per_user_us"] == pytest.approx(p["latency_b256_ms"] * 1e3 / 256)
    assert p["threads"] == torch.get_num_threads() and p["device"] == "cpu"
    assert profile(16, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1) is p
    assert profile(16, 1000, k=10, batch_sizes=(256, 1), runs=10, warmup=1) is p  # order-insensitive
    assert profile(32, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1) is not p
    assert profile(16, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1, threads=1) is not p
    latency.clear_cache()
    assert profile(16, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1) is not p


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_path():
    r = measure(32, n_items=100_000, k=20, batch_size=8, warmup=3, runs=10, device="cuda")
    assert r.device.startswith("cuda") and r.median_ms > 0 and r.p95_ms >= r.median_ms
    p = profile(32, 100_000, device="cuda", runs=10, warmup=2)
    assert p["device"].startswith("cuda") and p["latency_b256_ms"] > 0
