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
    assert trials["node"].nunique() == 2, trials[["trial_id", "node"]]
    assert len(pd.read_csv(out / "pareto.csv")) >= 1


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
