"""The run's plain students: a plain (BPR, no teacher) student of every size of the space.

Plain students are candidates of the front like the distilled ones: a distilled student that a plain student
of its size beats must never be recommended (:func:`kdtune.report.front.behind_plain`). Each plain student
gets the best of three learning rates across the space's range (chosen on validation), so distillation is
compared with a student that had a fair chance too: on the trials' epoch budget, but without early stopping
(it runs the whole budget and keeps its best epoch) and with the teacher's larger validation sample
(:func:`plain_signal_users`), as a plain student stopped early by a noisy signal flatters every distilled
one (BENCHMARKS.md: on CiteULike-a, dim 16, test NDCG@20 0.0652 with the trials' patience and 256-user sample
against 0.0730 over the same 40 epochs). Their weights are kept, so a plain student on the front ships like any
other.

A search starts them as Ray tasks beside its trials (:func:`start_plain_students`, before the Tuner runs),
so they use cores the trials leave free and the export only collects, re-scores and writes
(:func:`run_baselines`). A re-export trains them here, one after another, with the same rows for the same
seed (each task seeds its own generators).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from kdtune.config import DEFAULTS, TRAIN_DEFAULTS, TeacherSettings
from kdtune.data.interactions import Split
from kdtune.model.mf import MF
from kdtune.model.store import TeacherKnowledge, save_model
from kdtune.report.front import PLAIN, TEACHER
from kdtune.search.memory import largest, peak_memory
from kdtune.search.run import BASELINES_FILE, Run
from kdtune.search.space import SearchSpace
from kdtune.serving.arch import DEFAULT_INDEX
from kdtune.serving.served import ServedStudent
from kdtune.train.evaluate import evaluate, test_scores
from kdtune.train.fit import distill

log = logging.getLogger("kdtune")


def plain_id(dim: int) -> str:
    """The trial id a plain student of ``dim`` has in the run's tables and study."""
    return f"plain-dim{int(dim)}"


def _plain_task(split: Split, dim: int, lr: float, train_kwargs: dict, k: int, seed: int, threads: int,
                valid_users: int, catalog_size: int | None = None) -> dict:
    import ray
    import torch

    torch.set_num_threads(max(1, threads))
    device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    model, fit = distill(None, None, split.train, split.valid, dim, "bpr", seed=seed, lr=lr, k=k,
                         device=device, valid_users=plain_signal_users(valid_users), rescore_best=False,
                         **train_kwargs)
    # Scored like a trial: through the index it is served from, at the run's catalogue, over all validation users.
    served = ServedStudent.from_model(model.cpu(), DEFAULT_INDEX, seed=seed, catalog_size=catalog_size)
    valid = evaluate(served.scorer(split.train, k), split.train, split.valid, ks=(k,))
    return {"dim": dim, "lr": lr, f"recall@{k}": valid[f"recall@{k}"], f"ndcg@{k}": valid[f"ndcg@{k}"],
            **_test_scores(served, split, k), "params": model.n_params(), "bytes": served.n_bytes(),
            "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
            "state": {name: t.clone() for name, t in model.state_dict().items()}, "arch": model.arch(),
            **peak_memory(device)}


def _test_scores(served: ServedStudent, split: Split, k: int) -> dict:
    """A served model scored once on test through its index (training and validation items excluded)."""
    return test_scores(served.scorer([split.train, split.valid], k), split, k)


def plain_signal_users(valid_users: int) -> int:
    """The validation sample behind a plain student's choice of its best epoch: at least the teacher's
    (0, every validation user, stays 0)."""
    return 0 if valid_users == 0 else max(int(valid_users), TeacherSettings.valid_users)


def plain_jobs(space: SearchSpace) -> tuple[list[tuple[int, float]], dict]:
    """Every ``(dim, lr)`` a run trains a plain student for, and the trainer settings they share: the space's,
    with a patience as long as the epoch budget (no early stop: the best epoch is kept all the same)."""
    lo, hi = space.lr_range()
    lrs = sorted({float(x) for x in np.geomspace(lo, hi, 3)})
    train_kwargs = {key: space.fixed.get(key, default) for key, default in TRAIN_DEFAULTS.items()}
    train_kwargs["patience"] = train_kwargs["epochs"]
    return [(dim, lr) for dim in space.dims() for lr in lrs], train_kwargs


class PendingPlain:
    """Plain students training as Ray tasks (started by :func:`start_plain_students`); :meth:`rows` waits."""

    def __init__(self, jobs: list[tuple[int, float]], refs: list):
        self.jobs, self.refs = jobs, refs

    def rows(self) -> list[dict]:
        """Each finished task's row; a task that failed (out of memory, a lost node) is left out with a
        one-line warning, as an errored trial is: the front is then taken without that student."""
        import ray

        rows = []
        for (dim, lr), ref in zip(self.jobs, self.refs, strict=True):
            try:
                rows.append(ray.get(ref))
            except (ray.exceptions.RayError, MemoryError) as exc:
                reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
                log.warning("plain student dim=%d lr=%g failed: %s", dim, lr, reason)
        return rows


def start_plain_students(split_ref, space: SearchSpace, k: int, seed: int, resources: dict,
                         valid_users: int = DEFAULTS.valid_users, catalog_size: int | None = None) -> PendingPlain:
    """Start every plain student as a Ray task of one trial's size (``resources``), to run beside the trials."""
    import ray

    jobs, train_kwargs = plain_jobs(space)
    threads = max(1, int(resources.get("cpu", 1)))
    task = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))(_plain_task)
    refs = [task.remote(split_ref, dim, lr, train_kwargs, k, seed, threads, valid_users, catalog_size)
            for dim, lr in jobs]
    return PendingPlain(jobs, refs)


def serial_plain_rows(split: Split, space: SearchSpace, k: int, seed: int, threads: int = 1,
                      valid_users: int = DEFAULTS.valid_users, catalog_size: int | None = None) -> list[dict]:
    """The same rows as :func:`start_plain_students`, trained here one after another."""
    jobs, train_kwargs = plain_jobs(space)
    return [_plain_task(split, dim, lr, train_kwargs, k, seed, threads, valid_users, catalog_size)
            for dim, lr in jobs]


def best_plain(rows: list[dict], k: int) -> tuple[pd.DataFrame, dict[str, tuple[dict, dict]]]:
    """The best plain student of each dim by validation NDCG@k (rows) and their weights
    ``{trial_id: (arch, state)}``."""
    if not rows:
        return pd.DataFrame(columns=["trial_id", "kind", "model", "loss", "index", "dim"]), {}
    df = pd.DataFrame(rows).drop(columns=["peak_rss_gb", "peak_gpu_gb"], errors="ignore")
    best = df.loc[df.groupby("dim")[f"ndcg@{k}"].idxmax()].sort_values("dim").reset_index(drop=True)
    weights = {plain_id(r["dim"]): (r["arch"], r["state"]) for _, r in best.iterrows()}
    best = best.drop(columns=["state", "arch"])
    best.insert(0, "trial_id", [plain_id(d) for d in best["dim"]])
    best.insert(1, "kind", PLAIN)
    best.insert(2, "model", [f"plain student dim={d}" for d in best["dim"]])
    best.insert(3, "loss", "bpr")
    best.insert(4, "index", DEFAULT_INDEX)
    return best, weights


def teacher_row(knowledge: TeacherKnowledge, split: Split, k: int, catalog_size: int | None = None) -> dict:
    """The teacher scored like a student: on validation (all users) and once on test, through ``flat`` at
    the run's catalogue."""
    teacher = knowledge.model()
    served = ServedStudent.from_model(teacher, DEFAULT_INDEX, catalog_size=catalog_size)
    valid = evaluate(served.scorer(split.train, k), split.train, split.valid, ks=(k,))
    return {"trial_id": TEACHER, "kind": TEACHER, "model": f"teacher dim={teacher.dim}", "loss": "bpr",
            "dim": teacher.dim, "index": DEFAULT_INDEX, f"recall@{k}": valid[f"recall@{k}"],
            f"ndcg@{k}": valid[f"ndcg@{k}"], **_test_scores(served, split, k),
            "params": teacher.n_params(), "bytes": served.n_bytes()}


def baselines_done(run: Run) -> bool:
    """Whether the run has its baselines already (a resumed or re-exported run): nothing to train."""
    students = run.dir / "students"
    return (run.dir / BASELINES_FILE).exists() and all((students / plain_id(d)).is_dir() for d in run.space.dims())


def run_baselines(run: Run, knowledge: TeacherKnowledge, pending: PendingPlain | None = None) -> pd.DataFrame:
    """The teacher and the plain students (test scores, weights in ``students/``), computed once per run:
    collected from ``pending`` (started during the search), else trained here."""
    if baselines_done(run):
        return pd.read_csv(run.dir / BASELINES_FILE)
    if pending is not None:
        rows = pending.rows()
    else:
        rows = serial_plain_rows(run.split, run.space, run.data.k, run.data.seed,
                                 int((run.resources_per_trial or {}).get("cpu", 1)), run.search.valid_users,
                                 run.search.catalog_size)
    run.peak_memory = {**(run.peak_memory or {}), "plain_rss_gb": largest(rows, "peak_rss_gb")}
    plain, weights = best_plain(rows, run.data.k)
    for trial_id, (arch, state) in weights.items():
        save_model(MF.from_state(arch, state), run.dir / "students" / trial_id)
    teacher = teacher_row(knowledge, run.split, run.data.k, run.search.catalog_size)
    baselines = pd.concat([pd.DataFrame([teacher]), plain], ignore_index=True)
    baselines.to_csv(run.dir / BASELINES_FILE, index=False)
    return baselines
