"""Benchmark of serving precision, i.e. of the exact Faiss indexes: flat (float32) vs bf16 vs fp16 vs sq8
(8-bit codes), a search for the top K on one thread.

For each catalogue size (CiteULike-a's 16,980 items, the built-in synthetic data's ~3,000, and 1M),
every architecture ``(dim, index)`` is timed with ``kdtune.serving.interleaved.profile_interleaved``: all of
them together, in interleaved shuffled rounds, each a search of its Faiss index over random tables. The
table gives medians of the round medians, their interquartile range, and ratios against flat at the
same dim, all measured in the same process and the same rounds. Ratios drift much less than absolute
times when the machine's speed changes.

With ``--quality-epochs N`` (default 20; 0 skips it) and the data file present, MF students of each dim
are trained with BPR on CiteULike-a and each index's test Recall/NDCG@20 is measured through it: what
an index costs in quality, next to what it saves in time.

At catalogues above ``--big-catalog`` items, a batch of 256 costs seconds a call: it is timed for
``--big-batch-indexes`` only (flat and sq8 by default), in rounds of its own.

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
from kdtune.serving.arch import arch_key  # noqa: E402
from kdtune.serving.interleaved import order_contradictions, profile_interleaved  # noqa: E402
from kdtune.serving.served import ServedStudent  # noqa: E402
from kdtune.train.evaluate import evaluate  # noqa: E402
from kdtune.train.fit import fit  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/citeulike-a/users.dat"
EXACT = ["flat", "bf16", "fp16", "sq8"]


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def latency_table(name: str, n_items: int, dims: list[int], indexes: list[str], args) -> None:
    """Time every (dim, index) at ``n_items`` together and print one Markdown table."""
    b = args.batch
    big = n_items > args.big_catalog
    t0 = time.perf_counter()
    prof = profile_interleaved(
        [(d, i) for d in dims for i in indexes], n_items, k=args.k, threads=1, rounds=args.rounds,
        runs=args.runs, batch_sizes=(1,) if big else (1, b), seed=0, max_seconds=args.max_seconds,
    )  # fmt: skip
    if big:
        # A batch at a big catalogue takes seconds a call: only the big-batch indexes are timed
        # there, in their own interleaved rounds (and with their own budget).
        sub = [i for i in indexes if i in args.big_batch_indexes]
        prof_b = profile_interleaved(
            [(d, i) for d in dims for i in sub], n_items, k=args.k, threads=1, rounds=args.rounds,
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
        f"| dim | index | MB read/query | b1 median ms | b1 IQR ms | b1 p95 ms | b1 vs flat "
        f"| b{b} median ms | b{b} IQR ms | b{b} vs flat |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        base = prof[arch_key(d, "flat")] if "flat" in indexes else None
        for i in indexes:
            r = prof[arch_key(d, i)]
            ratio1 = r["latency_ms"] / base["latency_ms"] if base else None
            lat_b, base_b = r.get(f"latency_b{b}_ms"), base.get(f"latency_b{b}_ms") if base else None
            ratio_b = lat_b / base_b if lat_b is not None and base_b else None
            print(
                f"| {d} | {i} | {r['bytes_per_query'] / 1e6:.3f} | {r['latency_ms']:.3f} "
                f"| {_fmt(r['latency_spread_ms'])} | {r['latency_p95_ms']:.3f} | {_fmt(ratio1, 2)} "
                f"| {_fmt(lat_b, 1)} | {_fmt(r.get(f'latency_b{b}_spread_ms'), 1)} | {_fmt(ratio_b, 2)} |"
            )
    lines = order_contradictions(prof)
    print(f"\n{len(lines)} pair(s) (sharing a dim or an index) measured against their analytic cost order")
    for line in lines[: args.show_contradictions]:
        print(f"- {line}")


def quality_table(path: Path, dims: list[int], indexes: list[str], epochs: int) -> None:
    """Test Recall/NDCG@20 of BPR students served through each index."""
    split = kd_data.split(kd_data.load_citeulike(path), seed=0)
    print(f"\n### Quality: BPR students on CiteULike-a, {epochs} epochs max, test metrics @20\n")
    print("| dim | " + " | ".join(f"{i} recall / ndcg" for i in indexes) + " |")
    print("|---:|" + "---|" * len(indexes))
    for d in dims:
        model = MF(split.train.n_users, split.train.n_items, d, seed=0)
        fit(model, split.train, split.valid, loss="bpr", epochs=epochs, seed=0)
        cells = []
        for i in indexes:
            scorer = ServedStudent.from_model(model, i).scorer([split.train, split.valid], 20)
            m = evaluate(scorer, [split.train, split.valid], split.test, ks=(20,))
            cells.append(f"{m['recall@20']:.4f} / {m['ndcg@20']:.4f}")
        print(f"| {d} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--indexes", nargs="+", default=EXACT, choices=EXACT)
    ap.add_argument("--catalogs", type=int, nargs="+", default=None,
                    help="catalogue sizes (default: the data file's, the synthetic data's, 1,000,000)")  # fmt: skip
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--max-seconds", type=float, default=30.0, help="timing budget per catalogue")
    ap.add_argument("--big-catalog", type=int, default=200_000,
                    help="above this many items, batch B is timed for --big-batch-indexes only")
    ap.add_argument("--big-batch-indexes", nargs="+", default=["flat", "sq8"], choices=EXACT)
    ap.add_argument("--big-batch-seconds", type=float, default=60.0,
                    help="timing budget of batch B at a big catalogue")  # fmt: skip
    ap.add_argument("--quality-epochs", type=int, default=20)
    ap.add_argument("--show-contradictions", type=int, default=8)
    args = ap.parse_args()

    import faiss

    print(f"torch {torch.__version__}, faiss {faiss.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    if args.catalogs:
        catalogs = [(f"{n:,} items", n) for n in args.catalogs]
    else:
        cite = kd_data.load_citeulike(args.data).n_items if args.data.exists() else 16_980
        catalogs = [("CiteULike-a", cite), ("synthetic", kd_data.synthetic().n_items), ("1M", 1_000_000)]
    for name, n in catalogs:
        latency_table(name, n, args.dims, args.indexes, args)
    if args.quality_epochs > 0 and args.data.exists():
        quality_table(args.data, args.dims, args.indexes, args.quality_epochs)


if __name__ == "__main__":
    main()
