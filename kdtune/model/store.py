"""Models on disk: one tensor-file format, read with ``torch.load(..., weights_only=True)``, for the teacher
and every student (plain and distilled).

- A student is a directory: ``student.pt`` (its float32 ``state_dict``) and ``arch.json`` (its shape).
  :func:`save_model` / :func:`load_model`. How it is served (the Faiss index of its item table) is kept
  beside it by :mod:`kdtune.serving.served`.
- The teacher is one file: its weights, each user's top-N teacher ranking and a JSON metadata string
  (:class:`TeacherKnowledge`, :func:`save_teacher` / :func:`load_teacher`). A run keeps its own copy;
  the cache holds one per cache key (:func:`teacher_cache_file`, :func:`load_cached`).

Every write is atomic (a temporary file renamed into place), so an interrupted write never leaves half a
model behind; nothing read is ever executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdtune.model.mf import MF

log = logging.getLogger("kdtune")

STUDENT_FILE = "student.pt"
ARCH_FILE = "arch.json"


def _save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _load(path: Path) -> Any:
    return torch.load(path, weights_only=True, map_location="cpu")


def save_model(model: MF, directory: Path) -> Path:
    """The student's weights and its architecture, in ``directory``."""
    directory = Path(directory)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = directory / STUDENT_FILE
    _save(state, path)
    (directory / ARCH_FILE).write_text(json.dumps(model.arch()))
    return path


def load_model(directory: str | Path) -> MF:
    """A student written by :func:`save_model`."""
    directory = Path(directory)
    arch = json.loads((directory / ARCH_FILE).read_text())
    return MF.from_state(arch, _load(directory / STUDENT_FILE)).eval()


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


def save_teacher(knowledge: TeacherKnowledge, path: Path) -> None:
    """Write the knowledge as tensors + JSON metadata."""
    meta = {k: v for k, v in knowledge.summary().items() if k not in ("from_cache", "load_seconds")}
    _save({"state": knowledge.state, "topn": knowledge.topn, "meta": json.dumps(meta)}, Path(path))


def load_teacher(path: Path) -> TeacherKnowledge:
    blob = _load(path)
    meta = json.loads(blob["meta"])
    return TeacherKnowledge(
        arch=meta["arch"], state=blob["state"], topn=blob["topn"], settings=meta["settings"], key=meta["key"],
        valid_metrics=meta["valid_metrics"], train_seconds=meta["train_seconds"],
    )


def teacher_cache_file(key: str, cache_dir: str | Path) -> Path:
    """The cache entry of the teacher with cache key ``key``."""
    return Path(cache_dir).expanduser() / f"teacher-{key}.pt"


def load_cached(path: Path) -> TeacherKnowledge | None:
    """The cached teacher at ``path``, or None when absent or unreadable (a corrupt entry is rebuilt)."""
    if not path.exists():
        return None
    t0 = time.perf_counter()
    try:
        knowledge = load_teacher(path)
    except Exception as exc:
        log.warning("ignoring unreadable teacher cache %s (%s)", path, exc)
        return None
    knowledge.from_cache = True
    knowledge.load_seconds = time.perf_counter() - t0
    log.info("teacher loaded from cache %s", path)
    return knowledge
