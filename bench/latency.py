"""Benchmark of serving precision: fp32 vs bf16 vs fp16 vs int8, scoring + top-K on one thread.

For each catalogue size (CiteULike-a's 16,980 items, the built-in synthetic data's ~3,000, and 1M),
every architecture ``(dim, precision)`` is timed with ``kdtune.serving.interleaved.profile_interleaved``: all of
them together, in interleaved shuffled rounds, with the serving kernels of ``kdtune.model.quantized``. The
table gives medians of the round medians, their interquartile range, and ratios against fp32 at the
same dim, all measured in the same process and the same rounds. Ratios drift much less than absolute
times when the machine's speed changes.

With ``--quality-epochs N`` (default 20; 0 skips it) and the data file present, MF students of each dim
are trained with BPR on CiteULike-a and each precision's test Recall/NDCG@20 is computed from its
quantised weights: what a precision costs in quality, next to what it saves in time.

At catalogues above ``--big-catalog`` items, a batch of 256 costs seconds a call: it is timed for
``--big-batch-precisions`` only (fp32 and int8 by default), in rounds of its own.

    python bench/latency.py [--data PATH] [--dims 8 16 32 64] [--catalogs 16980 3000 1000000] [--k 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune import data as kd_data  # noqa: E402
from kdtune.model.mf import MF  # noqa: E402
from kdtune.model.quantized import PRECISIONS, quantize  # noqa: E402
from kdtune.serving.arch import arch_key  # noqa: E402
from kdtune.serving.interleaved import order_contradictions, profile_interleaved  # noqa: E402
from kdtune.train.evaluate import evaluate  # noqa: E402
from kdtune.train.fit import fit  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/citeulike-a/users.dat"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def latency_table(name: str, n_items: int, dims: list[int], precisions: list[str], args) -> None:
    """Time every (dim, precision) at ``n_items`` together and print one Markdown table."""
    b = args.batch
    big = n_items > args.big_catalog
    t0 = time.perf_counter()
    prof = profile_interleaved(
        [(d, p) for d in dims for p in precisions], n_items, k=args.k, threads=1, rounds=args.rounds,
        runs=args.runs, batch_sizes=(1,) if big else (1, b), seed=0, max_seconds=args.max_seconds,
    )  # fmt: skip
    if big:
        # A batch at a big catalogue takes seconds a call: only the big-batch precisions are timed
        # there, in their own interleaved rounds (and with their own budget).
        sub = [p for p in precisions if p in args.big_batch_precisions]
        prof_b = profile_interleaved(
            [(d, p) for d in dims for p in sub], n_items, k=args.k, threads=1, rounds=args.rounds,
            runs=args.runs, batch_sizes=(b,), seed=1, max_seconds=args.big_batch_seconds,
        )  # fmt: skip
        for key, rec in prof_b.items():
            prof[key].update({f: v for f, v in rec.items() if f.startswith(f"latency_b{b}_")})
    took = time.perf_counter() - t0
    rounds_b = max((r.get(f"latency_b{b}_rounds", 0) for r in prof.values()), default=0)
    print(
        f"\n### {name}: {n_items:,} items, top-{args.k}, 1 thread "
        f"({next(iter(prof.values()))['latency_rounds']} rounds at batch 1, {rounds_b} at batch {b}; "
        f"{took:.0f} s)\n"
    )
    print(
        f"| dim | precision | MB read/query | b1 median ms | b1 IQR ms | b1 p95 ms | b1 vs fp32 "
        f"| b{b} median ms | b{b} IQR ms | b{b} vs fp32 |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        base = prof[arch_key(d, "fp32")] if "fp32" in precisions else None
        for p in precisions:
            r = prof[arch_key(d, p)]
            ratio1 = r["latency_ms"] / base["latency_ms"] if base else None
            lat_b, base_b = r.get(f"latency_b{b}_ms"), base.get(f"latency_b{b}_ms") if base else None
            ratio_b = lat_b / base_b if lat_b is not None and base_b else None
            print(
                f"| {d} | {p} | {r['bytes_per_query'] / 1e6:.3f} | {r['latency_ms']:.3f} "
                f"| {_fmt(r['latency_spread_ms'])} | {r['latency_p95_ms']:.3f} | {_fmt(ratio1, 2)} "
                f"| {_fmt(lat_b, 1)} | {_fmt(r.get(f'latency_b{b}_spread_ms'), 1)} | {_fmt(ratio_b, 2)} |"
            )
    lines = order_contradictions(prof)
    print(f"\n{len(lines)} pair(s) (sharing a dim or a precision) measured against their analytic cost order")
    for line in lines[: args.show_contradictions]:
        print(f"- {line}")


def quality_table(path: Path, dims: list[int], precisions: list[str], epochs: int) -> None:
    """Test Recall/NDCG@20 of BPR students at each precision, from the quantised weights."""
    split = kd_data.split(kd_data.load_citeulike(path), seed=0)
    print(f"\n### Quality: BPR students on CiteULike-a, {epochs} epochs max, test metrics @20\n")
    print("| dim | " + " | ".join(f"{p} recall / ndcg" for p in precisions) + " |")
    print("|---:|" + "---|" * len(precisions))
    for d in dims:
        model = MF(split.train.n_users, split.train.n_items, d, seed=0)
        fit(model, split.train, split.valid, loss="bpr", epochs=epochs, seed=0)
        cells = []
        for p in precisions:
            m = evaluate(quantize(model, p), [split.train, split.valid], split.test, ks=(20,))
            cells.append(f"{m['recall@20']:.4f} / {m['ndcg@20']:.4f}")
        print(f"| {d} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--catalogs", type=int, nargs="+", default=None,
                    help="catalogue sizes (default: the data file's, the synthetic data's, 1,000,000)")  # fmt: skip
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--max-seconds", type=float, default=30.0, help="timing budget per catalogue")
    ap.add_argument("--big-catalog", type=int, default=200_000,
                    help="above this many items, batch B is timed for --big-batch-precisions only")
    ap.add_argument("--big-batch-precisions", nargs="+", default=["fp32", "int8"], choices=PRECISIONS)
    ap.add_argument("--big-batch-seconds", type=float, default=60.0,
                    help="timing budget of batch B at a big catalogue")  # fmt: skip
    ap.add_argument("--quality-epochs", type=int, default=20)
    ap.add_argument("--show-contradictions", type=int, default=8)
    args = ap.parse_args()

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"quantized engine {torch.backends.quantized.engine}")  # fmt: skip
    if args.catalogs:
        catalogs = [(f"{n:,} items", n) for n in args.catalogs]
    else:
        cite = kd_data.load_citeulike(args.data).n_items if args.data.exists() else 16_980
        catalogs = [("CiteULike-a", cite), ("synthetic", kd_data.synthetic().n_items), ("1M", 1_000_000)]
    for name, n in catalogs:
        latency_table(name, n, args.dims, args.precisions, args)
    if args.quality_epochs > 0 and args.data.exists():
        quality_table(args.data, args.dims, args.precisions, args.quality_epochs)


if __name__ == "__main__":
    main()
