"""The report's front selection on the committed CiteULike-a run: its tables yield its committed front."""

import json
from pathlib import Path

import pandas as pd

from kdtune.report.front import choose_front
from kdtune.serving.plan import figures, with_run_latency

RUN = Path(__file__).resolve().parents[1] / "results" / "citeulike-a-50"


def test_the_committed_run_yields_its_committed_front_and_left_out_trials():
    run = json.loads((RUN / "run.json").read_text())
    trials = pd.read_csv(RUN / "trials.csv")
    baselines = with_run_latency(pd.read_csv(RUN / "baselines.csv"), figures(run["latency"], "after"))
    assert baselines["latency_ms"].notna().all()
    finished = trials[trials["outcome"].eq("finished")]
    choice = choose_front(finished, baselines, run["data"]["k"])
    committed = pd.read_csv(RUN / "pareto.csv")
    assert list(choice.front["trial_id"]) == list(committed["trial_id"])
    assert list(choice.front["kind"]) == list(committed["kind"])
    assert sorted(finished.loc[choice.behind, "trial_id"]) == run["behind_plain"]
    assert len(choice.every) == len(finished) + int(baselines["kind"].eq("plain").sum())
