"""Export a run: trial table, Pareto front over distilled *and* plain students, re-scored on the test split,
baselines, plot, weights, the Optuna study. Each file is written once and never read back.

Every row of one architecture carries the same latency figure (the run's interleaved measurement after the
search, ``run.json`` -> ``latency.after``); what a trial reported during the search is kept as
``search_latency_ms``. The front is computed over the finished distilled trials and the plain students of
every size (:mod:`kdtune.report.front`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kdtune.errors import UsageError
from kdtune.losses import get_loss
from kdtune.model.store import TeacherKnowledge, load_model
from kdtune.report import study
from kdtune.report.front import DISTILLED, PLAIN, FrontChoice, choose_front, objectives
from kdtune.report.tables import plot_front, write_front
from kdtune.search.pareto import default_reference, hypervolume
from kdtune.search.run import BASELINES_FILE, FINISHED, INCOMPLETE, Run
from kdtune.serving.arch import index_of
from kdtune.serving.catalog import DRAWN_ROWS
from kdtune.serving.plan import figures, with_run_latency
from kdtune.serving.served import served_student
from kdtune.train.evaluate import test_scores

log = logging.getLogger("kdtune")

STOPPED, ERROR = "stopped", "error"
FRONT_COLUMNS = ["kind", "trial_id", "loss", "dim", "index", "lr", "alpha", "T", "loss_params", "recall@K",
                 "ndcg@K", "exact_recall@K", "test_recall@K", "test_ndcg@K", "plain_test_ndcg@K",
                 "gain_vs_plain_ndcg@K", "latency_ms", "latency_spread_ms", "latency_p95_ms", "latency_b256_ms",
                 "params", "bytes", "size_vs_teacher", "speedup_vs_teacher", "best_epoch", "epochs_run", "weights"]
BASELINE_COLUMNS = ["kind", "model", "dim", "index", "lr", "recall@K", "ndcg@K", "test_recall@K", "test_ndcg@K",
                    "latency_ms", "latency_spread_ms", "params", "bytes"]
SUMMARY_COLUMNS = ["kind", "trial_id", "loss", "dim", "index", "recall@K", "exact_recall@K", "test_recall@K",
                   "test_ndcg@K", "gain_vs_plain_ndcg@K", "latency_ms", "bytes", "size_vs_teacher"]


@dataclass
class ExportResult:
    trials: pd.DataFrame
    front: pd.DataFrame
    baselines: pd.DataFrame
    table: str
    files: list[Path] = field(default_factory=list)


def _at_k(columns: list[str], k: int) -> list[str]:
    return [c.replace("@K", f"@{k}") for c in columns]


def export_run(run: Run, knowledge: TeacherKnowledge, baselines: pd.DataFrame) -> ExportResult:
    """Write every output file of ``run`` from its Tune experiment (finished or not) and its ``baselines``
    (:func:`kdtune.search.baselines.run_baselines`), and record the outcome in the run (status, front,
    hypervolume)."""
    k = run.data.k
    profiles = final_profiles(run, knowledge)
    trials, checkpoints = trial_table(run.experiment())
    if len(trials):
        trials = with_run_latency(trials, profiles)
    trials.to_csv(run.dir / "trials.csv", index=False)
    finished = finished_trials(run, trials, k)
    baselines = with_run_latency(baselines, profiles)
    choice = choose_front(finished, baselines, k)
    front = scored_front(run, choice.front, baselines, checkpoints)
    files = [run.dir / "trials.csv", *write_tables(run, front, baselines, finished),
             run.dir / BASELINES_FILE, run.dir / "run.json"]
    study_file = write_study(run, choice, front, baselines, trials)
    record_outcome(run, choice, front, finished, trials)
    return ExportResult(trials=trials, front=front, baselines=baselines, table=summary(run, choice, front, finished),
                        files=files + ([study_file] if study_file else []))


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


def finished_trials(run: Run, trials: pd.DataFrame, k: int) -> pd.DataFrame:
    """The trials that ran to their end; none is a one-line error naming the first trial error."""
    finished = trials[trials["outcome"].eq(FINISHED)] if len(trials) else trials
    if len(finished) == 0 or f"recall@{k}" not in finished:
        errors = trials["error"].dropna().unique().tolist() if "error" in trials else []
        hint = f" (first error: {errors[0]})" if errors else ""
        raise UsageError(f"no trial of {run.experiment_path} finished, nothing to export{hint}; "
                         f"see {run.dir / 'trials.csv'}")
    return finished


def final_profiles(run: Run, knowledge: TeacherKnowledge) -> dict:
    """The run's final latency figures; a run stopped before its second measurement is measured now, the
    same way, and the figures are kept."""
    plan = run.latency_plan(knowledge)
    run.latency = run.latency or plan.record()
    if "after" not in run.latency:
        run.latency["after"] = plan.measure()
    return figures(run.latency, "after")


def scored_front(run: Run, front: pd.DataFrame, baselines: pd.DataFrame, checkpoints: dict) -> pd.DataFrame:
    """The front with each member's weights kept in ``students/``, scored once on test, and compared with
    the plain student of its size and with the teacher."""
    k, test_rows = run.data.k, []
    for row in front.to_dict("records"):
        dst = run.dir / "students" / str(row["trial_id"])
        if row["kind"] == DISTILLED:
            dst.mkdir(parents=True, exist_ok=True)
            checkpoints[row["trial_id"]].to_directory(str(dst))
            test_rows.append(_test_scores(load_model(dst), row, dst, run))
        else:
            test_rows.append({c: row[c] for c in row if c.startswith("test_")})
        test_rows[-1]["weights"] = dst.relative_to(run.dir).as_posix()
    front = pd.concat([front.drop(columns=[c for c in front if c.startswith("test_")]), pd.DataFrame(test_rows)],
                      axis=1)
    teacher, plain = baselines.iloc[0], baselines[baselines["kind"].eq(PLAIN)]
    ndcg = f"ndcg@{k}"
    front[f"plain_test_{ndcg}"] = front["dim"].map(plain.set_index("dim")[f"test_{ndcg}"])
    front[f"gain_vs_plain_{ndcg}"] = front[f"test_{ndcg}"] / front[f"plain_test_{ndcg}"] - 1.0
    front["size_vs_teacher"] = front["params"] / teacher["params"]
    front["speedup_vs_teacher"] = teacher["latency_ms"] / front["latency_ms"]
    front["loss_params"] = [json.dumps(_loss_params(r)) for r in front.to_dict("records")]
    return front


def _test_scores(model, row: dict, directory: Path, run: Run) -> dict:
    """A front member scored on test, through the index it is served with at the run's catalogue (the
    trial's own when it kept one with its weights, else built again the same way)."""
    served = served_student(model, index_of(row), directory, seed=run.data.seed, catalog_size=run.catalog_size)
    return test_scores(served.scorer([run.split.train, run.split.valid], run.data.k), run.split, run.data.k)


def _loss_params(row: dict) -> dict:
    """A front row's own loss settings: its KD weight and temperature (when the loss has its own) and its
    loss's parameters."""
    spec = get_loss(row["loss"])
    names = [spec.weight_key, spec.temperature_key, *spec.params]
    return {c: row[c] for c in names if c in row and not (isinstance(row[c], float) and pd.isna(row[c]))}


def latency_note(run: Run) -> str:
    return (f"Latency: a Faiss search of the student's index for one user's top-{run.data.k} of "
            f"{run.catalog_size:,} items, CPU, {run.search.latency_threads} thread(s), one figure per architecture "
            "(median of interleaved rounds after the search; spread = IQR of the rounds)." + catalog_note(run))


def catalog_note(run: Run) -> str:
    """What the items beyond the data's catalogue are, when the run serves more (empty otherwise)."""
    n_data = run.interactions.n_items
    if run.catalog_size <= n_data:
        return ""
    return (f" Recall and NDCG are measured through each model's index over its own {n_data:,} items and "
            f"{run.catalog_size - n_data:,} more ({DRAWN_ROWS}); exact_recall@{run.data.k} is the same weights "
            "through flat at that size.")


def write_tables(run: Run, front: pd.DataFrame, baselines: pd.DataFrame, finished: pd.DataFrame) -> list[Path]:
    """``pareto.csv``/``.md``/``.json`` and ``pareto.png``."""
    k, recall = run.data.k, f"recall@{run.data.k}"
    paths = write_front(front, run.dir, _at_k(FRONT_COLUMNS, k), baselines, baseline_columns=_at_k(BASELINE_COLUMNS, k),
                        note=latency_note(run), baselines_title="Baselines (test split)")
    png = plot_front(
        finished, front, x="latency_ms", y=recall, baselines=baselines, path=run.dir / "pareto.png",
        xerr="latency_spread_ms",
        title=f"{len(finished)} finished students, validation {recall} vs latency at {run.catalog_size:,} items")
    return [*paths.values(), png]


def write_study(run: Run, choice: FrontChoice, front: pd.DataFrame, baselines: pd.DataFrame,
                trials: pd.DataFrame) -> Path | None:
    """The run as an Optuna study (optuna-dashboard, optuna.load_study): its best trials are the front.
    The tables are written already; a study that cannot be written is a warning."""
    scored = front.set_index("trial_id")[[c for c in front if c.startswith("test_")]]
    rows = choice.every.drop(columns=[c for c in choice.every if c.startswith("test_")]).join(scored, on="trial_id")
    try:
        return study.write_study(
            run.dir, rows, objectives(run.data.k), run.space, teacher=baselines.iloc[0].dropna().to_dict(),
            errored=trials[trials["outcome"].eq(ERROR)], pruned=trials[trials["outcome"].eq(STOPPED)],
            attrs={"k": run.data.k, "latency_catalog_items": run.catalog_size})
    except (KeyError, ValueError) as exc:
        log.warning("could not write the Optuna study: %s", exc)
        return None


def record_outcome(run: Run, choice: FrontChoice, front: pd.DataFrame, finished: pd.DataFrame,
                   trials: pd.DataFrame) -> None:
    """What the export found, into the run: hypervolume, trial counts, status, the front's make-up."""
    objs = objectives(run.data.k)
    ref = default_reference(choice.candidates, objs)
    run.hypervolume = {"value": hypervolume(choice.candidates, objs, ref), "reference": ref, "objectives": objs,
                       "split": "validation"}
    run.trial_counts = trials["outcome"].value_counts().to_dict()
    ended = int(trials["status"].isin(["TERMINATED", "ERROR"]).sum())
    # A run stopped early (Ctrl-C, a killed driver) exports what it has and says so; --resume finishes it.
    run.status = FINISHED if ended >= run.search.trials else INCOMPLETE
    run.front_size = len(front)
    run.front_kinds = front["kind"].value_counts().to_dict()
    run.behind_plain = sorted(finished.loc[choice.behind, "trial_id"].astype(str))


def _shown(front: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns of ``columns`` that ``front`` has and fills."""
    return [c for c in columns if c in front and front[c].notna().any()]


def summary(run: Run, choice: FrontChoice, front: pd.DataFrame, finished: pd.DataFrame) -> str:
    """The front as a person reads it at the end of a search."""
    k, catalog = run.data.k, run.catalog_size
    n_plain = int(choice.every["kind"].eq(PLAIN).sum())
    table = (f"\nPareto front of {len(finished)} finished trials and {n_plain} plain students "
             f"({int(choice.behind.sum())} trials left out: behind the plain student of their size on validation "
             f"recall@{k} or ndcg@{k}); validation recall@{k}, then the test split; latency at {catalog:,} items:\n\n"
             + front[_shown(front, _at_k(SUMMARY_COLUMNS, k))].to_markdown(index=False, floatfmt=".4g"))
    if note := catalog_note(run):
        table += "\n\n" + note.strip()
    warnings = (run.latency or {}).get("after", {}).get("contradictions", [])
    if warnings:
        table += "\n\nLatency warnings:\n" + "\n".join(f"- {w}" for w in warnings)
    if catalog < 20_000:
        table += (f"\n\nAt {catalog:,} items latency is mostly fixed overhead (the search call, top-k), so it "
                  "barely tracks model size; pass --catalog-size N to measure at the catalogue you serve.")
    return table
