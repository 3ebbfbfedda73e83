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


@pytest.mark.parametrize("catalog", [None, 1000])
def test_a_trial_served_through_an_index_is_scored_through_it_and_keeps_it(tmp_path, monkeypatch, catalog):
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
    monkeypatch.setattr(trainable.ray, "get_gpu_ids", lambda: [])  # outside a trial: no Ray to start
    monkeypatch.setattr(trainable.torch, "set_num_threads", lambda n: None)  # keep this process's threads

    class Knowledge:
        topn = None

        def model(self):
            return None

    config = {"loss": "mse_diff", "dim": 8, "lr": 0.01, "alpha": 0.5, "index": "hnsw8_ef16"}
    settings = TrialSettings(k=5, seed=0, cpus_per_trial=1, catalog_size=catalog)
    trainable.train_student(config, knowledge=Knowledge(), split=split, settings=settings)
    (metrics, files), = reported
    # at a larger catalogue: its own 200 items and 800 drawn rows, through its index and through flat
    served = ServedStudent.from_model(student, "hnsw8_ef16", catalog_size=catalog)
    exact = ServedStudent.from_model(student, "flat", catalog_size=catalog)
    assert served.n_items == (catalog or 200)
    for prefix, model in (("", served), ("exact_", exact)):
        assert metrics[f"{prefix}recall@5"] == evaluate(model.scorer(split.train, 5), split.train, split.valid,
                                                        ks=(5,))["recall@5"]
    assert metrics["index"] == "hnsw8_ef16" and metrics["bytes"] == served.n_bytes()
    assert SERVED_INDEX_FILE in files
    save_model(student, tmp_path)
    from kdtune.serving.served import save_served_index

    save_served_index(served, tmp_path)
    again = served_student(student, "hnsw8_ef16", tmp_path, catalog_size=catalog)
    assert again.index.ntotal == (catalog or 200) and torch.is_tensor(torch.zeros(1))


def _trial_that_may_run_out_of_memory(config, knowledge, split, settings):
    import torch

    from kdtune.search import trainable as trial

    if config.pop("oom"):
        def out_of_memory(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 139 GiB "
                                              "total capacity)\nmore detail the table does not need")

        trial.distill = out_of_memory  # this trial's own worker process only (reuse_actors=False)
    trial.train_student(config, knowledge, split, settings)


def test_a_trial_out_of_gpu_memory_ends_as_a_one_line_error_and_the_search_goes_on(ray_cluster, tmp_path):
    import sys

    from ray import cloudpickle  # the pickler Ray ships trials with

    from kdtune.config import DataSettings, TeacherSettings
    from kdtune.data import prepare
    from kdtune.report.export import trial_table
    from kdtune.train.teacher import train_teacher

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the trial function travels by value
    _, split = prepare(DataSettings(data="synthetic:users=150,items=200", cache_dir=str(tmp_path / "cache")))
    knowledge = train_teacher(split, TeacherSettings(dim=8, epochs=1), progress=False)
    fn = tune.with_parameters(_trial_that_may_run_out_of_memory, knowledge=knowledge, split=split,
                              settings=TrialSettings(k=10, seed=0, cpus_per_trial=1, valid_users=0))
    config = {"loss": "bpr", "dim": 4, "lr": 0.01, "epochs": 2, "oom": tune.grid_search([False, True, False])}
    tune.Tuner(fn, param_space=config, tune_config=tune.TuneConfig(reuse_actors=False, max_concurrent_trials=2),
               run_config=tune.RunConfig(name="oom", storage_path=str(tmp_path / "ray"), verbose=0,
                                         failure_config=tune.FailureConfig(max_failures=0))).fit()
    table, _ = trial_table(str(tmp_path / "ray" / "oom"))
    failed = table[table["status"].eq("ERROR")]
    assert len(table) == 3 and len(failed) == 1 and failed["oom"].tolist() == [True]
    reason = failed["error"].iloc[0]
    assert "\n" not in reason and reason.endswith("GPU out of memory (dim 4, loss bpr, batch 4096 on cpu): CUDA out of "
                                                  "memory. Tried to allocate 2.00 GiB (GPU 0; 139 GiB total capacity)")
    assert (table["outcome"].eq("finished")).sum() == 2
