"""Teacher quality across seeds: train the teacher for each seed (its own split, initialisation and sampling),
score it once on the test split, and print mean, spread and each seed's figures.

    python bench/teacher.py --data ../shared/data/citeulike-a/users.dat --format citeulike --seeds 0 1 2
    python bench/teacher.py ... --set lr=0.01 --set weight_decay=0.1     # TeacherSettings overrides

The target of a reliable teacher: every seed within +-3% of the seeds' mean test NDCG@20. Each run is a
``kdtune.train.teacher.train_teacher`` call (what a search runs as its teacher task) on this process's
threads (``--threads``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune.config import DataSettings, TeacherSettings  # noqa: E402
from kdtune.data import prepare  # noqa: E402
from kdtune.train.evaluate import test_scores  # noqa: E402
from kdtune.train.teacher import train_teacher  # noqa: E402


def parse_set(items: list[str]) -> dict:
    fields = {f.name: f.type for f in dataclasses.fields(TeacherSettings)}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {item}: not a TeacherSettings field ({', '.join(fields)})")
        default = getattr(TeacherSettings(), name)
        out[name] = type(default)(value) if not isinstance(default, bool) else value == "true"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--format", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=".cache/bench-teacher")
    parser.add_argument("--set", action="append", default=[], help="a TeacherSettings field as NAME=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("kdtune").setLevel(logging.INFO)  # the teacher's best epoch
    torch.set_num_threads(args.threads)
    overrides = parse_set(args.set)
    print(f"teacher settings: {dataclasses.asdict(TeacherSettings(**overrides))} (seed per row)", flush=True)
    rows = []
    for seed in args.seeds:
        _, split = prepare(DataSettings(data=args.data, format=args.format, k=args.k, seed=seed,
                                        cache_dir=args.cache_dir))
        settings = TeacherSettings(**{**overrides, "k": args.k, "seed": seed})
        t0 = time.perf_counter()
        knowledge = train_teacher(split, settings, progress=False)
        seconds = time.perf_counter() - t0
        test = test_scores(knowledge.model(), split, args.k)
        rows.append({"seed": seed, "valid_ndcg": knowledge.valid_metrics[f"ndcg@{args.k}"],
                     "test_ndcg": test[f"test_ndcg@{args.k}"], "test_recall": test[f"test_recall@{args.k}"],
                     "seconds": seconds})
        print(f"seed {seed}: valid NDCG@{args.k} {rows[-1]['valid_ndcg']:.4f}  test NDCG@{args.k} "
              f"{rows[-1]['test_ndcg']:.4f}  Recall@{args.k} {rows[-1]['test_recall']:.4f}  {seconds:.0f} s",
              flush=True)
    ndcg = [r["test_ndcg"] for r in rows]
    mean = statistics.fmean(ndcg)
    worst = max(abs(x - mean) / mean for x in ndcg)
    print(f"test NDCG@{args.k}: mean {mean:.4f}, sd {statistics.pstdev(ndcg):.4f}, "
          f"largest deviation from the mean {worst:.1%} (target <= 3%)")


if __name__ == "__main__":
    main()
