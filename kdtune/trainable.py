"""The Ray Tune trainable (thin: distill -> report every epoch -> report the best epoch with its weights)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from ray import tune

from kdtune import latency
from kdtune.config import DEFAULTS
from kdtune.data import Split
from kdtune.evaluate import evaluate
from kdtune.losses import get_loss
from kdtune.models import MF
from kdtune.quantize import QuantizedMF, quantize
from kdtune.space import MODEL_KEYS, TRAIN_DEFAULTS
from kdtune.teacher import TeacherKnowledge
from kdtune.train import distill

STUDENT_FILE = "student.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a run shares (set once by the driver)."""

    k: int
    seed: int
    cpus_per_trial: float
    # One latency profile per architecture, measured by the driver before the trials (never by a busy
    # trial): every trial, baseline and table of the run uses these figures.
    latency: dict = field(default_factory=dict)
    valid_users: int = DEFAULTS.valid_users


def split_config(config: dict) -> tuple[int, str, dict]:
    """``(dim, loss, fit kwargs)`` from a trial config; unknown keys are an error, not silently ignored."""
    loss = config["loss"]
    spec = get_loss(loss)
    fit_kwargs = {key: config.get(key, default) for key, default in TRAIN_DEFAULTS.items()}
    fit_kwargs["lr"] = float(config["lr"])
    fit_kwargs["alpha"] = float(config.get("alpha", 0.0))
    fit_kwargs["T"] = float(config.get("T", 1.0))
    loss_params = {key: value for key, value in config.items() if key in spec.params}
    # Everything that is not a trainer setting or a model key must be a parameter of the chosen loss.
    unknown = set(config) - set(TRAIN_DEFAULTS) - set(MODEL_KEYS) - set(loss_params)
    if unknown:
        raise ValueError(f"trial config has keys that loss {loss!r} does not take: {sorted(unknown)}")
    fit_kwargs["loss_params"] = loss_params
    return int(config["dim"]), loss, fit_kwargs


def precision_of(config: dict) -> str:
    """The serving precision of a trial (or table row): ``fp32`` when it has none."""
    value = config.get("precision")
    return value if isinstance(value, str) else "fp32"  # NaN in a table row of a plain student


def arch_of(config: dict) -> str:
    """The latency key of a trial's student architecture (its dim and serving precision)."""
    return latency.arch_key(int(config["dim"]), precision_of(config))


def train_student(config: dict, knowledge: TeacherKnowledge, split: Split, settings: TrialSettings) -> None:
    """One trial: distil a student with ``config``, report every epoch, then the best epoch and its weights.

    Each epoch's report carries the per-epoch validation signal (a fixed sample of validation users) and the
    architecture's latency, so the dashboard shows learning curves and a scheduler can stop the trial at a
    rung. The last report (``final: True``) carries the best epoch's metrics over all validation users and
    the student's checkpoint; a trial stopped by the scheduler never sends it. A student searched at a
    lower serving precision trains in float32 (its per-epoch signal is the float model's) and its final
    metrics, weights and size are those of the quantised model.
    """
    done = tune.get_checkpoint()
    if done is not None:
        # The trial had finished and saved its student when the driver stopped before recording it:
        # report what it measured rather than train it again (checkpoints without the metrics file,
        # from older versions, are trained again).
        with tempfile.TemporaryDirectory() as tmp:
            done.to_directory(tmp)
            saved = Path(tmp) / METRICS_FILE
            if saved.is_file():
                tune.report(json.loads(saved.read_text()), checkpoint=tune.Checkpoint.from_directory(tmp))
                return
    # A trial gets a share of the cores: more threads than that would fight the neighbouring trials.
    torch.set_num_threads(max(1, int(settings.cpus_per_trial)))
    gpu_ids = ray.get_gpu_ids()
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    dim, loss, fit_kwargs = split_config(config)
    lat = settings.latency.get(arch_of(config), {})
    fixed = {
        "latency_ms": lat.get("latency_ms"),
        "latency_spread_ms": lat.get("latency_spread_ms"),
    }

    def report_epoch(row: dict) -> None:
        # "loss" names the trial's distillation loss in its config: the training loss is "train_loss"
        metrics = {("train_loss" if name == "loss" else name): value for name, value in row.items()}
        metrics.pop("n_users", None)
        tune.report({**metrics, **fixed, "final": False})

    precision = precision_of(config)
    student, result = distill(
        knowledge.model(), knowledge.topn, split.train, split.valid, dim, loss, seed=settings.seed,
        k=settings.k, device=device, valid_users=settings.valid_users, on_epoch=report_epoch,
        rescore_best=precision == "fp32", **fit_kwargs,  # a quantised student is scored below instead
    )
    best = result.best_metrics
    if precision != "fp32":
        # Trained in float32, served quantised: the reported metrics are those of the quantised weights.
        student = quantize(student.cpu(), precision)
        best = evaluate(student, split.train, split.valid, ks=(settings.k,))
    metrics = {
        **{name: value for name, value in best.items() if name != "n_users"},
        "precision": precision,
        "epoch": result.epochs_run,
        "train_loss": result.history[-1]["loss"] if result.history else None,
        **fixed,
        "final": True,
        "params": student.n_params(),
        "bytes": student.n_bytes(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "train_seconds": result.seconds,
        "triplets_per_s": result.triplets_per_s,
        "device": device,
        "gpu_ids": ",".join(str(g) for g in gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
        "node_ip": ray.util.get_node_ip_address() if ray.is_initialized() else "",
        "pid": os.getpid(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_student(student, Path(tmp))
        (Path(tmp) / METRICS_FILE).write_text(json.dumps(metrics))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def save_student(model: MF | QuantizedMF, directory: Path) -> Path:
    """The student's weights (float or quantised) and its architecture, in ``directory``."""
    path = directory / STUDENT_FILE
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    torch.save(state, path)
    (directory / "arch.json").write_text(json.dumps(model.arch()))
    return path


def load_student(directory: str | Path) -> MF | QuantizedMF:
    """A student written by :func:`save_student` (``weights_only``: tensors and plain values only)."""
    directory = Path(directory)
    arch = json.loads((directory / "arch.json").read_text())
    state = torch.load(directory / STUDENT_FILE, weights_only=True, map_location="cpu")
    if arch.get("precision", "fp32") != "fp32":
        return QuantizedMF.from_state(state)
    return MF.from_state(arch, state).eval()
