"""A deployable student on disk, in standard formats, and its loader (public entry: ``kdtune.serve.load``).

One directory per student:

- ``users.safetensors``: ``users`` (float32 ``[n_users, dim]``) and the seen items of each user as CSR
  (``seen_indptr``, ``seen_indices``: the training and validation items, excluded on request);
- ``items.faiss``: the item index (``faiss.write_index``) over ``[q_i, b_i]`` rows (:mod:`kdtune.serving.index`);
- ``manifest.json``: the index spec and description, the dim, and the original user and item ids.

``recommend`` takes and returns ids of the original data (as the interactions file spelled them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdtune.errors import DataError, UsageError
from kdtune.serving.index import GPU_KINDS, GpuIndex, describe_index, faiss_gpus
from kdtune.serving.served import ServedStudent

USERS_FILE, INDEX_FILE, MANIFEST_FILE = "users.safetensors", "items.faiss", "manifest.json"
FORMAT = "kdtune-serve-1"


def write_student(served: ServedStudent, seen_indptr: np.ndarray, seen_indices: np.ndarray,
                  user_ids: Sequence[Any], item_ids: Sequence[Any], directory: str | Path, **extra: Any) -> Path:
    """Write ``served`` (with each user's seen items and the original ids) as a deployable directory."""
    import faiss
    from safetensors.numpy import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"users": served.users, "seen_indptr": np.asarray(seen_indptr, np.int64),
               "seen_indices": np.asarray(seen_indices, np.int64)}, str(out / USERS_FILE))
    faiss.write_index(served.index, str(out / INDEX_FILE))
    manifest = {"format": FORMAT, "index": served.spec.name, "index_info": describe_index(served.index),
                "dim": int(served.users.shape[1]), "n_users": len(user_ids), "n_items": len(item_ids),
                "user_ids": [_plain(u) for u in user_ids], "item_ids": [_plain(i) for i in item_ids], **extra}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class Deployed:
    """A loaded deployable student: ``recommend(user_ids, k, exclude_seen=True)`` in the original id space."""

    def __init__(self, served: ServedStudent, seen_indptr: np.ndarray, seen_indices: np.ndarray, manifest: dict):
        self.served, self.manifest = served, manifest
        self._indptr, self._indices = seen_indptr, seen_indices
        self.user_ids = list(manifest["user_ids"])
        self.item_ids = np.asarray(manifest["item_ids"], dtype=object)
        self._user_pos = {u: i for i, u in enumerate(self.user_ids)}

    def recommend(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True) -> list[list[Any]]:
        """Each user's top ``k`` item ids (original ids, best first; shorter if the index found fewer)."""
        missing = [u for u in user_ids if u not in self._user_pos]
        if missing:
            raise DataError(f"unknown user id {missing[0]!r} ({len(missing)} unknown of {len(user_ids)})")
        rows = np.array([self._user_pos[u] for u in user_ids], dtype=np.int64)
        seen = [self._indices[self._indptr[r]: self._indptr[r + 1]] for r in rows] if exclude_seen else None
        top = self.served.recommend(rows, k, seen)
        return [self.item_ids[r[r >= 0]].tolist() for r in top]


def load(directory: str | Path, device: str = "cpu") -> Deployed:
    """The deployable student in ``directory``; a missing or damaged file is a one-line ``DataError`` naming it.

    ``device="cuda"`` (or ``"cuda:N"``) searches a copy of the index on that GPU with Faiss's GPU code (a
    Faiss build with GPU support, e.g. ``faiss-gpu``; ``flat`` and ``ivf`` indexes), ``"auto"`` does so where
    that is possible and stays on the CPU otherwise; ``"cpu"`` (the default) is what the run measured.
    """
    if device not in ("cpu", "auto") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise UsageError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    import faiss
    from safetensors.numpy import load_file

    d = Path(directory)
    manifest = _read(d / MANIFEST_FILE, lambda p: json.loads(p.read_text()))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{d / MANIFEST_FILE}: not a kdtune deployable student (format {FORMAT} expected)")
    tables = _read(d / USERS_FILE, lambda p: load_file(str(p)))
    index = _read(d / INDEX_FILE, lambda p: faiss.read_index(str(p)))
    try:
        served = ServedStudent(tables["users"], index, manifest["index"])
    except (KeyError, ValueError) as exc:
        raise DataError(f"{d}: its files do not fit together ({exc})") from None
    if index.ntotal != manifest["n_items"] or len(served.users) != manifest["n_users"]:
        raise DataError(f"{d / INDEX_FILE}: {index.ntotal} items and {len(served.users)} users, the manifest says "
                        f"{manifest['n_items']} and {manifest['n_users']}")
    on_gpu = device.startswith("cuda") or (device == "auto" and faiss_gpus() > 0 and served.spec.kind in GPU_KINDS)
    if on_gpu:
        try:
            served = ServedStudent(served.users, GpuIndex(index, served.spec, int(device.partition(":")[2] or 0)),
                                   served.spec.name)
        except ValueError as exc:
            raise UsageError(f"{d / INDEX_FILE}: cannot search it on {device}: {exc}") from None
    return Deployed(served, tables["seen_indptr"], tables["seen_indices"], manifest)


def _read(path: Path, reader) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        return reader(path)
    except Exception as exc:  # any reader's failure on a damaged file: name the file, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: unreadable or damaged ({first[:160]})") from None
