"""The Ray Tune trainable (thin: distill -> report every epoch -> report the best epoch with its weights)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from kdtune.config import MODEL_KEYS, TRAIN_DEFAULTS, TrialSettings
from kdtune.data.interactions import Split
from kdtune.errors import TrialOutOfMemory
from kdtune.losses import get_loss
from kdtune.model.store import TeacherKnowledge, save_model
from kdtune.search.memory import peak_memory
from kdtune.serving.arch import DEFAULT_INDEX, arch_of, index_of
from kdtune.serving.served import ServedStudent, save_served_index
from kdtune.train.evaluate import evaluate
from kdtune.train.fit import distill

METRICS_FILE = "metrics.json"


def split_config(config: dict) -> tuple[int, str, dict]:
    """``(dim, loss, fit kwargs)`` from a trial config; unknown keys are an error, not silently ignored.

    The KD weight is the loss's own ``<loss>_weight`` (``lambda`` of ``BPR + lambda * KD``, see
    :meth:`~kdtune.losses.registry.LossDef.alpha`) or a shared ``alpha``; the temperature its own
    ``<loss>_T`` or a shared ``T``."""
    loss = config["loss"]
    spec = get_loss(loss)
    fit_kwargs = {key: config.get(key, default) for key, default in TRAIN_DEFAULTS.items()}
    fit_kwargs["lr"] = float(config["lr"])
    weight = config.get(spec.weight_key)
    fit_kwargs["alpha"] = spec.alpha(float(weight)) if weight is not None else float(config.get("alpha", 0.0))
    fit_kwargs["T"] = float(config.get(spec.temperature_key, config.get("T", 1.0)))
    loss_params = {key: value for key, value in config.items() if key in spec.params}
    # Everything that is not a trainer setting or a model key must be a parameter of the chosen loss.
    own = {spec.weight_key, spec.temperature_key if spec.uses_temperature else None}
    unknown = set(config) - set(TRAIN_DEFAULTS) - set(MODEL_KEYS) - set(loss_params) - own
    if unknown:
        raise ValueError(f"trial config has keys that loss {loss!r} does not take: {sorted(unknown)}")
    fit_kwargs["loss_params"] = loss_params
    return int(config["dim"]), loss, fit_kwargs


def train_student(config: dict, knowledge: TeacherKnowledge, split: Split, settings: TrialSettings) -> None:
    """One trial: distil a student with ``config``, report every epoch, then the best epoch and its weights.

    Each epoch's report carries the per-epoch validation signal (a fixed sample of validation users) and the
    architecture's latency, so the dashboard shows learning curves and a scheduler can stop the trial at a
    rung. The last report (``final: True``) carries the best epoch's metrics and the student's checkpoint;
    a trial stopped by the scheduler never sends it. A student trains in float32 (its per-epoch signal is
    the float model's); its final metrics are measured through the Faiss index it is served from (its
    ``index``, ``flat`` by default; ``kdtune.serving.served``) at the run's catalogue size (its item table
    extended with drawn rows when that exceeds the data's) over all validation users, beside what ``flat``
    scores at that size (``exact_recall@K``); its size is the index's, and an approximate index is kept with
    its weights (built once per trial, reused by the export).
    """
    done = tune.get_checkpoint()
    if done is not None:
        # The trial had finished and saved its student when the driver stopped before recording it:
        # report what it measured rather than train it again.
        with tempfile.TemporaryDirectory() as tmp:
            done.to_directory(tmp)
            tune.report(json.loads((Path(tmp) / METRICS_FILE).read_text()),
                        checkpoint=tune.Checkpoint.from_directory(tmp))
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

    try:
        student, result = distill(
            knowledge.model(), knowledge.topn, split.train, split.valid, dim, loss, seed=settings.seed,
            k=settings.k, device=device, valid_users=settings.valid_users, on_epoch=report_epoch,
            rescore_best=False, **fit_kwargs,  # the best epoch is scored below, through its index
        )
    except torch.cuda.OutOfMemoryError as exc:
        # The trial's own memory goes back to the GPU its neighbours share; the trial ends as an error.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "out of memory"
        raise TrialOutOfMemory(f"GPU out of memory (dim {dim}, loss {loss}, batch {fit_kwargs['batch_size']} "
                               f"on {device}): {first}") from None
    student = student.cpu()
    served = ServedStudent.from_model(student, index_of(config), seed=settings.seed, catalog_size=settings.catalog_size)
    metrics = {**_served_metrics(served, split, settings.k), **_exact_metrics(student, served, split, settings),
               "epoch": result.epochs_run,
               "train_loss": result.history[-1]["loss"] if result.history else None, **fixed, "final": True,
               "params": student.n_params(), **_fit_record(result), **_placement(device, gpu_ids),
               **peak_memory(device)}
    with tempfile.TemporaryDirectory() as tmp:
        save_model(student, Path(tmp))
        if not served.spec.exact:
            # an approximate index is the costly build (k-means, a graph): the export reads it back; an exact
            # one is rebuilt from the weights (the same index, as cheap as reading hundreds of MB at 1M items)
            save_served_index(served, Path(tmp))
        (Path(tmp) / METRICS_FILE).write_text(json.dumps(metrics))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _served_metrics(served: ServedStudent, split: Split, k: int) -> dict:
    """Validation metrics over all validation users through the student's index (what a user sees is what
    the index returns, seen items dropped), the index's name and its size."""
    best = evaluate(served.scorer(split.train, k), split.train, split.valid, ks=(k,))
    return {**{name: value for name, value in best.items() if name != "n_users"}, "index": served.spec.name,
            "bytes": served.n_bytes()}


def _exact_metrics(student, served: ServedStudent, split: Split, settings: TrialSettings) -> dict:
    """For a student served through any index but ``flat``, its validation Recall/NDCG through ``flat`` at
    the same catalogue (``exact_`` prefixed): what the index keeps of exact search, for the same weights."""
    if served.spec.name == DEFAULT_INDEX:
        return {}
    exact = ServedStudent.from_model(student, DEFAULT_INDEX, seed=settings.seed, catalog_size=settings.catalog_size)
    k = settings.k
    best = evaluate(exact.scorer(split.train, k), split.train, split.valid, ks=(k,))
    return {f"exact_{name}@{k}": best[f"{name}@{k}"] for name in ("recall", "ndcg")}


def _fit_record(result) -> dict:
    """How the trial's training went (best epoch, stop, speed)."""
    return {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
            "train_seconds": result.seconds, "triplets_per_s": result.triplets_per_s}


def _placement(device: str, gpu_ids: list) -> dict:
    """Where the trial ran: device, GPUs, node and process."""
    return {
        "device": device,
        "gpu_ids": ",".join(str(g) for g in gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
        "node_ip": ray.util.get_node_ip_address() if ray.is_initialized() else "",
        "pid": os.getpid(),
    }
