"""The papers' setting on CiteULike-a: a large BPR-MF teacher, a 20-dim student, every distillation method.

    python bench/reproduce.py --data ../shared/data/citeulike-a/users.dat --format citeulike \
        --teacher-dim 200 --student-dim 20 --tune-trials 8 --seeds 0 1 2

For each method (and the student trained alone, ``bpr``): a short tuning of that method's parameters (the
same number of Optuna TPE trials each, over the method's entries of the search space, the learning rate
included, scored on validation NDCG@K), then the chosen settings trained with each seed (initialisation and
sampling; one split, one teacher), scored once on the test split. Printed: test Recall@K / NDCG@K mean +- sd,
the gain over the student alone and the share of the teacher-student gap closed,
``(method - alone) / (teacher - alone)`` in NDCG@K. ``--methods`` picks a subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtune.config import DataSettings, TeacherSettings  # noqa: E402
from kdtune.data import prepare  # noqa: E402
from kdtune.losses import LOSSES  # noqa: E402
from kdtune.search.spacefile import load_space  # noqa: E402
from kdtune.search.trainable import split_config  # noqa: E402
from kdtune.train.evaluate import test_scores  # noqa: E402
from kdtune.train.fit import distill  # noqa: E402
from kdtune.train.teacher import get_teacher  # noqa: E402


def method_params(space, loss: str) -> list:
    """The space's searched entries a trial of ``loss`` has, less the student size and the loss itself."""
    active = space.active_params({"loss": loss})
    everything = {**space.params, **space.conditional}
    skip = {"dim", "loss", "index"} | ({"alpha", "T"} if loss == "bpr" else set())
    return [everything[name] for name in active if name not in skip]


def train(loss: str, config: dict, split, knowledge, dim: int, k: int, seed: int, epochs: int):
    full = {**config, "loss": loss, "dim": dim, "epochs": epochs}
    dim, loss, fit_kwargs = split_config(full)
    teacher = knowledge.model() if loss != "bpr" else None
    topn = knowledge.topn if loss != "bpr" else None
    return distill(teacher, topn, split.train, split.valid, dim, loss, seed=seed, k=k, **fit_kwargs)


def tune_method(loss: str, space, split, knowledge, args) -> tuple[dict, float]:
    """The best settings of ``loss`` by validation NDCG@K over ``args.tune_trials`` TPE trials."""
    import optuna

    params = method_params(space, loss)
    fixed = {key: value for key, value in space.fixed.items() if key in ("patience", "batch_size", "weight_decay")}
    if not params or args.tune_trials < 1:
        return {"lr": 0.01, **fixed}, float("nan")

    def objective(trial) -> float:
        config = {**fixed, **{p.name: p.suggest(trial) for p in params}}
        _, fit = train(loss, config, split, knowledge, args.student_dim, args.k, 0, args.epochs)
        return fit.best_metrics[f"ndcg@{args.k}"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=args.tune_trials)
    return {**fixed, **study.best_params}, study.best_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--format", default=None)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--teacher-dim", type=int, default=200)
    parser.add_argument("--student-dim", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=40, help="student epoch budget")
    parser.add_argument("--tune-trials", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered loss")
    parser.add_argument("--space", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=".cache/bench-reproduce")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    space = load_space(args.space)
    _, split = prepare(DataSettings(data=args.data, format=args.format, k=args.k, cache_dir=args.cache_dir))
    teacher_settings = TeacherSettings(dim=args.teacher_dim, k=args.k)
    knowledge = get_teacher(split, teacher_settings, cache_dir=args.cache_dir, progress=False)
    teacher = test_scores(knowledge.model(), split, args.k)
    print(f"teacher dim {args.teacher_dim}: test NDCG@{args.k} {teacher[f'test_ndcg@{args.k}']:.4f} "
          f"Recall@{args.k} {teacher[f'test_recall@{args.k}']:.4f}", flush=True)
    methods = ["bpr", *[m for m in (args.methods or LOSSES) if m != "bpr"]]
    rows = []
    for loss in methods:
        t0 = time.perf_counter()
        config, valid = tune_method(loss, space, split, knowledge, args)
        scores = []
        for seed in args.seeds:
            model, _ = train(loss, config, split, knowledge, args.student_dim, args.k, seed, args.epochs)
            scores.append(test_scores(model.cpu(), split, args.k))
        rows.append(summarise(loss, config, valid, scores, args.k, time.perf_counter() - t0))
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows, teacher, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"teacher": teacher, "args": vars(args), "rows": rows}, indent=2))


def summarise(loss: str, config: dict, valid: float, scores: list[dict], k: int, seconds: float) -> dict:
    ndcg = [s[f"test_ndcg@{k}"] for s in scores]
    recall = [s[f"test_recall@{k}"] for s in scores]
    sd = statistics.stdev if len(scores) > 1 else (lambda _: 0.0)
    return {"method": loss, "config": config, "valid_ndcg": valid, "ndcg": statistics.fmean(ndcg),
            "ndcg_sd": sd(ndcg), "recall": statistics.fmean(recall), "recall_sd": sd(recall), "seconds": seconds}


def print_table(rows: list[dict], teacher: dict, args) -> None:
    k = args.k
    alone = next(r for r in rows if r["method"] == "bpr")
    t_ndcg, t_recall = teacher[f"test_ndcg@{k}"], teacher[f"test_recall@{k}"]
    print(f"\n| method | test Recall@{k} | test NDCG@{k} | Recall gain vs alone | gap closed (NDCG) | "
          f"gap closed (Recall) |\n|---|---|---|---|---|---|")
    print(f"| teacher (dim {args.teacher_dim}) | {t_recall:.4f} | {t_ndcg:.4f} | | | |")
    for r in rows:
        gain = r["recall"] / alone["recall"] - 1
        gap_n = (r["ndcg"] - alone["ndcg"]) / (t_ndcg - alone["ndcg"])
        gap_r = (r["recall"] - alone["recall"]) / (t_recall - alone["recall"])
        print(f"| {r['method']} | {r['recall']:.4f} ± {r['recall_sd']:.4f} | {r['ndcg']:.4f} ± {r['ndcg_sd']:.4f} "
              f"| {gain:+.1%} | {gap_n:.0%} | {gap_r:.0%} |")
    print(f"\n(student dim {args.student_dim}, {args.tune_trials} tuning trials per method, seeds {args.seeds}, "
          f"teacher {dataclasses.asdict(TeacherSettings(dim=args.teacher_dim, k=k))})")


if __name__ == "__main__":
    main()
