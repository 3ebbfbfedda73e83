"""Benchmark of `kdtune.train.evaluate.evaluate`: full-ranking Recall/NDCG/HR/MRR of an MF (dim 64) on CiteULike-a.

Uses ``../shared/data/citeulike-a/users.dat`` (each line: a count, then item ids) when present, else
random data of the same size (5,551 users, 16,980 items). Interactions are split 80/10/10 at random;
the test split is evaluated with train + valid masked. Prints the median of 5 runs and the ratio
against a naive per-user python loop run in the same process, interleaved with them (on a subset of
users, extrapolated to all): the machine's speed drifts, a ratio of neighbours drifts much less. Then the
same pass through the model's ``flat`` Faiss index, scored from its stored vectors (what the search does)
against the index's own search, interleaved, with the ratio.

    python bench/evaluate.py [--data PATH] [--dim 64] [--ks 10 20 50] [--naive-users 300] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune.data import Interactions  # noqa: E402
from kdtune.model.mf import MF  # noqa: E402
from kdtune.train.evaluate import evaluate  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/citeulike-a/users.dat"


def load_users_dat(path: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    users, items = [], []
    with open(path) as f:
        for u, line in enumerate(f):
            ids = [int(x) for x in line.split()[1:]]  # first field is the count
            users.extend([u] * len(ids))
            items.extend(ids)
    users_a, items_a = np.array(users, dtype=np.int64), np.array(items, dtype=np.int64)
    return users_a, items_a, int(users_a.max()) + 1, int(items_a.max()) + 1


def random_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    n_users, n_items, nnz = 5551, 16980, 205_000
    users = rng.integers(n_users, size=nnz)
    popularity = np.arange(1, n_items + 1) ** -0.7  # a skewed catalog, like real data
    items = rng.choice(n_items, size=nnz, p=popularity / popularity.sum())
    return users, items, n_users, n_items


def split(users, items, n_users, n_items, rng) -> tuple[Interactions, Interactions, Interactions]:
    r = rng.random(len(users))
    parts = [(r < 0.8), (r >= 0.8) & (r < 0.9), (r >= 0.9)]
    return tuple(Interactions.from_arrays(users[m], items[m], n_users, n_items) for m in parts)


def naive(model: MF, seen: list[Interactions], test: Interactions, ks: list[int], users: list[int]) -> dict:
    """The straightforward loop: one user at a time, python sets, python sums."""
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hr", "mrr")}
    with torch.no_grad():
        for u in users:
            s = model.full_scores(torch.tensor([u]))[0]
            for sp in seen:
                s[sp.items_of(u)] = -math.inf
            top = torch.topk(s, max(ks)).indices.tolist()
            truth = set(test.items_of(u).tolist())
            for k in ks:
                ranks = [r + 1 for r, i in enumerate(top[:k]) if i in truth]
                idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(truth), k) + 1))
                sums[f"recall@{k}"] += len(ranks) / len(truth)
                sums[f"ndcg@{k}"] += sum(1 / math.log2(r + 1) for r in ranks) / idcg
                sums[f"hr@{k}"] += float(bool(ranks))
                sums[f"mrr@{k}"] += 1 / ranks[0] if ranks else 0.0
    return {key: v / len(users) for key, v in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-users", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None, help="torch and Faiss threads (default: torch's)")
    args = ap.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    if args.data.exists():
        source = str(args.data.resolve())
        arrays = load_users_dat(args.data)
    else:
        source = "random data of CiteULike-a's size (file not found)"
        arrays = random_data(rng)
    train, valid, test = split(*arrays, rng)
    n_eval = int((test.user_counts() > 0).sum())
    print(f"data: {source}")
    print(
        f"  {train.n_users} users, {train.n_items} items; train {train.nnz}, valid {valid.nnz}, "
        f"test {test.nnz}; {n_eval} users with test items; torch threads {torch.get_num_threads()}"
    )
    model = MF(train.n_users, train.n_items, args.dim, seed=0)

    eval_users = torch.nonzero(test.user_counts() > 0).flatten()
    perm = torch.randperm(n_eval, generator=torch.Generator().manual_seed(0))
    subset = eval_users[perm[: args.naive_users]].tolist()
    evaluate(model, [train, valid], test, ks=args.ks, batch_size=args.batch_size)  # warm-up
    naive(model, [train, valid], test, args.ks, subset[:20])  # warm-up
    times, naive_times, ratios = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = evaluate(model, [train, valid], test, ks=args.ks, batch_size=args.batch_size)
        t1 = time.perf_counter()
        naive(model, [train, valid], test, args.ks, subset)
        t2 = time.perf_counter()
        times.append(t1 - t0)
        naive_times.append((t2 - t1) / len(subset) * n_eval)  # extrapolated to all evaluated users
        ratios.append(naive_times[-1] / times[-1])
    med = statistics.median(times)
    print(
        f"evaluate(): median {med:.3f} s over {args.repeats} runs "
        f"(min {min(times):.3f}, max {max(times):.3f}); {n_eval / med:,.0f} users/s"
    )
    print(
        f"naive per-user loop: median {statistics.median(naive_times):.2f} s for all {n_eval} users, "
        f"extrapolated from {len(subset)} users per run; evaluate() is {statistics.median(ratios):.1f}x "
        f"faster (median of per-run ratios, range {min(ratios):.1f}-{max(ratios):.1f}x)"
    )

    # Same numbers as the loop on the subset (a sanity check of the benchmark itself).
    sub = test.subset(np.isin(test.row_ids().numpy(), subset))
    got = evaluate(model, [train, valid], sub, ks=args.ks)
    want = naive(model, [train, valid], test, args.ks, subset)
    worst = max(abs(got[k] - want[k]) for k in want)
    print(f"agreement with the loop on the subset: max |diff| = {worst:.2e}")
    print(
        "metrics of the untrained model (timing only): "
        + ", ".join(f"{k}={v:.4f}" for k, v in res.items() if k != "n_users")
    )
    through_flat_index(model, [train, valid], test, args.ks, args.repeats)


def through_flat_index(model: MF, seen: list[Interactions], test: Interactions, ks: list[int], repeats: int) -> None:
    """A trial's and a plain student's scores through their ``flat`` index: the stored vectors ranked by
    evaluate (``FlatScorer``, what ``ServedStudent.scorer`` uses) against the index's own search
    (``IndexScorer``: Faiss, k + seen items per user), interleaved; the two must agree exactly."""
    import faiss

    from kdtune.serving.served import IndexScorer, ServedStudent

    faiss.omp_set_num_threads(torch.get_num_threads())
    served = ServedStudent.from_model(model, "flat")
    k = max(ks)
    shortcut, searched = served.scorer(seen, k), IndexScorer(served, seen, k)
    fast, slow = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = evaluate(shortcut, seen, test, ks=ks)
        t1 = time.perf_counter()
        b = evaluate(searched, seen, test, ks=ks)
        fast.append(t1 - t0)
        slow.append(time.perf_counter() - t1)
    ratios = [s / f for f, s in zip(fast, slow, strict=True)]
    print(f"through a flat index ({type(shortcut).__name__} vs its Faiss search, {torch.get_num_threads()} thread(s)): "
          f"median {statistics.median(fast):.3f} s vs {statistics.median(slow):.3f} s, "
          f"{statistics.median(ratios):.1f}x (range {min(ratios):.1f}-{max(ratios):.1f}x); "
          f"same metrics: {a == b}")


if __name__ == "__main__":
    main()
