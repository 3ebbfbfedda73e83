"""Serving indexes: the item table of an MF in a Faiss index, searched by user vectors.

An index spec is a short string, usable as a categorical choice of a search space and inside an
architecture key (no commas, no ``=``):

- ``flat``: exact inner product over float32 vectors (``IndexFlatIP``);
- ``sq8``, ``fp16``, ``bf16``: exact scan over scalar-quantised vectors (``IndexScalarQuantizer``; ``sq8``
  stores 8 bits per dimension between each dimension's trained min and max);
- ``ivf<nlist>_np<nprobe>``, e.g. ``ivf1024_np16``: inverted lists over ``nlist`` k-means cells, ``nprobe``
  cells visited per query (``IndexIVFFlat``); a catalogue with fewer than ``39 * nlist`` items gets
  ``n_items // 39`` cells (Faiss's own minimum of training points per cell), recorded in ``nlist_used``;
- ``hnsw<M>_ef<efSearch>``, e.g. ``hnsw32_ef64``: a navigable small-world graph of ``M`` links per node,
  ``efSearch`` candidates kept per query (``IndexHNSWFlat``).

MF scores are ``<p_u, q_i> + b_i (+ b_u)``: an index holds ``[q_i, b_i]`` and is queried with ``[p_u, 1]``
(``dim + 1`` columns), so its inner products are the model's scores up to the user bias, which changes
no user's ranking.

Seen items are excluded by over-fetching: a user who has seen ``c`` items is searched for ``k + c``
results and the seen ones are dropped (:func:`search_unseen`). For an exact index this is the exact
top-K of the unseen items; for an approximate one it is what a server that searches ``k + c`` and filters
returns. Faiss's per-query ``IDSelector`` would instead filter inside the search, which changes an HNSW
walk and costs a search call per user; over-fetching answers a batch of users of equal ``c`` in one call,
and evaluation and the deployable student (:mod:`kdtune.serve`) share this one function, so the recall a
run reports is the recall the deployed index serves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EXACT = {"flat": "Flat", "sq8": "SQ8", "fp16": "SQfp16", "bf16": "SQbf16"}
ELEMENT_BYTES = {"flat": 4, "sq8": 1, "fp16": 2, "bf16": 2}
"""Bytes of one stored vector element in each exact index (a scan reads every item's ``width`` of them)."""
_IVF = re.compile(r"ivf(\d+)_np(\d+)")
_HNSW = re.compile(r"hnsw(\d+)_ef(\d+)")
INDEX_HELP = "flat, sq8, fp16, bf16, ivf<nlist>_np<nprobe> (e.g. ivf1024_np16) or hnsw<M>_ef<efSearch> (e.g. hnsw32_ef64)"


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index spec: ``kind`` (``flat``, ``sq8``, ``fp16``, ``bf16``, ``ivf``, ``hnsw``) and its settings."""

    kind: str
    nlist: int = 0
    nprobe: int = 0
    m: int = 0
    ef: int = 0

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        """The spec of ``text``; ``ValueError`` naming the accepted forms otherwise."""
        text = str(text).strip().lower()
        if text in _EXACT:
            return cls(text)
        if match := _IVF.fullmatch(text):
            spec = cls("ivf", nlist=int(match[1]), nprobe=int(match[2]))
        elif match := _HNSW.fullmatch(text):
            spec = cls("hnsw", m=int(match[1]), ef=int(match[2]))
        else:
            raise ValueError(f"unknown index {text!r} (known: {INDEX_HELP})")
        if min(spec.settings().values()) < 1:
            raise ValueError(f"index {text!r}: its settings must be positive")
        return spec

    @property
    def name(self) -> str:
        """The canonical spec string (what :meth:`parse` reads back)."""
        if self.kind == "ivf":
            return f"ivf{self.nlist}_np{self.nprobe}"
        if self.kind == "hnsw":
            return f"hnsw{self.m}_ef{self.ef}"
        return self.kind

    @property
    def exact(self) -> bool:
        """Whether the index scans every item (flat or scalar-quantised), so no candidate is missed."""
        return self.kind in _EXACT

    def settings(self) -> dict[str, int]:
        """The searched settings of the index (empty for the exact ones)."""
        if self.kind == "ivf":
            return {"nlist": self.nlist, "nprobe": self.nprobe}
        if self.kind == "hnsw":
            return {"M": self.m, "efSearch": self.ef}
        return {}


def check_index(text: str) -> str:
    """The canonical name of an index spec (``ValueError`` for an unknown one)."""
    return IndexSpec.parse(text).name


def index_width(dim: int, spec: IndexSpec) -> int:
    """Columns of an index over ``dim``-dim items: ``dim + 1`` (the bias), rounded up to a multiple of 16 for
    the scalar quantisers, whose SIMD code paths need it (with 65 columns Faiss falls back to scalar code,
    several times slower than a flat scan)."""
    width = dim + 1
    return -(-width // 16) * 16 if spec.kind in ("sq8", "fp16", "bf16") else width


def augment_items(items: np.ndarray, bias: np.ndarray | None, width: int | None = None) -> np.ndarray:
    """``[n, width]`` float32 rows ``[q_i, b_i, 0...]`` (a zero bias column when there is none)."""
    items = np.asarray(items, dtype=np.float32)
    n, d = items.shape
    out = np.zeros((n, width or d + 1), np.float32)
    out[:, :d] = items
    if bias is not None:
        out[:, d] = np.asarray(bias, np.float32).reshape(-1)
    return out


def augment_users(users: np.ndarray, width: int | None = None) -> np.ndarray:
    """``[B, width]`` float32 queries ``[p_u, 1, 0...]``."""
    users = np.asarray(users, dtype=np.float32).reshape(len(users), -1)
    b, d = users.shape
    out = np.zeros((b, width or d + 1), np.float32)
    out[:, :d] = users
    out[:, d] = 1.0
    return out


def build_index(spec: str | IndexSpec, items: np.ndarray, bias: np.ndarray | None = None, seed: int = 0):
    """A Faiss index of spec over the item table (``[n, dim]`` float) and its bias, trained and filled."""
    import faiss

    spec = spec if isinstance(spec, IndexSpec) else IndexSpec.parse(spec)
    vectors = augment_items(items, bias, index_width(np.shape(items)[1], spec))
    n, d = vectors.shape
    if spec.kind == "ivf":
        nlist = max(1, min(spec.nlist, n // 39))
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.nprobe = min(spec.nprobe, nlist)
    elif spec.kind == "hnsw":
        index = faiss.index_factory(d, f"HNSW{spec.m}", faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = spec.ef
    else:
        index = faiss.index_factory(d, _EXACT[spec.kind], faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def describe_index(index) -> dict:
    """What an index is, from the index itself: its kind, settings, items, dim and serialized bytes (a
    :class:`GpuIndex` is described by its CPU original, plus ``gpu: True``)."""
    import faiss

    if isinstance(index, GpuIndex):
        return {**describe_index(index.cpu), "gpu": True}
    base = faiss.downcast_index(index)
    out = {"faiss": type(base).__name__, "n_items": int(index.ntotal), "width": int(index.d),
           "bytes": index_bytes(index)}
    if isinstance(base, faiss.IndexIVF):
        out.update(nlist_used=int(base.nlist), nprobe=int(base.nprobe))
    if isinstance(base, faiss.IndexHNSW):
        out.update(M=int(base.hnsw.nb_neighbors(1)), efSearch=int(base.hnsw.efSearch))
    return out


def index_bytes(index) -> int:
    """Bytes of the serialized index (what ``faiss.write_index`` writes)."""
    import faiss

    return int(faiss.serialize_index(getattr(index, "cpu", index)).nbytes)


def search_unseen(index, user_vectors: np.ndarray, k: int, seen: Sequence[np.ndarray] | None = None
                  ) -> np.ndarray:
    """``[B, k]`` item ids (``-1`` where the index found fewer) of each user's top ``k`` unseen items.

    ``seen[b]`` holds the item ids user ``b`` has seen (``None``: exclude nothing). Users with ``c`` seen
    items are searched together for ``k + c`` results; seen ids are dropped and the first ``k`` kept, in
    the index's order. An exact index (every item scanned) returns the same top ``k + c`` as a prefix of a
    longer list, so its users are searched in blocks of :data:`EXACT_BLOCK`, ordered by ``c``, each for
    ``k +`` the block's largest ``c``: one matrix product per block instead of a scan per user, which is
    what makes exact search of thousands of users over a catalogue of millions affordable.
    """
    queries = augment_users(user_vectors, int(index.d))
    n_users = queries.shape[0]
    out = np.full((n_users, k), -1, dtype=np.int64)
    if n_users == 0:
        return out
    counts = np.zeros(n_users, np.int64) if seen is None else np.array([len(s) for s in seen], np.int64)
    for rows in _search_groups(index, counts):
        want = int(min(k + counts[rows].max(), index.ntotal))
        _, ids = index.search(queries[rows], want)
        drop = ids < 0
        if seen is not None:
            drop |= _seen_mask(ids, [seen[r] for r in rows])
        # A stable sort on "dropped" keeps the index's order among the kept ids.
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(ids, order, 1)
        kept[np.take_along_axis(drop, order, 1)] = -1
        out[rows, : kept.shape[1]] = kept
    return out


EXACT_BLOCK = 1024
"""Users an exact index searches at once in :func:`search_unseen`."""

GPU_KINDS = ("flat", "ivf")
"""Index kinds Faiss clones to a GPU (``GpuIndexFlat``, ``GpuIndexIVFFlat``); its GPU code has no plain scalar
quantiser and no HNSW graph."""
GPU_MAX_K = 2048
"""The most results one query of a Faiss GPU index returns; a longer search runs on the CPU original."""


def faiss_gpus() -> int:
    """GPUs the installed Faiss can use (0 with ``faiss-cpu``, which has no GPU code)."""
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


class GpuIndex:
    """A Faiss index cloned to a GPU (``faiss.index_cpu_to_gpu``), searched like the CPU original it keeps.

    A search for more than :data:`GPU_MAX_K` results (``k +`` a heavy user's seen items) runs on the CPU
    original, so every user gets an answer; both hold the same vectors, so both rank alike (up to float
    rounding of the scores)."""

    def __init__(self, cpu_index, spec: IndexSpec, gpu: int = 0):
        import faiss

        if spec.kind not in GPU_KINDS:
            raise ValueError(f"index {spec.name!r} has no Faiss GPU form (GPU indexes: flat, ivf<nlist>_np<nprobe>)")
        if gpu >= faiss_gpus():
            raise ValueError(f"no GPU {gpu} for Faiss here ({faiss_gpus()} found: a faiss-cpu build has none)")
        self.cpu = cpu_index
        self.resources = faiss.StandardGpuResources()
        self.gpu = faiss.index_cpu_to_gpu(self.resources, gpu, cpu_index)
        self.d, self.ntotal = int(cpu_index.d), int(cpu_index.ntotal)

    def search(self, queries: np.ndarray, k: int):
        return (self.gpu if k <= GPU_MAX_K else self.cpu).search(queries, k)


def _search_groups(index, counts: np.ndarray) -> list[np.ndarray]:
    """The user rows searched together: blocks ordered by seen count for an exact index (a flat or scalar
    quantiser scan), users of equal seen count for an approximate one (its result depends on the count)."""
    import faiss

    base = faiss.downcast_index(getattr(index, "cpu", index))  # a GpuIndex ranks as its CPU original
    if isinstance(base, (faiss.IndexFlat, faiss.IndexScalarQuantizer)):
        order = np.argsort(counts, kind="stable")
        return [order[i: i + EXACT_BLOCK] for i in range(0, len(order), EXACT_BLOCK)]
    return [np.flatnonzero(counts == c) for c in np.unique(counts)]


def _seen_mask(ids: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """``[B, m]`` True where ``ids[b, j]`` is among ``seen[b]`` (one sorted-key lookup for the batch)."""
    width = int(max(ids.max(initial=0), max(int(s.max(initial=0)) for s in seen))) + 2
    rows = np.arange(len(seen), dtype=np.int64)
    seen_keys = np.concatenate([r * width + np.asarray(s, np.int64) for r, s in zip(rows, seen, strict=True)])
    keys = rows[:, None] * width + ids
    return np.isin(keys, seen_keys)
