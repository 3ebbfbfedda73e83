"""The same search with and without the Pareto-aware scheduler, and with the random sampler as reference.

    python bench/search.py [--trials 50] [--data synthetic] [--format F] [--seed 0] [--out bench-runs]
    python bench/search.py --compare RUN_DIR [RUN_DIR ...]      # only compare finished runs' fronts

Every configuration runs the whole search (``python -m kdtune.search``) in this process, one after the
other, on the same data, seed and trial count, with one teacher cache (the teacher is trained by the first
run and loaded by the others). For each it prints the wall-clock of the trials, the epochs trained by all
trials together, how many trials the scheduler stopped, and the hypervolume of its exported front
re-scored on the test split (test Recall@K up, latency down).

Fronts are compared on one footing: each architecture's latency is the median of its figures over all
runs (every run times the architectures itself, and those figures differ by the machine's noise), and
the reference point is (Recall@K = 0, latency = 1.1 x the slowest student architecture), the same for
every run. The ratios against the first configuration (``tpe`` without the scheduler, the full budget)
are what to read: the machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune.cli.search import main as search_main  # noqa: E402
from kdtune.search import pareto  # noqa: E402
from kdtune.search.run import Run  # noqa: E402
from kdtune.serving.arch import arch_of  # noqa: E402

CONFIGS = {
    "tpe, full budget": ["--sampler", "tpe", "--scheduler", "none"],
    "tpe + pareto-asha": ["--sampler", "tpe", "--scheduler", "pareto-asha"],
    "random, full budget": ["--sampler", "random", "--scheduler", "none"],
    "random + pareto-asha": ["--sampler", "random", "--scheduler", "pareto-asha"],
}


def load_run(run_dir: Path) -> dict:
    run = Run.load(run_dir)
    return {"name": run_dir.name, "dir": run_dir, "run": run, "trials": pd.read_csv(run_dir / "trials.csv"),
            "front": pd.read_csv(run_dir / "pareto.csv"), "wall_s": float("nan")}


def run_one(name: str, extra: list[str], args: argparse.Namespace, out: Path) -> dict:
    run_dir = out / name.replace(" ", "").replace(",", "-").replace("+", "-")
    argv = ["--trials", str(args.trials), "--seed", str(args.seed), "--data", args.data, "--out", str(run_dir),
            "--cache-dir", str(out / "cache"), *(["--format", args.format] if args.format else []),
            *(["--space", args.space] if args.space else []), *extra]
    t0 = time.perf_counter()
    assert search_main(argv) == 0
    wall = time.perf_counter() - t0
    return {**load_run(run_dir), "name": name, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--format", default=None)
    parser.add_argument("--space", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-runs")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--compare", nargs="+", type=Path, help="compare these finished runs, run nothing")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if args.compare:
        runs = [load_run(d) for d in args.compare]
    else:
        out.mkdir(parents=True, exist_ok=True)
        runs = [run_one(name, CONFIGS[name], args, out) for name in args.configs]
    compare(runs, args, out)


def compare(runs: list[dict], args: argparse.Namespace, out: Path) -> None:
    """Print (and save) the comparison table of ``runs``; runs recorded before latency was kept per
    architecture take the others' figures."""
    k = runs[0]["run"].data.k
    recall = f"test_recall@{k}"
    # one latency per architecture across all runs (each run timed them itself)
    figures: dict[str, list[float]] = {}
    for r in runs:
        for key, prof in (r["run"].latency or {}).get("after", {}).get("profiles", {}).items():
            figures.setdefault(key, []).append(prof["latency_ms"])
    common = {key: statistics.median(v) for key, v in figures.items()}
    teacher = next(r["run"].latency["teacher"] for r in runs if r["run"].latency)
    ref = {recall: 0.0, "latency_ms": 1.1 * max(v for key, v in common.items() if key != teacher)}
    objectives = {recall: "max", "latency_ms": "min"}
    rows = []
    for r in runs:
        front = r["front"].copy()
        front["latency_ms"] = [common[arch_of(row)] for row in front.to_dict("records")]
        if "kind" not in front:
            front["kind"] = "distilled"
        trials = r["trials"]
        epochs_col = "epoch" if "epoch" in trials else "epochs_run"
        epochs = int(pd.to_numeric(trials.get(epochs_col), errors="coerce").fillna(0).sum())
        outcome = trials["outcome"] if "outcome" in trials else pd.Series(["finished"] * len(trials))
        rows.append({
            "configuration": r["name"],
            "trials_s": r["run"].timings.get("trials_s"),
            "search_wall_s": round(r["wall_s"], 1),
            "epochs_trained": epochs,
            "stopped_by_scheduler": int((outcome == "stopped").sum()),
            "errors": int((trials["status"] == "ERROR").sum()),
            "front": f"{len(front)} ({int((front['kind'] == 'plain').sum())} plain)",
            "test_hypervolume": pareto.hypervolume(front, objectives, ref),
        })
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["epochs_vs_first"] = table["epochs_trained"] / base["epochs_trained"]
    table["trials_s_vs_first"] = table["trials_s"] / base["trials_s"]
    table["hypervolume_vs_first"] = table["test_hypervolume"] / base["test_hypervolume"]
    if args.compare:
        print(f"\ncompared runs: {', '.join(str(d) for d in args.compare)}; reference point {ref}\n")
    else:
        print(f"\n{args.trials} trials, data {args.data}, seed {args.seed}; reference point {ref}\n")
        (out / "bench-search.json").write_text(table.to_json(orient="records", indent=2))
    print(table.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
