"""The run directory's copy of Tune's state and what --resume does with damaged state (no Ray started)."""

import json
import pickle

import pytest

from kdtune.errors import UsageError
from kdtune.search.tunestate import (
    SNAPSHOT,
    intact,
    prepare_resume,
    read_snapshot,
    saved_trial_ids,
    write_snapshot,
)

SESSION = "2026-01-02_03-04-05"


def tune_files(directory, session=SESSION, trials=3):
    """Files shaped like Tune's: the experiment state is JSON, the two searcher states are pickles."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": list(range(trials))}))
    (directory / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": trials}))
    (directory / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"_ot_trials": {"a": 1}}))
    return directory


def test_intact_accepts_whole_json_and_pickle_and_rejects_truncated():
    doc = json.dumps({"a": [1, 2, 3]}).encode()
    blob = pickle.dumps({"a": list(range(100))})
    assert intact(doc) and intact(blob)
    assert not intact(b"")
    assert not intact(doc[:-1])
    assert not intact(blob[: len(blob) // 2])
    assert not intact(b"\x00\x01garbage")


def test_snapshot_round_trip_takes_the_newest_session(tmp_path):
    staging = tune_files(tmp_path / "staging", session="2026-01-01_00-00-00", trials=1)
    tune_files(staging, session=SESSION, trials=3)
    target = tmp_path / "run" / SNAPSHOT
    target.parent.mkdir()
    assert write_snapshot(staging, target)
    files = read_snapshot(target)
    assert sorted(files) == sorted(p.name for p in staging.glob(f"*{SESSION}*"))
    assert json.loads(files[f"experiment_state-{SESSION}.json"]) == {"trial_data": [0, 1, 2]}
    assert not list(target.parent.glob(".*tmp"))  # written by rename, nothing left behind


def test_snapshot_needs_all_three_files(tmp_path):
    staging = tune_files(tmp_path / "staging")
    (staging / f"searcher-state-{SESSION}.pkl").unlink()
    assert not write_snapshot(staging, tmp_path / SNAPSHOT)
    assert not (tmp_path / SNAPSHOT).exists()


def test_resume_replaces_a_truncated_state_file_with_the_snapshot(tmp_path):
    run = tmp_path / "run"
    experiment = tune_files(run / "ray" / "search", trials=2)
    write_snapshot(tune_files(tmp_path / "staging", trials=3), run / SNAPSHOT)
    searcher = experiment / f"searcher-state-{SESSION}.pkl"
    searcher.write_bytes(searcher.read_bytes()[:5])  # a copy cut short by the kill
    prepare_resume(str(experiment), run)
    assert pickle.loads(searcher.read_bytes()) == {"_ot_trials": {"a": 1}}
    # The snapshot is never older than storage: its trial table wins too.
    assert json.loads((experiment / f"experiment_state-{SESSION}.json").read_text())["trial_data"] == [0, 1, 2]


def test_resume_without_an_intact_copy_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    experiment = tune_files(run / "ray" / "search")
    (experiment / f"searcher-state-{SESSION}.pkl").write_bytes(b"")
    with pytest.raises(UsageError, match="damaged"):
        prepare_resume(str(experiment), run)
    # A damaged snapshot is no help either, and is not taken for one.
    (run / SNAPSHOT).write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(UsageError, match="damaged"):
        prepare_resume(str(experiment), run)


def test_resume_from_intact_storage_without_snapshot_changes_nothing(tmp_path):
    run = tmp_path / "run"
    experiment = tune_files(run / "ray" / "search")
    before = {p.name: p.read_bytes() for p in experiment.iterdir()}
    prepare_resume(str(experiment), run)
    assert {p.name: p.read_bytes() for p in experiment.iterdir()} == before


def test_saved_trial_ids_come_from_the_newest_trial_table(tmp_path):
    experiment = tune_files(tmp_path / "search")
    # Tune's layout: one [trial JSON, runtime JSON] pair per trial
    table = {"trial_data": [[json.dumps({"trial_id": t, "config": {}}), "{}"] for t in ("a1", "b2")]}
    (experiment / "experiment_state-2026-01-02_09-00-00.json").write_text(json.dumps(table))
    assert saved_trial_ids(str(experiment)) == {"a1", "b2"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert saved_trial_ids(str(empty)) == set()


def test_resume_points_the_search_generator_at_a_moved_run(tmp_path):
    """Tune relocates the trials it restores, not the generator that makes the next ones: its pickled
    experiment keeps the storage it was saved with, so prepare_resume moves it to where the run is now."""
    from types import SimpleNamespace

    import ray.cloudpickle as cloudpickle
    from ray.train._internal.storage import StorageContext

    old = tmp_path / "killed" / "ray"
    storage = StorageContext(storage_path=str(old), experiment_dir_name="search")
    run = tmp_path / "elsewhere" / "moved"
    experiment = tune_files(run / "ray" / "search")
    state = {"counter": 2, "experiment": SimpleNamespace(storage=storage, spec={"storage": storage, "x": 1})}
    (experiment / f"search_gen_state-{SESSION}.json").write_bytes(cloudpickle.dumps(state))
    prepare_resume(str(experiment), run)
    got = cloudpickle.loads((experiment / f"search_gen_state-{SESSION}.json").read_bytes())
    moved = got["experiment"].storage
    assert moved.storage_fs_path == (run / "ray").as_posix() and moved.experiment_dir_name == "search"
    assert moved.experiment_fs_path == experiment.as_posix()
    assert got["experiment"].spec["storage"] is moved and got["experiment"].spec["x"] == 1 and got["counter"] == 2
    # already in place: the file is left as it is
    before = (experiment / f"search_gen_state-{SESSION}.json").read_bytes()
    prepare_resume(str(experiment), run)
    assert (experiment / f"search_gen_state-{SESSION}.json").read_bytes() == before
