"""A search on a real multi-node Ray cluster of small nodes, and the cluster's address: fail fast, never hang."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

DATA = "synthetic:users=300,items=400"
SMOKE = ["--space", "smoke", "--data", DATA, "--teacher-epochs", "3", "--grace-epochs", "1"]


def search(args: list[str], timeout: float, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdtune.search", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    return proc, time.perf_counter() - t0


@pytest.mark.slow
def test_search_on_a_cluster_of_one_cpu_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # a request no node can hold fails at once, naming the nodes' sizes
        bad, seconds = search(["--address", cluster.address, "--cpus-per-trial", "2", "--out",
                               str(tmp_path / "bad"), "--cache-dir", str(tmp_path / "cache"), *SMOKE], timeout=120)
        assert bad.returncode == 2 and seconds < 30, bad.stderr[-2000:]
        assert "no node can hold 2 CPU" in bad.stderr and "2 node(s): 1 CPU; 1 CPU" in bad.stderr
        assert "Traceback" not in bad.stderr
        # the search itself: teacher (1 CPU, not the cluster's 2), trials on both nodes, export
        out = tmp_path / "run"
        ok, _ = search(["--address", cluster.address, "--trials", "4", "--out", str(out), "--cache-dir",
                        str(tmp_path / "cache"), "--scheduler", "none", *SMOKE], timeout=420)
        assert ok.returncode == 0, ok.stderr[-3000:]
    finally:
        cluster.shutdown()
    run = json.loads((out / "run.json").read_text())
    trials = pd.read_csv(out / "trials.csv")
    assert run["status"] == "finished" and len(run["nodes"]) == 2
    assert run["teacher"]["from_cache"] is False and len(list((tmp_path / "cache").glob("teacher-*.pt"))) == 1
    # every trial ran on a node of the cluster; which node is the scheduler's choice, the plain students'
    # tasks competing with the trials for the two CPUs (on an idle cluster the trials spread over both)
    assert set(trials["node"]) <= {node["node_id"] for node in run["nodes"]}, trials[["trial_id", "node"]]
    assert len(pd.read_csv(out / "pareto.csv")) >= 1


@pytest.mark.no_live_ray
def test_a_stale_record_of_a_dead_cluster():
    # Ray records the last cluster it started under <TMPDIR>/ray; this one is long dead. (A short
    # TMPDIR: Ray's socket paths below it must stay under the 107 bytes of a Unix socket name.)
    tmp_path = Path(tempfile.mkdtemp(prefix="kdt"))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    env = {"TMPDIR": str(tmp_path), "RAY_ADDRESS": ""}
    proc, seconds = search(["--address", "auto", "--out", str(tmp_path / "x"), *SMOKE], timeout=120, env=env)
    assert proc.returncode == 2 and seconds < 30, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is not running" in errors[0] and "Traceback" not in proc.stderr
    # without --address the search starts a Ray of its own and never looks at the record
    code = ("from kdtune.search.cluster import start_ray\nfrom kdtune.config import SearchSettings\nimport ray\n"
            "assert start_ray(SearchSettings(dashboard_port=0))\nprint(ray.cluster_resources()['CPU'])\nray.shutdown()\n")
    t0 = time.perf_counter()
    own = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert own.returncode == 0 and time.perf_counter() - t0 < 60, own.stderr[-2000:]
    shutil.rmtree(tmp_path, ignore_errors=True)


def _node(cpu: float, gpu: float = 0, gpu_gb: float | None = None) -> dict:
    node = {"node_id": f"n{cpu}-{gpu}", "address": "10.0.0.1", "CPU": cpu, "GPU": gpu, "memory_gb": 64.0}
    return {**node, "gpu_memory_gb": gpu_gb} if gpu_gb else node


@pytest.mark.parametrize("nodes, trial_gb, expect_gpu, expect_trials", [
    ([_node(16, 1, 139)], 1.0, 0.0625, 16),          # a GPU node filled to its CPUs: 1/16 GPU each
    ([_node(2)], 1.0, 0.0, 2),                       # no GPU: CPU trials, one a core
    ([_node(16, 1, 8)], 1.5, 0.2, 5),                # GPU memory bounds it: 8 GB / 1.5 GB -> 5 trials
    ([_node(12, 1, 139)], 1.0, 0.0833, 12),          # a share Ray accepts, rounded down so 12 fit
    ([_node(16, 2, 80)], 1.0, 0.125, 16),            # two GPUs shared by 16 trials
    ([_node(16, 1, 139), _node(4, 1, 139)], 1.0, 0.0625, 20),  # one share for all: the most CPUs per GPU
    ([_node(1, 1)], None, 1.0, 1),                   # one CPU: one trial with the whole GPU
])
def test_resource_plan_for_node_shapes(nodes, trial_gb, expect_gpu, expect_trials):
    from kdtune.config import SearchSettings
    from kdtune.search.cluster import plan_resources

    trial_bytes = int(trial_gb * 2**30) if trial_gb else None
    plan = plan_resources(SearchSettings(), nodes, trial_bytes)
    assert plan["per_trial"] == {"cpu": 1.0, "gpu": expect_gpu}
    assert plan["trials_at_once"] == expect_trials, plan


def test_gpus_per_trial_overrides_the_plan_and_is_checked():
    from kdtune.config import SearchSettings
    from kdtune.errors import UsageError
    from kdtune.search.cluster import plan_resources, trial_gpu_bytes

    plan = plan_resources(SearchSettings(gpus_per_trial=0.25), [_node(16, 1, 139)], 2**30)
    assert plan["per_trial"]["gpu"] == 0.25 and plan["trials_at_once"] == 4 and plan["reason"] == "--gpus-per-trial"
    assert plan_resources(SearchSettings(gpus_per_trial=0), [_node(16, 1, 139)])["trials_at_once"] == 16
    with pytest.raises(UsageError, match="no node can hold"):
        plan_resources(SearchSettings(gpus_per_trial=0.5), [_node(2)])
    # the estimate grows with the data; at ML-20M's size 16 trials still fit in an H200's 139 GB
    small = trial_gpu_bytes(5551, 16980, 164_000, 32, 64, 100)
    large = trial_gpu_bytes(138_000, 27_000, 16_000_000, 32, 64, 100)
    assert 2**29 < small < large < 139 * 2**30 / 16
