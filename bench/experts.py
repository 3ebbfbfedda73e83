"""The expert mixtures' cheaper variants against the reference's dense one: same settings, same seeds, test
quality and time.

    python bench/experts.py --data ../shared/data/citeulike-a/users.dat --seeds 0 1 2 --threads 1
    python bench/experts.py --data ../shared/data/citeulike-a/users.dat --variant rows --rows 1024 --methods de_rrd
    python bench/experts.py --data ../shared/data/citeulike-a/users.dat --methods de_rrd bpr \
        --set lr_schedule=cosine --set patience=40          # any trainer setting or loss parameter

DE, DE-RRD and HTD mix E experts per row by an annealed Gumbel-softmax. The dense path runs every expert
for every row (two GEMMs); once the temperature is low the weights are nearly one-hot and the sparse path
(:meth:`kdtune.losses.experts._ExpertSet.mixture`) runs each expert only on the rows whose weight is not
0. ``--variant rows`` instead estimates DE's term on at most ``--rows`` of a batch's distinct users and
items (``de_rows``; DE and DE-RRD only), and ``--set KEY=VALUE`` (repeatable) changes any trainer setting or
loss parameter of the trial config (e.g. ``lr_schedule=cosine``). For each method and seed this trains the student twice, the
reference (dense, every row: ``SPARSE_SHARE = 0``, ``de_rows`` 0, the defaults) and the variant, and prints
test NDCG@K of both, their difference and the training time ratio (reference / variant, a ratio of
neighbours in one process).
Default settings: the best ``de_rrd`` and ``htd`` trials of ``results/citeulike-a-50``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

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
    "bpr": {"dim": 16, "lr": 0.00548},  # the plain dim-16 student of that run (best of its 3 rates)
    "htd": {"dim": 16, "lr": 0.0125, "htd_weight": 0.166, "htd_experts": 4, "htd_beta": 0.718, "htd_anneal": 20.0},
}


def run(loss: str, split, knowledge, seed: int, k: int, variant: dict) -> tuple[dict, float, int]:
    """Train ``loss`` at its settings with ``variant``'s changes (``sparse``: the sparse path on; any other
    key: a loss parameter) and return its test scores, training seconds and epochs run."""
    params = dict(variant)
    experts.SPARSE_SHARE = 0.3 if params.pop("sparse", False) else 0.0
    dim, loss, fit_kwargs = split_config({**COMMON, **SETTINGS[loss], **params, "loss": loss})
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
    p.add_argument("--variant", choices=("sparse", "rows"), default="sparse")
    p.add_argument("--rows", type=int, default=1024, help="de_rows of --variant rows")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the variant changes this trial setting instead (repeatable; replaces --variant)")
    args = p.parse_args()
    if args.set:
        variant = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    elif args.variant == "rows" and not set(args.methods) <= {"de", "de_rrd"}:
        p.error("--variant rows applies to de and de_rrd only")
    else:
        variant = {"sparse": True} if args.variant == "sparse" else {"de_rows": args.rows}
    torch.set_num_threads(args.threads)
    _, split = prepare(DataSettings(data=args.data, format=args.format, k=args.k, cache_dir=args.cache_dir))
    knowledge = get_teacher(split, TeacherSettings(k=args.k), cache_dir=args.cache_dir, progress=False)
    key = f"test_ndcg@{args.k}"
    print(f"variant: {variant}")
    print(f"{'method':>7} {'seed':>4} {'ref NDCG':>10} {'var NDCG':>11} {'diff':>8} {'epochs':>7} "
          f"{'ref s':>8} {'var s':>8} {'ratio':>6}", flush=True)
    for loss in args.methods:
        diffs, ratios = [], []
        for seed in args.seeds:
            dense, t_dense, e_dense = run(loss, split, knowledge, seed, args.k, {})
            sparse, t_sparse, e_sparse = run(loss, split, knowledge, seed, args.k, variant)
            diffs.append(sparse[key] - dense[key])
            ratios.append(t_dense / t_sparse)
            print(f"{loss:>7} {seed:>4} {dense[key]:>10.4f} {sparse[key]:>11.4f} {diffs[-1]:>+8.4f} "
                  f"{e_dense:>3}/{e_sparse:<3} {t_dense:>8.1f} {t_sparse:>8.1f} {ratios[-1]:>6.2f}", flush=True)
        print(f"{loss:>7} mean diff {statistics.fmean(diffs):+.4f} (sd {statistics.pstdev(diffs):.4f}); "
              f"median time ratio {statistics.median(ratios):.2f}", flush=True)


if __name__ == "__main__":
    main()
