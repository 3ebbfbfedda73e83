"""The Ray Tune trainable (thin: distill -> evaluate -> report) and the latency benchmark actor."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray import tune

from kdtune import latency
from kdtune.data import Split
from kdtune.losses import get_loss
from kdtune.models import MF
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
    catalog_size: int
    latency_device: str = "cpu"
    latency_threads: int = 1


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


@ray.remote(num_cpus=0)
class LatencyBench:
    """Times one architecture at a time and remembers it, so that every trial of the same ``dim``
    reports the same figure, measured once rather than inside each busy trial."""

    def __init__(self, catalog_size: int, k: int, device: str, threads: int):
        self.kw = {"n_items": catalog_size, "k": k, "device": device, "threads": threads}

    def profile(self, dim: int) -> dict:
        return dict(latency.profile(int(dim), **self.kw))


def train_student(
    config: dict, knowledge: TeacherKnowledge, split: Split, bench, settings: TrialSettings
) -> None:
    """One trial: distil a student with ``config``, report validation metrics, latency and its weights."""
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
    student, result = distill(
        knowledge.model(), knowledge.topn, split.train, split.valid, dim, loss, seed=settings.seed,
        k=settings.k, device=device, **fit_kwargs,
    )
    lat = ray.get(bench.profile.remote(dim))
    metrics = {
        **{name: value for name, value in result.best_metrics.items() if name != "n_users"},
        "latency_ms": lat["latency_ms"],
        "latency_p95_ms": lat["latency_p95_ms"],
        "latency_b256_ms": lat.get("latency_b256_ms"),
        "params": student.n_params(),
        "bytes": student.n_bytes(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.seconds,
        "triplets_per_s": result.triplets_per_s,
        "device": device,
        "gpu_ids": ",".join(str(g) for g in gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "pid": os.getpid(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_student(student, Path(tmp))
        (Path(tmp) / METRICS_FILE).write_text(json.dumps(metrics))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def save_student(model: MF, directory: Path) -> Path:
    path = directory / STUDENT_FILE
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    (directory / "arch.json").write_text(json.dumps(model.arch()))
    return path


def load_student(directory: str | Path) -> MF:
    directory = Path(directory)
    arch = json.loads((directory / "arch.json").read_text())
    state = torch.load(directory / STUDENT_FILE, weights_only=True, map_location="cpu")
    return MF.from_state(arch, state).eval()
