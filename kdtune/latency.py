"""Serving latency of an MF architecture: score the full catalog for a batch of users, take the top K.

What is timed is ``scores = user_vecs @ item_table.T + item_bias; torch.topk(scores, k)``. Latency
depends on the architecture (``dim``) and on the catalog size, not on trained values, so a dim and a
catalog size are enough: random tables are built. The catalog size is a setting because at small
catalogs (a few thousand items) the measured time is fixed overhead (kernel launches, ``topk``), not
work: ``dim`` 64 vs 8 then changes it ~2x at most, while at ~1M items reading the item table dominates
and latency tracks ``dim``. Measure at the catalog size you will serve.

``profile_interleaved`` times many architectures ``(dim, precision)`` together, in interleaved rounds,
with the serving kernels of ``kdtune.quantize.ItemIndex``: one figure per architecture, with its spread,
so that every consumer (search, export) uses the same measurement of the same architecture.
"""

from __future__ import annotations

import math
import operator
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from kdtune.quantize import ELEMENT_BYTES, ItemIndex, check_precision

_FLOAT_BYTES = 4


@dataclass(frozen=True)
class LatencyResult:
    """Timings of one configuration (times are per batch, in milliseconds) and its analytic cost.

    ``macs_per_query`` and ``bytes_per_query`` are for one user: ``n_items * dim`` multiply-adds plus
    ``n_items`` bias adds; the item table and biases read (``n_items * (dim + 1) * 4`` bytes) plus the
    user vector. In a batch the table is read once for all users, so per-user bytes shrink with it.
    """

    median_ms: float
    p95_ms: float
    mean_ms: float
    runs: int
    batch_size: int
    k: int
    n_items: int
    dim: int
    threads: int
    device: str
    macs_per_query: int
    bytes_per_query: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analytic_cost(dim: int, n_items: int, precision: str = "fp32") -> tuple[int, int]:
    """``(macs_per_query, bytes_per_query)`` of scoring one user against the full catalog.

    Bytes are those the serving kernel reads at ``precision``: the item table at that element size, the
    bias (float32, but 16-bit with 16-bit tables), int8's per-row float32 scales, and the user vector.
    """
    check_precision(precision)
    macs = n_items * dim + n_items
    bias_bytes = 2 if precision in ("bf16", "fp16") else _FLOAT_BYTES
    scale_bytes = _FLOAT_BYTES if precision == "int8" else 0
    nbytes = n_items * (dim * ELEMENT_BYTES[precision] + bias_bytes + scale_bytes) + dim * _FLOAT_BYTES
    return macs, nbytes


def measure(
    model_or_dim: Any,
    n_items: int | None = None,
    k: int = 20,
    batch_size: int = 1,
    warmup: int = 20,
    runs: int = 200,
    threads: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    max_seconds: float | None = None,
) -> LatencyResult:
    """Time full-catalog scoring + top-``k`` for ``batch_size`` users: warm-up, then ``runs`` timed runs.

    ``model_or_dim`` is an embedding size (random tables of ``n_items`` rows are built) or an ``MF``
    model, whose item table and biases are used (``n_items``, if given, must match its catalog).
    ``threads`` fixes ``torch.set_num_threads`` during the measurement (default: the current count);
    the previous count is restored afterwards. On CUDA each run is bracketed by synchronisations.
    ``max_seconds`` caps the timed runs' total (at least 5 runs are kept); ``runs`` in the result is the
    number actually timed.
    """
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise ValueError("batch_size and runs must be >= 1, warmup >= 0")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    if not hasattr(model_or_dim, "item_emb"):
        dim = operator.index(model_or_dim)
        if n_items is None:
            raise ValueError("n_items is required when measuring a dim")
        if dim < 1 or n_items < 1:
            raise ValueError(f"dim and n_items must be >= 1, got {dim}, {n_items}")
        items = torch.randn(n_items, dim, generator=gen).mul_(0.1)
        bias = torch.randn(n_items, generator=gen).mul_(0.01)
        users = torch.randn(batch_size, dim, generator=gen).mul_(0.1)
    else:
        items = model_or_dim.item_emb.weight.detach().float().cpu()
        bias = model_or_dim.item_bias.weight.detach().float().cpu().reshape(-1)
        dim = int(items.shape[1])
        if n_items is not None and n_items != items.shape[0]:
            raise ValueError(
                f"n_items={n_items} but the model has {items.shape[0]} items; measure(dim, n_items) for another catalog"
            )
        n_items = int(items.shape[0])
        user_table = model_or_dim.user_emb.weight.detach().float().cpu()
        users = user_table[torch.randint(user_table.shape[0], (batch_size,), generator=gen)]
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, n_items={n_items}], got {k}")

    # The table stays [n_items, dim] row-major, as served; addmm takes the transposed view without a copy.
    items_t = items.to(dev).t()
    bias = bias.to(dev)
    users = users.to(dev).contiguous()
    scores = torch.empty(batch_size, n_items, device=dev)
    cuda = dev.type == "cuda"

    prev_threads = torch.get_num_threads()
    n_threads = prev_threads if threads is None else int(threads)
    times_ns: list[int] = []
    budget_ns = math.inf if max_seconds is None else max_seconds * 1e9
    spent_ns = 0
    try:
        torch.set_num_threads(n_threads)
        with torch.inference_mode():
            for i in range(warmup + runs):
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter_ns()
                torch.addmm(bias, users, items_t, out=scores)
                torch.topk(scores, k, dim=1)
                if cuda:
                    torch.cuda.synchronize(dev)
                t1 = time.perf_counter_ns()
                if i >= warmup:
                    times_ns.append(t1 - t0)
                    spent_ns += t1 - t0
                    # Big batches at big catalogs take seconds a run: stop at the time budget.
                    if spent_ns > budget_ns and len(times_ns) >= 5:
                        break
    finally:
        torch.set_num_threads(prev_threads)

    ms = sorted(t / 1e6 for t in times_ns)
    macs, nbytes = analytic_cost(dim, n_items)
    return LatencyResult(
        median_ms=statistics.median(ms),
        p95_ms=ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)],
        mean_ms=statistics.fmean(ms),
        runs=len(ms),
        batch_size=batch_size,
        k=k,
        n_items=n_items,
        dim=dim,
        threads=n_threads,
        device=str(dev),
        macs_per_query=macs,
        bytes_per_query=nbytes,
    )


_CACHE: dict[tuple, dict[str, Any]] = {}


def profile(
    dim: int,
    n_items: int,
    k: int = 20,
    batch_sizes: tuple[int, ...] = (1, 256),
    threads: int | None = None,
    device: str = "cpu",
    runs: int = 200,
    warmup: int = 20,
    max_seconds: float | None = 2.0,
    **kw: Any,
) -> dict[str, Any]:
    """The latency figures a trial reports, measured once per process per configuration.

    Returns flat keys: ``latency_ms`` and ``latency_p95_ms`` (one user, batch 1, always measured),
    for each other batch size B ``latency_bB_ms`` (median per batch) and ``latency_bB_per_user_us``,
    plus ``macs_per_query``, ``bytes_per_query``, ``threads`` and ``device``. Batches larger than 1 use
    ``max(10, runs // 10)`` timed runs, since each does B times the work; each batch size stops after
    ``max_seconds`` of timed runs (at least 5 runs). Repeated calls with the same settings return the
    same (cached) dict: do not mutate it. ``kw`` goes to ``measure`` (e.g. ``seed``).
    """
    n_threads = torch.get_num_threads() if threads is None else int(threads)
    sizes = tuple(sorted({1, *(int(b) for b in batch_sizes)}))
    key = (
        dim,
        n_items,
        k,
        sizes,
        n_threads,
        str(torch.device(device)),
        runs,
        warmup,
        max_seconds,
        tuple(sorted(kw.items())),
    )
    if key in _CACHE:
        return _CACHE[key]
    out: dict[str, Any] = {}
    for b in sizes:
        r = measure(
            dim,
            n_items,
            k=k,
            batch_size=b,
            warmup=warmup if b == 1 else max(2, warmup // 10),
            runs=runs if b == 1 else max(10, runs // 10),
            threads=n_threads,
            device=device,
            max_seconds=max_seconds,
            **kw,
        )
        if b == 1:
            out.update(
                latency_ms=r.median_ms,
                latency_p95_ms=r.p95_ms,
                macs_per_query=r.macs_per_query,
                bytes_per_query=r.bytes_per_query,
                threads=r.threads,
                device=r.device,
            )
        else:
            out[f"latency_b{b}_ms"] = r.median_ms
            out[f"latency_b{b}_per_user_us"] = r.median_ms * 1e3 / b
    _CACHE[key] = out
    return out


def clear_cache() -> None:
    """Forget every cached ``profile`` result (for tests and re-measurements in isolation)."""
    _CACHE.clear()


def arch_key(dim: int, precision: str = "fp32") -> str:
    """The JSON-friendly key of an architecture, e.g. ``"dim=8,precision=int8"``."""
    return f"dim={operator.index(dim)},precision={check_precision(precision)}"


def parse_arch(arch: int | str | Sequence[Any]) -> tuple[int, str]:
    """``(dim, precision)`` from a dim (``fp32``), a ``(dim, precision)`` pair or an ``arch_key`` string."""
    if isinstance(arch, str):
        fields = dict(part.split("=", 1) for part in arch.split(","))
        return int(fields["dim"]), check_precision(fields.get("precision", "fp32"))
    if isinstance(arch, Sequence):
        dim, precision = arch
        return operator.index(dim), check_precision(precision)
    return operator.index(arch), "fp32"


def profile_interleaved(
    archs: Iterable[int | str | Sequence[Any]],
    n_items: int,
    k: int = 20,
    device: str = "cpu",
    threads: int | None = 1,
    rounds: int = 7,
    runs: int = 50,
    batch_sizes: tuple[int, ...] = (1, 256),
    seed: int = 0,
    max_seconds: float = 3.0,
    warmup: int = 3,
) -> dict[str, dict[str, Any]]:
    """Latency of every architecture, timed together in interleaved rounds; keyed by ``arch_key``.

    Each batch size gets ``max_seconds / len(batch_sizes)`` of timed work. After ``warmup`` calls per
    architecture (the fastest estimates its cost), ``rounds`` rounds visit every architecture once, in
    an order shuffled per round (seeded): a drift of the machine's speed then hits all architectures
    alike instead of the ones timed during a slow minute. Every visit gets an equal share of the
    budget: as many timed calls as fit in it, at most ``runs`` and at least one (fast architectures get
    more). A visit starts with one untimed call (the previous architecture evicted this one's table from
    cache) unless a call takes > 50 ms, where tables far exceed any cache. When one call per visit does
    not fit, fewer rounds are run: at least 3 at batch 1; at larger batches, if not one round fits, the
    estimating call (made in sequence) is the figure, with no spread. Each call is scoring + top-``k``
    with the serving kernel of ``ItemIndex`` on random tables (latency depends on shapes and precision,
    not on trained values).

    Returns per architecture: ``dim``, ``precision``, ``n_items``, ``k``, ``device``, ``threads``,
    ``macs_per_query``, ``bytes_per_query`` (``analytic_cost`` at that precision), and, if 1 is among
    ``batch_sizes`` (the default; leave it out only to time big batches alone), at batch 1
    ``latency_ms`` (median of the round medians), ``latency_spread_ms`` (interquartile range of the round
    medians; ``None`` with fewer than 2 rounds), ``latency_p95_ms`` (p95 of all timed batch-1 calls),
    ``latency_rounds`` and ``latency_runs`` (timed calls in all); for each other batch size B
    ``latency_bB_ms``, ``latency_bB_spread_ms``, ``latency_bB_per_user_us`` and ``latency_bB_rounds``.
    """
    parsed = list(dict.fromkeys(parse_arch(a) for a in archs))
    if not parsed:
        raise ValueError("no architecture to profile")
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, n_items={n_items}], got {k}")
    if rounds < 1 or runs < 1 or warmup < 1:
        raise ValueError("rounds, runs and warmup must be >= 1")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    gen = torch.Generator().manual_seed(seed)
    sizes = tuple(sorted({int(b) for b in batch_sizes}))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    keys = [arch_key(d, p) for d, p in parsed]
    indexes = {
        key: ItemIndex.from_float(
            torch.randn(n_items, d, generator=gen).mul_(0.1), torch.randn(n_items, generator=gen).mul_(0.01), p, dev
        )
        for key, (d, p) in zip(keys, parsed, strict=True)
    }
    # The same user vectors for every precision of a dim: only the kernel differs between them.
    users = {(d, b): torch.randn(b, d, generator=gen).mul_(0.1).to(dev) for d, _ in parsed for b in sizes}

    def call(key: str, dim: int, b: int) -> float:
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter_ns()
        indexes[key].topk(users[(dim, b)], k)
        if cuda:
            torch.cuda.synchronize(dev)
        return (time.perf_counter_ns() - t0) / 1e6

    order = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    for key, (d, p) in zip(keys, parsed, strict=True):
        macs, nbytes = analytic_cost(d, n_items, p)
        out[key] = {"dim": d, "precision": p, "n_items": n_items, "k": k, "device": str(dev),
                    "macs_per_query": macs, "bytes_per_query": nbytes}  # fmt: skip
    prev_threads = torch.get_num_threads()
    n_threads = prev_threads if threads is None else int(threads)
    try:
        torch.set_num_threads(n_threads)
        with torch.inference_mode():
            for b in sizes:
                est = {key: min(call(key, d, b) for _ in range(warmup if b == 1 else 1))
                       for key, (d, _) in zip(keys, parsed, strict=True)}  # fmt: skip
                budget_ms = max_seconds / len(sizes) * 1e3
                affordable = budget_ms / sum(est.values())  # rounds of one call per architecture
                n_rounds = rounds if affordable >= rounds else max(3 if b == 1 else 0, int(affordable))
                # Each architecture gets an equal share of a round's time: fast ones take more calls.
                share_ms = budget_ms / max(1, n_rounds) / len(keys)
                per_visit = {key: max(1, min(runs, int(share_ms / max(est[key], 1e-6)))) for key in keys}
                medians: dict[str, list[float]] = {key: [] for key in keys}
                pooled: dict[str, list[float]] = {key: [] for key in keys}
                if n_rounds == 0:
                    # Not even one round fits (big batches at big catalogs): the estimating call, made
                    # in sequence, is the only measurement; its spread is unknown (None).
                    n_rounds = 1
                    for key in keys:
                        medians[key].append(est[key])
                        pooled[key].append(est[key])
                    visits = []
                else:
                    visits = list(zip(keys, parsed, strict=True))
                for _ in range(n_rounds if visits else 0):
                    order.shuffle(visits)
                    for key, (d, _) in visits:
                        if est[key] < 50.0:
                            call(key, d, b)
                        times = [call(key, d, b) for _ in range(per_visit[key])]
                        medians[key].append(statistics.median(times))
                        pooled[key].extend(times)
                name = "latency" if b == 1 else f"latency_b{b}"
                for key in keys:
                    rec = out[key]
                    rec[f"{name}_ms"] = statistics.median(medians[key])
                    rec[f"{name}_spread_ms"] = _iqr(medians[key])
                    rec[f"{name}_rounds"] = n_rounds
                    if b == 1:
                        ms = sorted(pooled[key])
                        rec["latency_p95_ms"] = ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)]
                        rec["latency_runs"] = len(ms)
                    else:
                        rec[f"{name}_per_user_us"] = rec[f"{name}_ms"] * 1e3 / b
    finally:
        torch.set_num_threads(prev_threads)
    for rec in out.values():
        rec["threads"] = n_threads
    return out


def _iqr(values: list[float]) -> float | None:
    """Interquartile range (inclusive quantiles); ``None`` for fewer than 2 values."""
    if len(values) < 2:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def order_contradictions(profiles: dict[str, dict[str, Any]], batch: int = 1) -> list[str]:
    """Pairs whose measured latency order contradicts their analytic cost, one readable line each.

    Only pairs that share a dim or a precision are compared (other pairs follow from those). ``a``
    contradicts ``b`` when ``a`` costs no more than ``b`` in both bytes and multiply-adds (less in one)
    yet measures slower by more than the two spreads together (a missing spread counts as 0). At
    small catalogs this is expected (fixed overhead and top-K dominate) and says the analytic cost is not
    a proxy there; at large ones it points at a slow kernel or at a measurement accident.
    """
    name = "latency" if batch == 1 else f"latency_b{batch}"
    lines = []
    for ka, a in profiles.items():
        for kb, b in profiles.items():
            cheaper = (a["bytes_per_query"] <= b["bytes_per_query"] and a["macs_per_query"] <= b["macs_per_query"]
                       and (a["bytes_per_query"], a["macs_per_query"]) != (b["bytes_per_query"], b["macs_per_query"]))  # fmt: skip
            related = a["dim"] == b["dim"] or a["precision"] == b["precision"]
            if not (cheaper and related) or f"{name}_ms" not in a or f"{name}_ms" not in b:
                continue
            gap = a[f"{name}_ms"] - b[f"{name}_ms"]
            margin = (a.get(f"{name}_spread_ms") or 0.0) + (b.get(f"{name}_spread_ms") or 0.0)
            if gap > margin:
                lines.append(
                    f"{ka} measured {a[f'{name}_ms']:.4g} ms > {kb} {b[f'{name}_ms']:.4g} ms (batch {batch}, "
                    f"gap {gap:.3g} ms > spreads {margin:.3g} ms) though it reads "
                    f"{a['bytes_per_query'] / b['bytes_per_query']:.2f}x the bytes and does "
                    f"{a['macs_per_query'] / b['macs_per_query']:.2f}x the multiply-adds"
                )
    return lines
