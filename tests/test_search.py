"""End-to-end searches on a tiny synthetic dataset (CPU, the shared session Ray)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from kdtune.cli import run_cli
from kdtune.cli.search import main
from kdtune.search import pareto
from kdtune.search.spacefile import load_space

DATA = "synthetic:users=300,items=400"
COMMON = ["--space", "smoke", "--data", DATA, "--teacher-epochs", "3", "--grace-epochs", "1", "--concurrency", "2"]


def run_search(args: list[str]) -> int:
    return main(args)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def finished_run(ray_cluster, cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    # the smoke space with the serving index searched too (sq8: 8-bit codes of the item table)
    space = runs / "smoke-index.yaml"
    space.write_text(_with_index())
    out = runs / "e2e"
    t0 = time.perf_counter()
    assert run_search(["--trials", "4", "--out", str(out), "--cache-dir", cache, *COMMON, "--space", str(space)]) == 0
    return out, time.perf_counter() - t0


def _with_index() -> str:
    import yaml

    data = load_space("smoke").to_dict()
    data["params"]["index"] = {"type": "categorical", "choices": ["flat", "sq8"]}
    return yaml.safe_dump(data, sort_keys=False)


def test_search_exports_a_consistent_front(finished_run):
    out, seconds = finished_run
    for name in ["trials.csv", "pareto.csv", "pareto.md", "pareto.json", "pareto.png", "run.json",
                 "optuna-journal.log", "teacher.pt"]:
        assert (out / name).stat().st_size > 0, name
    run = json.loads((out / "run.json").read_text())
    trials = pd.read_csv(out / "trials.csv")
    front = pd.read_csv(out / "pareto.csv")
    assert run["status"] == "finished"
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}
    objectives = {"recall@20": "max", "latency_ms": "min"}
    # the front is exactly the non-dominated set of the finished trials and the plain students together
    payload = json.loads((out / "pareto.json").read_text())
    plain = pd.DataFrame([b for b in payload["baselines"] if b["kind"] == "plain"])
    assert sorted(plain["trial_id"]) == ["plain-dim4", "plain-dim8"]
    # the plain students trained beside the trials: the export waited for them, it did not train them
    assert run["timings"]["plain_wait_s"] >= 0
    # what the run chose and what it needed are in its record
    assert run["resource_plan"]["per_trial"] == run["resources_per_trial"] == {"cpu": 1.0, "gpu": 0.0}
    peak = run["peak_memory"]
    assert peak["driver_rss_gb"] > 0 and peak["trial_rss_gb"] > 0 and peak["plain_rss_gb"] > 0
    assert peak["teacher_rss_gb"] > 0 or run["teacher"]["from_cache"]
    finished = trials[trials["outcome"] == "finished"]
    by_dim = plain.set_index("dim")
    ahead = [(r["recall@20"] > by_dim.loc[r["dim"], "recall@20"]) and (r["ndcg@20"] > by_dim.loc[r["dim"], "ndcg@20"])
             for _, r in finished.iterrows()]
    assert sorted(run["behind_plain"]) == sorted(finished.loc[[not a for a in ahead], "trial_id"])
    candidates = pd.concat([finished[ahead], plain], ignore_index=True)
    expected = pareto.pareto_front(candidates, objectives)
    assert sorted(front["trial_id"]) == sorted(expected["trial_id"])
    assert set(front["kind"]) <= {"distilled", "plain"}
    # no front row is beaten by a plain student at the same or lower latency
    for _, row in front.iterrows():
        beaten = plain[(plain["latency_ms"] <= row["latency_ms"]) & (plain["recall@20"] > row["recall@20"])]
        assert beaten.empty, (row["trial_id"], beaten["trial_id"].tolist())
    gains = front["test_ndcg@20"] / front["plain_test_ndcg@20"] - 1
    assert np.allclose(front["gain_vs_plain_ndcg@20"], gains)
    merged = front.merge(candidates, on="trial_id", suffixes=("", "_c"))
    assert np.allclose(merged["recall@20"], merged["recall@20_c"], rtol=1e-12)
    assert front["test_recall@20"].between(0, 1).all()
    for weights in front["weights"]:
        assert (out / weights / "student.pt").exists()
    # one latency figure per architecture everywhere: trials, baselines, front (the measurement after the search)
    after = run["latency"]["after"]["profiles"]
    assert set(after) == set(run["latency"]["before"]["profiles"]) == {
        f"dim={d},index={i}" for d in (4, 8) for i in ("flat", "sq8")} | {"dim=64,index=flat"}
    for table in (trials, front, plain):
        for _, row in table.iterrows():
            key = f"dim={int(row['dim'])},index={row['index']}"
            assert row["latency_ms"] == pytest.approx(after[key]["latency_ms"], rel=1e-12)
    # every row says its index and its size: the index's (flat: 400 items of dim + 1 float32 columns)
    assert set(finished["index"]) <= {"flat", "sq8"} and set(front["index"]) <= {"flat", "sq8"}
    assert set(plain["index"]) == {"flat"}
    for _, row in pd.concat([finished, plain]).iterrows():
        flat_bytes = 400 * (int(row["dim"]) + 1) * 4
        if row["index"] == "flat":
            assert flat_bytes < row["bytes"] < flat_bytes + 1024
        else:
            assert row["bytes"] < flat_bytes
    # the run's Optuna study: its best trials are the exported front
    from kdtune.report.study import load_study

    study = load_study(out)
    assert sorted(t.user_attrs["trial_id"] for t in study.best_trials) == sorted(front["trial_id"])
    # the teacher was trained once, before the trials, recorded and kept in the run
    assert run["teacher"]["from_cache"] is False and run["teacher"]["content_hash"]
    assert run["timings"]["teacher_s"] > 0 and run["hypervolume"]["value"] > 0
    assert payload["baselines"][0]["model"].startswith("teacher")
    # the paths the run uses to find its parts are relative: the directory can be moved
    # (only the command line, echoed as typed, may hold the absolute --out and --cache-dir of this test)
    record = {key: value for key, value in run.items() if key not in ("command", "search", "data")}
    assert str(out) not in json.dumps(record)
    assert (run["experiment_path"], run["space_file"], run["teacher"]["file"]) == ("ray/search", "space.yaml",
                                                                                   "teacher.pt")
    assert seconds < 300  # ~60 s on a quiet 2-core machine (see BENCHMARKS.md)


def test_every_epoch_reaches_tune(finished_run):
    out, _ = finished_run
    trials = pd.read_csv(out / "trials.csv")
    for path in out.glob("ray/search/train_student_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        epochs = [r["epoch"] for r in rows if not r["final"]]
        assert epochs == list(range(1, len(epochs) + 1)) and epochs
        assert all(r["latency_ms"] > 0 for r in rows)
    assert len(list(out.glob("ray/search/train_student_*/result.json"))) == len(trials)


def test_a_copied_run_exports_and_a_lost_teacher_is_refused(finished_run, tmp_path, capsys):
    import shutil

    from kdtune.cli.export import main as export_main

    out, _ = finished_run
    copy = tmp_path / "copied"
    shutil.copytree(out, copy)
    (copy / "pareto.csv").unlink()
    assert export_main([str(copy)]) == 0
    assert sorted(pd.read_csv(copy / "pareto.csv")["trial_id"]) == sorted(pd.read_csv(out / "pareto.csv")["trial_id"])
    (copy / "teacher.pt").unlink()
    run = json.loads((copy / "run.json").read_text())
    run["data"]["cache_dir"] = str(tmp_path / "empty-cache")
    (copy / "run.json").write_text(json.dumps(run))
    assert run_cli(export_main, [str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "lost its teacher" in err


def test_second_identical_run_loads_the_teacher(finished_run, cache, tmp_path):
    out = tmp_path / "again"
    assert run_search(["--trials", "1", "--out", str(out), "--cache-dir", cache, *COMMON]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["teacher"]["from_cache"] is True


def test_export_rewrites_the_tables(finished_run, cache):
    from kdtune.cli.export import main as export_main

    out, _ = finished_run
    before = pd.read_csv(out / "pareto.csv")
    (out / "pareto.csv").unlink()
    assert export_main([str(out)]) == 0
    after = pd.read_csv(out / "pareto.csv")
    assert sorted(after["trial_id"]) == sorted(before["trial_id"])


def test_export_writes_deployable_students_that_serve_the_evaluated_top_k(finished_run, tmp_path):
    import torch

    import kdtune.serve
    from kdtune.cli.export import main as export_main
    from kdtune.data import prepare
    from kdtune.model.store import load_model
    from kdtune.search.run import Run
    from kdtune.serving.served import served_student

    out, _ = finished_run
    assert export_main([str(out), "--serve", str(tmp_path / "serve")]) == 0
    members = json.loads((tmp_path / "serve" / "manifest.json").read_text())["members"]
    front = pd.read_csv(out / "pareto.csv")
    by_id = front.set_index(front["trial_id"].astype(str))
    # each member is served through the index it was scored through in the run
    assert members and [m["index"] for m in members] == [by_id.loc[m["dir"], "index"] for m in members]
    member = next((m for m in members if m["index"] == "flat"), members[0])
    run = Run.load(out)
    _, split = prepare(run.data)
    model = load_model(out / by_id.loc[member["dir"], "weights"])
    users = torch.arange(min(50, split.train.n_users))
    seen = [np.concatenate([split.train.items_of(u).numpy(), split.valid.items_of(u).numpy()]) for u in users.tolist()]
    if member["index"] == "flat":  # exact: the model's own top-10 of the unseen items
        scores = model.full_scores(users).detach()
        for u in users.tolist():
            scores[u, seen[u]] = -float("inf")
        expected = torch.topk(scores, 10, dim=1).indices.tolist()
    else:
        served = served_student(model, member["index"], out / by_id.loc[member["dir"], "weights"])
        expected = served.recommend(users.numpy(), 10, seen).tolist()
    deployed = kdtune.serve.load(tmp_path / "serve" / member["dir"])
    inter_ids = deployed.user_ids[: len(users)]
    got = deployed.recommend(inter_ids, 10)
    assert got == [[deployed.item_ids[i] for i in row] for row in expected]


def test_killed_driver_resumes_without_losing_trials(ray_cluster, cache, tmp_path):
    out = tmp_path / "killed"
    trials = 5
    cmd = [sys.executable, "-m", "kdtune.search", "--trials", str(trials), "--out", str(out), "--cache-dir",
           cache, "--address", ray_cluster, *COMMON[:-1], "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 150
        # Kill the driver as soon as a first checkpoint and a first saved search state exist: most trials
        # are still to be created, so the resumed search makes them (in the moved run, not where it was).
        while time.time() < deadline and not (list(out.glob("ray/search/*/checkpoint_*"))
                                              and (out / "tune-state.zip").is_file()):
            assert proc.poll() is None, "search ended before it could be interrupted"
            time.sleep(0.1)
        assert list(out.glob("ray/search/*/checkpoint_*"))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished_before = len(list(out.glob("ray/search/*/checkpoint_*")))
    assert finished_before < trials
    # Tune copies its state to storage in the background: a kill during that copy leaves it cut short.
    # Whatever the kill interrupted this time, make it the worst case.
    assert (out / "tune-state.zip").is_file()
    for name in ["searcher-state-*.pkl", "experiment_state-*.json"]:
        for path in out.glob(f"ray/search/{name}"):
            path.write_bytes(path.read_bytes()[:7])
    # ... and the interrupted run is moved elsewhere before it is resumed
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    out.rename(moved)
    old, out = out, moved
    assert run_search(["--resume", str(out)]) == 0
    # nothing of the resumed search went to the old place (trials created after the resume included)
    assert not old.exists()
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == trials and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").sum() == trials
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    # the scheduler was on (rungs at epochs 1 and 3 of 3): its records survived the kill and the move,
    # and every trial it stopped stayed stopped (stopped + finished + errors = trials, none re-run)
    state = json.loads((out / "scheduler-state.json").read_text())
    recorded = {trial_id for rung in state["rungs"] for trial_id in rung}
    assert recorded and recorded <= set(table["trial_id"])
    assert table["outcome"].isin(["finished", "stopped"]).all()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trials", "0"], "--trials must be >= 1"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
        (["--space", "/nonexistent/space.yaml"], "space"),
        (["--resume", "/nonexistent/run"], "not a kdtune run"),
        (["--data", "/nonexistent/users.dat"], "users.dat"),
        (["--k", "100000", "--data", DATA], "larger than the catalogue"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert run_cli(main, ["--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "x").exists()


def test_nonsense_flags_are_usage_errors(capsys):
    for argv in (["--sampler", "bogus"], ["--trials", "many"], ["--no-such-flag"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_cli_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdtune.search", "--trials", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --trials must be >= 1 (got 0)"


def test_unreachable_address_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "kdtune.search", "--address", "127.0.0.1:1", "--data", DATA, "--out",
         str(tmp_path / "x"), "--space", "smoke"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "RAY_gcs_rpc_server_connect_timeout_s": "5"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "could not connect" in proc.stderr


def test_existing_run_dir_is_not_overwritten(finished_run, capsys):
    out, _ = finished_run
    before = (out / "run.json").read_text()
    assert run_cli(main, ["--out", str(out), "--space", "smoke", "--data", DATA]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "run.json").read_text() == before


def test_malformed_space_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  lr: {type: float, low: 1, high: 0.1}\n")
    assert run_cli(main, ["--space", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lr" in err
    assert not (tmp_path / "x").exists()


def test_diverging_trial_is_recorded_and_the_search_goes_on(ray_cluster, cache, tmp_path):
    space = tmp_path / "diverge.yaml"
    # soft_bce with T ~ 1e20 overflows float32 at once (T^2 * BCE = inf): those trials must fail alone.
    space.write_text(
        "params:\n"
        "  lr: {type: float, low: 0.01, high: 0.02}\n"
        "  dim: {type: categorical, choices: [4]}\n"
        "  alpha: {type: float, low: 0.5, high: 0.6}\n"
        "  loss: {type: categorical, choices: [soft_bce, rd]}\n"
        "conditional:\n"
        "  T: {when: {loss: [soft_bce]}, type: float, low: 1.0e+20, high: 2.0e+20}\n"
        "fixed: {epochs: 2, patience: 2, batch_size: 1024}\n"
    )
    out = tmp_path / "run"
    # seed 0 draws soft_bce, rd, rd, soft_bce (the random sampler is deterministic under a seed); the
    # experiment lives outside the run, in storage given as a URI, which export reads through pyarrow
    storage = (tmp_path / "storage").as_uri()
    argv = ["--trials", "4", "--sampler", "random", "--seed", "0", "--out", str(out), "--cache-dir", cache,
            "--storage", storage, "--scheduler", "none",
            "--space", str(space), "--data", DATA, "--teacher-epochs", "3", "--concurrency", "2"]
    assert run_search(argv) == 0
    table = pd.read_csv(out / "trials.csv")
    failed = table[table["status"] == "ERROR"]
    assert len(table) == 4 and set(failed["loss"]) == {"soft_bce"} and len(failed) == 2
    assert failed["error"].str.contains("DivergedError").all()
    assert (table["status"] == "TERMINATED").sum() == 4 - len(failed) >= 1
    run = json.loads((out / "run.json").read_text())
    assert run["experiment_path"] == f"{storage}/search" and not (out / "ray").exists()
    for weights in pd.read_csv(out / "pareto.csv")["weights"]:
        assert (out / weights / "student.pt").exists()


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare as one line
    assert "(default: 50)" in text and "(default: 50) (default: 50)" not in text
    for option in text.split(" --")[1:]:
        assert option.count("(default:") <= 1, option


def test_unknown_storage_scheme_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdtune.search", "--storage", "bogus://nowhere/x", "--data", DATA,
                           "--out", str(tmp_path / "x"), "--space", "smoke"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("error: --storage bogus://nowhere/x: unknown filesystem 'bogus'")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_the_summary_is_the_last_output_of_a_search(ray_cluster, cache, tmp_path):
    cmd = [sys.executable, "-m", "kdtune.search", "--trials", "2", "--out", str(tmp_path / "run"), "--cache-dir",
           cache, "--address", ray_cluster, *COMMON]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith(f"Files in {tmp_path / 'run'}: "), lines[-5:]
    table = next(i for i, line in enumerate(lines) if line.startswith("Pareto front of "))
    # after the front's title: its table, any latency warnings, the note on small catalogues, the resources and
    # peak memory, the file list, nothing of Ray's
    assert all(line.startswith(("|", "Latency warnings:", "- ", "At ", "barely", "Resources: ", "Peak memory: ",
                                "Files in"))
               for line in lines[table + 1:]), lines[table:]
