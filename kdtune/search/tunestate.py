"""A consistent copy of Tune's experiment state in the run directory, and its use on ``--resume``.

Tune saves its experiment state (the trial table, the search generator, the Optuna searcher) into a
staging directory on the driver and then *copies* it to the storage path in a background thread. A
driver killed during that copy (Ctrl-\\, the OOM killer, a lost laptop lid) leaves truncated files in
storage, and Tune then fails to restore the searcher and carries on with an empty search.

So every time Tune saves its state, :class:`StateSnapshot` also packs the freshly written staging
files into ``<run>/tune-state.zip`` with one atomic rename: the zip is always a complete, mutually
consistent set, and never older than what reached storage. :func:`prepare_resume` puts those files
back into the experiment directory before the Tuner is restored, and refuses, with a clear message,
to resume from damaged state it has no intact copy of.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickletools
import zipfile
from pathlib import Path

import pyarrow.fs
import ray.cloudpickle as cloudpickle
from ray import tune

from kdtune.errors import UsageError

log = logging.getLogger("kdtune")

SNAPSHOT = "tune-state.zip"
# Tune's own files, one per driver session (the session's start time is in the name; Tune restores the
# newest by name). ``search_gen_state-*.json`` is a pickle despite its extension.
PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def intact(data: bytes) -> bool:
    """Whether ``data`` is a complete JSON document or a complete pickle.

    The pickle is walked opcode by opcode up to its STOP, so nothing in it is executed."""
    if not data:
        return False
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - any decoding failure means a damaged file
        return False
    return False


class StateSnapshot(tune.Callback):
    """Packs Tune's current state files into ``<run>/tune-state.zip`` whenever Tune saves them.

    Tune calls :meth:`get_state` right after it has written the experiment state and the searcher
    state to the driver's staging directory, before it copies them to storage: that is the moment the
    staging files are complete. This object is pickled with the Tuner without its target (the run may
    move): after a restore the driver points it at the run's present place (:meth:`retarget`)."""

    def __init__(self, run_dir: Path) -> None:
        self.target: Path | None = Path(run_dir) / SNAPSHOT
        self._staging: str | None = None

    def retarget(self, run_dir: Path) -> None:
        self.target = Path(run_dir) / SNAPSHOT

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._staging is None and trials:
            self._staging = trials[0].local_experiment_path

    def get_state(self) -> None:
        if self._staging is not None and self.target is not None:
            try:
                write_snapshot(Path(self._staging), self.target)
            except OSError as err:  # a full disk must not stop the search; Tune's own copy remains
                log.warning("could not save a copy of the search state to %s: %s", self.target, err)
        return None  # nothing of ours for Tune to store

    def __getstate__(self) -> dict:
        return {"_staging": None, "target": None}


def write_snapshot(staging: Path, target: Path) -> bool:
    """Zip the newest file of each pattern in ``staging`` into ``target`` atomically."""
    files = [max(found) for pattern in PATTERNS if (found := sorted(staging.glob(pattern)))]
    if len(files) < len(PATTERNS):
        return False
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in files:
            zf.write(path, arcname=path.name)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return True


def read_snapshot(path: Path) -> dict[str, bytes] | None:
    """The snapshot's files by name, or None when there is none or it cannot be read whole."""
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            files = {name: zf.read(name) for name in zf.namelist()}
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        log.warning("ignoring %s: %s", path, err)
        return None
    if not all(intact(data) for data in files.values()):
        return None
    return files


def _newest(fs: pyarrow.fs.FileSystem, root: str) -> list[str]:
    """The newest file name of each pattern (the one Tune restores from)."""
    names = [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root))]
    newest = []
    for pattern in PATTERNS:
        prefix, suffix = pattern.split("*")
        found = [n for n in names if n.startswith(prefix) and n.endswith(suffix)]
        if found:
            newest.append(max(found))
    return newest


def _relocate_generator(fs: pyarrow.fs.FileSystem, root: str, name: str, data: bytes) -> None:
    """Point the saved search generator at the experiment's present location.

    Tune relocates the trials it restores from a moved experiment, but not the search generator whose
    experiment spec (with its storage) makes the trials still to come: in a run moved before all its
    trials were created, those would be written to the old place, and fail once it is gone. The file is
    Tune's own pickle, which Tune's restore loads in any case.
    """
    state = cloudpickle.loads(data)
    experiment = state.get("experiment") if isinstance(state, dict) else None
    storage = getattr(experiment, "storage", None)
    parent, exp_name = root.rstrip("/").rsplit("/", 1)
    if storage is None or (storage.storage_fs_path == parent and storage.experiment_dir_name == exp_name):
        return
    moved = copy.copy(storage)
    moved.storage_filesystem, moved.storage_fs_path, moved.experiment_dir_name = fs, parent, exp_name
    experiment.storage = moved
    experiment.spec["storage"] = moved
    tmp = f"{root}/.{name}.relocate.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(cloudpickle.dumps(state))
    fs.move(tmp, f"{root}/{name}")
    log.info("search generator moved from %s/%s to %s", storage.storage_fs_path, storage.experiment_dir_name, root)


def saved_trial_ids(experiment_path: str) -> set[str]:
    """The ids of the trials in the experiment's newest saved trial table (``experiment_state-*.json``),
    read from that one file rather than from every trial's results."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path)
    for name in _newest(fs, root):
        if name.startswith("experiment_state-"):
            with fs.open_input_stream(f"{root}/{name}") as f:
                table = json.loads(f.readall())
            return {json.loads(trial)["trial_id"] for trial, _runtime in table["trial_data"]}
    return set()


def prepare_resume(experiment_path: str, run_dir: Path) -> None:
    """Make the experiment directory's newest state files intact before Tune restores from them.

    The run directory's snapshot is written before each copy to storage, so it is at least as new as
    what storage holds: its files replace storage's. Without a snapshot (a run started before it
    existed, or killed before Tune first saved its state), the storage files are checked and a damaged
    one stops the resume with a message rather than a search that silently starts over.
    """
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path)
    snapshot = read_snapshot(Path(run_dir) / SNAPSHOT)
    if snapshot:
        for name, data in snapshot.items():
            tmp = f"{root}/.{name}.restore.tmp"
            with fs.open_output_stream(tmp) as out:
                out.write(data)
            fs.move(tmp, f"{root}/{name}")
        log.info("search state restored from %s (%s)", Path(run_dir) / SNAPSHOT, ", ".join(sorted(snapshot)))
    for name in _newest(fs, root):
        with fs.open_input_stream(f"{root}/{name}") as f:
            data = f.readall()
        if not intact(data):
            raise UsageError(
                f"the search state file {root}/{name} is damaged (the search was stopped while writing it) "
                f"and {run_dir} holds no intact copy ({SNAPSHOT}); the finished trials are still in "
                f"{root}, but this run cannot be resumed: start a new one with another --out"
            )
        if name.startswith("search_gen_state-"):
            _relocate_generator(fs, root, name, data)
