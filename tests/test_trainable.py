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
