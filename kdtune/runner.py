"""Drive one search on Ray: teacher once (a Ray task, cached on disk), latency once per architecture,
the Tuner (with a Pareto-aware scheduler), latency again, then the export."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from kdtune import export, latency_plan, rundir
from kdtune.cli import DataArgs
from kdtune.cluster import fit_to_nodes, node_sizes
from kdtune.config import DEFAULTS
from kdtune.data import Interactions, Split
from kdtune.samplers import make_sampler
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
from kdtune.trainable import TrialSettings, train_student
from kdtune.tunestate import StateSnapshot, prepare_resume, saved_trial_ids

log = logging.getLogger("kdtune")

SCHEDULER_STATE = "scheduler-state.json"


def _teacher_task(split: Split, settings: TeacherSettings, threads: int) -> TeacherKnowledge:
    # The teacher trains alone, before any trial: it may use every core it was given.
    torch.set_num_threads(threads)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return train_teacher(split, settings, progress=False, device=device)


def teacher_once(split_ref, split: Split, settings: TeacherSettings, cache_dir: str,
                 nodes: list[dict]) -> TeacherKnowledge:
    """The cached teacher, or one trained as a Ray task sized to fit the largest of ``nodes`` (on a GPU
    node when the cluster has one)."""
    path = cache_path(split, settings, cache_dir)
    knowledge = load_cached(path)
    if knowledge is not None:
        return knowledge
    gpus = 1 if max(n["GPU"] for n in nodes) >= 1 else 0
    # Never more CPUs than one node has: a task cannot span nodes, and a larger request waits forever.
    cpus = max(1, min(8, int(max(n["CPU"] for n in nodes if n["GPU"] >= gpus))))
    log.info("training the teacher (dim %d) as a Ray task on %d CPU(s), %d GPU", settings.dim, cpus, gpus)
    t0 = time.perf_counter()
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_teacher_task)
    knowledge = ray.get(task.remote(split_ref, settings, cpus))
    try:
        save(knowledge, path)
    except OSError as exc:  # the cache only saves time; the run keeps its own copy of the teacher
        log.warning("could not cache the teacher in %s: %s", path, exc)
    knowledge.load_seconds = time.perf_counter() - t0
    return knowledge


def resources_per_trial(args, nodes: list[dict]) -> dict:
    """CPU/GPU share of one trial, checked against the nodes (a request no node can hold fails now)."""
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if sum(node["GPU"] for node in nodes) >= 1 else 0.0
    res = {"cpu": args.cpus_per_trial, "gpu": gpus}
    fit_to_nodes({"CPU": res["cpu"], "GPU": res["gpu"]}, "--cpus-per-trial / --gpus-per-trial", nodes)
    return res


def default_concurrency(res: dict, nodes: list[dict]) -> int:
    """Trials that fit at once, node by node (a trial cannot span nodes)."""
    total = 0
    for node in nodes:
        fits = int(node["CPU"] // res["cpu"]) if res["cpu"] > 0 else 10**6
        if res["gpu"] > 0:
            fits = min(fits, int(node["GPU"] // res["gpu"]))
        total += fits
    return max(1, total)


def make_scheduler(args, space: SearchSpace, run_dir: Path, k: int):
    """The Pareto-aware successive-halving scheduler (``--scheduler pareto-asha``), or None."""
    if args.scheduler == "none":
        return None
    from kdtune.schedulers import ParetoASHA

    epochs = int(space.fixed.get("epochs", DEFAULTS.epochs))
    # Rungs lie below the epoch budget; a trial that trains its whole budget ends by itself, so that its
    # final report (best epoch over all validation users, with its weights) always arrives.
    return ParetoASHA(
        objectives={f"recall@{k}": "max", "latency_ms": "min"}, time_attr="epoch",
        grace_period=min(args.grace_epochs, epochs), reduction_factor=args.reduction_factor, max_t=epochs,
        state_path=str(run_dir / SCHEDULER_STATE), final_key="final", stop_at_max_t=False,
    )


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
    """Teacher, latency of every architecture, the Tuner (new or restored), latency again, then export."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    timings = run.setdefault("timings", {})
    k = data_args.k
    catalog = args.catalog_size or data.n_items
    nodes = node_sizes()  # the cluster as this run sees it, asked once
    res = resources_per_trial(args, nodes)
    run["resources_per_trial"] = res
    run["nodes"] = nodes

    t0 = time.perf_counter()
    split_ref = ray.put(split)
    # A resumed run distils from exactly the teacher it started with (its own copy, or refused).
    knowledge = rundir.run_teacher(run_dir, run, data_args.cache_dir)
    if knowledge is None:
        if "teacher" in run:  # recorded before teachers were kept in the run: same settings as then
            settings = settings_from_record(run["teacher"]["settings"])
        else:
            settings = TeacherSettings(dim=args.teacher_dim, epochs=args.teacher_epochs, k=k, seed=data_args.seed)
        knowledge = teacher_once(split_ref, split, settings, data_args.cache_dir, nodes)
    rundir.keep_teacher(run_dir, run, knowledge)
    timings.setdefault("teacher_s", round(time.perf_counter() - t0, 3))
    print(f"Teacher: {'loaded' if knowledge.from_cache else 'trained'} in {time.perf_counter() - t0:.1f} s "
          f"(valid ndcg@{k} {knowledge.valid_metrics.get(f'ndcg@{k}', float('nan')):.4f})", flush=True)

    # Every architecture of the space (and the teacher) is timed together, in interleaved rounds, before
    # any trial runs; a resumed run keeps the figures it started with. Trials read them from the settings.
    plan = latency_plan.LatencyPlan(space, knowledge.arch["dim"], catalog, k, args.latency_device,
                                    args.latency_threads)
    lat = run.setdefault("latency", plan.record())
    if "before" not in lat:
        t0 = time.perf_counter()
        lat["before"] = plan.measure()
        timings["latency_before_s"] = round(time.perf_counter() - t0, 3)
        _say_contradictions(lat["before"])

    trial_settings = TrialSettings(k=k, seed=data_args.seed, cpus_per_trial=args.cpus_per_trial,
                                   latency=lat["before"]["profiles"], valid_users=args.valid_users)
    # with_parameters puts the teacher and the split in the object store once for all trials.
    trainable = tune.with_resources(
        tune.with_parameters(train_student, knowledge=knowledge, split=split_ref, settings=trial_settings),
        res,
    )
    storage = args.storage or str(run_dir / "ray")
    exp_path = f"{storage.rstrip('/')}/{rundir.EXPERIMENT}"
    run["experiment_path"] = rundir.relative(run_dir, exp_path)
    rundir.write_run(run_dir, run)
    t0 = time.perf_counter()
    StateSnapshot.activate(run_dir)
    if resumed and tune.Tuner.can_restore(exp_path):
        print(f"Resuming the search in {exp_path}", flush=True)
        prepare_resume(exp_path, run_dir)
        from kdtune.schedulers import ParetoASHA

        # the run may have moved since its scheduler was pickled; trials Tune never saved are forgotten
        ParetoASHA.relocate(run_dir, saved_trial_ids(exp_path))
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=False)
    else:
        concurrency = args.concurrency or default_concurrency(res, nodes)
        searcher = OptunaSearch(
            space=space.define_by_run, metric=[f"recall@{k}", "latency_ms"], mode=["max", "min"],
            sampler=make_sampler(args.sampler, data_args.seed, args.trials),
        )
        scheduler = make_scheduler(args, space, run_dir, k)
        print(f"Searching {args.trials} trials, {concurrency} at a time, {res} each, scheduler "
              f"{args.scheduler}", flush=True)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                        scheduler=scheduler, num_samples=args.trials, reuse_actors=True),
            run_config=tune.RunConfig(
                name=rundir.EXPERIMENT, storage_path=storage, verbose=1,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[StateSnapshot()],
            ),
        )
    tuner.fit()
    timings["trials_s"] = round(timings.get("trials_s", 0) + time.perf_counter() - t0, 3)
    state = run_dir / SCHEDULER_STATE
    if state.exists():
        run["scheduler"] = {"name": args.scheduler, "state_file": SCHEDULER_STATE}
    # The same architectures timed the same way again, now that no trial runs: the front uses these.
    t0 = time.perf_counter()
    lat["after"] = plan.measure()
    timings["latency_after_s"] = round(time.perf_counter() - t0, 3)
    _say_contradictions(lat["after"])
    rundir.write_run(run_dir, run)

    t0 = time.perf_counter()
    result = export.export_run(run_dir, run, data, split, knowledge, space, remote=True)
    timings["export_s"] = round(time.perf_counter() - t0, 3)
    run["exported"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    rundir.write_run(run_dir, run)
    print(result.table, flush=True)
    if run["status"] != "finished":
        print(f"\nThe search stopped early ({run['trial_counts']}); continue it with: "
              f"python -m kdtune.search --resume {run_dir}", flush=True)
    print(f"\nFiles in {run_dir}: {', '.join(sorted(p.name for p in result.files))}", flush=True)



def _say_contradictions(measured: dict) -> None:
    for line in measured.get("contradictions", []):
        print(f"Latency warning: {line}", flush=True)
