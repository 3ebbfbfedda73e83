"""BPR and distillation training throughput (triplets/s) against a per-sample DataLoader loop.

    python bench/throughput.py [--data PATH] [--dims 8 16 32 64] [--repeats 5] [--optimizers dense lazy]
    python bench/throughput.py --threads 1 --batches 20 --repeats 3 --no-baseline   # losses vs BPR only

The baseline is the loop kdtune replaces: a ``Dataset.__getitem__`` that returns one (user, pos, neg)
triplet, drawing the negative with Python's ``random`` until it is not a positive, batched by a
``DataLoader`` and trained with the same MF, BPR loss and Adam. Both run in this process on the same
data; each figure is the median of ``--repeats`` timed runs, and the ratio is taken per repeat (the
machine's speed drifts, a ratio of neighbours drifts much less). ``--optimizers`` times kdtune's step
with each of ``kdtune.train.OPTIMIZERS`` (dense AdamW, the default, and row-sparse lazy AdamW); the
end-of-epoch sync of the lazy optimiser is inside the timed region.

The ``vs bpr`` column is each loss's throughput over kdtune's own BPR step at the same dim, batch
size and optimiser, over an epoch of BPR timed right before the loss's (a ratio of neighbours, as above;
the ``bpr`` row gathers all those BPR epochs); ``range`` is the lowest and highest of those per-repeat
ratios, how much the machine moved them. Distillation losses pay for the teacher's knowledge; this
column is their price.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune.data import Interactions, load, split  # noqa: E402
from kdtune.data.sampler import BPRSampler  # noqa: E402
from kdtune.losses import LOSSES, get_loss  # noqa: E402
from kdtune.losses.experts import _ExpertSet  # noqa: E402
from kdtune.model.mf import MF  # noqa: E402
from kdtune.train.fit import OPTIMIZERS, make_optimizer, make_step, train_epoch  # noqa: E402
from kdtune.train.teacher import compute_topn  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/citeulike-a/users.dat"


class PerSampleTriplets(Dataset):
    """The per-sample design being replaced: one triplet per ``__getitem__``."""

    def __init__(self, train: Interactions):
        self.users = train.row_ids().tolist()
        self.items = train.indices.tolist()
        self.n_items = train.n_items
        self.seen = [set(train.items_of(u).tolist()) for u in range(train.n_users)]

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, idx: int):
        u = self.users[idx]
        j = random.randrange(self.n_items)
        while j in self.seen[u]:
            j = random.randrange(self.n_items)
        return u, self.items[idx], j


def time_baseline(train: Interactions, dim: int, batch_size: int, batches: int) -> float:
    model = MF(train.n_users, train.n_items, dim, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = DataLoader(PerSampleTriplets(train), batch_size=batch_size, shuffle=True)
    n, t0 = 0, time.perf_counter()
    for b, (u, i, j) in enumerate(loader):
        if b >= batches:
            break
        loss = -F.logsigmoid(model(u, i) - model(u, j)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(u)
    return n / (time.perf_counter() - t0)


def time_kdtune(train, dim, batch_size, batches, loss="bpr", teacher=None, topn=None, optimizer="dense") -> float:
    spec = get_loss(loss)
    model = MF(train.n_users, train.n_items, dim, seed=0)
    gen = torch.Generator().manual_seed(0)
    extra = spec.make_extra(dim, teacher.dim, **spec.params) if spec.make_extra is not None else None
    opt = make_optimizer(model, extra, 0.01, 0.1, optimizer)
    kwargs = {"alpha": 0.5, **spec.params, **({"T": 2.0} if spec.uses_temperature else {})}
    sampler = BPRSampler(train, batch_size=batch_size, generator=gen)
    step = make_step(model, spec, kwargs, opt, teacher, topn, gen, extra, sampler.positives, len(sampler))
    train_epoch(model, sampler, step, max_batches=2)  # warm-up
    t0 = time.perf_counter()
    _, n = train_epoch(model, sampler, step, max_batches=batches)
    opt.close()  # counted: at the end of an epoch the pending weight decay is applied to every row
    return n / (time.perf_counter() - t0)


def de_gemm_floor(train: Interactions, dim: int, teacher_dim: int, batch_size: int, n_experts: int | None = None,
                  repeats: int = 15) -> float:
    """Seconds per batch of the matrix products DE's definition requires, and nothing else.

    For a real batch's distinct users, distinct positives and distinct negatives (the rows DE maps), with
    the DE-RRD reference code's expert width ``h = (dim + teacher_dim) / 2`` and ``de``'s default number of
    experts: every expert's hidden layer ``s @ W1`` (``[M, dim] x [dim, E h]``), the soft mixture's output
    (the weighted hidden units ``[M, E h] x [E h, dt]``: a soft mixture needs every expert's output for
    every row), and their backward: ``g @ W2^T``, the W2 and W1 gradients and the student rows' gradient.
    Elementwise work, the selection network, BPR and the optimiser are left out, so a DE step costs at
    least BPR's step plus this.
    """
    if n_experts is None:
        n_experts = int(get_loss("de").params["de_experts"])
    gen = torch.Generator().manual_seed(0)
    users, pos, neg = next(iter(BPRSampler(train, batch_size=batch_size, generator=gen).epoch()))
    e, _, h = _ExpertSet(dim, teacher_dim, n_experts).w1.shape  # the experts' own shapes
    sides = []
    for m in (users.unique().numel(), pos.unique().numel(), neg.unique().numel()):
        sides.append((torch.randn(m, dim), torch.randn(m, teacher_dim), torch.randn(dim, e * h),
                      torch.randn(e * h, teacher_dim), torch.randn(m, e * h)))

    def products() -> None:
        for s, g, w1, w2, hid in sides:
            s @ w1  # every expert's hidden layer
            hid @ w2  # the mixture of every expert's output
            dh = g @ w2.T  # the hidden layers' gradient (and the selection's)
            hid.T @ g  # W2's gradient
            s.T @ dh  # W1's gradient
            dh @ w1.T  # the student rows' gradient

    products()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        products()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)  # the statistic BPR's figure uses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.exists() else "synthetic")
    p.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--losses", nargs="+", default=["bpr", *(n for n in LOSSES if n != "bpr")],
                   help="losses to time (default: every registered loss)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--batches", type=int, default=None,
                   help="timed batches per kdtune run (default: one whole epoch, as training runs it)")
    p.add_argument("--baseline-batches", type=int, default=2, help="timed batches per baseline run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--optimizers", nargs="+", default=["dense"], choices=OPTIMIZERS)
    p.add_argument("--no-baseline", action="store_true", help="skip the per-sample DataLoader baseline")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load(args.data)
    parts = split(data, seed=0)
    print(f"{data.describe()}; train {parts.train.nnz:,}; threads {args.threads}; repeats {args.repeats}")
    teacher = MF(data.n_users, data.n_items, 64, seed=1).eval().requires_grad_(False)
    topn = compute_topn(teacher, parts.train, 100)

    print(f"\n{'dim':>4} {'loss':>9} {'optimizer':>9} {'kdtune triplets/s':>18} {'vs bpr':>7} {'range':>11} "
          f"{'baseline triplets/s':>20} {'ratio':>7}")
    de_floors: dict[int, tuple[float, float]] = {}
    for dim in args.dims:
        for optimizer in args.optimizers:
            # per repeat and loss: an epoch of kdtune's BPR step right before the loss's, so that each ratio
            # compares neighbours (BPR's row gathers every one of those BPR epochs)
            ours: dict[str, list[float]] = {loss: [] for loss in args.losses}
            vs_bpr: dict[str, list[float]] = {loss: [] for loss in args.losses}
            vs_base: dict[str, list[float]] = {loss: [] for loss in args.losses}
            base: list[float] = []
            bprs: list[float] = []
            for _ in range(args.repeats):
                b = None
                if not args.no_baseline:
                    b = time_baseline(parts.train, dim, args.batch_size, args.baseline_batches)
                    base.append(b)
                for loss in args.losses:
                    bpr = time_kdtune(parts.train, dim, args.batch_size, args.batches, "bpr", teacher, topn, optimizer)
                    bprs.append(bpr)
                    o = bpr if loss == "bpr" else time_kdtune(
                        parts.train, dim, args.batch_size, args.batches, loss, teacher, topn, optimizer
                    )
                    ours[loss].append(o)
                    vs_bpr[loss].append(o / bpr)
                    if b is not None:
                        vs_base[loss].append(o / b)
            if "bpr" in ours:
                ours["bpr"] = bprs
            if "de" in args.losses and "bpr" in args.losses:
                floor = de_gemm_floor(parts.train, dim, teacher.dim, args.batch_size)
                bpr_step = args.batch_size / statistics.median(bprs)
                de_floors[dim] = (floor, bpr_step)
            for loss in args.losses:
                base_cols = (f"{statistics.median(base):>20,.0f} {statistics.median(vs_base[loss]):>6.1f}x"
                             if base else f"{'-':>20} {'-':>7}")
                print(f"{dim:>4} {loss:>9} {optimizer:>9} {statistics.median(ours[loss]):>18,.0f} "
                      f"{statistics.median(vs_bpr[loss]):>7.3f} "
                      f"{min(vs_bpr[loss]):>5.3f}-{max(vs_bpr[loss]):<5.3f} {base_cols}", flush=True)


    if de_floors:
        print("\nde's floor: the matrix products its definition needs for one batch (every expert's hidden layer and")
        print("output for each distinct user, positive and negative, forward and backward) vs BPR's step")
        print(f"{'dim':>4} {'products ms':>12} {'bpr step ms':>12} {'best possible de vs bpr':>24}")
        for dim, (floor, bpr_step) in de_floors.items():
            print(f"{dim:>4} {floor * 1e3:>12.2f} {bpr_step * 1e3:>12.2f} {bpr_step / (bpr_step + floor):>24.3f}")


if __name__ == "__main__":
    main()
