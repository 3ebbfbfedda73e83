"""A search run: the typed :class:`Run`, the one reader and writer of ``run.json``.

The driver creates a run once (:meth:`Run.create`) and passes it down (trials, latency, export); a
resume or a re-export loads it (:meth:`Run.load`). A run directory is self-contained and relocatable:
every path in ``run.json`` that lies inside the run is stored relative to it (a ``--storage`` URI
elsewhere is kept as given), and the teacher the trials distilled from is kept in the run
(``teacher.pt``, with its content hash in ``run.json``), so a copied or moved run exports and resumes
with exactly that teacher, or refuses in one line.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from kdtune.config import DataSettings, SearchSettings
from kdtune.data.interactions import Interactions, Split
from kdtune.errors import UsageError
from kdtune.model.store import TeacherKnowledge, load_cached, load_teacher, save_teacher, teacher_cache_file
from kdtune.search.space import SearchSpace
from kdtune.serving.plan import LatencyPlan

RUN_FILE = "run.json"
EXPERIMENT = "search"
TEACHER_FILE = "teacher.pt"
SPACE_FILE = "space.yaml"
SCHEDULER_STATE = "scheduler-state.json"
BASELINES_FILE = "baselines.csv"
FINISHED, INCOMPLETE, RUNNING = "finished", "incomplete", "running"


def _runtime(**kw):
    """A field of the run in memory only (never written to ``run.json``)."""
    return field(default=None, repr=False, compare=False, metadata={"runtime": True}, **kw)


@dataclass
class Run:
    """One search run: its settings, what it measured, and where its parts are.

    The fields are ``run.json``'s keys, in its order (a field still ``None`` is not written); ``dir``,
    ``space``, ``interactions`` and ``split`` live in memory (the space is kept as ``space.yaml``)."""

    dir: Path = _runtime()
    status: str = RUNNING
    command: str = ""
    data: DataSettings = field(default_factory=DataSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    space_file: str = SPACE_FILE
    data_fingerprint: str = ""
    split_fingerprint: str = ""
    data_description: str = ""
    versions: dict = field(default_factory=dict)
    started: str = ""
    timings: dict = field(default_factory=dict)
    resources_per_trial: dict | None = None
    nodes: list | None = None
    resource_plan: dict | None = None
    peak_memory: dict | None = None
    teacher: dict | None = None
    latency: dict | None = None
    experiment_path: str | None = None
    scheduler: dict | None = None
    hypervolume: dict | None = None
    trial_counts: dict | None = None
    front_size: int | None = None
    front_kinds: dict | None = None
    exported: str | None = None
    behind_plain: list | None = None
    space: SearchSpace = _runtime()
    interactions: Interactions = _runtime()
    split: Split = _runtime()

    # -- creating, reading and writing ---------------------------------------------------------------

    @staticmethod
    def new_dir(out: str | None) -> Path:
        """Where a new run goes; refuses a directory that already holds something (nothing is overwritten)."""
        path = Path(out) if out else Path("results") / time.strftime("%Y%m%d-%H%M%S")
        try:
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise UsageError(f"{path} is not empty; choose another --out, or --resume {path} to continue it")
        except OSError as exc:
            raise UsageError(f"--out {path}: {exc}") from None
        return path.resolve()

    @classmethod
    def create(cls, run_dir: Path, data: DataSettings, search: SearchSettings, space: SearchSpace,
               interactions: Interactions, split: Split, argv: list[str] | None) -> Run:
        """Create ``run_dir`` with the run's record (exact configuration, versions, fingerprints) and space."""
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            space.save(run_dir / SPACE_FILE)
        except OSError as exc:
            raise UsageError(f"cannot write the run directory {run_dir}: {exc}") from None
        run = cls(dir=run_dir, data=data, search=search, space=space, interactions=interactions, split=split,
                  command=" ".join(["python -m kdtune.search", *(argv if argv is not None else sys.argv[1:])]),
                  data_fingerprint=interactions.fingerprint(), split_fingerprint=split.fingerprint(),
                  data_description=interactions.describe(), versions=versions(),
                  started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        run.save()
        return run

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        """The run recorded in ``run_dir`` (its data and space not attached yet: :meth:`attach`)."""
        run_dir = Path(run_dir).resolve()
        path = run_dir / RUN_FILE
        if not path.is_file():
            raise UsageError(f"{run_dir} is not a kdtune run (no {RUN_FILE})")
        try:
            record = json.loads(path.read_text())
            record.pop("space", None)  # a copy for readers; the run's space is its space file
            run = cls(dir=run_dir, **{**record, "data": DataSettings(**record["data"]),
                                      "search": SearchSettings(**record["search"])})
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, TypeError, KeyError) as exc:
            raise UsageError(f"{path} is unreadable: {exc}") from None
        return run

    def save(self) -> None:
        """Write ``run.json`` atomically (a reader never sees half a record)."""
        record = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("runtime") or value is None:
                continue
            record[f.name] = asdict(value) if f.name in ("data", "search") else value
            if f.name == "space_file":
                record["space"] = self.space.to_dict()
        tmp = self.dir / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(self.dir / RUN_FILE)

    def attach(self, interactions: Interactions, split: Split, space: SearchSpace) -> None:
        """The run's data and space (from :attr:`space_path`), loaded again for a resume or an export: the
        data is refused if it is not the data the run started with."""
        if split.fingerprint() != self.split_fingerprint:
            raise UsageError(f"the data of {self.dir} changed since the run started (fingerprint differs)")
        self.interactions, self.split, self.space = interactions, split, space

    # -- paths ---------------------------------------------------------------------------------------

    def relative(self, path: str) -> str:
        """``path`` relative to the run when it lies inside it; a URI or an outside path unchanged."""
        if "://" in path:
            return path
        try:
            return Path(path).resolve().relative_to(self.dir.resolve()).as_posix()
        except ValueError:
            return path

    def resolve(self, path: str) -> str:
        """The inverse of :meth:`relative`: a stored path as an absolute path or URI for this machine."""
        if "://" in path or Path(path).is_absolute():
            return path
        return str(self.dir / path)

    @property
    def space_path(self) -> str:
        """The run's search space file."""
        return self.resolve(self.space_file)

    def experiment(self) -> str:
        """Where the run's Ray Tune experiment lives (inside the run unless ``--storage`` put it elsewhere)."""
        if self.experiment_path is None:
            storage = self.search.storage or str(self.dir / "ray")
            self.experiment_path = self.relative(f"{storage.rstrip('/')}/{EXPERIMENT}")
        return self.resolve(self.experiment_path)

    @property
    def catalog_size(self) -> int:
        """The catalogue size latency is measured at."""
        return self.search.catalog_size or self.interactions.n_items

    def latency_plan(self, knowledge: TeacherKnowledge) -> LatencyPlan:
        """Which architectures the run times (every student of its space, the teacher) and how: each index
        over tables drawn from the teacher's item table (an approximate index's speed depends on them)."""
        reference = (knowledge.state["item_emb.weight"].float().numpy(),
                     knowledge.state["item_bias.weight"].float().numpy().reshape(-1))
        return LatencyPlan(self.space.dims(), self.space.indexes(), knowledge.arch["dim"], self.catalog_size,
                           self.data.k, self.search.latency_threads, reference)

    # -- the run's teacher ---------------------------------------------------------------------------

    def keep_teacher(self, knowledge: TeacherKnowledge) -> None:
        """Store the teacher in the run (once) and record its content hash."""
        path = self.dir / TEACHER_FILE
        if not path.exists():
            save_teacher(knowledge, path)
        self.teacher = {**knowledge.summary(), "file": TEACHER_FILE, "content_hash": knowledge.content_hash()}

    def own_teacher(self) -> TeacherKnowledge | None:
        """Exactly the teacher the run distilled from: the run's own copy, else the cache entry of the same
        content; ``None`` when the run has not recorded one yet (a new run). A teacher whose content differs
        from the recorded hash is refused in one line rather than silently distilled from."""
        record = self.teacher
        if not record:
            return None
        # the run's own copy must be readable; an unreadable cache entry is only skipped (load_cached)
        candidates = [(self.dir / record["file"], _read_teacher),
                      (teacher_cache_file(record["key"], self.data.cache_dir), load_cached)]
        for path, read in candidates:
            knowledge = read(path) if path.exists() else None
            if knowledge is None:
                continue
            if knowledge.content_hash() == record["content_hash"]:
                return knowledge
            raise UsageError(f"the teacher in {path} is not the one {self.dir} distilled from (content differs); "
                             "restore the run's teacher.pt or start a new run")
        raise UsageError(f"{self.dir} has lost its teacher ({record['file']} is missing and no cache entry holds "
                         "the same teacher); export or resume needs exactly that teacher")


def _read_teacher(path: Path) -> TeacherKnowledge:
    try:
        return load_teacher(path)
    except Exception as exc:  # a damaged file: report like a missing one, with the reason
        raise UsageError(f"{path} is unreadable: {exc}") from None


def versions() -> dict:
    """The versions of kdtune and the libraries behind a run's figures."""
    import numpy
    import optuna
    import pandas
    import ray
    import torch

    from kdtune import __version__

    return {"kdtune": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": numpy.__version__, "pandas": pandas.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__}
