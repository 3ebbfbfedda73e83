"""The expert mixtures' sparse path against the dense one: same settings, same seeds, test quality and time.

    python bench/experts.py --data ../shared/data/citeulike-a/users.dat --seeds 0 1 2 --threads 1

DE, DE-RRD and HTD mix E experts per row by an annealed Gumbel-softmax. The dense path runs every expert
for every row (two GEMMs); once the temperature is low the weights are nearly one-hot and the sparse path
(:meth:`kdtune.losses.experts._ExpertSet.mixture`) runs each expert only on the rows whose weight is not
0. For each method and seed this trains the student twice, dense only (``SPARSE_SHARE = 0``, the default)
and with the sparse path on (0.3), and prints test NDCG@K / Recall@K of both, their difference and the
training time ratio (dense / sparse, a ratio of neighbours in one process).
Default settings: the best ``de_rrd`` and ``htd`` trials of ``results/citeulike-a-50``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune.config import DataSettings, TeacherSettings  # noqa: E402
from kdtune.data import prepare  # noqa: E402
from kdtune.losses import experts  # noqa: E402
from kdtune.search.trainable import split_config  # noqa: E402
from kdtune.train.evaluate import test_scores  # noqa: E402
from kdtune.train.fit import distill  # noqa: E402
from kdtune.train.teacher import get_teacher  # noqa: E402

COMMON = {"epochs": 40, "patience": 5, "batch_size": 4096, "weight_decay": 0.1}
SETTINGS = {
    "de_rrd": {"dim": 16, "lr": 0.00697, "de_rrd_weight": 0.205, "de_experts": 9, "lambda_rrd": 0.0904,
               "rrd_k": 37, "rrd_l": 152, "rrd_lambda": 1.52},
    "de": {"dim": 16, "lr": 0.00697, "de_weight": 0.205, "de_experts": 10},
    "htd": {"dim": 16, "lr": 0.0125, "htd_weight": 0.166, "htd_experts": 4, "htd_beta": 0.718, "htd_anneal": 20.0},
}


def run(loss: str, split, knowledge, seed: int, k: int, sparse: bool) -> tuple[dict, float, int]:
    experts.SPARSE_SHARE = 0.3 if sparse else 0.0
    dim, loss, fit_kwargs = split_config({**COMMON, **SETTINGS[loss], "loss": loss})
    t0 = time.perf_counter()
    model, fit = distill(knowledge.model(), knowledge.topn, split.train, split.valid, dim, loss, seed=seed, k=k,
                         **fit_kwargs)
    seconds = time.perf_counter() - t0
    return test_scores(model.cpu(), split, k), seconds, len(fit.history)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--format", default=None)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["de_rrd", "htd"], choices=sorted(SETTINGS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=".cache/bench-experts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _, split = prepare(DataSettings(data=args.data, format=args.format, k=args.k, cache_dir=args.cache_dir))
    knowledge = get_teacher(split, TeacherSettings(k=args.k), cache_dir=args.cache_dir, progress=False)
    key = f"test_ndcg@{args.k}"
    print(f"{'method':>7} {'seed':>4} {'dense NDCG':>10} {'sparse NDCG':>11} {'diff':>8} {'epochs':>7} "
          f"{'dense s':>8} {'sparse s':>8} {'ratio':>6}", flush=True)
    for loss in args.methods:
        diffs, ratios = [], []
        for seed in args.seeds:
            dense, t_dense, e_dense = run(loss, split, knowledge, seed, args.k, sparse=False)
            sparse, t_sparse, e_sparse = run(loss, split, knowledge, seed, args.k, sparse=True)
            diffs.append(sparse[key] - dense[key])
            ratios.append(t_dense / t_sparse)
            print(f"{loss:>7} {seed:>4} {dense[key]:>10.4f} {sparse[key]:>11.4f} {diffs[-1]:>+8.4f} "
                  f"{e_dense:>3}/{e_sparse:<3} {t_dense:>8.1f} {t_sparse:>8.1f} {ratios[-1]:>6.2f}", flush=True)
        print(f"{loss:>7} mean diff {statistics.fmean(diffs):+.4f} (sd {statistics.pstdev(diffs):.4f}); "
              f"median time ratio {statistics.median(ratios):.2f}", flush=True)


if __name__ == "__main__":
    main()
