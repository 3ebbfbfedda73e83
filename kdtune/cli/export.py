"""Export a run: trial table, Pareto front over distilled *and* plain students, re-scored on the test split,
baselines, plot, weights, the Optuna study.

    python -m kdtune.export results/<run> [--serve DIR]
"""

from __future__ import annotations

import argparse
import sys

from kdtune.cli import run_cli, setup_logging
from kdtune.data import prepare
from kdtune.errors import UsageError
from kdtune.report.deployable import write_deployables
from kdtune.report.export import export_run
from kdtune.search.baselines import run_baselines
from kdtune.search.run import Run
from kdtune.search.spacefile import load_space


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdtune.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory written by python -m kdtune.search")
    parser.add_argument("--serve", metavar="DIR", help="also write each front member as a deployable student "
                        "(safetensors user table, Faiss item index, JSON manifest) to DIR/<member>/; load one "
                        "with kdtune.serve.load(DIR/<member>)")
    ns = parser.parse_args(argv)
    setup_logging()
    run = Run.load(ns.run_dir)
    if run.experiment_path is None:
        raise UsageError(f"{run.dir} has no search results yet (the search never started)")
    run.attach(*prepare(run.data), load_space(run.space_path))
    knowledge = run.own_teacher()
    if knowledge is None:
        raise UsageError(f"{run.dir} has no teacher recorded (the search never trained one)")
    result = export_run(run, knowledge, run_baselines(run, knowledge))
    run.save()
    print(result.table)
    print(f"\nFiles in {run.dir}: {', '.join(sorted(p.name for p in result.files))}")
    if ns.serve:
        written = write_deployables(run, result.front, ns.serve)
        print(f"Deployable students in {ns.serve}: {', '.join(p.name for p in written) or 'none (no weights)'}")
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
