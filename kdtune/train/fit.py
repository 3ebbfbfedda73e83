"""Fit a teacher with BPR, distil a student from it: one training loop with early stopping on validation."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from kdtune.config import DEFAULTS, TrainSettings
from kdtune.data.interactions import Interactions
from kdtune.data.sampler import BPRSampler, PositiveSet
from kdtune.losses import KDContext, LossDef, get_loss
from kdtune.model.mf import MF
from kdtune.train.evaluate import evaluate, sample_users
from kdtune.train.optim import TableAdamW


class DivergedError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclass
class FitResult:
    """What a training run did: best validation score and when, history, and speed."""

    best_epoch: int
    best_score: float  # validation metric of the best epoch, over all validation users
    best_metrics: dict[str, float]  # every validation metric of the best epoch, over all validation users
    epochs_run: int
    seconds: float
    triplets: int
    stopped_early: bool
    metric: str
    history: list[dict] = field(default_factory=list)

    @property
    def triplets_per_s(self) -> float:
        return self.triplets / self.seconds if self.seconds > 0 else float("nan")


OPTIMIZERS = ("dense", "lazy")
LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (1-based) of ``epochs``: ``constant``, or ``cosine`` (from ``lr`` at
    epoch 1 down towards 0 at ``epochs + 1``, one value per epoch)."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    raise ValueError(f"unknown lr schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")


def make_optimizer(
    model: MF,
    extra: torch.nn.Module | None,
    lr: float,
    weight_decay: float = DEFAULTS.weight_decay,
    optimizer: str = DEFAULTS.optimizer,
) -> TableAdamW:
    """AdamW for ``model`` (and a loss's ``extra`` module), see :mod:`kdtune.train.optim`.

    ``dense`` (default): exactly torch's fused AdamW on every parameter; the model's tables receive
    their gradient as rows, accumulated into a buffer kept across steps. ``lazy``: row-sparse steps on the
    model's tables (lazy Adam with exact decoupled decay of every row; a step costs the rows the batch
    touched) and torch's fused AdamW for ``extra``. Lazy pays off only for large tables a batch barely
    touches; on CiteULike-a it was slower and trained a worse teacher (BENCHMARKS.md).

    Decoupled weight decay shrinks every row a little at every step, so rows that the data rarely
    supports (long-tail items, quiet users) stay small; on CiteULike-a it beat the usual per-batch L2
    penalty on the batch's embeddings for the teacher (see BENCHMARKS.md).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    dense = list(extra.parameters()) if extra is not None else []
    return TableAdamW(model.row_tables(), dense, lr=lr, weight_decay=weight_decay, lazy=optimizer == "lazy")


def make_step(
    model: MF,
    spec: LossDef,
    kwargs: dict,
    opt: TableAdamW,
    teacher: MF | None,
    topn: torch.Tensor | None,
    gen: torch.Generator,
    extra: torch.nn.Module | None,
    positives: PositiveSet | None = None,
    batches_per_epoch: int | None = None,
    epochs: int = 1,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimisation step on a ``(users, pos, neg)`` batch; returns the batch's mean loss.

    ``positives`` (the sampler's training pairs) lets losses that draw items keep them out (``rrd``).
    ``batches_per_epoch`` (the sampler's length) lets ``cd`` and ``rrd`` draw their items once per
    epoch for every user, as the RRD paper does, instead of once per batch (see :mod:`kdtune.losses`).
    ``epochs`` (the run's epoch budget) lets a loss schedule a parameter over training (``de``'s tau).
    """
    calls = 0
    draws: dict | None = {} if batches_per_epoch else None

    def step(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        epoch = calls // batches_per_epoch if batches_per_epoch else 0
        calls += 1
        ctx = KDContext(model, teacher, topn, users, pos, neg, gen, extra, positives, epoch, draws, epochs)
        value = spec.fn(ctx, **kwargs)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return value.detach()  # a tensor: reading it on a GPU would wait for the device every batch

    return step


def train_epoch(
    model: MF,
    sampler: BPRSampler,
    step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    max_batches: int | None = None,
) -> tuple[float, int]:
    """One pass of ``sampler`` (or its first ``max_batches``); returns (sum of losses, triplets).

    A diverged run cannot recover: on the CPU it stops at the first non-finite batch loss; on a GPU the
    losses are summed on the device and read once, at the end of the epoch (no host sync per batch)."""
    model.train()
    total, n = None, 0
    for b, (users, pos, neg) in enumerate(sampler.epoch()):
        if max_batches is not None and b >= max_batches:
            break
        loss_value = step(users, pos, neg)
        if not loss_value.is_cuda and not math.isfinite(float(loss_value)):
            raise DivergedError(f"loss became {float(loss_value)}")
        weighted = loss_value * users.numel()
        total = weighted if total is None else total + weighted
        n += users.numel()
    epoch_total = float(total) if total is not None else 0.0
    if not math.isfinite(epoch_total):
        raise DivergedError(f"loss became {epoch_total} during the epoch")
    return epoch_total, n


def fit(
    model: MF,
    train: Interactions,
    valid: Interactions,
    cfg: TrainSettings = DEFAULTS,
    *,
    loss: str = "bpr",
    loss_params: dict | None = None,
    alpha: float = 0.5,
    T: float = 1.0,
    teacher: MF | None = None,
    topn: torch.Tensor | None = None,
    k: int = 20,
    seed: int = 0,
    progress: bool = False,
    desc: str = "train",
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict], None] | None = None,
    rescore_best: bool = True,
    **overrides,
) -> FitResult:
    """Train ``model`` in place with ``loss`` and keep its best state by validation NDCG@k.

    ``cfg`` says how (epochs, patience, batch size, AdamW's rate and decoupled decay, ``lazy`` or
    ``dense`` optimiser, see ``make_optimizer``, the rate schedule, the validation sample); ``overrides``
    replace single fields of it (``fit(model, train, valid, epochs=3)``). Early stopping: after
    ``patience`` epochs without a better validation NDCG@k the loop stops and the best epoch's weights
    are restored. The per-epoch signal (early stopping, ``on_epoch``, ``history``) is measured on a fixed
    seeded sample of ``valid_users`` validation users (0/None: all), the same for every run with the same
    data and seed: full-ranking validation of every user would cost several times a training epoch. The
    best epoch's weights are then scored once on all validation users: that is ``best_metrics``
    (``rescore_best=False`` skips it, for a caller that scores the model itself; ``best_metrics`` is then
    the sample's).
    Deterministic for a given ``seed`` on CPU. ``device`` moves the model (and teacher)
    there; it stays there afterwards. Raises ``DivergedError`` on a NaN/inf loss.
    """
    cfg = replace(cfg, **overrides) if overrides else cfg
    spec = get_loss(loss)
    params = {**spec.params, **(loss_params or {})}
    unknown = set(params) - set(spec.params)
    if unknown:
        raise ValueError(f"loss {loss!r} has no parameter(s) {sorted(unknown)}; known: {sorted(spec.params)}")
    if spec.name != "bpr" and (teacher is None or topn is None):
        raise ValueError(f"loss {loss!r} distils from a teacher: pass teacher and topn")
    device = torch.device(device)
    torch.manual_seed(seed)  # anything initialised from the global generator (DE experts) is seeded too
    gen = torch.Generator(device).manual_seed(seed)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
        topn = topn.to(device)
    extra = spec.make_extra(model.dim, teacher.dim, **params) if spec.make_extra is not None else None
    if extra is not None:
        extra.to(device)
    scheduled_lr(cfg.lr, cfg.lr_schedule, 1, cfg.epochs)  # an unknown schedule fails before any work
    opt = make_optimizer(model, extra, cfg.lr, cfg.weight_decay, cfg.optimizer)
    sampler = BPRSampler(train, batch_size=cfg.batch_size, generator=gen, device=device)
    kwargs = {"alpha": alpha, **params, **({"T": T} if spec.uses_temperature else {})}
    step = make_step(model, spec, kwargs, opt, teacher, topn, gen, extra, sampler.positives, len(sampler),
                     cfg.epochs)
    signal_users = sample_users(valid, cfg.valid_users, seed)
    bar = tqdm(total=cfg.epochs, desc=desc, disable=not progress, leave=False, unit="epoch")
    try:
        result = _train_epochs(model, sampler, step, opt, cfg, train, valid, k, signal_users, bar, on_epoch, desc)
    finally:
        bar.close()
        opt.close()
    model.load_state_dict(result.pop("best_state"))
    model.eval()
    if rescore_best and signal_users is not None and result["best_epoch"] > 0:
        result["best_metrics"] = evaluate(model, train, valid, ks=(k,))
        result["best_score"] = result["best_metrics"][f"ndcg@{k}"]
    return FitResult(**result)


def _train_epochs(model: MF, sampler: BPRSampler, step: Callable, opt: TableAdamW, cfg: TrainSettings,
                  train: Interactions, valid: Interactions, k: int, signal_users: torch.Tensor | None, bar,
                  on_epoch: Callable[[dict], None] | None, desc: str) -> dict:
    """The epoch loop of :func:`fit`: train, validate on the signal users, keep the best state, stop
    after ``cfg.patience`` epochs without a better NDCG@k. Returns ``FitResult``'s fields and the best
    state."""
    metric = f"ndcg@{k}"
    best_score, best_epoch, best_metrics = -math.inf, 0, {}
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict] = []
    triplets, train_seconds, stopped_early = 0, 0.0, False
    for epoch in range(1, cfg.epochs + 1):
        opt.set_lr(scheduled_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs))
        t0 = time.perf_counter()
        try:
            total, n = train_epoch(model, sampler, step)
        except DivergedError as exc:
            raise DivergedError(f"{desc}: {exc} in epoch {epoch}") from None
        opt.sync()  # the tables hold the parameters' values again (pending weight decay applied)
        train_seconds += time.perf_counter() - t0
        triplets += n
        metrics = evaluate(model, train, valid, ks=(k,), users=signal_users)
        row = {"epoch": epoch, "loss": total / max(n, 1), **metrics}
        history.append(row)
        if metrics[metric] > best_score:
            best_score, best_epoch, best_metrics = metrics[metric], epoch, metrics
            best_state = copy.deepcopy(model.state_dict())
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", **{metric: f"{metrics[metric]:.4f}"})
        if on_epoch is not None:
            on_epoch(row)
        if epoch - best_epoch >= cfg.patience:
            stopped_early = True
            break
    return {"best_epoch": best_epoch, "best_score": best_score, "best_metrics": best_metrics,
            "epochs_run": len(history), "seconds": train_seconds, "triplets": triplets,
            "stopped_early": stopped_early, "metric": metric, "history": history, "best_state": best_state}


def distill(
    teacher: MF | None,
    topn: torch.Tensor | None,
    train: Interactions,
    valid: Interactions,
    dim: int,
    loss: str,
    seed: int = 0,
    **fit_kwargs,
) -> tuple[MF, FitResult]:
    """A fresh ``dim``-sized student distilled from ``teacher`` with ``loss`` (``bpr`` = no teacher)."""
    student = MF(train.n_users, train.n_items, dim, seed=seed)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    result = fit(student, train, valid, loss=loss, teacher=teacher, topn=topn, seed=seed, **fit_kwargs)
    return student, result
