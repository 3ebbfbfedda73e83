"""The run directory's record: ``run.json``, paths stored relative to the run, and the run's own teacher.

A run directory is self-contained and relocatable: every path in ``run.json`` that lies inside the run is
stored relative to it (a ``--storage`` URI elsewhere is kept as given), and the teacher the trials distilled
from is kept in the run (``teacher.pt``, with its content hash in ``run.json``), so a copied or moved run
exports and resumes with exactly that teacher, or refuses in one line. This module imports only library
stages below the entry points (never ``search``, ``runner`` or ``export``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdtune.errors import UsageError
from kdtune.teacher import TeacherKnowledge, cache_file, load_cached
from kdtune.teacher import load as load_teacher_file
from kdtune.teacher import save as save_teacher_file

RUN_FILE = "run.json"
EXPERIMENT = "search"
TEACHER_FILE = "teacher.pt"
SPACE_FILE = "space.yaml"


def new_run_dir(out: str | None) -> Path:
    """Where a new run goes; refuses a directory that already holds something (nothing is overwritten)."""
    path = Path(out) if out else Path("results") / time.strftime("%Y%m%d-%H%M%S")
    try:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"{path} is not empty; choose another --out, or --resume {path} to continue it")
    except OSError as exc:
        raise UsageError(f"--out {path}: {exc}") from None
    return path.resolve()


def read_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a kdtune run (no {RUN_FILE})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"{path} is unreadable: {exc}") from None


def write_run(run_dir: Path, run: dict) -> None:
    """Write ``run.json`` atomically (a reader never sees half a record)."""
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(run, indent=2, default=str))
    tmp.replace(run_dir / RUN_FILE)


def relative(run_dir: Path, path: str) -> str:
    """``path`` relative to ``run_dir`` when it lies inside it; a URI or an outside path unchanged."""
    if "://" in path:
        return path
    try:
        return Path(path).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return path


def resolve(run_dir: Path, path: str) -> str:
    """The inverse of :func:`relative`: a stored path as an absolute path or URI for this machine."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(run_dir / path)


def experiment_path(run_dir: Path, run: dict) -> str:
    """Where the run's Ray Tune experiment lives (inside the run unless ``--storage`` put it elsewhere)."""
    return resolve(run_dir, run["experiment_path"])


def space_path(run_dir: Path, run: dict) -> str:
    return resolve(run_dir, run.get("space_file", SPACE_FILE))


def keep_teacher(run_dir: Path, run: dict, knowledge: TeacherKnowledge) -> None:
    """Store the teacher in the run (once) and record its content hash."""
    path = run_dir / TEACHER_FILE
    if not path.exists():
        save_teacher_file(knowledge, path)
    run["teacher"] = {**knowledge.summary(), "file": TEACHER_FILE, "content_hash": knowledge.content_hash()}


def run_teacher(run_dir: Path, run: dict, cache_dir: str | None) -> TeacherKnowledge | None:
    """Exactly the teacher the run distilled from: the run's own copy, else the cache entry of the same
    content; ``None`` when the run has not recorded one yet (a new run). A teacher whose content differs
    from the recorded hash is refused in one line rather than silently distilled from."""
    record = run.get("teacher")
    if not record:
        return None
    expected = record.get("content_hash")
    # the run's own copy must be readable; an unreadable cache entry is only skipped (load_cached)
    candidates = [(run_dir / record.get("file", TEACHER_FILE), _load)]
    if cache_dir is not None and record.get("key"):
        candidates.append((cache_file(record["key"], cache_dir), load_cached))
    for path, read in candidates:
        if not path.exists():
            continue
        knowledge = read(path)
        if knowledge is None:
            continue
        if expected is None or knowledge.content_hash() == expected:
            return knowledge
        raise UsageError(f"the teacher in {path} is not the one {run_dir} distilled from (content differs); "
                         "restore the run's teacher.pt or start a new run")
    if expected is None:
        return None  # a run recorded before teachers were kept: the caller trains or loads it as before
    raise UsageError(f"{run_dir} has lost its teacher ({record.get('file', TEACHER_FILE)} is missing and no "
                     "cache entry holds the same teacher); export or resume needs exactly that teacher")


def _load(path: Path) -> TeacherKnowledge | None:
    try:
        return load_teacher_file(path)
    except Exception as exc:  # a damaged file: report like a missing one, with the reason
        raise UsageError(f"{path} is unreadable: {exc}") from None

