"""The search: teacher once, an Optuna multi-objective search over distilled students on Ray Tune.

    python -m kdtune.search --trials 50
    python -m kdtune.search --trials 50 --data path/users.dat --format citeulike --space search_spaces/default.yaml
    python -m kdtune.search --resume results/<run>
    python -m kdtune.search --trials 200 --address auto
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from kdtune.cli import (
    DataArgs,
    add_dataclass_args,
    arg,
    from_namespace,
    prepare_data,
    run_cli,
    setup_logging,
)
from kdtune.cluster import start_ray
from kdtune.config import DEFAULTS
from kdtune.errors import UsageError
from kdtune.rundir import SPACE_FILE, new_run_dir, read_run, space_path, write_run
from kdtune.samplers import SAMPLERS
from kdtune.space import load_space

log = logging.getLogger("kdtune")



@dataclasses.dataclass
class SearchArgs:
    """How the search runs."""

    trials: int = arg(50, "number of students to train (Optuna trials)")
    space: str = arg("default", "search space: 'default', 'smoke' or a YAML file")
    sampler: str = arg("tpe", "Optuna sampler", choices=list(SAMPLERS))
    concurrency: int | None = arg(None, "trials at once (default: as many as the resources allow)")
    cpus_per_trial: float = arg(1.0, "CPUs reserved per trial (also its torch thread count)")
    gpus_per_trial: float | None = arg(None, "GPU share per trial, e.g. 0.25 (default: 0, or 0.25 with a GPU)")
    out: str | None = arg(None, "run directory (default: results/<timestamp>)")
    storage: str | None = arg(None, "Ray Tune storage path or URI (default: <out>/ray)")
    address: str | None = arg(None, "connect to an existing Ray cluster ('auto' or host:port)")
    dashboard_host: str = arg("127.0.0.1", "interface the Ray dashboard binds to (local cluster only)")
    dashboard_port: int = arg(8265, "Ray dashboard port (local cluster only)")
    catalog_size: int | None = arg(None, "catalogue size the latency is measured at (default: the data's)")
    latency_device: str = arg("cpu", "device the serving latency is measured on", choices=["cpu", "cuda"])
    latency_threads: int = arg(1, "torch threads of the latency benchmark")
    teacher_dim: int = arg(64, "teacher embedding size")
    teacher_epochs: int = arg(150, "teacher epoch budget (early stopping on validation)")
    scheduler: str = arg("pareto-asha", "stop dominated trials early at epoch rungs (Pareto-aware successive "
                         "halving), or run every trial to its end", choices=["pareto-asha", "none"])
    grace_epochs: int = arg(5, "pareto-asha: first rung (epochs); later rungs at grace * eta^i")
    reduction_factor: int = arg(3, "pareto-asha: eta, a trial goes on past a rung if in the top 1/eta there")
    valid_users: int = arg(DEFAULTS.valid_users, "validation users (a fixed seeded sample) behind each epoch's signal; "
                           "0 = all; a finished trial's metrics are always over all of them")


def parse(argv: list[str] | None) -> tuple[DataArgs, SearchArgs, str | None]:
    parser = argparse.ArgumentParser(prog="python -m kdtune.search", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_args(parser, DataArgs)
    add_dataclass_args(parser, SearchArgs)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    ns = parser.parse_args(argv)
    return from_namespace(DataArgs, ns), from_namespace(SearchArgs, ns), ns.resume


def validate(data_args: DataArgs, args: SearchArgs) -> None:
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1 (got {args.trials})")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1 (got {args.concurrency})")
    if args.cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial must be > 0 (got {args.cpus_per_trial})")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0 (got {args.gpus_per_trial})")
    if args.catalog_size is not None and args.catalog_size < data_args.k:
        raise UsageError(f"--catalog-size must be >= --k ({data_args.k})")
    if args.teacher_dim < 1 or args.teacher_epochs < 1 or args.latency_threads < 1:
        raise UsageError("--teacher-dim, --teacher-epochs and --latency-threads must be >= 1")
    if args.grace_epochs < 1 or args.reduction_factor < 2:
        raise UsageError("--grace-epochs must be >= 1 and --reduction-factor >= 2")
    if args.valid_users < 0:
        raise UsageError(f"--valid-users must be >= 0 (got {args.valid_users})")
    if args.sampler == "gp":
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise UsageError("--sampler gp needs scipy: pip install scipy") from None



def versions() -> dict:
    import numpy
    import optuna
    import pandas
    import ray
    import torch

    from kdtune import __version__

    return {"kdtune": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": numpy.__version__, "pandas": pandas.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__}


def main(argv: list[str] | None = None) -> int:
    from kdtune.runner import execute

    data_args, args, resume = parse(argv)
    setup_logging()
    if resume:
        run_dir = Path(resume).resolve()
        run = read_run(run_dir)
        data_args = DataArgs(**run["data"])
        # settings added since the run started keep their defaults
        args = SearchArgs(**{k: v for k, v in run["search"].items() if k in SearchArgs.__dataclass_fields__})
        if run.get("status") == "finished":  # "incomplete" and "running" runs can be resumed
            raise UsageError(f"{run_dir} already finished; export it with: python -m kdtune.export {run_dir}")
        validate(data_args, args)
        space = load_space(space_path(run_dir, run))
    else:
        validate(data_args, args)
        space = load_space(args.space)
        run_dir = new_run_dir(args.out)
        run = None
    # Everything the user can get wrong is checked before a directory is created.
    data, split = prepare_data(data_args)
    if run is not None and split.fingerprint() != run.get("split_fingerprint"):
        raise UsageError(f"the data of {run_dir} changed since the run started (fingerprint differs)")
    started_ray = start_ray(args)
    try:
        if run is None:
            run = new_run(run_dir, args, argv, data_args, data, split, space)
        print(f"Run directory: {run_dir}", flush=True)
        execute(run_dir, run, data, split, data_args, args, space, resumed=resume is not None)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return 0


def new_run(run_dir: Path, args: SearchArgs, argv, data_args: DataArgs, data, split, space) -> dict:
    """Create ``run_dir`` with the run's record (exact configuration, versions, fingerprints) and space."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        space.save(run_dir / SPACE_FILE)
    except OSError as exc:
        raise UsageError(f"cannot write the run directory {run_dir}: {exc}") from None
    run = {
        "status": "running",
        "command": " ".join(["python -m kdtune.search", *(argv if argv is not None else sys.argv[1:])]),
        "data": dataclasses.asdict(data_args),
        "search": dataclasses.asdict(args),
        "space_file": SPACE_FILE,
        "space": space.to_dict(),
        "data_fingerprint": data.fingerprint(),
        "split_fingerprint": split.fingerprint(),
        "data_description": data.describe(),
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "timings": {},
    }
    write_run(run_dir, run)
    return run


def cli() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    # Each trial reports once with its checkpoint; Tune's "snapshotting often" warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
