"""Train the teacher once (or load it from the disk cache) and compute what the distillation losses need."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from kdtune.config import DEFAULTS
from kdtune.data import Interactions, Split
from kdtune.models import MF
from kdtune.train import fit

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class TeacherSettings:
    """How the teacher is trained; part of the cache key. Where the teacher trains like a student it
    reads :data:`kdtune.config.DEFAULTS`; its own values (a longer cosine budget, a smaller rate, more
    decay, more patience, a larger validation sample) are the ones measured best for a 64-dim teacher
    (BENCHMARKS.md, "Teacher quality")."""

    dim: int = 64
    """Embedding size of the teacher."""
    epochs: int = 150
    """Epoch budget: the length of the cosine schedule, and an upper bound (early stopping may end sooner)."""
    lr: float = 0.005
    """AdamW learning rate (at the start of the schedule)."""
    weight_decay: float = 0.2
    """AdamW decoupled weight decay."""
    lr_schedule: str = "cosine"
    """``cosine`` (from ``lr`` down towards 0 over ``epochs``) or ``constant``."""
    optimizer: str = DEFAULTS.optimizer
    """``dense`` AdamW or row-sparse ``lazy`` AdamW (see ``kdtune.train.make_optimizer``)."""
    batch_size: int = DEFAULTS.batch_size
    """BPR triplets per step."""
    patience: int = 8
    """Epochs without a better validation NDCG@k before stopping."""
    valid_users: int = 2048
    """Validation users (a fixed seeded sample) behind the per-epoch early-stopping signal; 0 = all."""
    topn: int = 100
    """Length of each user's cached teacher ranking (what rd/cd/rrd sample from)."""
    k: int = 20
    """K of the validation NDCG@K used for early stopping."""
    seed: int = 0
    """Seed of initialisation and sampling."""


# Settings added after teachers were first cached, with the behaviour from before they existed: at
# these values they stay out of the cache key, so that older cache entries and runs keep their teacher.
LEGACY_SETTINGS = {"lr_schedule": "constant", "optimizer": "dense", "valid_users": 0}


def settings_from_record(record: dict) -> TeacherSettings:
    """The settings a run recorded (``run.json`` → ``teacher.settings``), older records included."""
    known = {f.name for f in fields(TeacherSettings)}
    return TeacherSettings(**{**LEGACY_SETTINGS, **{k: v for k, v in record.items() if k in known}})


@dataclass
class TeacherKnowledge:
    """The teacher as the trials need it: weights, its top-N ranking per user, and provenance."""

    arch: dict
    state: dict[str, torch.Tensor]
    topn: torch.Tensor
    settings: dict
    key: str
    valid_metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    from_cache: bool = False
    load_seconds: float = 0.0

    def model(self) -> MF:
        """A frozen MF with the teacher's weights."""
        model = MF.from_state(self.arch, self.state)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def content_hash(self) -> str:
        """SHA-256 of the weights and the top-N table: what the trials actually distil from."""
        h = hashlib.sha256()
        for name in sorted(self.state):
            h.update(name.encode())
            h.update(self.state[name].detach().cpu().contiguous().numpy().tobytes())
        h.update(self.topn.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:32]

    def summary(self) -> dict:
        return {
            "key": self.key,
            "arch": self.arch,
            "settings": self.settings,
            "params": sum(t.numel() for t in self.state.values()),
            "topn": list(self.topn.shape),
            "valid_metrics": self.valid_metrics,
            "train_seconds": round(self.train_seconds, 3),
            "from_cache": self.from_cache,
            "load_seconds": round(self.load_seconds, 3),
        }


@torch.no_grad()  # not inference_mode: the result is used by autograd-tracked code later
def compute_topn(model: MF, seen: Interactions, n: int, batch_size: int = 1024) -> torch.Tensor:
    """Each user's top-``n`` items by ``model``, best first, with ``seen`` items masked: int64 [users, n]."""
    n = min(n, model.n_items)
    out = torch.empty(model.n_users, n, dtype=torch.int64)
    counts = seen.user_counts()
    for start in range(0, model.n_users, batch_size):
        users = torch.arange(start, min(start + batch_size, model.n_users))
        scores = model.full_scores(users)
        # Mask this batch's training items in one scatter over its CSR slice.
        lo, hi = int(seen.indptr[start]), int(seen.indptr[users[-1] + 1])
        rows = torch.repeat_interleave(torch.arange(len(users)), counts[users])
        scores[rows, seen.indices[lo:hi]] = -torch.inf
        out[start : start + len(users)] = torch.topk(scores, n, dim=1).indices
    return out


def key_settings(settings: TeacherSettings) -> dict:
    return {k: v for k, v in asdict(settings).items() if not (k in LEGACY_SETTINGS and v == LEGACY_SETTINGS[k])}


def cache_key(split: Split, settings: TeacherSettings) -> str:
    payload = json.dumps(
        {"format": CACHE_FORMAT, "split": split.fingerprint(), "settings": key_settings(settings)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def train_teacher(
    split: Split, settings: TeacherSettings, progress: bool = True, device: str = "cpu"
) -> TeacherKnowledge:
    """Train the teacher with BPR on ``split.train`` (early stopping on ``split.valid``) on ``device``."""
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = MF(split.train.n_users, split.train.n_items, settings.dim, seed=settings.seed)
    result = fit(
        model, split.train, split.valid, loss="bpr", epochs=settings.epochs, batch_size=settings.batch_size,
        lr=settings.lr, weight_decay=settings.weight_decay, lr_schedule=settings.lr_schedule,
        optimizer=settings.optimizer, patience=settings.patience, valid_users=settings.valid_users, k=settings.k,
        seed=settings.seed, progress=progress, desc=f"teacher dim={settings.dim}", device=device,
    )
    model.cpu()
    topn = compute_topn(model, split.train, settings.topn)
    log.info("teacher: best epoch %d, valid %s=%.4f", result.best_epoch, result.metric, result.best_score)
    return TeacherKnowledge(
        arch=model.arch(),
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        topn=topn,
        settings=asdict(settings),
        key=cache_key(split, settings),
        valid_metrics=result.best_metrics,
        train_seconds=time.perf_counter() - t0,
    )


def save(knowledge: TeacherKnowledge, path: Path) -> None:
    """Write the knowledge as tensors + JSON metadata (loadable with ``weights_only=True``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in knowledge.summary().items() if k not in ("from_cache", "load_seconds")}
    blob = {"state": knowledge.state, "topn": knowledge.topn, "meta": json.dumps(meta)}
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # atomic: an interrupted write never leaves a half cache entry


def load(path: Path) -> TeacherKnowledge:
    blob = torch.load(path, weights_only=True)
    meta = json.loads(blob["meta"])
    return TeacherKnowledge(
        arch=meta["arch"], state=blob["state"], topn=blob["topn"], settings=meta["settings"], key=meta["key"],
        valid_metrics=meta["valid_metrics"], train_seconds=meta["train_seconds"],
    )


def cache_path(split: Split, settings: TeacherSettings, cache_dir: str | Path) -> Path:
    return cache_file(cache_key(split, settings), cache_dir)


def cache_file(key: str, cache_dir: str | Path) -> Path:
    """The cache entry of the teacher with cache key ``key``."""
    return Path(cache_dir).expanduser() / f"teacher-{key}.pt"


def load_cached(path: Path) -> TeacherKnowledge | None:
    """The cached teacher at ``path``, or None when absent or unreadable (a corrupt entry is rebuilt)."""
    if not path.exists():
        return None
    t0 = time.perf_counter()
    try:
        knowledge = load(path)
    except Exception as exc:
        log.warning("ignoring unreadable teacher cache %s (%s)", path, exc)
        return None
    knowledge.from_cache = True
    knowledge.load_seconds = time.perf_counter() - t0
    log.info("teacher loaded from cache %s", path)
    return knowledge


def get_teacher(
    split: Split, settings: TeacherSettings, cache_dir: str | Path | None = None, progress: bool = True,
    device: str = "cpu",
) -> TeacherKnowledge:
    """The teacher for ``split`` and ``settings``: from ``cache_dir`` when it holds one, else trained
    and stored there. ``from_cache`` and ``load_seconds`` say which happened."""
    path = cache_path(split, settings, cache_dir) if cache_dir is not None else None
    knowledge = load_cached(path) if path is not None else None
    if knowledge is None:
        t0 = time.perf_counter()
        knowledge = train_teacher(split, settings, progress=progress, device=device)
        if path is not None:
            save(knowledge, path)
        knowledge.load_seconds = time.perf_counter() - t0
    return knowledge
