"""The trial function outside Tune: a restored, already finished trial reports its saved result."""

import json

import pytest
from ray import tune

from kdtune.config import TrialSettings
from kdtune.model.mf import MF
from kdtune.model.store import load_model, save_model
from kdtune.search import trainable


def test_restored_finished_trial_reports_its_saved_result_without_training(tmp_path, monkeypatch):
    saved = tmp_path / "checkpoint"
    saved.mkdir()
    save_model(MF(5, 7, 4, seed=0), saved)
    metrics = {"recall@20": 0.25, "latency_ms": 0.1, "params": 48}
    (saved / trainable.METRICS_FILE).write_text(json.dumps(metrics))
    reported = []

    def report(values, checkpoint=None):
        with checkpoint.as_directory() as directory:
            reported.append((values, load_model(directory).arch()))

    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(saved)))
    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(trainable, "distill", lambda *a, **k: pytest.fail("a finished trial was trained again"))
    trainable.train_student({"loss": "bpr", "dim": 4, "lr": 0.01}, knowledge=None, split=None,
                            settings=TrialSettings(k=20, seed=0, cpus_per_trial=1))
    assert reported == [(metrics, MF(5, 7, 4).arch())]


def test_a_trial_served_through_an_index_is_scored_through_it_and_keeps_it(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from kdtune.data.interactions import Interactions, Split
    from kdtune.serving.served import SERVED_INDEX_FILE, ServedStudent, served_student
    from kdtune.train.evaluate import evaluate

    rng = np.random.default_rng(0)
    pairs = [(u, i) for u in range(30) for i in rng.choice(200, size=8, replace=False)]
    users, items = np.array(pairs).T
    part = np.arange(len(pairs)) % 4

    def sub(mask):
        return Interactions.from_arrays(users[mask], items[mask], 30, 200)

    split = Split(sub(part < 2), sub(part == 2), sub(part == 3), "random", 0)
    student = MF(30, 200, 8, seed=0)

    class Result:
        best_metrics, epochs_run, history, best_epoch, stopped_early, seconds, triplets_per_s = {}, 1, [], 1, False, 0.0, 0.0

    reported = []

    def report(values, checkpoint=None):
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                reported.append((values, sorted(p.name for p in __import__("pathlib").Path(directory).iterdir())))

    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(trainable, "distill", lambda *a, **k: (student, Result()))

    class Knowledge:
        topn = None

        def model(self):
            return None

    config = {"loss": "mse_diff", "dim": 8, "lr": 0.01, "alpha": 0.5, "index": "hnsw8_ef16"}
    trainable.train_student(config, knowledge=Knowledge(), split=split, settings=TrialSettings(k=5, seed=0, cpus_per_trial=1))
    (metrics, files), = reported
    served = ServedStudent.from_model(student, "hnsw8_ef16")
    assert metrics["recall@5"] == evaluate(served.scorer(split.train, 5), split.train, split.valid, ks=(5,))["recall@5"]
    assert metrics["index"] == "hnsw8_ef16" and metrics["bytes"] == served.n_bytes()
    assert SERVED_INDEX_FILE in files
    save_model(student, tmp_path)
    from kdtune.serving.served import save_served_index

    save_served_index(served, tmp_path)
    again = served_student(student, "hnsw8_ef16", tmp_path)
    assert again.index.ntotal == 200 and torch.is_tensor(torch.zeros(1))
