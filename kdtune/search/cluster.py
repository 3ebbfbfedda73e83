"""The Ray cluster a search runs on: connecting to it (or starting a local one of our own), and resource
requests shaped by its nodes, so a task or trial never asks for more than one node has.

Without ``--address`` a search always starts a Ray of its own (``address="local"``): never whatever cluster
an old session recorded under Ray's temp folder, which may be long dead. ``--address auto`` connects to
the running cluster Ray has recorded, and a recorded cluster that is dead, like an address nothing answers
at, fails at once with one line instead of being retried for minutes.

Ray places a task or a trial's bundle on a single node, so a request sized from the cluster's *total*
(two 1-CPU nodes: "2 CPUs") can never be scheduled and waits forever. Requests are sized from the nodes
that must hold them, and a request no node can satisfy fails at once with the nodes' sizes.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path

from kdtune.errors import UsageError

CONNECT_TIMEOUT_S = 5.0


def node_sizes() -> list[dict]:
    """CPU/GPU/memory of every alive node of the connected Ray cluster."""
    import ray

    nodes = []
    for node in ray.nodes():
        if not node.get("Alive", False):
            continue
        res = node.get("Resources", {})
        nodes.append({"node_id": node.get("NodeID", ""), "address": node.get("NodeManagerAddress", ""),
                      "CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0)),
                      "memory_gb": round(float(res.get("memory", 0)) / 2**30, 2)})
    return nodes


def describe(nodes: list[dict]) -> str:
    """``2 nodes: 1 CPU; 1 CPU + 1 GPU`` style summary for messages."""
    parts = [f"{n['CPU']:g} CPU" + (f" + {n['GPU']:g} GPU" if n["GPU"] else "") for n in nodes]
    return f"{len(nodes)} node(s): " + "; ".join(parts)


def fits(request: dict, nodes: list[dict]) -> bool:
    """Whether at least one node has every resource of ``request`` (``{"CPU": 1, "GPU": 0.25}``)."""
    return any(all(node.get(name, 0) >= amount for name, amount in request.items() if amount) for node in nodes)


def fit_to_nodes(request: dict, what: str, nodes: list[dict]) -> None:
    """Raise a one-line :class:`UsageError` when no node of the cluster (``nodes``, from
    :func:`node_sizes`) can hold ``request``."""
    if not fits(request, nodes):
        wanted = ", ".join(f"{amount:g} {name}" for name, amount in request.items() if amount)
        raise UsageError(f"{what}: no node can hold {wanted} (the cluster has {describe(nodes)})")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast on a cluster address nothing answers at (Ray itself would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError:
        raise UsageError(f"--address {address!r}: expected 'auto' or host:port") from None
    except OSError as exc:
        raise UsageError(f"could not connect to the Ray cluster at {address}: {exc}") from None


def resolve_address(address: str) -> str:
    """``auto`` -> the address of the running cluster Ray recorded (``RAY_ADDRESS`` first); checked."""
    if address != "auto":
        check_reachable(address)
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as exc:
        raise UsageError(f"--address auto: no running Ray cluster found ({str(exc).splitlines()[0]}); start "
                         "one with `ray start --head`, or leave --address out for a local one") from None
    if not found:
        raise UsageError("--address auto: no running Ray cluster found; start one with `ray start --head`")
    try:
        check_reachable(found)
    except UsageError:
        raise UsageError(f"--address auto: the cluster Ray recorded ({found}) is not running; start one with "
                         "`ray start --head`, or leave --address out for a local one") from None
    return found


def start_ray(args) -> bool:
    """Connect to ``args.address`` or start a local Ray of our own; returns whether this process started
    Ray (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kw = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = resolve_address(args.address) if args.address else None
    try:
        if address:
            # a listener that is not a Ray head must not be retried for minutes either
            os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", "15")
            ctx = ray.init(address=address, **kw)
        else:
            ctx = ray.init(address="local", include_dashboard=True, dashboard_host=args.dashboard_host,
                           dashboard_port=args.dashboard_port, **kw)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        where = args.address or "a local Ray"
        raise UsageError(f"could not connect to {where}: {str(exc).splitlines()[0]}") from None
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"Ray dashboard: http://{url}", flush=True)
        token = Path("~/.ray/auth_token").expanduser()
        if token.exists():
            print(f"  token authentication is on; the token is in {token}", flush=True)
    return True


CUDA_CONTEXT_BYTES = 512 * 2**20
"""What a process's CUDA context and allocator reserve before any tensor (measured ~0.5 GB on recent GPUs)."""
WORKING_BYTES = 256 * 2**20
"""Slack for a step's temporaries (a loss's per-batch score matrices, the best state's copy)."""


def trial_gpu_bytes(n_users: int, n_items: int, nnz: int, dim: int, teacher_dim: int, topn: int) -> int:
    """An upper estimate of one trial's GPU memory: the student (weights, gradients, AdamW's two moments),
    the teacher and its top-N lists, the sampler's triplets and positive set, the validation buffers."""
    from kdtune.config import MAX_BITMAP_CELLS
    from kdtune.train.evaluate import CHUNK_BYTES

    rows = n_users + n_items
    student = rows * dim * 4 * 4
    teacher = rows * teacher_dim * 4 + n_users * topn * 8
    positives = n_users * n_items if n_users * n_items <= MAX_BITMAP_CELLS else nnz * 8
    sampler = nnz * 8 * 3 + positives  # users, items, an epoch's permutation
    evaluation = min(n_users * n_items * 5, CHUNK_BYTES["cuda"]) + nnz * 8 * 2  # a chunk of users, the CSRs
    return int(student + teacher + sampler + evaluation + CUDA_CONTEXT_BYTES + WORKING_BYTES)


def _units(x: float) -> int:
    return round(x * 10_000)


def _floor_share(x: float) -> float:
    """A GPU share Ray accepts (four decimals), rounded down so that the intended number of trials fits."""
    return math.floor(x * 10_000) / 10_000


def plan_resources(search, nodes: list[dict], trial_bytes: int | None = None) -> dict:
    """Each trial's CPU/GPU share and why (``search``: a :class:`~kdtune.config.SearchSettings`; ``nodes``: from
    :func:`node_sizes`, with ``gpu_memory_gb`` per GPU when known). Checked against the nodes.

    Without ``--gpus-per-trial`` a GPU node is used to the full: as many trials as its CPUs allow
    (``--cpus-per-trial`` each) share its GPUs, but no more than the GPUs' memory holds at ``trial_bytes``
    each (:func:`trial_gpu_bytes`). One share serves every node (Ray asks one size of every trial): the node
    with the most CPUs per GPU sets it, unless a node's GPU memory needs a larger one."""
    cpus, gpus, reason = search.cpus_per_trial, search.gpus_per_trial, "--gpus-per-trial"
    gpu_nodes = [n for n in nodes if n["GPU"] >= 1]
    if gpus is None and not gpu_nodes:
        gpus, reason = 0.0, "no GPU in the cluster"
    elif gpus is None:
        by_cpu = [max(1, int(n["CPU"] // cpus)) for n in gpu_nodes]
        by_mem = [max(1, int(n["GPU"] * n["gpu_memory_gb"] * 2**30 // trial_bytes))
                  if trial_bytes and n.get("gpu_memory_gb") else c for n, c in zip(gpu_nodes, by_cpu, strict=True)]
        # the most CPUs per GPU sets the share (no node is short of GPU); no node may hold more than its memory
        fill = min(n["GPU"] / c for n, c in zip(gpu_nodes, by_cpu, strict=True))
        memory = max(n["GPU"] / m for n, m in zip(gpu_nodes, by_mem, strict=True))
        gpus = min(1.0, _floor_share(max(fill, memory)))
        reason = "GPU nodes filled to their CPUs" if fill >= memory else "bounded by the trials' GPU memory"
    res = {"cpu": cpus, "gpu": gpus}
    fit_to_nodes({"CPU": res["cpu"], "GPU": res["gpu"]}, "--cpus-per-trial / --gpus-per-trial", nodes)
    plan = {"per_trial": res, "trials_at_once": default_concurrency(res, nodes), "reason": reason}
    if trial_bytes:
        plan["gpu_gb_per_trial_estimate"] = round(trial_bytes / 2**30, 3)
    return plan


def gpu_memory(nodes: list[dict], timeout: float = 120.0) -> list[dict]:
    """``nodes`` with ``gpu_memory_gb`` (of one GPU) for each GPU node, asked on the node itself; a node
    that does not answer keeps no figure (its trials are then bounded by its CPUs alone)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe() -> float:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0

    out, refs = [dict(n) for n in nodes], {}
    for i, node in enumerate(out):
        if node["GPU"] >= 1 and node.get("node_id"):
            task = ray.remote(num_cpus=0, num_gpus=0.0001)(probe).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["node_id"], soft=False))
            refs[i] = task.remote()
    for i, ref in refs.items():
        try:
            gb = ray.get(ref, timeout=timeout)
        except Exception as exc:  # an unanswered probe only loses the memory bound
            logging.getLogger("kdtune").warning("no GPU memory figure for node %s: %s", out[i]["address"],
                                                str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        if gb:
            out[i]["gpu_memory_gb"] = round(gb, 2)
    return out


def default_concurrency(res: dict, nodes: list[dict]) -> int:
    """Trials that fit at once, node by node (a trial cannot span nodes)."""
    total = 0
    for node in nodes:
        # counted in Ray's fixed point (1e-4 units): in floating point 1 // 0.2 is 4
        fits = _units(node["CPU"]) // _units(res["cpu"]) if res["cpu"] > 0 else 10**6
        if res["gpu"] > 0:
            fits = min(fits, _units(node["GPU"]) // _units(res["gpu"]))
        total += fits
    return max(1, total)
