"""Drive one search on Ray: teacher once (a Ray task, cached on disk), latency once per architecture,
the Tuner (with a Pareto-aware scheduler), latency again, then the export."""

from __future__ import annotations

import logging
import time

import ray
import torch
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from kdtune.config import DEFAULTS, SearchSettings, TeacherSettings, TrialSettings
from kdtune.data.interactions import Split
from kdtune.losses import LOSSES
from kdtune.model.store import TeacherKnowledge
from kdtune.report.export import export_run
from kdtune.search.baselines import baselines_done, run_baselines, start_plain_students
from kdtune.search.cluster import gpu_memory, node_sizes, plan_resources, trial_gpu_bytes
from kdtune.search.memory import describe, largest, peak_memory
from kdtune.search.run import EXPERIMENT, FINISHED, SCHEDULER_STATE, Run
from kdtune.search.samplers import make_sampler
from kdtune.search.scheduler import ParetoASHA
from kdtune.search.space import SearchSpace
from kdtune.search.trainable import train_student
from kdtune.search.tunestate import StateSnapshot, prepare_resume, saved_trial_ids
from kdtune.serving.plan import LatencyPlan
from kdtune.train.teacher import get_teacher, train_teacher

log = logging.getLogger("kdtune")


def run_search(run: Run, resumed: bool) -> str:
    """Teacher, latency of every architecture, the Tuner (new or restored), latency again, then the export.
    Returns the summary to show once Ray is quiet."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    nodes = node_sizes()  # the cluster as this run sees it, asked once
    res = plan_run_resources(run, nodes)

    t0 = time.perf_counter()
    split_ref = ray.put(run.split)
    knowledge = run_teacher(run, split_ref, nodes)
    run.timings.setdefault("teacher_s", round(time.perf_counter() - t0, 3))
    k = run.data.k
    print(f"Teacher: {'loaded' if knowledge.from_cache else 'trained'} in {time.perf_counter() - t0:.1f} s "
          f"(valid ndcg@{k} {knowledge.valid_metrics.get(f'ndcg@{k}', float('nan')):.4f})", flush=True)

    # Every architecture of the space (and the teacher) is timed together, in interleaved rounds, before
    # any trial runs; a resumed run keeps the figures it started with. Trials read them from the settings.
    plan = run.latency_plan(knowledge)
    run.latency = run.latency or plan.record()
    if "before" not in run.latency:
        measure_latency(run, plan, "before")
    trial_settings = TrialSettings(k=k, seed=run.data.seed, cpus_per_trial=run.search.cpus_per_trial,
                                   latency=run.latency["before"]["profiles"], valid_users=run.search.valid_users,
                                   catalog_size=run.catalog_size)
    # with_parameters puts the teacher and the split in the object store once for all trials.
    trainable = tune.with_resources(
        tune.with_parameters(train_student, knowledge=knowledge, split=split_ref, settings=trial_settings), res)
    run.experiment()
    run.save()
    # The plain students train as tasks beside the trials (on the cores the trials leave free), not after them.
    pending = None if baselines_done(run) else start_plain_students(
        split_ref, run.space, k, run.data.seed, res, run.search.valid_users, run.catalog_size)

    t0 = time.perf_counter()
    tuner = restored_tuner(run, trainable) if resumed else None
    (tuner or new_tuner(run, trainable, res)).fit()
    run.timings["trials_s"] = round(run.timings.get("trials_s", 0) + time.perf_counter() - t0, 3)
    if (run.dir / SCHEDULER_STATE).exists():
        run.scheduler = {"name": run.search.scheduler, "state_file": SCHEDULER_STATE}
    t0 = time.perf_counter()
    baselines = run_baselines(run, knowledge, pending)  # plain students still running wait here, before latency
    run.timings["plain_wait_s"] = round(time.perf_counter() - t0, 3)
    # The same architectures timed the same way again, now that nothing runs: the front uses these.
    measure_latency(run, plan, "after")
    run.save()
    return export(run, knowledge, baselines)


def export(run: Run, knowledge: TeacherKnowledge, baselines) -> str:
    """Export the run, record its timing and peak memory; returns the summary."""
    t0 = time.perf_counter()
    result = export_run(run, knowledge, baselines)
    run.timings["export_s"] = round(time.perf_counter() - t0, 3)
    run.exported = time.strftime("%Y-%m-%dT%H:%M:%S")
    trials = result.trials.to_dict("records")
    run.peak_memory = {**(run.peak_memory or {}), "driver_rss_gb": peak_memory()["peak_rss_gb"],
                       "trial_rss_gb": largest(trials, "peak_rss_gb"), "trial_gpu_gb": largest(trials, "peak_gpu_gb")}
    run.save()
    plan = run.resource_plan
    summary = [result.table, f"\nResources: {plan['per_trial']} per trial, {plan['trials_at_once']} at a time "
                             f"({plan['reason']})", describe(run.peak_memory)]
    if run.status != FINISHED:
        summary.append(f"\nThe search stopped early ({run.trial_counts}); continue it with: "
                       f"python -m kdtune.search --resume {run.dir}")
    summary.append(f"\nFiles in {run.dir}: {', '.join(sorted(p.name for p in result.files))}")
    return "\n".join(summary)


def plan_run_resources(run: Run, nodes: list[dict]) -> dict:
    """Each trial's resources (:func:`~kdtune.search.cluster.plan_resources`: a GPU node filled to its CPUs,
    bounded by the trials' GPU memory), recorded in the run with the nodes it was planned for."""
    trial_bytes = None
    if run.search.gpus_per_trial is None and any(n["GPU"] >= 1 for n in nodes):
        nodes = gpu_memory(nodes)
        train = run.split.train
        trial_bytes = trial_gpu_bytes(train.n_users, train.n_items, train.nnz, max(run.space.dims()),
                                      run.search.teacher_dim, run.search.teacher_topn)
    run.resource_plan = plan_resources(run.search, nodes, trial_bytes)
    run.resources_per_trial, run.nodes = run.resource_plan["per_trial"], nodes
    return run.resources_per_trial


def run_teacher(run: Run, split_ref, nodes: list[dict]) -> TeacherKnowledge:
    """The run's teacher: a resumed run's own (exactly the one it started with, or refused); else the
    cached one, or one trained as a Ray task sized to fit the largest node (on a GPU node when the
    cluster has one). Kept in the run."""
    knowledge = run.own_teacher()
    if knowledge is None:
        gpus = 1 if max(n["GPU"] for n in nodes) >= 1 else 0
        # Never more CPUs than one node has: a task cannot span nodes, and a larger request waits forever.
        cpus = max(1, min(8, int(max(n["CPU"] for n in nodes if n["GPU"] >= gpus))))

        def train_as_task(_split: Split, settings: TeacherSettings) -> TeacherKnowledge:
            log.info("training the teacher (dim %d) as a Ray task on %d CPU(s), %d GPU", settings.dim, cpus, gpus)
            task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_teacher_task)
            trained, peak = ray.get(task.remote(split_ref, settings, cpus))
            run.peak_memory = {**(run.peak_memory or {}), "teacher_rss_gb": peak["peak_rss_gb"],
                               "teacher_gpu_gb": peak.get("peak_gpu_gb")}
            return trained

        knowledge = get_teacher(run.split, run.search.teacher(run.data), cache_dir=run.data.cache_dir,
                                train=train_as_task)
    run.keep_teacher(knowledge)
    return knowledge


def _teacher_task(split: Split, settings: TeacherSettings, threads: int) -> tuple[TeacherKnowledge, dict]:
    # The teacher trains alone, before any trial: it may use every core it was given.
    torch.set_num_threads(threads)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return train_teacher(split, settings, progress=False, device=device), peak_memory(device)


def measure_latency(run: Run, plan: LatencyPlan, stage: str) -> None:
    """Time every architecture of ``plan`` now (``before`` or ``after`` the trials) into the run."""
    t0 = time.perf_counter()
    run.latency[stage] = plan.measure()
    run.timings[f"latency_{stage}_s"] = round(time.perf_counter() - t0, 3)
    for line in run.latency[stage].get("contradictions", []):
        print(f"Latency warning: {line}", flush=True)


def make_scheduler(search: SearchSettings, space: SearchSpace, run: Run, k: int) -> ParetoASHA | None:
    """The Pareto-aware successive-halving scheduler (``--scheduler pareto-asha``), or None."""
    if search.scheduler == "none":
        return None
    epochs = int(space.fixed.get("epochs", DEFAULTS.epochs))
    # Rungs lie below the epoch budget; a trial that trains its whole budget ends by itself, so that its
    # final report (best epoch over all validation users, with its weights) always arrives.
    return ParetoASHA(
        objectives={f"recall@{k}": "max", "latency_ms": "min"}, time_attr="epoch",
        grace_period=min(search.grace_epochs, epochs), reduction_factor=search.reduction_factor, max_t=epochs,
        state_path=str(run.dir / SCHEDULER_STATE), final_key="final", stop_at_max_t=False,
        group_by=None if search.rung_groups == "none" else search.rung_groups,
    )


def new_tuner(run: Run, trainable, res: dict) -> tune.Tuner:
    """A Tuner for a new search: Optuna proposes, the scheduler stops, the snapshot keeps Tune's state."""
    search, k = run.search, run.data.k
    concurrency = search.concurrency or run.resource_plan["trials_at_once"]
    points = run.space.warm_start_points({n: d.params for n, d in LOSSES.items()}) if search.warm_start else []
    searcher = OptunaSearch(space=run.space.define_by_run, metric=[f"recall@{k}", "latency_ms"], mode=["max", "min"],
                            sampler=make_sampler(search.sampler, run.data.seed, search.trials),
                            points_to_evaluate=points[:search.trials] or None)
    print(f"Searching {search.trials} trials, {concurrency} at a time, {res} each, scheduler {search.scheduler}",
          flush=True)
    storage = run.experiment().rsplit("/", 1)[0]
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                    scheduler=make_scheduler(search, run.space, run, k), num_samples=search.trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=storage, verbose=1,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[StateSnapshot(run.dir)],
        ),
    )


def restored_tuner(run: Run, trainable) -> tune.Tuner | None:
    """The interrupted search's Tuner, restored from intact state and pointed at the run's present place;
    None when Tune never saved one (a new Tuner then starts the search)."""
    exp_path = run.experiment()
    if not tune.Tuner.can_restore(exp_path):
        return None
    print(f"Resuming the search in {exp_path}", flush=True)
    prepare_resume(exp_path, run.dir)
    tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=False)
    # Tune keeps no public handle on what it unpickled: the scheduler and callbacks of the restored Tuner.
    internal = tuner._local_tuner
    scheduler = internal._tune_config.scheduler
    if isinstance(scheduler, ParetoASHA):
        # the run may have moved since its scheduler was pickled; trials Tune never saved are forgotten
        scheduler.relocate(run.dir, saved_trial_ids(exp_path))
    for callback in internal.get_run_config().callbacks or []:
        if isinstance(callback, StateSnapshot):
            callback.retarget(run.dir)
    return tuner
