"""The run's plain students: a plain (BPR, no teacher) student of every size of the space.

Plain students are candidates of the front like the distilled ones: a distilled student that a plain student
of its size beats must never be recommended (:func:`kdtune.report.front.behind_plain`). Each plain student
gets the best of three
learning rates across the space's range (chosen on validation), so distillation is compared with a student
that had a fair chance too. Their weights are kept, so a plain student on the front ships like any other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdtune.config import DEFAULTS, TRAIN_DEFAULTS
from kdtune.data.interactions import Split
from kdtune.model.mf import MF
from kdtune.model.store import TeacherKnowledge, save_model
from kdtune.report.front import PLAIN, TEACHER
from kdtune.search.run import BASELINES_FILE, Run
from kdtune.search.space import SearchSpace
from kdtune.train.evaluate import test_scores
from kdtune.train.fit import distill


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


def teacher_row(knowledge: TeacherKnowledge, split: Split, k: int) -> dict:
    """The teacher's validation figures and its single test scoring."""
    teacher = knowledge.model()
    return {"trial_id": TEACHER, "kind": TEACHER, "model": f"teacher dim={teacher.dim}", "loss": "bpr",
            "dim": teacher.dim, "precision": "fp32", f"recall@{k}": knowledge.valid_metrics.get(f"recall@{k}"),
            f"ndcg@{k}": knowledge.valid_metrics.get(f"ndcg@{k}"), **test_scores(teacher, split, k),
            "params": teacher.n_params(), "bytes": teacher.n_bytes()}


def run_baselines(run: Run, knowledge: TeacherKnowledge, remote: bool) -> pd.DataFrame:
    """The teacher and the plain students (test scores, weights in ``students/``), computed once per run."""
    students = run.dir / "students"
    path = run.dir / BASELINES_FILE
    if path.exists() and all((students / plain_id(d)).is_dir() for d in run.space.dims()):
        return pd.read_csv(path)
    plain, weights = plain_students(run.split, run.space, run.data.k, run.data.seed, remote,
                                    run.resources_per_trial or {"cpu": 1}, run.search.valid_users)
    for trial_id, (arch, state) in weights.items():
        save_model(MF.from_state(arch, state), students / trial_id)
    baselines = pd.concat([pd.DataFrame([teacher_row(knowledge, run.split, run.data.k)]), plain], ignore_index=True)
    baselines.to_csv(path, index=False)
    return baselines
