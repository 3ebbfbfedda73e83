"""Pareto-aware ASHA: rung logic on made-up numbers, persistence, and one run on Ray with Optuna."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from kdtune.search.pareto import nondominated_sort, to_minimisation
from kdtune.search.rungs import epsilon_net_order, priority_rank, promote, rung_milestones
from kdtune.search.scheduler import CONTINUE, STOP, ParetoASHA

OBJ = {"recall@20": "max", "latency_ms": "min"}
NAN = math.nan

# (case, points to minimise, expected front index per row)
SORT_TABLE = [
    ("strict dominance chain", [[1, 1], [2, 2], [3, 3]], [0, 1, 2]),
    ("trade-off, one front", [[1, 3], [2, 2], [3, 1]], [0, 0, 0]),
    ("weak dominance", [[1, 1], [1, 2], [2, 1]], [0, 1, 1]),
    ("duplicates share a front", [[1, 2], [1, 2], [2, 2]], [0, 0, 1]),
    ("mixed", [[0, 0], [1, 0], [0, 1], [1, 1], [2, 2]], [0, 1, 1, 2, 3]),
    ("NaN rows after the last front", [[0, 0], [NAN, 0], [1, 1], [0, NAN]], [0, 2, 1, 2]),
    ("infinite rows last too", [[np.inf, 0], [1, 1]], [1, 0]),
    ("all NaN", [[NAN, NAN], [NAN, 1]], [0, 0]),
    ("3 objectives", [[1, 2, 3], [2, 1, 3], [2, 2, 3], [0, 9, 9]], [0, 0, 1, 0]),
]


@pytest.mark.parametrize("case,points,expected", SORT_TABLE, ids=[c[0] for c in SORT_TABLE])
def test_nondominated_sort_table(case: str, points: list, expected: list) -> None:
    assert nondominated_sort(np.array(points, dtype=float)).tolist() == expected


def test_to_minimisation_negates_maxima_in_objective_order() -> None:
    vec = to_minimisation({"latency_ms": 3.0, "recall@20": 0.25, "other": 9}, OBJ)
    assert vec.tolist() == [-0.25, 3.0]
    with pytest.raises(ValueError):
        to_minimisation({"a": 1}, {"a": "up"})


# One front, raw units: best recall/slow, fastest/worst recall, a middle point, and one crowding the
# best-recall end. Minimised and scaled to [0, 1] they are about (0,1), (1,0), (.5,.5), (.05,.94).
FRONT = [
    {"recall@20": 0.30, "latency_ms": 10.0},
    {"recall@20": 0.10, "latency_ms": 1.0},
    {"recall@20": 0.20, "latency_ms": 5.5},
    {"recall@20": 0.29, "latency_ms": 9.5},
]
DOMINATED = {"recall@20": 0.15, "latency_ms": 8.0}  # worse than the middle point on both


def _pts(rows: list[dict]) -> np.ndarray:
    return np.array([to_minimisation(r, OBJ) for r in rows])


def test_epsilon_net_spreads_along_the_front() -> None:
    # Seed = best first objective (recall), then the far end, then the middle, the crowded one last.
    assert priority_rank(_pts(FRONT)).tolist() == [0, 1, 2, 3]
    assert epsilon_net_order(np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])).tolist() == [0, 2, 1]


def test_priority_is_scale_free() -> None:
    # Latency in microseconds instead of ms must not change the order (columns are range-scaled).
    us = [{**r, "latency_ms": r["latency_ms"] * 1000} for r in FRONT]
    assert priority_rank(_pts(us)).tolist() == priority_rank(_pts(FRONT)).tolist()


def test_epsilon_net_is_seeded_by_the_first_objective_and_uses_scaled_distances() -> None:
    # One front, latencies within 0.09 ms of each other, recalls 0.10-0.30, rows shuffled.
    rows = [(0.275, 1.045), (0.10, 1.00), (0.20, 1.0045), (0.30, 1.09)]
    pts = _pts([{"recall@20": r, "latency_ms": lat} for r, lat in rows])
    assert nondominated_sort(pts).tolist() == [0, 0, 0, 0]
    # Scaled: best recall first, the fastest next, then row 0 (farther from both ends than row 2
    # once latency counts as much as recall).
    assert priority_rank(pts).tolist() == [2, 1, 3, 0]
    # Unscaled, recall would decide alone and row 2 would come third.
    assert epsilon_net_order(pts).tolist() == [3, 1, 2, 0]


def test_first_front_trial_crowded_out_and_dominated_trial_stopped() -> None:
    pts = _pts([*FRONT, DOMINATED, {"recall@20": 0.05, "latency_ms": 20.0}])
    ranks = priority_rank(pts)
    assert ranks.tolist() == [0, 1, 2, 3, 4, 5]  # fronts before diversity: the dominated rows last
    # n = 6, eta = 2: top 3 continue. Row 3 is on the first front but crowded out by row 0.
    assert [promote(pts, i, eta=2) for i in range(6)] == [True, True, True, False, False, False]
    # eta = 3: top 2 continue.
    assert [promote(pts, i, eta=3) for i in range(6)] == [True, True, False, False, False, False]


def test_dominated_candidate_is_stopped_even_with_few_points() -> None:
    pts = _pts([FRONT[2], DOMINATED])
    assert promote(pts, 0, eta=2) and not promote(pts, 1, eta=2)


@pytest.mark.parametrize("eta,expected", [(2, [True, True, False]), (3, [True, False, False])])
def test_eta_sets_the_fraction_kept(eta: float, expected: list) -> None:
    pts = np.array([[0.0], [1.0], [2.0]])  # one objective: a plain ranking
    assert [promote(pts, i, eta) for i in range(3)] == expected  # top ceil(3 / eta)


def test_small_n() -> None:
    # The first trial at a rung always continues, whatever it reports (NaN included).
    assert promote([[5.0, 5.0]], 0, eta=3)
    assert promote([[NAN, 5.0]], 0, eta=3)
    # n = 2, eta = 3: ceil(2/3) = 1, so the second continues only if it ranks first.
    assert promote([[1.0, 1.0], [0.0, 0.0]], 1, eta=3)
    assert not promote([[0.0, 0.0], [1.0, 1.0]], 1, eta=3)
    with pytest.raises(IndexError):
        promote([[0.0, 0.0]], 1, eta=3)
    with pytest.raises(ValueError):
        promote([[0.0, 0.0]], 0, eta=1)


def test_nan_rows_rank_last_and_do_not_disturb_the_others() -> None:
    pts = np.vstack([_pts(FRONT), [[NAN, 1.0]], [[-1.0, NAN]]])
    ranks = priority_rank(pts)
    assert ranks.tolist() == [0, 1, 2, 3, 4, 5]
    assert not promote(pts, 4, eta=2)


def test_rung_milestones() -> None:
    assert rung_milestones(1, 3, 9) == [1, 3]
    assert rung_milestones(1, 2, 8) == [1, 2, 4]
    assert rung_milestones(2, 3, 100) == [2, 6, 18, 54]
    assert rung_milestones(5, 3, 5) == []
    with pytest.raises(ValueError):
        rung_milestones(1, 1, 9)


# ------------------------------------------------------------------------------------------------
# The scheduler's decisions on plain results (no Ray)
# ------------------------------------------------------------------------------------------------


def _res(t: int, recall: float | None, latency: float | None) -> dict:
    out: dict = {"training_iteration": t}
    if recall is not None:
        out["recall@20"] = recall
    if latency is not None:
        out["latency_ms"] = latency
    return out


def test_scheduler_stops_a_dominated_trial_and_runs_the_good_one_to_max_t() -> None:
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9)
    assert s.decide("good", _res(1, 0.3, 1.0)) == CONTINUE  # first at rung 1
    assert s.decide("bad", _res(1, 0.1, 5.0)) == STOP  # dominated, n = 2 keeps 1
    assert [s.decide("good", _res(t, 0.3, 1.0)) for t in range(2, 9)] == [CONTINUE] * 7
    assert s.decide("good", _res(9, 0.3, 1.0)) == STOP  # max_t reached
    rungs = s.stats()["rungs"]
    assert rungs == [
        {"milestone": 1, "recorded": 2, "promoted": 1, "stopped": 1},
        {"milestone": 3, "recorded": 1, "promoted": 1, "stopped": 0},
    ]
    assert "1/2 promoted" in s.debug_string()


def test_closing_reports_pass_through_and_a_full_budget_ends_by_itself() -> None:
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=3, final_key="final", stop_at_max_t=False)
    assert s.decide("good", _res(1, 0.3, 1.0)) == CONTINUE
    assert s.decide("bad", _res(1, 0.1, 5.0)) == STOP
    assert [s.decide("good", _res(t, 0.3, 1.0)) for t in (2, 3)] == [CONTINUE, CONTINUE]  # max_t: no stop
    # the closing report (same epoch, better figures) is neither recorded nor judged
    before = s.stats()
    assert s.decide("good", {**_res(3, 0.9, 1.0), "final": True}) == CONTINUE
    assert s.decide("late", {**_res(1, 0.0, 9.0), "final": True}) == CONTINUE  # would be dominated
    assert s.stats() == before


def test_missing_metric_continues_and_is_recorded_later() -> None:
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9)
    assert s.decide("a", _res(1, 0.3, None)) == CONTINUE
    assert s.decide("a", {"training_iteration": 1, "recall@20": "n/a", "latency_ms": 1}) == CONTINUE
    assert s.decide("a", {"recall@20": 0.3, "latency_ms": 1.0}) == CONTINUE  # no time_attr
    assert s.stats()["rungs"][0]["recorded"] == 0
    # A result past max_t without the metrics is not stopped either (the searcher needs them).
    assert s.decide("a", _res(9, None, 1.0)) == CONTINUE
    s2 = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9)
    s2.decide("a", _res(1, None, 1.0))
    assert s2.decide("a", _res(2, 0.3, 1.0)) == CONTINUE  # first full result past milestone 1
    assert s2.stats()["rungs"][0]["recorded"] == 1


def test_a_trial_is_recorded_once_per_rung_and_jumps_record_the_highest_rung() -> None:
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=2, max_t=16)  # rungs 1, 2, 4, 8
    s.decide("a", _res(1, 0.3, 1.0))
    s.decide("a", _res(1.5, 0.0, 9.0))  # same rung again: ignored
    assert s._rungs[0]["a"]["values"] == [-0.3, 1.0]
    s.decide("b", _res(5, 0.2, 1.0))  # first report past milestone 4: recorded at rung 4 only
    assert [len(r) for r in s._rungs] == [1, 0, 1, 0]


def test_invalid_construction() -> None:
    with pytest.raises(ValueError):
        ParetoASHA({})
    with pytest.raises(ValueError):
        ParetoASHA({"recall@20": "maximise"})
    with pytest.raises(ValueError):
        ParetoASHA(OBJ, grace_period=10, max_t=5)


# ------------------------------------------------------------------------------------------------
# Persistence: a restored scheduler decides as the uninterrupted one
# ------------------------------------------------------------------------------------------------


def _simulated_stream(n_trials: int = 14, max_t: int = 8, seed: int = 0) -> list[tuple[str, dict, str]]:
    """Round-robin results of random trials under an in-memory scheduler: (trial, result, decision)."""
    rng = np.random.default_rng(seed)
    quality, latency = rng.uniform(0.05, 0.4, n_trials), rng.uniform(0.5, 12.0, n_trials)
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=2, max_t=max_t)
    live, t, stream = list(range(n_trials)), 0, []
    while live:
        t += 1
        for i in list(live):
            result = _res(t, float(quality[i] * (1 - 0.6**t) + rng.normal(0, 0.005)), float(latency[i]))
            decision = s.decide(f"t{i}", result)
            stream.append((f"t{i}", result, decision))
            if decision == STOP:
                live.remove(i)
    return stream


def test_two_instances_sharing_state_path_decide_like_one(tmp_path) -> None:
    stream = _simulated_stream()
    decisions = [d for _, _, d in stream]
    assert CONTINUE in decisions and decisions.count(STOP) == 14
    path = tmp_path / "asha.json"
    half = len(stream) // 2
    first = ParetoASHA(OBJ, grace_period=1, reduction_factor=2, max_t=8, state_path=path)
    got = [first.decide(tid, r) for tid, r, _ in stream[:half]]
    second = ParetoASHA(OBJ, grace_period=1, reduction_factor=2, max_t=8, state_path=path)
    got += [second.decide(tid, r) for tid, r, _ in stream[half:]]
    assert got == decisions
    assert (
        second.stats()
        == ParetoASHA(OBJ, grace_period=1, reduction_factor=2, max_t=8, state_path=path).stats()
    )
    # Replaying the whole stream (every trial re-run after a restore) repeats every decision and
    # records nobody twice.
    third = ParetoASHA(OBJ, grace_period=1, reduction_factor=2, max_t=8, state_path=path)
    assert [third.decide(tid, r) for tid, r, _ in stream] == decisions
    assert third.stats() == second.stats()


def test_unpickled_scheduler_reloads_the_records_written_since(tmp_path) -> None:
    # Tune pickles the scheduler when the Tuner is created; Tuner.restore unpickles that copy.
    path = tmp_path / "asha.json"
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=path)
    frozen = pickle.dumps(s)
    s.decide("a", _res(1, 0.3, 1.0))
    s.decide("b", _res(1, 0.1, 5.0))
    restored = pickle.loads(frozen)
    assert restored.stats() == s.stats()
    assert restored.decide("b", _res(1, 0.1, 5.0)) == STOP  # the stopped trial re-run: same decision


def test_a_restore_relocates_the_state_and_forgets_trials_the_search_lost(tmp_path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=old / "asha.json")
    frozen = pickle.dumps(s)
    s.decide("a", _res(1, 0.3, 1.0))
    s.decide("ghost", _res(1, 0.5, 0.5))  # reached a rung after Tune's last save: the restore lost it
    old.rename(new)  # the run directory moved
    restored = pickle.loads(frozen)
    restored.relocate(new, known_trials={"a"})
    assert restored._state_path == str(new / "asha.json")
    assert restored.stats()["rungs"][0]["recorded"] == 1
    assert set(json.loads((new / "asha.json").read_text())["rungs"][0]) == {"a"}
    # without the ghost, "b" is judged as by a scheduler that only ever saw "a"
    fresh = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9)
    fresh.decide("a", _res(1, 0.3, 1.0))
    assert restored.decide("b", _res(1, 0.2, 0.9)) == fresh.decide("b", _res(1, 0.2, 0.9))
    assert restored.stats() == fresh.stats()


def test_rerecording_replaces_and_keeps_the_decision(tmp_path) -> None:
    path = tmp_path / "asha.json"
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=path)
    s.decide("a", _res(1, 0.30, 1.0))
    s.decide("a", _res(2, 0.31, 1.0))
    # Restart within the same driver (time goes back): rung 1 re-measured, replaced, not added.
    assert s.decide("a", _res(1, 0.29, 1.0)) == CONTINUE
    assert s._rungs[0] == {"a": {"values": [-0.29, 1.0], "time": 1, "decision": CONTINUE}}
    # A new driver: a re-run resumed from a checkpoint past milestone 1 does not re-measure it ...
    s2 = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=path)
    assert s2.decide("a", _res(2, 0.5, 1.0)) == CONTINUE
    assert s2._rungs[0]["a"]["values"] == [-0.29, 1.0]
    # ... one from scratch does, and the file holds one record for the trial.
    s3 = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=path)
    s3.decide("a", _res(1, 0.28, 1.0))
    state = json.loads(path.read_text())
    assert state["rungs"][0] == {"a": {"values": [-0.28, 1.0], "time": 1, "decision": CONTINUE}}
    assert not (tmp_path / "asha.json.tmp").exists()


def test_state_file_is_strict_json_and_checked_against_the_configuration(tmp_path) -> None:
    path = tmp_path / "asha.json"
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=path)
    s.decide("a", _res(1, NAN, 1.0))

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    state = json.loads(path.read_text(), parse_constant=no_constants)
    assert state["rungs"][0]["a"]["values"] == [None, 1.0]
    assert math.isnan(ParetoASHA(OBJ, max_t=9, state_path=path)._rungs[0]["a"]["values"][0])
    with pytest.raises(ValueError, match="written for"):
        ParetoASHA({"recall@20": "max"}, max_t=9, state_path=path)
    with pytest.raises(ValueError, match="written for"):
        ParetoASHA(OBJ, reduction_factor=2, max_t=9, state_path=path)


# ------------------------------------------------------------------------------------------------
# End to end on Ray with a multi-objective OptunaSearch
# ------------------------------------------------------------------------------------------------

# Arriving in this order, each front trial is the best recall so far and so ranks first at every
# rung; the dominated ones (each worse than (0.5, 5) on both axes) come after it and are stopped.
FRONT_CONFIGS = [
    {"recall": 0.1, "latency": 1.0},
    {"recall": 0.5, "latency": 5.0},
    {"recall": 0.9, "latency": 9.0},
]
DOMINATED_CONFIGS = [
    {"recall": 0.4, "latency": 8.0},
    {"recall": 0.2, "latency": 7.0},
    {"recall": 0.05, "latency": 6.0},
]


@pytest.mark.slow
def test_end_to_end_dominated_trials_stop_early_and_reach_optuna(ray_cluster, tmp_path) -> None:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def synthetic(config: dict) -> None:
        # Nested so that cloudpickle ships it by value: Ray workers cannot import the tests package.
        for it in range(1, 101):  # longer than max_t: the scheduler ends every trial
            tune.report({"recall@20": config["recall"] * (1 - 0.5**it), "latency_ms": config["latency"]})

    max_t = 9
    scheduler = ParetoASHA(
        OBJ, grace_period=1, reduction_factor=3, max_t=max_t, state_path=tmp_path / "asha.json"
    )
    configs = FRONT_CONFIGS + DOMINATED_CONFIGS
    searcher = OptunaSearch(
        {"recall": tune.uniform(0.0, 1.0), "latency": tune.uniform(0.0, 10.0)},
        metric=list(OBJ),
        mode=list(OBJ.values()),
        points_to_evaluate=configs,
        seed=0,
    )
    tuner = tune.Tuner(
        synthetic,
        # One trial at a time fixes the order in which trials reach each rung.
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=len(configs),
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="e2e", verbose=0),
    )
    grid = tuner.fit()  # reuse_actors: one worker runs all six trials, saving five actor starts
    assert not grid.errors
    iters = {(r.config["recall"], r.config["latency"]): r.metrics["training_iteration"] for r in grid}
    for c in FRONT_CONFIGS:
        assert iters[(c["recall"], c["latency"])] == max_t
    for c in DOMINATED_CONFIGS:
        assert iters[(c["recall"], c["latency"])] < max_t

    study = searcher._ot_study
    by_params = {(t.params["recall"], t.params["latency"]): t for t in study.trials}
    assert len(by_params) == len(configs)
    for r in grid:
        ot = by_params[(r.config["recall"], r.config["latency"])]
        assert ot.state == optuna.trial.TrialState.COMPLETE
        assert ot.values == pytest.approx([r.metrics["recall@20"], r.metrics["latency_ms"]])
    assert scheduler.stats()["rungs"][0] == {"milestone": 1, "recorded": 6, "promoted": 3, "stopped": 3}
    assert json.loads((tmp_path / "asha.json").read_text())["rungs"][0].keys() == {
        r.metrics["trial_id"] for r in grid
    }


def test_state_of_other_objective_order_is_refused(tmp_path) -> None:
    path = tmp_path / "asha.json"
    ParetoASHA(OBJ, max_t=9, state_path=path).decide("a", _res(1, 0.3, 1.0))
    with pytest.raises(ValueError, match="written for"):
        ParetoASHA({"latency_ms": "min", "recall@20": "max"}, max_t=9, state_path=path)


def test_grouped_rungs_compare_a_trial_only_with_its_own_group(tmp_path) -> None:
    path = tmp_path / "asha.json"
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=path, group_by="loss")
    assert s.group_of({"loss": "rrd", "dim": 16}) == "rrd"
    assert s.decide("fast", _res(1, 0.30, 1.0), "rrd") == CONTINUE
    # dominated by "fast", but the first of its group at the rung: continues (ungrouped it would stop)
    assert s.decide("slow", _res(1, 0.10, 1.0), "catalog_kd") == CONTINUE
    assert ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9).decide("x", _res(1, 0.3, 1.0)) == CONTINUE
    # inside a group the usual rule: the second continues only if it ranks first of the two
    assert s.decide("slow2", _res(1, 0.05, 1.0), "catalog_kd") == STOP
    assert s.decide("slow3", _res(1, 0.20, 1.0), "catalog_kd") == CONTINUE
    assert s.decide("fast2", _res(1, 0.20, 1.0), "rrd") == STOP
    assert s.stats()["rungs"][0] == {"milestone": 1, "recorded": 5, "promoted": 3, "stopped": 2}
    # a restored scheduler keeps the groups (and repeats the decisions); an ungrouped one refuses the file
    again = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=path, group_by="loss")
    assert again.decide("slow2", _res(1, 0.05, 1.0), "catalog_kd") == STOP
    assert again.decide("new", _res(1, 0.25, 1.0), "catalog_kd") == CONTINUE  # top 1 of 3 in its group
    with pytest.raises(ValueError, match="written for"):
        ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=path)


def test_a_scheduler_pickled_before_groups_existed_runs_ungrouped(tmp_path) -> None:
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, state_path=tmp_path / "asha.json")
    s.decide("a", _res(1, 0.3, 1.0))
    state = s.__dict__.copy()
    del state["_group_by"]
    old = ParetoASHA.__new__(ParetoASHA)
    old.__setstate__(state)
    assert old.group_of({"loss": "rrd"}) is None
    assert old.decide("b", _res(1, 0.1, 1.0)) == STOP


def test_the_search_groups_its_rungs_by_loss_unless_told_not_to(tmp_path) -> None:
    from types import SimpleNamespace

    from kdtune.config import SearchSettings
    from kdtune.search.driver import make_scheduler

    space, run = SimpleNamespace(fixed={"epochs": 40}), SimpleNamespace(dir=tmp_path)
    grouped = make_scheduler(SearchSettings(), space, run, 20)
    # Tune hands the scheduler the trial: its config's loss is its group
    fast = SimpleNamespace(trial_id="fast", config={"loss": "rrd", "dim": 16})
    slow = SimpleNamespace(trial_id="slow", config={"loss": "catalog_kd", "dim": 16})
    at_rung = {"epoch": 5, "recall@20": 0.09, "latency_ms": 0.1}
    assert grouped.on_trial_result(None, fast, at_rung) == CONTINUE
    assert grouped.on_trial_result(None, slow, {**at_rung, "recall@20": 0.05}) == CONTINUE
    (tmp_path / "b").mkdir()
    flat = make_scheduler(SearchSettings(rung_groups="none"), space, SimpleNamespace(dir=tmp_path / "b"), 20)
    assert flat.on_trial_result(None, fast, at_rung) == CONTINUE
    assert flat.on_trial_result(None, slow, {**at_rung, "recall@20": 0.05}) == STOP


def test_grouped_rungs_keep_the_best_trial_so_far_at_its_latency() -> None:
    s = ParetoASHA(OBJ, grace_period=1, reduction_factor=3, max_t=9, group_by="loss")
    assert s.decide("big", _res(1, 0.30, 2.0), "kd") == CONTINUE
    # second of its group and behind "big": the quota (1 of 2) would stop it, but nothing recorded at the
    # rung is as fast and as good, so it is on the rung's front and continues
    assert s.decide("small", _res(1, 0.10, 1.0), "kd") == CONTINUE
    # dominated by "small" (same latency, lower recall), from another group: judged in its group (first)
    assert s.decide("other", _res(1, 0.05, 1.0), "rrd") == CONTINUE
    # behind in its group and dominated at the rung: stops
    assert s.decide("other2", _res(1, 0.04, 1.0), "rrd") == STOP
    assert s.decide("small2", _res(1, 0.09, 1.0), "kd") == STOP
