"""Resource requests shaped by the cluster's nodes: a task or trial never asks for more than one node has.

Ray places a task or a trial's bundle on a single node, so a request sized from the cluster's *total*
(two 1-CPU nodes: "2 CPUs") can never be scheduled and waits forever. Requests are sized from the nodes
that must hold them, and a request no node can satisfy fails at once with the nodes' sizes.
"""

from __future__ import annotations

from kdtune.cli import UsageError


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


def fit_to_nodes(request: dict, what: str, nodes: list[dict] | None = None) -> None:
    """Raise a one-line :class:`UsageError` when no node of the cluster can hold ``request``."""
    nodes = node_sizes() if nodes is None else nodes
    if not fits(request, nodes):
        wanted = ", ".join(f"{amount:g} {name}" for name, amount in request.items() if amount)
        raise UsageError(f"{what}: no node can hold {wanted} (the cluster has {describe(nodes)})")
