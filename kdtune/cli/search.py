"""The search: teacher once, an Optuna multi-objective search over distilled students on Ray Tune.

    python -m kdtune.search --trials 50
    python -m kdtune.search --trials 50 --data path/users.dat --format citeulike --space search_spaces/default.yaml
    python -m kdtune.search --resume results/<run>
    python -m kdtune.search --trials 200 --address auto
"""

from __future__ import annotations

import argparse
import os
import sys

from kdtune.cli import add_dataclass_args, check_data, from_namespace, run_cli, setup_logging
from kdtune.config import DataSettings, SearchSettings
from kdtune.data import prepare
from kdtune.errors import UsageError
from kdtune.search.cluster import start_ray
from kdtune.search.run import FINISHED, Run
from kdtune.search.spacecheck import check_teacher_list
from kdtune.search.spacefile import load_space

# URI schemes pyarrow's filesystems resolve (Ray Tune reads its storage through them); fsspec's are added
# when fsspec is installed.
STORAGE_SCHEMES = ("file", "local", "mock", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def parse(argv: list[str] | None) -> tuple[DataSettings, SearchSettings, str | None]:
    parser = argparse.ArgumentParser(prog="python -m kdtune.search", description=__doc__.splitlines()[0])
    add_dataclass_args(parser, DataSettings)
    add_dataclass_args(parser, SearchSettings)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    ns = parser.parse_args(argv)
    return from_namespace(DataSettings, ns), from_namespace(SearchSettings, ns), ns.resume


def validate(data: DataSettings, search: SearchSettings) -> None:
    """Every flag that makes no sense, as a one-line error before anything is created."""
    check_data(data)
    if search.trials < 1:
        raise UsageError(f"--trials must be >= 1 (got {search.trials})")
    if search.concurrency is not None and search.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1 (got {search.concurrency})")
    if search.cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial must be > 0 (got {search.cpus_per_trial})")
    if search.gpus_per_trial is not None and search.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0 (got {search.gpus_per_trial})")
    if search.catalog_size is not None and search.catalog_size < data.k:
        raise UsageError(f"--catalog-size must be >= --k ({data.k})")
    if min(search.teacher_dim, search.teacher_epochs, search.teacher_topn, search.latency_threads) < 1:
        raise UsageError("--teacher-dim, --teacher-epochs, --teacher-topn and --latency-threads must be >= 1")
    if search.grace_epochs < 1 or search.reduction_factor < 2:
        raise UsageError("--grace-epochs must be >= 1 and --reduction-factor >= 2")
    if search.valid_users < 0:
        raise UsageError(f"--valid-users must be >= 0 (got {search.valid_users})")
    if search.storage is not None:
        check_storage(search.storage)
    if search.sampler == "gp":
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise UsageError("--sampler gp needs scipy: pip install scipy") from None


def check_storage(storage: str) -> None:
    """A ``--storage`` URI must name a filesystem Ray Tune can write to (a plain path always can)."""
    if "://" not in storage:
        return
    scheme = storage.split("://", 1)[0].lower()
    known = set(STORAGE_SCHEMES)
    try:
        import fsspec

        known |= set(fsspec.available_protocols())
    except ImportError:
        pass
    if scheme not in known:
        raise UsageError(f"--storage {storage}: unknown filesystem {scheme!r}; use a path or a URI of "
                         f"{', '.join(STORAGE_SCHEMES)}")


def resumable(run_dir: str) -> Run:
    """The interrupted run in ``run_dir``, its settings checked and its data attached."""
    run = Run.load(run_dir)
    if run.status == FINISHED:  # "incomplete" and "running" runs can be resumed
        raise UsageError(f"{run.dir} already finished; export it with: python -m kdtune.export {run.dir}")
    validate(run.data, run.search)
    run.attach(*prepare(run.data), load_space(run.space_path))
    check_teacher_list(run.space, run.search.teacher_topn)
    return run


def main(argv: list[str] | None = None) -> int:
    from kdtune.search.driver import run_search

    data, search, resume = parse(argv)
    setup_logging()
    run = None
    if resume:
        run = resumable(resume)
        search = run.search
    else:
        # everything the user can get wrong is checked before a directory is created
        validate(data, search)
        space = load_space(search.space)
        check_teacher_list(space, search.teacher_topn)
        run_dir = Run.new_dir(search.out)
        interactions, split = prepare(data)
    started_ray = start_ray(search)
    try:
        if run is None:
            run = Run.create(run_dir, data, search, space, interactions, split, argv)
        print(f"Run directory: {run.dir}", flush=True)
        summary = run_search(run, resumed=resume is not None)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    # after Ray is down: no worker's late log line can come after the summary
    print(summary, flush=True)
    return 0


def cli() -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    # Each trial reports once with its checkpoint; Tune's "snapshotting often" warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
