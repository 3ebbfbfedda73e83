"""Benchmark of serving: the Faiss indexes kdtune serves from, on trained CiteULike-a tables, one thread.

The trained tables are those of the 64-dim BPR teacher of CiteULike-a (seed-0 split, from kdtune's cache,
trained there when absent); a smaller dim projects its user and item tables on the item table's leading
principal directions (``--students N`` trains a BPR student of each dim for N epochs instead). The item
table is extended to each catalogue size with rows drawn from its own distribution (``kdtune.serving.catalog.trained_tables``: a
Gaussian with the mean and covariance of the rows ``[q_i, b_i]``). At each (catalogue, dim) every index is
timed with ``profile_interleaved`` (all together, interleaved shuffled rounds, one thread, top-``--k``):
``flat`` (IndexFlatIP, exact float32), ``sq8``/``fp16``/``bf16`` (IndexScalarQuantizer), IVF and HNSW.
Ratios are against ``flat`` in the same rounds. (This benchmark is where kdtune's own serving kernels were
timed against the Faiss index doing the same job, and replaced by it: BENCHMARKS.md, "Serving: kdtune's
kernels vs Faiss".) Each index's quality is its test Recall@K on ``--recall-users`` CiteULike-a users
(train and validation items excluded, ``search_unseen``) at that catalogue, where the extra rows are
distractors, as a ratio of the exact (flat) Recall@K, and its overlap with the exact top-K.

    python bench/serving.py [--data PATH] [--dims 8 16 32 64] [--catalogs 16980 200000 1000000] [--batch 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune import data as kd_data  # noqa: E402
from kdtune.config import DEFAULT_CACHE_DIR, TeacherSettings  # noqa: E402
from kdtune.model.mf import MF  # noqa: E402
from kdtune.serving.arch import arch_key  # noqa: E402
from kdtune.serving.catalog import trained_tables  # noqa: E402
from kdtune.serving.index import build_index, search_unseen  # noqa: E402
from kdtune.serving.interleaved import profile_interleaved  # noqa: E402
from kdtune.train.fit import fit  # noqa: E402
from kdtune.train.teacher import get_teacher  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/citeulike-a/users.dat"


def approximate(n_items: int, nprobes: list[int], efs: list[int], m: int) -> list[str]:
    """IVF specs with about 4 sqrt(n) cells (a power of two) and HNSW specs of ``m`` links."""
    nlist = 2 ** round(np.log2(4 * np.sqrt(n_items)))
    return [f"ivf{nlist}_np{p}" for p in nprobes] + [f"hnsw{m}_ef{e}" for e in efs]


def trained(split, dim: int, args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(users, items, item bias)`` of ``dim``: a BPR student (``--students``) or the projected teacher."""
    if args.students:
        model = MF(split.train.n_users, split.train.n_items, dim, seed=0)
        fit(model, split.train, split.valid, loss="bpr", epochs=args.students, seed=0)
    else:
        model = get_teacher(split, TeacherSettings(k=args.k), cache_dir=DEFAULT_CACHE_DIR).model()
    users = model.user_emb.weight.detach().numpy().copy()
    items = model.item_emb.weight.detach().numpy().copy()
    bias = model.item_bias.weight.detach().numpy().reshape(-1).copy()
    if dim < items.shape[1]:
        _, _, vt = np.linalg.svd(items - items.mean(0), full_matrices=False)
        users, items = users @ vt[:dim].T, items @ vt[:dim].T
    elif dim > items.shape[1]:
        raise SystemExit(f"dim {dim} exceeds the teacher's {items.shape[1]}: pass --students N")
    return users.astype(np.float32), items.astype(np.float32), bias


def quality(split, users: np.ndarray, user_vecs: np.ndarray, items: np.ndarray, bias: np.ndarray, specs: list[str],
            k: int) -> dict[str, tuple[float, float]]:
    """``spec -> (test Recall@k, overlap with the exact top-k)`` of ``users`` at this table's catalogue."""
    seen = [np.concatenate([s.items_of(int(u)).numpy() for s in (split.train, split.valid)]) for u in users]
    tests = [set(split.test.items_of(int(u)).tolist()) for u in users]
    out, exact = {}, None
    for spec in ["flat", *specs]:
        top = search_unseen(build_index(spec, items, bias), user_vecs, k, seen)
        recall = float(np.mean([len(t & set(r.tolist())) / len(t) for t, r in zip(tests, top, strict=True)]))
        exact = top if exact is None else exact
        overlap = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top, exact, strict=True)]))
        out[spec] = (recall, overlap)
    return out


def one_table(name: str, n_items: int, dim: int, tables, split, user_table: np.ndarray, args) -> None:
    """Time the indexes at one (catalogue, dim), print a Markdown table with their quality."""
    specs = ["flat", "sq8", "fp16", "bf16", *approximate(n_items, args.nprobe, args.ef, args.hnsw_m)]
    archs = [(dim, s) for s in specs]
    batches = (1, args.batch) if n_items <= args.big_catalog or args.big_batch else (1,)
    t0 = time.perf_counter()
    prof = profile_interleaved(archs, n_items, k=args.k, threads=1, rounds=args.rounds, runs=args.runs,
                               batch_sizes=batches, seed=0, max_seconds=args.max_seconds, tables=tables)
    spent = time.perf_counter() - t0
    items, bias = tables(dim, n_items)
    rng = np.random.default_rng(0)
    users = rng.choice(np.flatnonzero(split.test.user_counts().numpy() > 0), args.recall_users, replace=False)
    qual = quality(split, users, user_table[users], items, bias, specs[1:], args.k)
    base = prof[arch_key(dim, "flat")]
    print(f"\n### {name}, dim {dim} ({spent:.0f} s incl. index builds)\n")
    b = args.batch
    print(f"| serving | 1 query ms | x flat | batch {b} ms | x flat | index MB | test recall@{args.k} | "
          f"x exact | top-{args.k} overlap |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for spec in specs:
        r, (recall, overlap) = prof[arch_key(dim, spec)], qual[spec]
        lat_b = r.get(f"latency_b{b}_ms")
        cells = [f"faiss {spec}", f"{r['latency_ms']:.3f}", f"{base['latency_ms'] / r['latency_ms']:.2f}",
                 "-" if lat_b is None else f"{lat_b:.1f}",
                 "-" if lat_b is None else f"{base[f'latency_b{b}_ms'] / lat_b:.2f}", f"{r['bytes'] / 1e6:.1f}",
                 f"{recall:.4f}", "-" if not qual["flat"][0] else f"{recall / qual['flat'][0]:.3f}", f"{overlap:.3f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--catalogs", type=int, nargs="+", default=[16_980, 200_000, 1_000_000])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--students", type=int, default=0, help="train a BPR student of each dim for this many "
                    "epochs (default: the projected teacher)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--ef", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-seconds", type=float, default=20.0, help="timing budget per (catalogue, dim)")
    ap.add_argument("--big-catalog", type=int, default=200_000,
                    help="above this many items batches are timed only with --big-batch")
    ap.add_argument("--big-batch", action="store_true")
    ap.add_argument("--recall-users", type=int, default=1000)
    args = ap.parse_args()
    import faiss

    print(f"torch {torch.__version__}, faiss {faiss.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, 1 thread for timing")
    split = kd_data.split(kd_data.load_citeulike(args.data), seed=0)
    for dim in args.dims:
        t0 = time.perf_counter()
        user_table, items, bias = trained(split, dim, args)
        print(f"\ndim {dim}: tables ready in {time.perf_counter() - t0:.0f} s", flush=True)
        tables = trained_tables(items, bias, seed=0)
        for n in args.catalogs:
            one_table(f"{n:,} items", n, dim, tables, split, user_table, args)


if __name__ == "__main__":
    main()
