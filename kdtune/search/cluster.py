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


def resources_per_trial(search, nodes: list[dict]) -> dict:
    """CPU/GPU share of one trial (``search``: a :class:`~kdtune.config.SearchSettings`), checked against the
    nodes (a request no node can hold fails now)."""
    gpus = search.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if sum(node["GPU"] for node in nodes) >= 1 else 0.0
    res = {"cpu": search.cpus_per_trial, "gpu": gpus}
    fit_to_nodes({"CPU": res["cpu"], "GPU": res["gpu"]}, "--cpus-per-trial / --gpus-per-trial", nodes)
    return res


def default_concurrency(res: dict, nodes: list[dict]) -> int:
    """Trials that fit at once, node by node (a trial cannot span nodes)."""
    total = 0
    for node in nodes:
        fits = int(node["CPU"] // res["cpu"]) if res["cpu"] > 0 else 10**6
        if res["gpu"] > 0:
            fits = min(fits, int(node["GPU"] // res["gpu"]))
        total += fits
    return max(1, total)
