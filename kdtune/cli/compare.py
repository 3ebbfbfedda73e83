"""Teacher vs plain student vs distilled student of the same size, all scored on the test split.

    python -m kdtune.compare [--data SPEC] [--loss NAME] [--student-dim 8] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import pandas as pd

from kdtune.cli import add_dataclass_args, check_data, from_namespace, run_cli, setup_logging
from kdtune.config import DEFAULTS, DataSettings, TeacherSettings, setting
from kdtune.data import prepare
from kdtune.errors import UsageError
from kdtune.losses import LOSSES, get_loss
from kdtune.model.mf import MF
from kdtune.serving.timing import profile
from kdtune.train.evaluate import evaluate
from kdtune.train.fit import distill
from kdtune.train.teacher import get_teacher


@dataclasses.dataclass
class CompareArgs:
    """The student and how it is distilled."""

    loss: str = setting("rrd", "distillation loss (see --list-losses)")
    student_dim: int = setting(8, "embedding size of both students")
    alpha: float = setting(0.5, "weight of the distillation term (1 - alpha on BPR)")
    temperature: float = setting(2.0, "temperature T of losses that use one")
    loss_param: list[str] | None = setting(None, "a loss parameter as NAME=VALUE (repeatable)", action="append",
                                       type=str)
    lr: float = setting(DEFAULTS.lr, "student learning rate")
    epochs: int = setting(DEFAULTS.epochs, "student epoch budget (early stopping on validation NDCG@K)")
    patience: int = setting(DEFAULTS.patience, "epochs without improvement before stopping")
    weight_decay: float = setting(DEFAULTS.weight_decay, "student AdamW weight decay")
    teacher_dim: int = setting(TeacherSettings.dim, "teacher embedding size")
    catalog_size: int | None = setting(None, "catalogue size for the latency benchmark (default: the data's)")
    json: bool = setting(False, "print the rows as JSON")


def parse_loss_params(items: list[str] | None, loss: str) -> dict:
    known = get_loss(loss).params
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            raise UsageError(f"--loss-param {item!r}: expected NAME=VALUE with NAME in {sorted(known)}")
        default = known[name]
        if isinstance(default, str):  # a choice, e.g. cd_guide=teacher
            out[name] = value
        else:
            out[name] = int(float(value)) if isinstance(default, int) else float(value)
    return out


def row(name: str, model: MF, metrics: dict, k: int, catalog: int, extra: dict | None = None) -> dict:
    lat = profile(model.dim, catalog, k=k)
    return {
        "model": name,
        "dim": model.dim,
        f"recall@{k}": metrics[f"recall@{k}"],
        f"ndcg@{k}": metrics[f"ndcg@{k}"],
        "latency_ms": lat["latency_ms"],
        "latency_b256_ms": lat["latency_b256_ms"],
        "params": model.n_params(),
        "bytes": model.n_bytes(),
        **(extra or {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdtune.compare", description=__doc__.splitlines()[0])
    add_dataclass_args(parser, DataSettings)
    add_dataclass_args(parser, CompareArgs)
    parser.add_argument("--list-losses", action="store_true", help="list the distillation losses and exit")
    ns = parser.parse_args(argv)
    if ns.list_losses:
        for spec in LOSSES.values():
            params = ", ".join(f"{k}={v}" for k, v in spec.params.items()) or "-"
            print(f"{spec.name:9s} T:{'yes' if spec.uses_temperature else 'no ':3s}  params: {params}\n"
                  f"          {spec.description}")
        return 0
    data_args, args = from_namespace(DataSettings, ns), from_namespace(CompareArgs, ns)
    setup_logging()
    try:
        get_loss(args.loss)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    params = parse_loss_params(args.loss_param, args.loss)
    if args.student_dim < 1 or args.epochs < 1:
        raise UsageError("--student-dim and --epochs must be >= 1")

    check_data(data_args)
    data, parts = prepare(data_args)
    k = data_args.k
    catalog = args.catalog_size or data.n_items
    settings = TeacherSettings(dim=args.teacher_dim, k=k, seed=data_args.seed)
    knowledge = get_teacher(parts, settings, cache_dir=data_args.cache_dir)
    teacher = knowledge.model()
    seen = [parts.train, parts.valid]
    rows = [row("teacher", teacher, evaluate(teacher, seen, parts.test, ks=(k,)), k, catalog,
                {"from_cache": knowledge.from_cache})]
    # the students are scored on test below: their best epochs need no full validation score
    common = dict(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience, k=k,
                  progress=True, rescore_best=False)
    plain, plain_fit = distill(teacher, knowledge.topn, parts.train, parts.valid, args.student_dim, "bpr",
                               seed=data_args.seed, desc="plain student", **common)
    rows.append(row("plain student", plain, evaluate(plain, seen, parts.test, ks=(k,)), k, catalog,
                    {"best_epoch": plain_fit.best_epoch}))
    student, kd_fit = distill(teacher, knowledge.topn, parts.train, parts.valid, args.student_dim, args.loss,
                              seed=data_args.seed, alpha=args.alpha, T=args.temperature, loss_params=params,
                              desc=f"{args.loss} student", **common)
    rows.append(row(f"distilled ({args.loss})", student, evaluate(student, seen, parts.test, ks=(k,)), k,
                    catalog, {"best_epoch": kd_fit.best_epoch}))
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print(f"\n{data.describe()} — test split, K={k}, latency at {catalog:,} items\n")
        print(pd.DataFrame(rows).drop(columns=["from_cache"]).to_markdown(index=False, floatfmt=".4g"))
    return 0


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
