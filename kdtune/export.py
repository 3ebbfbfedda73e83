"""Export a run: trial table, Pareto front over distilled *and* plain students, re-scored on the test split,
baselines, plot, weights, the Optuna study.

    python -m kdtune.export results/<run>

Every row of one architecture carries the same latency figure (the run's interleaved measurement after the
search, ``run.json`` -> ``latency.after``); what a trial reported during the search is kept as
``search_latency_ms``. The front is computed over the finished distilled trials and the plain students of
every size, a distilled student taking part only if it beats the plain student of its size on validation in
both Recall@K and NDCG@K: a distilled student that a plain one of its size beats is never recommended.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kdtune import latency_plan, pareto, rundir, study
from kdtune.baselines import (
    DISTILLED,
    PLAIN,
    behind_plain,
    plain_id,
    plain_students,
    teacher_row,
    test_scores,
)
from kdtune.config import DEFAULTS
from kdtune.data import Interactions, Split
from kdtune.errors import UsageError
from kdtune.losses import get_loss
from kdtune.models import MF
from kdtune.space import SearchSpace
from kdtune.teacher import TeacherKnowledge
from kdtune.trainable import arch_of, load_student, save_student

log = logging.getLogger("kdtune")

BASELINES_FILE = "baselines.csv"
FINISHED, STOPPED, ERROR = "finished", "stopped", "error"


@dataclass
class ExportResult:
    trials: pd.DataFrame
    front: pd.DataFrame
    baselines: pd.DataFrame
    table: str
    files: list[Path] = field(default_factory=list)


def trial_table(experiment_path: str) -> tuple[pd.DataFrame, dict]:
    """One row per trial (id, status, outcome, config, last reported metrics, error) and each trial's
    checkpoint (``ray.tune.Checkpoint``, read through the storage filesystem, so URIs work)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(experiment_path)
    rows, checkpoints = [], {}
    for trial in analysis.trials:
        result = trial.last_result or {}
        row = {"trial_id": trial.trial_id, "status": trial.status, **trial.config}
        row.update({k: v for k, v in result.items() if k not in ("config",) and not isinstance(v, dict)})
        # A trial stopped at a rung by the scheduler is TERMINATED too, but never sent its final report.
        row["outcome"] = ERROR if trial.status == "ERROR" else FINISHED if result.get("final") else STOPPED
        row["error"] = _first_error_line(trial) if trial.status == "ERROR" else None
        rows.append(row)
        if trial.checkpoint is not None:
            checkpoints[trial.trial_id] = trial.checkpoint
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return df, checkpoints


def _first_error_line(trial) -> str:
    path = trial.error_file
    text = Path(path).read_text(errors="replace") if path and Path(path).exists() else "error (no error file)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # The last line of a traceback names the exception; that is what a reader of the table needs.
    return lines[-1][:300] if lines else "error"


def with_run_latency(df: pd.DataFrame, profiles: dict) -> pd.DataFrame:
    """``latency_ms`` (and its spread, p95, batch-256 figure) of each row's architecture from the run's
    measurement; the figure a trial reported during the search is kept as ``search_latency_ms``."""
    out = df.copy()
    if "latency_ms" in out and "search_latency_ms" not in out:
        out["search_latency_ms"] = out["latency_ms"]
    keys = [arch_of(r) for r in out.to_dict("records")]
    for col in ("latency_ms", "latency_spread_ms", "latency_p95_ms", "latency_b256_ms", "bytes_per_query"):
        out[col] = [profiles.get(key, {}).get(col) for key in keys]
    return out


def export_run(
    run_dir: Path,
    run: dict,
    data: Interactions,
    split: Split,
    knowledge: TeacherKnowledge,
    space: SearchSpace,
    remote: bool = False,
) -> ExportResult:
    """Write every output file of a run from its Tune experiment (finished or not)."""
    k = run["data"]["k"]
    seed = run["data"]["seed"]
    search = run["search"]
    recall, ndcg = f"recall@{k}", f"ndcg@{k}"
    objectives = {recall: "max", "latency_ms": "min"}
    catalog = search.get("catalog_size") or data.n_items
    profiles = _final_profiles(run, space, knowledge, catalog, k, search)

    trials, checkpoints = trial_table(rundir.experiment_path(run_dir, run))
    if len(trials):
        trials = with_run_latency(trials, profiles)
    trials.to_csv(run_dir / "trials.csv", index=False)
    finished = trials[trials["outcome"].eq(FINISHED)] if len(trials) else trials
    if len(finished) == 0 or recall not in finished:
        errors = trials["error"].dropna().unique().tolist() if "error" in trials else []
        hint = f" (first error: {errors[0]})" if errors else ""
        raise UsageError(f"no trial of {run['experiment_path']} finished, nothing to export{hint}; "
                         f"see {run_dir / 'trials.csv'}")

    # Baselines (scores and weights) are computed once per run; latency comes from the run's figures.
    students_dir = run_dir / "students"
    base_path = run_dir / BASELINES_FILE
    if base_path.exists() and all((students_dir / plain_id(d)).is_dir() for d in space.dims()):
        baselines = pd.read_csv(base_path)
    else:
        plain, weights = plain_students(split, space, k, seed, remote, run.get("resources_per_trial", {"cpu": 1}),
                                        search.get("valid_users", DEFAULTS.valid_users))
        for trial_id, (arch, state) in weights.items():
            save_student(MF.from_state(arch, state), _fresh_dir(students_dir / trial_id))
        baselines = pd.concat([pd.DataFrame([teacher_row(knowledge, split, k)]), plain], ignore_index=True)
        baselines.to_csv(base_path, index=False)
    # (baselines.csv of older runs held latency columns: the run's figures replace them)
    baselines = with_run_latency(baselines.drop(columns=[c for c in baselines if "latency" in c]), profiles)
    plain = baselines[baselines["kind"].eq(PLAIN)]

    # A distilled student behind the plain student of its size (validation Recall@K or NDCG@K) is not a
    # candidate; the study keeps every trial.
    behind = behind_plain(finished, plain, [recall, ndcg])
    every = pd.concat([finished.assign(kind=DISTILLED), plain], ignore_index=True)
    candidates = pd.concat([finished[~behind].assign(kind=DISTILLED), plain], ignore_index=True)
    front = pareto.pareto_front(candidates, objectives).reset_index(drop=True)
    test_rows = []
    for row in front.to_dict("records"):
        dst = students_dir / str(row["trial_id"])
        if row["kind"] == DISTILLED:
            checkpoints[row["trial_id"]].to_directory(str(_fresh_dir(dst)))
            test_rows.append(test_scores(load_student(dst), split, k))
        else:
            test_rows.append({c: row[c] for c in row if c.startswith("test_")})
        test_rows[-1]["weights"] = dst.relative_to(run_dir).as_posix()
    front = pd.concat([front.drop(columns=[c for c in front if c.startswith("test_")]),
                       pd.DataFrame(test_rows)], axis=1)

    teacher = baselines.iloc[0]
    plain_ndcg = plain.set_index("dim")[f"test_{ndcg}"]
    front[f"plain_test_{ndcg}"] = front["dim"].map(plain_ndcg)
    front[f"gain_vs_plain_{ndcg}"] = front[f"test_{ndcg}"] / front[f"plain_test_{ndcg}"] - 1.0
    front["size_vs_teacher"] = front["params"] / teacher["params"]
    front["speedup_vs_teacher"] = teacher["latency_ms"] / front["latency_ms"]
    front["loss_params"] = [
        json.dumps({c: r[c] for c in get_loss(r["loss"]).params if c in r and pd.notna(r[c])})
        for r in front.to_dict("records")
    ]
    columns = ["kind", "trial_id", "loss", "dim", "precision", "lr", "alpha", "T", "loss_params", recall, ndcg,
               f"test_{recall}", f"test_{ndcg}", f"plain_test_{ndcg}", f"gain_vs_plain_{ndcg}", "latency_ms",
               "latency_spread_ms", "latency_p95_ms", "params", "bytes", "size_vs_teacher", "speedup_vs_teacher",
               "best_epoch", "epochs_run", "weights"]
    base_columns = ["kind", "model", "dim", "precision", "lr", recall, ndcg, f"test_{recall}", f"test_{ndcg}", "latency_ms",
                    "latency_spread_ms", "params", "bytes"]
    paths = pareto.write_front(front[[c for c in columns if c in front]], run_dir, baselines=None)
    note = (f"Latency: scoring + top-{k} of {catalog:,} items for one user, {search.get('latency_device', 'cpu')}, "
            f"{search.get('latency_threads', 1)} thread(s), one figure per architecture (median of interleaved "
            "rounds after the search; spread = IQR of the rounds).")
    md = (paths["md"].read_text() + f"\n{note}\n\n## Baselines (test split)\n\n"
          + baselines[[c for c in base_columns if c in baselines]].to_markdown(index=False, floatfmt=".4g") + "\n")
    paths["md"].write_text(md)
    payload = json.loads(paths["json"].read_text())
    payload["baselines"] = json.loads(baselines.to_json(orient="records", double_precision=15))
    payload["latency"] = note
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    png = pareto.plot_front(
        finished, front, x="latency_ms", y=recall, baselines=baselines, path=run_dir / "pareto.png",
        xerr="latency_spread_ms",
        title=f"{len(finished)} finished students, validation {recall} vs latency at {catalog:,} items")

    # The run as an Optuna study (optuna-dashboard, optuna.load_study): its best trials are this front.
    scored = front.set_index("trial_id")[[c for c in front if c.startswith("test_")]]
    study_rows = every.drop(columns=[c for c in every if c.startswith("test_")]).join(
        scored, on="trial_id")
    try:
        study_file = study.write_study(
            run_dir, study_rows, objectives, space, teacher=teacher.dropna().to_dict(),
            errored=trials[trials["outcome"].eq(ERROR)], pruned=trials[trials["outcome"].eq(STOPPED)],
            attrs={"k": k, "latency_catalog_items": catalog})
    except (KeyError, ValueError) as exc:  # the tables are written; the study is a convenience
        log.warning("could not write the Optuna study: %s", exc)
        study_file = None

    ref = pareto.default_reference(candidates, objectives)
    run["hypervolume"] = {"value": pareto.hypervolume(candidates, objectives, ref), "reference": ref,
                          "objectives": objectives, "split": "validation"}
    run["trial_counts"] = trials["outcome"].value_counts().to_dict()
    ended = int(trials["status"].isin(["TERMINATED", "ERROR"]).sum())
    # A run stopped early (Ctrl-C, a killed driver) exports what it has and says so; --resume finishes it.
    run["status"] = "finished" if ended >= run["search"]["trials"] else "incomplete"
    run["front_size"] = len(front)
    run["front_kinds"] = front["kind"].value_counts().to_dict()
    shown = ["kind", "trial_id", "loss", "dim", "precision", f"test_{recall}", f"test_{ndcg}", f"gain_vs_plain_{ndcg}",
             "latency_ms", "bytes", "size_vs_teacher"]
    run["behind_plain"] = sorted(finished.loc[behind, "trial_id"].astype(str))
    table = (f"\nPareto front of {len(finished)} finished trials and {len(plain)} plain students ({int(behind.sum())} "
             f"trials left out: behind the plain student of their size on validation {recall} or {ndcg}); "
             f"test split; latency at {catalog:,} items:\n\n"
             + front[[c for c in shown if c in front]].to_markdown(index=False, floatfmt=".4g"))
    warnings = run.get("latency", {}).get("after", {}).get("contradictions", [])
    if warnings:
        table += "\n\nLatency warnings:\n" + "\n".join(f"- {w}" for w in warnings)
    if catalog < 20_000:
        table += (f"\n\nAt {catalog:,} items latency is mostly fixed overhead (kernel launches, top-k), so it "
                  "barely tracks model size; pass --catalog-size N to measure at the catalogue you serve.")
    files = [run_dir / "trials.csv", *paths.values(), png, base_path, run_dir / "run.json"]
    return ExportResult(trials=trials, front=front, baselines=baselines, table=table,
                        files=files + ([study_file] if study_file else []))


def _fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _final_profiles(run: dict, space: SearchSpace, knowledge: TeacherKnowledge, catalog: int, k: int,
                    search: dict) -> dict:
    """The run's final latency figures; a run without them (stopped before the second measurement, or
    recorded by an older version) is measured now, the same way, and the figures are kept."""
    record = run.setdefault("latency", {})
    if "after" not in record:
        plan = latency_plan.LatencyPlan(space, knowledge.arch["dim"], catalog, k,
                                        search.get("latency_device", "cpu"), search.get("latency_threads", 1))
        record.update({key: value for key, value in plan.record().items() if key not in record})
        record["after"] = plan.measure()
    return latency_plan.figures(record, "after")


def main(argv: list[str] | None = None) -> int:
    from kdtune.cli import DataArgs, prepare_data, setup_logging
    from kdtune.space import load_space

    parser = argparse.ArgumentParser(prog="python -m kdtune.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory written by python -m kdtune.search")
    ns = parser.parse_args(argv)
    setup_logging()
    run_dir = Path(ns.run_dir).resolve()
    run = rundir.read_run(run_dir)
    if "experiment_path" not in run:
        raise UsageError(f"{run_dir} has no search results yet (the search never started)")
    data_args = DataArgs(**run["data"])
    data, split = prepare_data(data_args)
    if split.fingerprint() != run.get("split_fingerprint"):
        raise UsageError(f"the data of {run_dir} changed since the run (fingerprint differs)")
    space = load_space(rundir.space_path(run_dir, run))
    knowledge = rundir.run_teacher(run_dir, run, data_args.cache_dir)
    if knowledge is None:
        from kdtune.teacher import get_teacher, settings_from_record

        knowledge = get_teacher(split, settings_from_record(run["teacher"]["settings"]),
                                cache_dir=data_args.cache_dir)
    result = export_run(run_dir, run, data, split, knowledge, space, remote=False)
    rundir.write_run(run_dir, run)
    print(result.table)
    print(f"\nFiles in {run_dir}: {', '.join(sorted(p.name for p in result.files))}")
    return 0


def cli() -> None:
    from kdtune.cli import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
