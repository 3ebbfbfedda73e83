"""Export a run: trial table, Pareto front re-scored on the test split, baselines, plot, weights.

    python -m kdtune.export results/<run>
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kdtune import latency, pareto
from kdtune.cli import UsageError
from kdtune.data import Interactions, Split
from kdtune.evaluate import evaluate
from kdtune.losses import get_loss
from kdtune.space import TRAIN_DEFAULTS, SearchSpace
from kdtune.teacher import TeacherKnowledge
from kdtune.train import distill
from kdtune.trainable import load_student

log = logging.getLogger("kdtune")

BASELINES_FILE = "baselines.csv"


@dataclass
class ExportResult:
    trials: pd.DataFrame
    front: pd.DataFrame
    baselines: pd.DataFrame
    table: str
    files: list[Path] = field(default_factory=list)


def trial_table(experiment_path: str) -> pd.DataFrame:
    """One row per trial of a Tune experiment: id, status, config, last reported metrics, checkpoint, error."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(experiment_path)
    rows = []
    for trial in analysis.trials:
        result = trial.last_result or {}
        row = {"trial_id": trial.trial_id, "status": trial.status, **trial.config}
        row.update({k: v for k, v in result.items() if k not in ("config",) and not isinstance(v, dict)})
        row["checkpoint"] = trial.checkpoint.path if trial.checkpoint is not None else None
        row["error"] = _first_error_line(trial.error_file) if trial.status == "ERROR" else None
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return df


def _first_error_line(path: str | None) -> str | None:
    if not path or not Path(path).exists():
        return "error (no error file)"
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    # The last line of a traceback names the exception; that is what a reader of the table needs.
    return lines[-1][:300] if lines else "error"


def _plain_task(split: Split, dim: int, lr: float, train_kwargs: dict, k: int, seed: int, threads: int) -> dict:
    import ray
    import torch

    torch.set_num_threads(max(1, threads))
    device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    model, fit = distill(None, None, split.train, split.valid, dim, "bpr", seed=seed, lr=lr, k=k,
                         device=device, **train_kwargs)
    model.cpu()
    test = evaluate(model, [split.train, split.valid], split.test, ks=(k,))
    return {"dim": dim, "lr": lr, f"recall@{k}": fit.best_metrics[f"recall@{k}"],
            f"ndcg@{k}": fit.best_metrics[f"ndcg@{k}"], **{f"test_{m}": v for m, v in test.items()},
            "params": model.n_params(), "bytes": model.n_bytes(), "best_epoch": fit.best_epoch}


def plain_baselines(split: Split, space: SearchSpace, k: int, seed: int, remote: bool, resources: dict) -> pd.DataFrame:
    """Plain (BPR, no teacher) students of each dim in the space, each with the best of three learning
    rates across the space's lr range (chosen on validation), so distillation is compared with a
    student that had a fair chance too."""
    lo, hi = space.lr_range()
    lrs = sorted({float(x) for x in np.geomspace(lo, hi, 3)})
    train_kwargs = {key: space.fixed.get(key, default) for key, default in TRAIN_DEFAULTS.items()}
    jobs = [(dim, lr) for dim in space.dims() for lr in lrs]
    threads = max(1, int(resources.get("cpu", 1)))
    if remote:
        import ray

        task = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))(_plain_task)
        split_ref = ray.put(split)
        rows = ray.get([task.remote(split_ref, d, lr, train_kwargs, k, seed, threads) for d, lr in jobs])
    else:
        rows = [_plain_task(split, d, lr, train_kwargs, k, seed, threads) for d, lr in jobs]
    df = pd.DataFrame(rows)
    best = df.loc[df.groupby("dim")[f"ndcg@{k}"].idxmax()].sort_values("dim")
    best.insert(0, "model", [f"plain student dim={d}" for d in best["dim"]])
    return best.reset_index(drop=True)


def search_latency(trials: pd.DataFrame, run: dict) -> dict[int, float]:
    """Latency per dim as the search saw it: the benchmark actor's figures (measured before the trials,
    teacher dim included), else the trials' own reports."""
    out = {int(d): float(v) for d, v in trials.groupby("dim")["latency_ms"].median().items()}
    out.update({int(d): float(v) for d, v in run.get("latency_prebench", {}).items()})
    return out


def _latency_columns(dim: int, catalog: int, k: int, device: str, threads: int) -> dict:
    prof = latency.profile(int(dim), catalog, k=k, device=device, threads=threads)
    return {"latency_ms": prof["latency_ms"], "latency_p95_ms": prof["latency_p95_ms"],
            "latency_b256_ms": prof.get("latency_b256_ms")}


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
    catalog = search.get("catalog_size") or data.n_items
    lat_kw = {"catalog": catalog, "k": k, "device": search.get("latency_device", "cpu"),
              "threads": search.get("latency_threads", 1)}
    recall, ndcg = f"recall@{k}", f"ndcg@{k}"
    objectives = {recall: "max", "latency_ms": "min"}

    trials = trial_table(run["experiment_path"])
    trials.drop(columns=["checkpoint"], errors="ignore").to_csv(run_dir / "trials.csv", index=False)
    done = trials[trials["status"].eq("TERMINATED")] if len(trials) else trials
    if len(done) == 0 or recall not in done:
        errors = trials["error"].dropna().unique().tolist() if "error" in trials else []
        hint = f" (first error: {errors[0]})" if errors else ""
        raise UsageError(f"no trial of {run['experiment_path']} finished, nothing to export{hint}; "
                         f"see {run_dir / 'trials.csv'}")
    front = pareto.pareto_front(done, objectives).copy()

    # Latency re-measured now, with no trial running, for the front and the baselines alike.
    latency.clear_cache()
    base_path = run_dir / BASELINES_FILE
    if base_path.exists():
        baselines = pd.read_csv(base_path)
    else:
        teacher = knowledge.model()
        teacher_test = evaluate(teacher, [split.train, split.valid], split.test, ks=(k,))
        teacher_row = {"model": f"teacher dim={teacher.dim}", "dim": teacher.dim,
                       recall: knowledge.valid_metrics.get(recall), ndcg: knowledge.valid_metrics.get(ndcg),
                       **{f"test_{m}": v for m, v in teacher_test.items()},
                       "params": teacher.n_params(), "bytes": teacher.n_bytes()}
        plain = plain_baselines(split, space, k, seed, remote, run.get("resources_per_trial", {"cpu": 1}))
        baselines = pd.concat([pd.DataFrame([teacher_row]), plain], ignore_index=True)
        baselines.to_csv(base_path, index=False)
    # Latencies are not cached with the baselines' scores: every export measures them again.
    baselines = baselines.drop(columns=[c for c in baselines if "latency" in c])
    lat = pd.DataFrame([_latency_columns(d, **lat_kw) for d in baselines["dim"]])
    baselines = pd.concat([baselines, lat.add_prefix("isolated_")], axis=1)
    # On the search's latency axis (what the trials reported), so the plot compares like with like.
    search_lat = search_latency(done, run)
    baselines["latency_ms"] = [search_lat.get(int(d), iso) for d, iso in
                               zip(baselines["dim"], baselines["isolated_latency_ms"], strict=True)]

    students_dir = run_dir / "students"
    students_dir.mkdir(exist_ok=True)
    test_rows = []
    for _, row in front.iterrows():
        model = load_student(row["checkpoint"])
        test = evaluate(model, [split.train, split.valid], split.test, ks=(k,))
        dst = students_dir / f"{row['trial_id']}"
        shutil.copytree(row["checkpoint"], dst, dirs_exist_ok=True)
        test_rows.append({**{f"test_{m}": v for m, v in test.items()},
                          **{f"isolated_{c}": v for c, v in _latency_columns(model.dim, **lat_kw).items()},
                          "weights": str(dst.relative_to(run_dir))})
    front = pd.concat([front.reset_index(drop=True), pd.DataFrame(test_rows)], axis=1)

    teacher_row = baselines.iloc[0]
    plain_ndcg = baselines.iloc[1:].set_index("dim")[f"test_{ndcg}"]
    front[f"plain_test_{ndcg}"] = front["dim"].map(plain_ndcg)
    front[f"gain_vs_plain_{ndcg}"] = front[f"test_{ndcg}"] - front[f"plain_test_{ndcg}"]
    front["size_vs_teacher"] = front["params"] / teacher_row["params"]
    front["speedup_vs_teacher"] = teacher_row["isolated_latency_ms"] / front["isolated_latency_ms"]

    front["loss_params"] = [
        json.dumps({c: r[c] for c in get_loss(r["loss"]).params if c in r and pd.notna(r[c])})
        for _, r in front.iterrows()
    ]
    columns = ["trial_id", "model", "loss", "dim", "lr", "alpha", "T", "loss_params", recall, ndcg,
               f"test_{recall}", f"test_{ndcg}", f"plain_test_{ndcg}", f"gain_vs_plain_{ndcg}",
               "isolated_latency_ms", "isolated_latency_p95_ms", "latency_ms", "params", "size_vs_teacher",
               "speedup_vs_teacher", "best_epoch", "weights"]
    base_columns = ["model", "dim", "lr", recall, ndcg, f"test_{recall}", f"test_{ndcg}",
                    "isolated_latency_ms", "isolated_latency_p95_ms", "latency_ms", "params"]
    paths = pareto.write_front(front[[c for c in columns if c in front]], run_dir, baselines=None)
    # Baselines keep their own columns: they were never trials.
    md = paths["md"].read_text() + "\n## Baselines (test split; latency in isolation)\n\n" + \
        baselines[[c for c in base_columns if c in baselines]].to_markdown(index=False, floatfmt=".4g") + "\n"
    paths["md"].write_text(md)
    payload = json.loads(paths["json"].read_text())
    payload["baselines"] = json.loads(baselines.to_json(orient="records"))
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    png = pareto.plot_front(done, front, x="latency_ms", y=recall, baselines=baselines,
                            path=run_dir / "pareto.png",
                            title=f"{len(done)} students, validation {recall} vs latency ({catalog:,} items)")

    ref = pareto.default_reference(done, objectives)
    run["hypervolume"] = {"value": pareto.hypervolume(done, objectives, ref), "reference": ref,
                          "objectives": objectives, "split": "validation"}
    run["trial_counts"] = trials["status"].value_counts().to_dict()
    ended = int(trials["status"].isin(["TERMINATED", "ERROR"]).sum())
    # A run stopped early (Ctrl-C, a killed driver) exports what it has and says so; --resume finishes it.
    run["status"] = "finished" if ended >= run["search"]["trials"] else "incomplete"
    run["front_size"] = len(front)
    table = (f"\nPareto front ({len(front)} of {len(done)} finished trials; test split, latency in isolation):\n\n"
             + front[[c for c in ["trial_id", "loss", "dim", f"test_{recall}", f"test_{ndcg}",
                                  f"plain_test_{ndcg}", "isolated_latency_ms", "size_vs_teacher"] if c in front]]
             .to_markdown(index=False, floatfmt=".4g"))
    return ExportResult(trials=trials, front=front, baselines=baselines, table=table,
                        files=[run_dir / "trials.csv", *paths.values(), png, base_path, run_dir / "run.json"])


def main(argv: list[str] | None = None) -> int:
    from kdtune.cli import DataArgs, prepare_data, setup_logging
    from kdtune.search import read_run, write_run
    from kdtune.space import load_space
    from kdtune.teacher import get_teacher, settings_from_record

    parser = argparse.ArgumentParser(prog="python -m kdtune.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory written by python -m kdtune.search")
    ns = parser.parse_args(argv)
    setup_logging()
    run_dir = Path(ns.run_dir).resolve()
    run = read_run(run_dir)
    if "experiment_path" not in run:
        raise UsageError(f"{run_dir} has no search results yet (the search never started)")
    data_args = DataArgs(**run["data"])
    data, split = prepare_data(data_args)
    if split.fingerprint() != run.get("split_fingerprint"):
        raise UsageError(f"the data of {run_dir} changed since the run (fingerprint differs)")
    space = load_space(run["space_file"])
    settings = settings_from_record(run["teacher"]["settings"])
    knowledge = get_teacher(split, settings, cache_dir=data_args.cache_dir)
    result = export_run(run_dir, run, data, split, knowledge, space, remote=False)
    write_run(run_dir, run)
    print(result.table)
    print(f"\nFiles in {run_dir}: {', '.join(sorted(p.name for p in result.files))}")
    return 0


def cli() -> None:
    from kdtune.cli import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()

