"""The run's reference points: the teacher, and a plain (BPR, no teacher) student of every size of the space.

Plain students are candidates of the front like the distilled ones: a distilled student that a plain student
of its size beats must never be recommended. So a distilled student is a candidate only if it beats the plain
student of its dim on validation in Recall@K *and* NDCG@K (:func:`behind_plain`); the front is then taken over
those and the plain students. Each plain student gets the best of three
learning rates across the space's range (chosen on validation), so distillation is compared with a student
that had a fair chance too. Their weights are kept, so a plain student on the front ships like any other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdtune.config import DEFAULTS
from kdtune.data import Split
from kdtune.evaluate import evaluate
from kdtune.space import TRAIN_DEFAULTS, SearchSpace
from kdtune.teacher import TeacherKnowledge
from kdtune.train import distill

PLAIN = "plain"
DISTILLED = "distilled"
TEACHER = "teacher"


def plain_id(dim: int) -> str:
    """The trial id a plain student of ``dim`` has in the run's tables and study."""
    return f"plain-dim{int(dim)}"


def _plain_task(split: Split, dim: int, lr: float, train_kwargs: dict, k: int, seed: int, threads: int,
                valid_users: int) -> dict:
    import ray
    import torch

    torch.set_num_threads(max(1, threads))
    device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    model, fit = distill(None, None, split.train, split.valid, dim, "bpr", seed=seed, lr=lr, k=k,
                         device=device, valid_users=valid_users, **train_kwargs)
    model.cpu()
    return {"dim": dim, "lr": lr, f"recall@{k}": fit.best_metrics[f"recall@{k}"],
            f"ndcg@{k}": fit.best_metrics[f"ndcg@{k}"], **test_scores(model, split, k),
            "params": model.n_params(), "bytes": model.n_bytes(), "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run, "state": {name: t.clone() for name, t in model.state_dict().items()},
            "arch": model.arch()}


def plain_students(split: Split, space: SearchSpace, k: int, seed: int, remote: bool, resources: dict,
                   valid_users: int = DEFAULTS.valid_users) -> tuple[pd.DataFrame, dict[str, tuple[dict, dict]]]:
    """The best plain student of each dim (rows) and their weights ``{trial_id: (arch, state)}``."""
    lo, hi = space.lr_range()
    lrs = sorted({float(x) for x in np.geomspace(lo, hi, 3)})
    train_kwargs = {key: space.fixed.get(key, default) for key, default in TRAIN_DEFAULTS.items()}
    jobs = [(dim, lr) for dim in space.dims() for lr in lrs]
    threads = max(1, int(resources.get("cpu", 1)))
    if remote:
        import ray

        task = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))(_plain_task)
        split_ref = ray.put(split)
        rows = ray.get([task.remote(split_ref, d, lr, train_kwargs, k, seed, threads, valid_users)
                        for d, lr in jobs])
    else:
        rows = [_plain_task(split, d, lr, train_kwargs, k, seed, threads, valid_users) for d, lr in jobs]
    df = pd.DataFrame(rows)
    best = df.loc[df.groupby("dim")[f"ndcg@{k}"].idxmax()].sort_values("dim").reset_index(drop=True)
    weights = {plain_id(r["dim"]): (r["arch"], r["state"]) for _, r in best.iterrows()}
    best = best.drop(columns=["state", "arch"])
    best.insert(0, "trial_id", [plain_id(d) for d in best["dim"]])
    best.insert(1, "kind", PLAIN)
    best.insert(2, "model", [f"plain student dim={d}" for d in best["dim"]])
    best.insert(3, "loss", "bpr")
    best.insert(4, "precision", "fp32")
    return best, weights


def behind_plain(trials: pd.DataFrame, plain: pd.DataFrame, metrics: list[str]) -> pd.Series:
    """True for each trial that does not beat the plain student of its dim in every one of ``metrics``
    (validation figures, higher is better): a plain student as good in one of them beats it there, and
    the distilled student is not recommended. A trial whose dim has no plain student is not behind."""
    by_dim = plain.set_index(plain["dim"].astype(int))
    behind = pd.Series(False, index=trials.index)
    for m in metrics:
        reference = trials["dim"].astype(int).map(by_dim[m])
        behind |= reference.notna() & ~(trials[m] > reference)
    return behind


def test_scores(model, split: Split, k: int) -> dict:
    """``model`` scored once on the test split (train and validation items masked), ``test_``-prefixed."""
    return {f"test_{m}": v for m, v in evaluate(model, [split.train, split.valid], split.test, ks=(k,)).items()}


def teacher_row(knowledge: TeacherKnowledge, split: Split, k: int) -> dict:
    """The teacher's validation figures and its single test scoring."""
    teacher = knowledge.model()
    return {"trial_id": TEACHER, "kind": TEACHER, "model": f"teacher dim={teacher.dim}", "loss": "bpr",
            "dim": teacher.dim, "precision": "fp32", f"recall@{k}": knowledge.valid_metrics.get(f"recall@{k}"),
            f"ndcg@{k}": knowledge.valid_metrics.get(f"ndcg@{k}"), **test_scores(teacher, split, k),
            "params": teacher.n_params(), "bytes": teacher.n_bytes()}
