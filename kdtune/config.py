"""Every settings dataclass, and the one place each default lives.

Parsed once at the entry points (``kdtune.cli``), passed down as objects; below them functions take
explicit arguments and the model never sees a settings object (nanoGPT's ``GPTConfig``, cleanrl's
``Args``). ``fit``, the search space's ``fixed:`` settings, the plain students, ``kdtune.compare`` and
the teacher all read their trainer defaults from :data:`DEFAULTS`, so they cannot drift apart.

- :class:`TrainSettings`: how a model is trained (students; the teacher's are a :class:`TeacherSettings`);
- :class:`DataSettings`: where the interactions come from and how they are split;
- :class:`SearchSettings`: how a search runs (trials, resources, cluster, latency, scheduler);
- :class:`TrialSettings`: what the driver hands every trial of one run.

A field whose metadata has ``help`` is a command-line flag (``--field-name``) of the entry points that
take that dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_CACHE_DIR = "~/.cache/kdtune"
SPLIT_METHODS = ("random", "temporal")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
SCHEDULERS = ("pareto-asha", "none")
# Above this many (user, item) cells a dense bitmap of pairs (1 byte a cell) would cost too much
# memory; a sorted-key search is used instead (about 2x slower, see DESIGN.md).
MAX_BITMAP_CELLS = 400_000_000


def setting(default, help: str, **kw):
    """A dataclass field that is also a command-line flag, carrying its one-line help."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainSettings:
    """How a student is trained."""

    epochs: int = 40
    """Epoch budget: an upper bound, early stopping on validation NDCG@K usually ends sooner."""
    patience: int = 5
    """Epochs without a better validation NDCG@K before stopping."""
    batch_size: int = 4096
    """BPR triplets per optimisation step."""
    lr: float = 0.01
    """AdamW learning rate."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay of every row (keeps rarely seen rows small)."""
    optimizer: str = "dense"
    """``dense`` AdamW, or row-sparse ``lazy`` AdamW (see ``kdtune.train.fit.make_optimizer``)."""
    lr_schedule: str = "constant"
    """``constant``, or ``cosine`` over the epoch budget."""
    valid_users: int = 256
    """Validation users (a fixed seeded sample) behind each epoch's signal; 0 = all. A finished run's
    reported metrics are always over every validation user."""


DEFAULTS = TrainSettings()

SPACE_KEYS = ("epochs", "patience", "batch_size", "weight_decay", "lr_schedule")
"""The trainer settings a search space may search or fix."""
TRAIN_DEFAULTS = {key: getattr(DEFAULTS, key) for key in SPACE_KEYS}
"""Trainer settings a trial config may carry (searched or fixed), with the values used when absent."""
TRAIN_KEYS = tuple(TRAIN_DEFAULTS)
MODEL_KEYS = ("dim", "loss", "lr", "alpha", "T", "index")
"""Student/loss settings every loss accepts (``T`` only used by temperature losses; ``index`` the Faiss index
the student's item table is served from, ``flat`` when absent, see :mod:`kdtune.serving.index`)."""


@dataclass(frozen=True)
class TeacherSettings(TrainSettings):
    """How the teacher is trained; all of it is part of the teacher's cache key. Its training values (a
    longer cosine budget, a smaller rate, more decay, a larger validation sample) are the ones measured
    best for a 64-dim teacher, and its patience lets the cosine schedule run to its end: validation keeps
    improving while the rate anneals, and stopping early left some seeds' teachers 10% behind others
    (BENCHMARKS.md, "Teacher quality" and "Teacher reliability across seeds")."""

    epochs: int = 150
    lr: float = 0.005
    weight_decay: float = 0.2
    lr_schedule: str = "cosine"
    patience: int = 150
    valid_users: int = 2048
    dim: int = 64
    """Embedding size of the teacher."""
    topn: int = 100
    """Length of each user's cached teacher ranking (what rd/cd/rrd sample from)."""
    k: int = 20
    """K of the validation NDCG@K used for early stopping."""
    seed: int = 0
    """Seed of initialisation and sampling."""

    def train(self) -> TrainSettings:
        """The trainer part of these settings."""
        return TrainSettings(**{name: getattr(self, name) for name in TrainSettings.__dataclass_fields__})


@dataclass(frozen=True)
class DataSettings:
    """Where the interactions come from and how they are split."""

    data: str = setting("synthetic", "'synthetic', 'synthetic:users=N,items=M', a file path, or a MovieLens name")
    format: str | None = setting(None, "file format when the extension does not say: movielens, citeulike, csv, "
                                 "tsv, parquet")
    columns: str | None = setting(None, "table columns as user=NAME,item=NAME[,rating=NAME][,timestamp=NAME] "
                                  "(csv/tsv/parquet; roles not named are detected from common spellings)")
    min_rating: float | None = setting(None, "ratings (or counts) below this are dropped (explicit data -> "
                                       "implicit positives)")
    kcore: int = setting(0, "iteratively keep users and items with at least this many interactions (0 = off)")
    split: str = setting("random", "random (per user, 80/10/10) or temporal (leave-one-out by timestamp)",
                         choices=list(SPLIT_METHODS))
    k: int = setting(20, "K of Recall@K / NDCG@K")
    seed: int = setting(0, "seed of data generation, split, initialisation and sampling")
    cache_dir: str = setting(DEFAULT_CACHE_DIR, "where splits and teachers are cached")


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs."""

    trials: int = setting(50, "number of students to train (Optuna trials)")
    space: str = setting("default", "search space: 'default', 'smoke' or a YAML file")
    sampler: str = setting("tpe", "Optuna sampler", choices=list(SAMPLERS))
    warm_start: bool = setting(True, "start with one trial per loss at its reference settings (the middle dim "
                               "and rate), so that every loss is tried before the sampler chooses")
    concurrency: int | None = setting(None, "trials at once (default: as many as the resources allow)")
    cpus_per_trial: float = setting(1.0, "CPUs reserved per trial (also its torch thread count)")
    gpus_per_trial: float | None = setting(None, "GPU share per trial, e.g. 0.25 (default: 0 without a GPU; on a "
                                           "GPU node as many trials as its CPUs allow share its GPUs, bounded by "
                                           "their estimated GPU memory)")
    out: str | None = setting(None, "run directory (default: results/<timestamp>)")
    storage: str | None = setting(None, "Ray Tune storage: a path, or a URI of a filesystem pyarrow knows "
                                  "(default: <out>/ray)")
    address: str | None = setting(None, "connect to an existing Ray cluster ('auto' or host:port)")
    dashboard_host: str = setting("127.0.0.1", "interface the Ray dashboard binds to (local cluster only)")
    dashboard_port: int = setting(8265, "Ray dashboard port (local cluster only)")
    catalog_size: int | None = setting(None, "catalogue size students are served at: latency, and when larger than "
                                       "the data's, recall over its items plus drawn ones (default: the data's)")
    latency_threads: int = setting(1, "CPU threads of the latency benchmark (Faiss's, on the CPU)")
    teacher_dim: int = setting(TeacherSettings.dim, "teacher embedding size")
    teacher_epochs: int = setting(TeacherSettings.epochs, "teacher epoch budget (the best epoch on validation "
                                  "is kept)")
    teacher_topn: int = setting(TeacherSettings.topn, "length of each user's teacher ranking the losses sample from")
    scheduler: str = setting("pareto-asha", "stop dominated trials early at epoch rungs (Pareto-aware successive "
                             "halving), or run every trial to its end", choices=list(SCHEDULERS))
    grace_epochs: int = setting(5, "pareto-asha: first rung (epochs); later rungs at grace * eta^i")
    reduction_factor: int = setting(3, "pareto-asha: eta, a trial goes on past a rung if in the top 1/eta there")
    rung_groups: str = setting("loss", "pareto-asha: compare a trial at a rung only with trials of its own loss "
                               "(losses learn at different paces), or with every trial", choices=["loss", "none"])
    valid_users: int = setting(DEFAULTS.valid_users, "validation users (a fixed seeded sample) behind each "
                               "epoch's signal; 0 = all; a finished trial's metrics are always over all of them")

    def teacher(self, data: DataSettings) -> TeacherSettings:
        """The teacher a new run of these settings trains (or loads from the cache)."""
        return TeacherSettings(dim=self.teacher_dim, epochs=self.teacher_epochs, topn=self.teacher_topn, k=data.k,
                               seed=data.seed)


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
    # A finished student's metrics are measured through its index at this many items (its own table and
    # drawn rows, kdtune.serving.catalog); None or the data's size: the data's items only.
    catalog_size: int | None = None
