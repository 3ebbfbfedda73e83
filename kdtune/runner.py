"""Drive one search on Ray: teacher once (a Ray task, cached on disk), the Tuner, then the export."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from kdtune import export
from kdtune.cli import DataArgs, UsageError
from kdtune.data import Interactions, Split
from kdtune.space import SearchSpace
from kdtune.teacher import (
    TeacherKnowledge,
    TeacherSettings,
    cache_path,
    load_cached,
    save,
    settings_from_record,
    train_teacher,
)
from kdtune.trainable import LatencyBench, TrialSettings, train_student
from kdtune.tunestate import StateSnapshot, prepare_resume

log = logging.getLogger("kdtune")


def _teacher_task(split: Split, settings: TeacherSettings, threads: int) -> TeacherKnowledge:
    # The teacher trains alone, before any trial: it may use every core it was given.
    torch.set_num_threads(threads)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return train_teacher(split, settings, progress=False, device=device)


def teacher_once(split_ref, split: Split, settings: TeacherSettings, cache_dir: str) -> TeacherKnowledge:
    """The cached teacher, or one trained as a Ray task on a GPU node when the cluster has a GPU."""
    path = cache_path(split, settings, cache_dir)
    knowledge = load_cached(path)
    if knowledge is not None:
        return knowledge
    resources = ray.cluster_resources()
    gpus = 1 if resources.get("GPU", 0) >= 1 else 0
    cpus = max(1, min(8, int(resources.get("CPU", 1))))
    log.info("training the teacher (dim %d) as a Ray task on %d CPU(s), %d GPU", settings.dim, cpus, gpus)
    t0 = time.perf_counter()
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_teacher_task)
    knowledge = ray.get(task.remote(split_ref, settings, cpus))
    save(knowledge, path)
    knowledge.load_seconds = time.perf_counter() - t0
    return knowledge


def resources_per_trial(args) -> dict:
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    elif gpus > 0 and ray.cluster_resources().get("GPU", 0) < gpus:
        raise UsageError(f"--gpus-per-trial {gpus}: the cluster has no GPU (resources: {ray.cluster_resources()})")
    return {"cpu": args.cpus_per_trial, "gpu": gpus}


def default_concurrency(res: dict) -> int:
    total = ray.cluster_resources()
    limits = [int(total.get("CPU", 1) // res["cpu"])]
    if res["gpu"] > 0:
        limits.append(int(total.get("GPU", 0) // res["gpu"]))
    return max(1, min(limits))


def execute(
    run_dir: Path,
    run: dict,
    data: Interactions,
    split: Split,
    data_args: DataArgs,
    args,
    space: SearchSpace,
    resumed: bool,
) -> None:
    """Teacher, latency of each architecture in isolation, the Tuner (new or restored), then export."""
    import optuna

    from kdtune.search import EXPERIMENT, make_sampler, write_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    timings = run.setdefault("timings", {})
    k = data_args.k
    catalog = args.catalog_size or data.n_items
    res = resources_per_trial(args)
    run["resources_per_trial"] = res

    t0 = time.perf_counter()
    split_ref = ray.put(split)
    if "teacher" in run:  # a resumed run keeps the teacher it started with, whatever today's defaults
        settings = settings_from_record(run["teacher"]["settings"])
    else:
        settings = TeacherSettings(dim=args.teacher_dim, epochs=args.teacher_epochs, k=k, seed=data_args.seed)
    knowledge = teacher_once(split_ref, split, settings, data_args.cache_dir)
    timings["teacher_s"] = round(time.perf_counter() - t0, 3)
    run["teacher"] = knowledge.summary()
    print(f"Teacher: {'loaded from cache' if knowledge.from_cache else 'trained'} in {timings['teacher_s']:.1f} s "
          f"(valid ndcg@{k} {knowledge.valid_metrics.get(f'ndcg@{k}', float('nan')):.4f})", flush=True)

    # Every architecture in the space is timed now, before any trial runs, so its latency is measured
    # in isolation; trials then read the figure from the actor's cache.
    t0 = time.perf_counter()
    bench = LatencyBench.options(num_gpus=0.01 if args.latency_device == "cuda" else 0).remote(
        catalog, k, args.latency_device, args.latency_threads)
    dims = sorted(set(space.dims()) | {args.teacher_dim})
    profiles = ray.get([bench.profile.remote(d) for d in dims])
    run["latency_prebench"] = {str(d): p["latency_ms"] for d, p in zip(dims, profiles, strict=True)}
    timings["latency_prebench_s"] = round(time.perf_counter() - t0, 3)

    trial_settings = TrialSettings(k=k, seed=data_args.seed, cpus_per_trial=args.cpus_per_trial,
                                   catalog_size=catalog, latency_device=args.latency_device,
                                   latency_threads=args.latency_threads)
    # with_parameters puts the teacher and the split in the object store once for all trials.
    trainable = tune.with_resources(
        tune.with_parameters(train_student, knowledge=knowledge, split=split_ref, bench=bench,
                             settings=trial_settings),
        res,
    )
    storage = args.storage or str(run_dir / "ray")
    run["experiment_path"] = f"{storage.rstrip('/')}/{EXPERIMENT}"
    write_run(run_dir, run)
    t0 = time.perf_counter()
    StateSnapshot.activate(run_dir)
    if resumed and tune.Tuner.can_restore(run["experiment_path"]):
        print(f"Resuming the search in {run['experiment_path']}", flush=True)
        prepare_resume(run["experiment_path"], run_dir)
        tuner = tune.Tuner.restore(run["experiment_path"], trainable=trainable, resume_errored=False)
    else:
        concurrency = args.concurrency or default_concurrency(res)
        searcher = OptunaSearch(
            space=space.define_by_run, metric=[f"recall@{k}", "latency_ms"], mode=["max", "min"],
            sampler=make_sampler(args.sampler, data_args.seed, args.trials),
        )
        print(f"Searching {args.trials} trials, {concurrency} at a time, {res} each", flush=True)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                        num_samples=args.trials, reuse_actors=True),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=storage, verbose=1,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[StateSnapshot()],
            ),
        )
    tuner.fit()
    timings["trials_s"] = round(timings.get("trials_s", 0) + time.perf_counter() - t0, 3)
    write_run(run_dir, run)

    t0 = time.perf_counter()
    result = export.export_run(run_dir, run, data, split, knowledge, space, remote=True)
    timings["export_s"] = round(time.perf_counter() - t0, 3)
    run["exported"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_run(run_dir, run)
    print(result.table, flush=True)
    if run["status"] != "finished":
        print(f"\nThe search stopped early ({run['trial_counts']}); continue it with: "
              f"python -m kdtune.search --resume {run_dir}", flush=True)
    print(f"\nFiles in {run_dir}: {', '.join(sorted(p.name for p in result.files))}", flush=True)
