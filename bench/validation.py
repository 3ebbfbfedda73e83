"""What the per-epoch validation signal costs against a BPR training epoch, in the same process.

    python bench/validation.py [--data PATH] [--dim 16] [--threads 1] [--users 256] [--repeats 5]

A trial validates after every epoch (early stopping, the scheduler's rungs, the dashboard's curves). This
times, interleaved and repeated (medians; the ratio is taken per repeat): one BPR training epoch of
kdtune's sampler and step (batch 4,096), full-ranking validation of every validation user (what each
epoch cost before), and the same on the fixed seeded sample of ``--users`` users that ``fit`` uses now.
It also prints how far the sample's NDCG@20 is from the full one on a trained model (the signal's error).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune.data import load, split  # noqa: E402
from kdtune.data.sampler import BPRSampler  # noqa: E402
from kdtune.losses import get_loss  # noqa: E402
from kdtune.model.mf import MF  # noqa: E402
from kdtune.train.evaluate import evaluate, sample_users  # noqa: E402
from kdtune.train.fit import make_optimizer, make_step, train_epoch  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/citeulike-a/users.dat"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load(args.data)
    parts = split(data, seed=0)
    model = MF(data.n_users, data.n_items, args.dim, seed=0)
    gen = torch.Generator().manual_seed(0)
    opt = make_optimizer(model, None, 0.01, 0.1)
    sampler = BPRSampler(parts.train, batch_size=4096, generator=gen)
    step = make_step(model, get_loss("bpr"), {"alpha": 0.0}, opt, None, None, gen, None, sampler.positives,
                     len(sampler))
    sample = sample_users(parts.valid, args.users, seed=0)
    print(f"{data.describe()}; dim {args.dim}; threads {args.threads}; signal sample {args.users} users")

    def epoch() -> None:
        train_epoch(model, sampler, step)
        opt.sync()

    jobs = {"BPR epoch": epoch,
            "full validation": lambda: evaluate(model, parts.train, parts.valid, ks=(20,)),
            f"signal ({args.users} users)": lambda: evaluate(model, parts.train, parts.valid, ks=(20,), users=sample)}
    for fn in jobs.values():  # warm-up; trains the model a little too
        fn()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = times["BPR epoch"]
    print("\n| what | median s | vs BPR epoch (median of per-repeat ratios) |\n|---|---|---|")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        print(f"| {name} | {statistics.median(ts):.4f} | {ratio:.2f} |")
    for _ in range(10):
        epoch()
    full = evaluate(model, parts.train, parts.valid, ks=(20,))["ndcg@20"]
    sub = evaluate(model, parts.train, parts.valid, ks=(20,), users=sample)["ndcg@20"]
    print(f"\nafter {1 + args.repeats + 10} epochs: validation NDCG@20 {full:.4f} (all users), {sub:.4f} (the sample)")


if __name__ == "__main__":
    main()
