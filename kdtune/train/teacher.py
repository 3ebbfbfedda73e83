"""The teacher: trained once with BPR (or loaded from the disk cache), with what the distillation losses
need from it (each user's top-N ranking). :func:`get_teacher` is the one way to obtain one."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from kdtune.config import TeacherSettings
from kdtune.data.interactions import Interactions, Split
from kdtune.model.mf import MF
from kdtune.model.store import TeacherKnowledge, load_cached, save_teacher, teacher_cache_file
from kdtune.train.evaluate import chunk_users
from kdtune.train.fit import fit

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@torch.no_grad()  # not inference_mode: the result is used by autograd-tracked code later
def compute_topn(model: MF, seen: Interactions, n: int, batch_size: int | None = None) -> torch.Tensor:
    """Each user's top-``n`` items by ``model``, best first, with ``seen`` items masked: int64 [users, n] on
    the CPU. Computed on the model's device, ``batch_size`` users at a time (default: a chunk of the
    device's budget, :func:`~kdtune.train.evaluate.chunk_users`), so memory stays bounded at any size."""
    n = min(n, model.n_items)
    dev = model.item_emb.weight.device
    batch_size = batch_size or chunk_users(model.n_items, dev, bytes_per_cell=4)
    out = torch.empty(model.n_users, n, dtype=torch.int64)
    counts, indptr, indices = seen.user_counts(), seen.indptr, seen.indices.to(dev)
    for start in range(0, model.n_users, batch_size):
        stop = min(start + batch_size, model.n_users)
        scores = model.full_scores(torch.arange(start, stop, device=dev))
        # Mask this batch's training items in one scatter over its CSR slice.
        rows = torch.repeat_interleave(torch.arange(stop - start), counts[start:stop]).to(dev)
        scores[rows, indices[int(indptr[start]) : int(indptr[stop])]] = -torch.inf
        out[start:stop] = torch.topk(scores, n, dim=1).indices.cpu()
    return out


def cache_key(split: Split, settings: TeacherSettings) -> str:
    payload = json.dumps(
        {"format": CACHE_FORMAT, "split": split.fingerprint(), "settings": asdict(settings)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def train_teacher(
    split: Split, settings: TeacherSettings, progress: bool = True, device: str = "cpu"
) -> TeacherKnowledge:
    """Train the teacher with BPR on ``split.train`` (early stopping on ``split.valid``) on ``device``."""
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = MF(split.train.n_users, split.train.n_items, settings.dim, seed=settings.seed)
    result = fit(model, split.train, split.valid, settings.train(), loss="bpr", k=settings.k, seed=settings.seed,
                 progress=progress, desc=f"teacher dim={settings.dim}", device=device)
    topn = compute_topn(model, split.train, settings.topn)  # on the device it trained on
    model.cpu()
    log.info("teacher: best epoch %d, valid %s=%.4f", result.best_epoch, result.metric, result.best_score)
    return TeacherKnowledge(
        arch=model.arch(),
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        topn=topn,
        settings=asdict(settings),
        key=cache_key(split, settings),
        valid_metrics=result.best_metrics,
        train_seconds=time.perf_counter() - t0,
    )


def cache_path(split: Split, settings: TeacherSettings, cache_dir: str | Path) -> Path:
    return teacher_cache_file(cache_key(split, settings), cache_dir)


def get_teacher(
    split: Split,
    settings: TeacherSettings,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    train: Callable[[Split, TeacherSettings], TeacherKnowledge] | None = None,
) -> TeacherKnowledge:
    """The teacher for ``split`` and ``settings``: from ``cache_dir`` when it holds one, else trained (by
    ``train`` when given, e.g. as a Ray task; else here on ``device``) and stored there; a cache that
    cannot be written is a warning (it only saves time). ``from_cache`` and ``load_seconds`` say which
    happened."""
    path = cache_path(split, settings, cache_dir) if cache_dir is not None else None
    knowledge = load_cached(path) if path is not None else None
    if knowledge is None:
        t0 = time.perf_counter()
        if train is None:
            knowledge = train_teacher(split, settings, progress=progress, device=device)
        else:
            knowledge = train(split, settings)
        if path is not None:
            try:
                save_teacher(knowledge, path)
            except OSError as exc:
                log.warning("could not cache the teacher in %s: %s", path, exc)
        knowledge.load_seconds = time.perf_counter() - t0
    return knowledge
