"""Tests of the latency benchmark: structure, analytic cost, thread handling and the profile cache."""

from __future__ import annotations

import json
import math
import time

import faiss
import pytest

from kdtune.model.mf import MF
from kdtune.serving import timing as latency
from kdtune.serving.arch import Arch, arch_key, arch_of, parse_arch
from kdtune.serving.interleaved import order_contradictions, profile_interleaved
from kdtune.serving.timing import LatencyResult, analytic_cost, measure, profile


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
    assert (r.runs, r.batch_size, r.k, r.n_items, r.dim, r.index) == (15, 4, 10, 2000, 16, "flat")
    assert r.macs_per_query == 2000 * 16 + 2000
    assert r.bytes_per_query == 2000 * 17 * 4 + 17 * 4
    assert set(r.to_dict()) == {
        "median_ms", "p95_ms", "mean_ms", "runs", "batch_size", "k", "n_items", "dim", "index", "threads",
        "macs_per_query", "bytes_per_query",
    }  # fmt: skip
    hnsw = measure(16, n_items=2000, k=10, warmup=1, runs=3, index="hnsw8_ef16")
    assert hnsw.index == "hnsw8_ef16" and hnsw.macs_per_query is None and hnsw.median_ms > 0


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
    before = faiss.omp_get_max_threads()
    r = measure(8, n_items=500, warmup=1, runs=3, threads=1)
    assert r.threads == 1
    assert faiss.omp_get_max_threads() == before
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
        "macs_per_query", "bytes_per_query", "threads", "index",
    }  # fmt: skip
    assert p["latency_p95_ms"] >= p["latency_ms"] > 0
    assert p["latency_b256_per_user_us"] == pytest.approx(p["latency_b256_ms"] * 1e3 / 256)
    assert p["threads"] == faiss.omp_get_max_threads() and p["index"] == "flat"
    assert profile(16, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1) is p
    assert profile(16, 1000, k=10, batch_sizes=(256, 1), runs=10, warmup=1) is p  # order-insensitive
    assert profile(32, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1) is not p
    other = 2 if faiss.omp_get_max_threads() == 1 else 1  # another thread count is another figure
    assert profile(16, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1, threads=other) is not p
    assert profile(16, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1, index="sq8") is not p
    latency.clear_cache()
    assert profile(16, 1000, k=10, batch_sizes=(1, 256), runs=10, warmup=1) is not p


def test_arch_key_round_trip():
    assert arch_key(8, "sq8") == "dim=8,index=sq8"
    assert arch_key(8) == "dim=8,index=flat"  # flat by default
    assert parse_arch("dim=8,index=sq8") == parse_arch((8, "sq8")) == Arch(8, "sq8")
    assert parse_arch(16) == parse_arch("dim=16") == parse_arch("dim=16,index=flat") == (16, "flat")
    assert arch_key(8, "HNSW32_ef64") == "dim=8,index=hnsw32_ef64"
    assert parse_arch("dim=8,index=hnsw32_ef64") == (8, "hnsw32_ef64")
    assert arch_of({"dim": 8, "loss": "rd"}) == arch_of({"dim": 8, "index": float("nan")}) == "dim=8,index=flat"
    assert arch_of({"dim": 8.0, "index": "fp16"}) == "dim=8,index=fp16"
    with pytest.raises(ValueError):
        arch_key(8, "pq4")
    with pytest.raises(ValueError, match="dim=<int>"):
        parse_arch("dim=8,precision=int8")  # serving precision is the index's


def test_analytic_cost_by_index():
    assert analytic_cost(16, 1000) == analytic_cost(16, 1000, "flat") == (1000 * 17, 1000 * 17 * 4 + 17 * 4)
    # the scalar quantisers read 32 columns (17 rounded up for Faiss's SIMD code) of 2 or 1 bytes
    assert analytic_cost(16, 1000, "fp16") == analytic_cost(16, 1000, "bf16") == (1000 * 32, 1000 * 32 * 2 + 32 * 4)
    assert analytic_cost(16, 1000, "sq8") == (1000 * 32, 1000 * 32 + 32 * 4)
    assert analytic_cost(8, 1000, "sq8")[1] < analytic_cost(8, 1000, "bf16")[1] < analytic_cost(8, 1000, "flat")[1]
    assert analytic_cost(16, 1000, "hnsw32_ef64") == analytic_cost(16, 1000, "ivf64_np4") == (None, None)


TINY_ARCHS = [(4, "flat"), (8, "sq8"), "dim=8,index=bf16", 16, (16, "flat")]  # the last is a repeat


def test_profile_interleaved_one_figure_per_arch_with_a_spread():
    before = faiss.omp_get_max_threads()
    t0 = time.perf_counter()
    prof = profile_interleaved(TINY_ARCHS, n_items=500, k=10, rounds=3, runs=4, batch_sizes=(1, 8), max_seconds=0.5)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10  # cheap at tiny sizes (generous: the machine may be shared)
    assert faiss.omp_get_max_threads() == before
    assert list(prof) == [arch_key(4), arch_key(8, "sq8"), arch_key(8, "bf16"), arch_key(16)]
    for key, rec in prof.items():
        assert set(rec) == {
            "dim", "index", "n_items", "k", "threads", "macs_per_query", "bytes_per_query", "bytes",
            "latency_ms", "latency_spread_ms", "latency_p95_ms", "latency_rounds", "latency_runs",
            "latency_b8_ms", "latency_b8_spread_ms", "latency_b8_per_user_us", "latency_b8_rounds",
        }  # fmt: skip
        assert parse_arch(key) == (rec["dim"], rec["index"])
        assert rec["threads"] == 1 and rec["n_items"] == 500
        assert rec["latency_rounds"] == 3 and 3 <= rec["latency_runs"] <= 12
        assert rec["latency_p95_ms"] > 0 and rec["latency_ms"] > 0 and rec["latency_spread_ms"] >= 0
        assert (rec["macs_per_query"], rec["bytes_per_query"]) == analytic_cost(rec["dim"], 500, rec["index"])
    json.loads(json.dumps(prof))  # keys and values are JSON-friendly


def test_profile_interleaved_times_every_kind_of_index():
    archs = [(8, "flat"), (8, "sq8"), (8, "hnsw8_ef16"), (8, "ivf8_np2")]
    prof = profile_interleaved(archs, n_items=2000, k=10, rounds=2, runs=3, batch_sizes=(1, 4), max_seconds=0.5)
    assert list(prof) == [arch_key(*a) for a in archs]
    flat, sq8, hnsw = prof["dim=8,index=flat"], prof["dim=8,index=sq8"], prof["dim=8,index=hnsw8_ef16"]
    assert flat["index"] == "flat" and flat["latency_ms"] > 0 and flat["latency_b4_ms"] > 0
    assert sq8["bytes"] < flat["bytes"] and flat["bytes"] >= 2000 * 9 * 4
    assert hnsw["macs_per_query"] is None and hnsw["bytes"] > flat["bytes"]
    assert order_contradictions(prof) is not None  # records without an analytic cost are skipped


def test_profile_interleaved_caps_runs_by_time():
    prof = profile_interleaved([64, (64, "sq8")], n_items=20_000, rounds=5, runs=100, batch_sizes=(1, 64),
                               max_seconds=0.0)  # fmt: skip
    for rec in prof.values():
        assert rec["latency_rounds"] == 3 and rec["latency_runs"] == 3  # the floor at batch 1
        assert rec["latency_b64_rounds"] == 1 and rec["latency_b64_spread_ms"] is None


def test_profile_interleaved_searches_the_index_of_each_arch(monkeypatch):
    from kdtune.serving import interleaved

    built = []
    real = interleaved.build_index

    def spy(spec, items, bias=None, seed=0):
        index = real(spec, items, bias, seed=seed)
        built.append((spec, items.shape))
        return index

    monkeypatch.setattr(interleaved, "build_index", spy)
    profile_interleaved([(8, "sq8"), (4, "fp16")], n_items=300, k=5, rounds=2, runs=2, batch_sizes=(1,),
                        max_seconds=0.1)  # fmt: skip
    assert built == [("sq8", (300, 8)), ("fp16", (300, 4))]


def test_profile_interleaved_rejects_bad_arguments():
    with pytest.raises(ValueError):
        profile_interleaved([], n_items=100)
    with pytest.raises(ValueError):
        profile_interleaved([8], n_items=10, k=11)
    with pytest.raises(ValueError):
        profile_interleaved([(8, "int4")], n_items=100)
    with pytest.raises(ValueError):
        profile_interleaved(["dim=8,precision=fp32"], n_items=100)
    with pytest.raises(ValueError):
        profile_interleaved([8], n_items=100, batch_sizes=(0,))


def test_profile_interleaved_big_batch_alone():
    rec = profile_interleaved([8], n_items=400, rounds=2, runs=2, batch_sizes=(16,), max_seconds=0.2)[arch_key(8)]
    assert "latency_ms" not in rec and rec["latency_b16_ms"] > 0 and rec["latency_b16_rounds"] == 2


def _fake(dim: int, index: str, ms: float, spread: float | None) -> dict:
    macs, nbytes = analytic_cost(dim, 10_000, index)
    return {"dim": dim, "index": index, "macs_per_query": macs, "bytes_per_query": nbytes,
            "latency_ms": ms, "latency_spread_ms": spread}  # fmt: skip


def test_order_contradictions_flags_only_real_ones():
    consistent = {arch_key(4): _fake(4, "flat", 0.10, 0.01), arch_key(8): _fake(8, "flat", 0.12, 0.01),
                  arch_key(8, "sq8"): _fake(8, "sq8", 0.11, 0.01)}  # fmt: skip
    assert order_contradictions(consistent) == []
    # dim 4 slower than dim 8 within the spreads: noise, not a contradiction.
    within = dict(consistent, **{arch_key(4): _fake(4, "flat", 0.13, 0.01)})
    assert order_contradictions(within) == []
    # The measurement accident that motivated interleaving: dim 4 at 0.28 ms, dim 8 at 0.19 ms.
    accident = dict(consistent, **{arch_key(4): _fake(4, "flat", 0.28, 0.01), arch_key(8): _fake(8, "flat", 0.19, 0.01)})
    lines = order_contradictions(accident)
    assert len(lines) == 1 and arch_key(4) in lines[0] and arch_key(8) in lines[0]
    # A pair sharing neither dim nor index is not compared (dim 4 flat vs dim 8 sq8).
    assert arch_key(8, "sq8") not in lines[0]
    # A missing spread counts as zero.
    nospread = {arch_key(4): _fake(4, "flat", 0.2, None), arch_key(8): _fake(8, "flat", 0.19, None)}
    assert len(order_contradictions(nospread)) == 1


def test_a_run_times_each_dim_with_its_indexes_and_flat():
    from kdtune.serving.plan import LatencyPlan

    # flat serves the plain students, so every dim is timed with it too; the teacher is served through flat
    plan = LatencyPlan([4, 8], ["sq8"], 64, 1000, 20)
    assert plan.archs() == ["dim=4,index=sq8", "dim=4,index=flat", "dim=8,index=sq8", "dim=8,index=flat",
                            "dim=64,index=flat"]
    assert plan.teacher_key() == "dim=64,index=flat" and plan.record()["device"] == "cpu"
    assert LatencyPlan([4], ["flat"], 64, 1000, 20).archs() == ["dim=4,index=flat", "dim=64,index=flat"]
