"""Benchmark of the catalogue extension: exact test Recall@K of a trained table as drawn rows are added, and
what an approximate index keeps of it at a large catalogue, with its build time (one thread).

The CiteULike-a BPR teacher (dim 64, seed-0 split, from ``--cache-dir``) is served through ``flat`` over its
item table extended to each ``--catalogs`` size by each draw: ``gaussian`` (kdtune's,
``kdtune.serving.catalog.draw_rows``: a Gaussian with the mean and covariance of the rows ``[q_i, b_i]``)
and ``copies<s>`` (a random trained row plus noise of ``s`` x each column's std, the earlier draw at 0.25).
For each: test Recall@K over every test user (train and validation items excluded, ``search_unseen``),
the users with a hit, and the share of the exact top-K that are drawn rows. ``--indexes`` then builds each
index over the Gaussian-extended table at the largest catalogue (build seconds, one Faiss thread) and
reports its test Recall@K as a ratio of flat's and its overlap with flat's top-K.

    python bench/catalog.py --cache-dir DIR [--catalogs 16980 200000 1000000] [--indexes ivf1024_np16 hnsw32_ef128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune import data as kd_data  # noqa: E402
from kdtune.config import DEFAULT_CACHE_DIR, TeacherSettings  # noqa: E402
from kdtune.serving.catalog import extend  # noqa: E402
from kdtune.serving.index import build_index, search_unseen  # noqa: E402
from kdtune.train.teacher import get_teacher  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/citeulike-a/users.dat"


def copies(items: np.ndarray, bias: np.ndarray, n_items: int, noise: float, seed: int = 0):
    """The earlier draw: random trained rows plus noise of ``noise`` x each column's std."""
    rng = np.random.default_rng([seed, n_items])
    n = items.shape[0]
    pick = rng.integers(0, n, n_items - n)
    extra = items[pick] + rng.standard_normal((n_items - n, items.shape[1])).astype(np.float32) * (noise * items.std(0))
    extra_bias = bias[pick] + rng.standard_normal(n_items - n).astype(np.float32) * (noise * float(bias.std()))
    return np.vstack([items, extra]).astype(np.float32), np.concatenate([bias, extra_bias]).astype(np.float32)


def table(draw: str, items: np.ndarray, bias: np.ndarray, n_items: int):
    if n_items <= items.shape[0]:
        return items, bias
    if draw == "gaussian":
        return extend(items, bias, n_items, np.random.default_rng([0, n_items]))
    return copies(items, bias, n_items, float(draw.removeprefix("copies")))


def quality(top: np.ndarray, tests: list[set], n_real: int, k: int) -> tuple[float, int, float]:
    """``(Recall@k, users with a hit, share of top-k slots holding drawn rows)``."""
    hits = [len(t & set(r.tolist())) for t, r in zip(tests, top, strict=True)]
    recall = float(np.mean([h / len(t) for h, t in zip(hits, tests, strict=True)]))
    return recall, int(sum(h > 0 for h in hits)), float((top >= n_real).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    ap.add_argument("--catalogs", type=int, nargs="+", default=[16_980, 100_000, 200_000, 1_000_000])
    ap.add_argument("--draws", nargs="+", default=["gaussian", "copies0.25", "copies1.0"])
    ap.add_argument("--indexes", nargs="*", default=[])
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    split = kd_data.split(kd_data.load_citeulike(args.data), seed=0)
    model = get_teacher(split, TeacherSettings(k=args.k), cache_dir=args.cache_dir).model()
    users_t, items, bias = (t.detach().float().numpy() for t in
                            (model.user_emb.weight, model.item_emb.weight, model.item_bias.weight.reshape(-1)))
    users = np.flatnonzero(split.test.user_counts().numpy() > 0)
    seen = [np.concatenate([s.items_of(int(u)).numpy() for s in (split.train, split.valid)]) for u in users]
    tests = [set(split.test.items_of(int(u)).tolist()) for u in users]
    n_real, k = items.shape[0], args.k
    print(f"{len(users)} test users, top-{k}, flat (exact), faiss {faiss.__version__}, 1 thread\n")
    print("| draw | items | test recall@20 | users with a hit | top-20 slots drawn | s |\n|---|---:|---:|---:|---:|---:|")
    for draw in args.draws:
        for n in args.catalogs:
            t0 = time.perf_counter()
            top = search_unseen(build_index("flat", *table(draw, items, bias, n)), users_t[users], k, seen)
            recall, hit_users, drawn = quality(top, tests, n_real, k)
            print(f"| {draw} | {n:,} | {recall:.4f} | {hit_users} | {drawn:.3f} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
    if not args.indexes:
        return
    n = max(args.catalogs)
    tab = table("gaussian", items, bias, n)
    exact = search_unseen(build_index("flat", *tab), users_t[users], k, seen)
    base = quality(exact, tests, n_real, k)[0]
    print(f"\n{n:,} items, gaussian draw: flat recall@{k} {base:.4f}\n")
    print("| index | build s | test recall@20 | x flat | top-20 overlap | search s |\n|---|---:|---:|---:|---:|---:|")
    for spec in args.indexes:
        t0 = time.perf_counter()
        index = build_index(spec, *tab)
        built = time.perf_counter() - t0
        top = search_unseen(index, users_t[users], k, seen)
        recall = quality(top, tests, n_real, k)[0]
        overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top, exact, strict=True)])
        print(f"| {spec} | {built:.0f} | {recall:.4f} | {recall / base:.3f} | {overlap:.3f} | "
              f"{time.perf_counter() - t0 - built:.1f} |", flush=True)


if __name__ == "__main__":
    main()
