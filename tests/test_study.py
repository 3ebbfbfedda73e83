"""A run's study on disk: what optuna.load_study reads back must be the candidate table and its front."""

from __future__ import annotations

import math
import os

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from kdtune.report.study import STUDY_FILE, distribution, load_study, write_study
from kdtune.search.pareto import pareto_front
from kdtune.search.spacefile import Param, SearchSpace, load_space, parse_space

OBJ = {"recall@20": "max", "latency_ms": "min"}
NaN = float("nan")


def _row(tid, loss, dim, lr, alpha, recall, lat, **extra):
    return {"trial_id": tid, "kind": "distilled", "loss": loss, "dim": dim, "lr": lr, "alpha": alpha,
            "recall@20": recall, "latency_ms": lat, **extra}


def shared_weight_space() -> SearchSpace:
    """The default space with one shared ``alpha`` and ``T`` instead of each loss's own weight and temperature
    (a space a user may write; the rows below are trials of such a space)."""
    data = load_space("default").to_dict()
    data["params"]["alpha"] = {"type": "float", "low": 0.1, "high": 0.9}
    data["conditional"] = {n: p for n, p in data["conditional"].items() if not n.endswith(("_weight", "_T"))}
    data["conditional"]["T"] = {"when": {"loss": ["soft_bce", "cd", "listwise"]}, "type": "float", "low": 1.0,
                                "high": 10.0, "log": True}
    return parse_space(data, name="default")


@pytest.fixture
def space() -> SearchSpace:
    return shared_weight_space()


@pytest.fixture
def candidates() -> pd.DataFrame:
    """Distilled trials of every loss (int params stored as floats next to NaN, as Ray's table has
    them), plain students, a duplicated point on the front and a trial with a missing objective."""
    rows = [
        _row("t0", "mse_diff", 8, 0.01, 0.5, 0.15, 0.20, T=2.0, test_recall=0.14, epochs_run=12),
        _row("t1", "soft_bce", 16, 0.002, 0.3, 0.19, 0.30, T=5.5, stopped_early=np.bool_(True)),
        _row("t2", "rd", 4, 0.02, 0.7, 0.08, 0.10, rd_k=10.0, rd_lambda=3.0, rd_mu=0.1, rd_warmup=10.0,
             bytes=np.int64(4096)),
        _row("t3", "cd", 32, 0.005, 0.2, 0.21, 0.50, T=1.5, cd_samples=20.0, cd_lambda=10.0, cd_guide="hybrid"),
        _row("t4", "rrd", 16, 0.004, 0.9, 0.12, 0.40, rrd_k=7.0, rrd_l=150.0, rrd_lambda=30.0),
        _row("t5", "de", 32, 0.003, 0.6, 0.21, 0.50, de_experts=4.0, index="bf16"),  # ties t3
        _row("t6", "rd", 8, 0.01, 0.4, 0.13, NaN, rd_k=25.0, rd_lambda=1.5, rd_mu=0.5, rd_warmup=3.0),  # never reported latency
        {"trial_id": "plain-dim4", "kind": "plain", "loss": "bpr", "dim": 4, "lr": 0.0054772,
         "recall@20": 0.09, "latency_ms": 0.09, "test_recall": 0.085},
        {"trial_id": "plain-dim16", "kind": "plain", "loss": "bpr", "dim": 16, "lr": 0.03,
         "recall@20": 0.11, "latency_ms": 0.30},
    ]
    df = pd.DataFrame(rows)
    # Ray bookkeeping that must not become attributes (machine-specific, not relocatable).
    df["checkpoint"] = "/abs/path/to/checkpoint"
    df["hostname"] = "vm"
    df["status"] = "TERMINATED"
    return df


@pytest.fixture
def errored() -> pd.DataFrame:
    return pd.DataFrame([
        {"trial_id": "e0", "loss": "cd", "dim": 8, "lr": 0.01, "alpha": 0.5, "T": 3.0, "cd_samples": 9.0,
         "cd_lambda": 5.0, "error": "RuntimeError: out of memory"},
        {"trial_id": "t6", "loss": "rd", "dim": 8, "lr": 0.01, "alpha": 0.4, "error": "killed"},
    ])


def _open(path) -> optuna.Study:
    """What a user does: plain optuna.load_study on the journal file."""
    return optuna.load_study(study_name="kdtune", storage=JournalStorage(JournalFileBackend(str(path))))


def _by_id(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs["trial_id"]: t for t in study.trials}


def test_best_trials_are_the_pareto_front(tmp_path, candidates, space, errored):
    path = write_study(tmp_path / STUDY_FILE, candidates, OBJ, space, errored=errored)
    study = _open(path)
    expected = set(pareto_front(candidates, OBJ)["trial_id"])
    assert {"t3", "t5", "plain-dim4"} <= expected  # the tie and a plain student are on it
    assert {t.user_attrs["trial_id"] for t in study.best_trials} == expected
    assert len(study.best_trials) == len(expected)


@pytest.fixture
def written(tmp_path, candidates, space):
    """The study ``write_study`` writes for ``candidates``, opened."""
    return _open(write_study(tmp_path / STUDY_FILE, candidates, OBJ, space))


def test_values_params_and_distributions_round_trip(written, candidates, space):
    trials = _by_id(written)
    assert len(written.trials) == len(candidates)
    for row in candidates.to_dict("records"):
        trial = trials[row["trial_id"]]
        if math.isnan(row["latency_ms"]):
            continue
        assert trial.state == TrialState.COMPLETE
        assert trial.values == [row["recall@20"], row["latency_ms"]]
        for name, value in trial.params.items():
            param = space.params.get(name) or space.conditional[name]
            assert trial.distributions[name] == distribution(param)
            assert value == row[name]
            if param.type == "int" or name == "dim":
                assert type(value) is int  # 10.0 in the table, 10 in the study
    assert trials["t2"].params["rd_k"] == 10
    assert trials["t2"].distributions["rd_k"] == IntDistribution(5, 40)
    assert trials["t0"].distributions["lr"] == FloatDistribution(1e-3, 3e-2, log=True)
    assert trials["t0"].distributions["dim"] == CategoricalDistribution([4, 8, 16, 32])


def test_conditional_params_only_where_active(written, candidates, space):
    trials = _by_id(written)
    for row in candidates[candidates["kind"] == "distilled"].to_dict("records"):
        assert list(trials[row["trial_id"]].params) == space.active_params(row)
    assert set(trials["t4"].params) == {"lr", "dim", "alpha", "loss", "rrd_k", "rrd_l", "rrd_lambda"}
    assert trials["t3"].params["cd_guide"] == "hybrid"  # a string choice of a loss round-trips
    assert "T" not in trials["t2"].params and "T" not in trials["t2"].user_attrs


def test_plain_students_marked_with_space_distributions(written, space):
    trials = _by_id(written)
    for tid in ("plain-dim4", "plain-dim16"):
        t = trials[tid]
        assert t.state == TrialState.COMPLETE
        assert set(t.params) == {"dim", "lr"}
        assert t.distributions["lr"] == distribution(space.params["lr"])
        assert t.distributions["dim"] == distribution(space.params["dim"])
        assert t.user_attrs["kind"] == "plain" and t.user_attrs["loss"] == "bpr"
    assert trials["plain-dim4"].params == {"dim": 4, "lr": 0.0054772}
    assert trials["t0"].user_attrs["kind"] == "distilled"


def test_user_attributes(written):
    trials = _by_id(written)
    assert trials["t0"].user_attrs["test_recall"] == 0.14
    assert trials["t0"].user_attrs["epochs_run"] == 12
    assert trials["t1"].user_attrs["stopped_early"] is True
    assert trials["t2"].user_attrs["bytes"] == 4096
    assert trials["t5"].user_attrs["index"] == "bf16"
    assert trials["t0"].user_attrs["status"] == "TERMINATED"
    for t in trials.values():
        attrs = t.user_attrs
        assert "checkpoint" not in attrs and "hostname" not in attrs
        assert not set(attrs) & set(t.params) and not set(attrs) & set(OBJ)
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in attrs.values())
    assert "test_recall" not in trials["t1"].user_attrs  # NaN cells are left out


def test_errored_and_unreported_trials_fail(tmp_path, candidates, space, errored):
    study = _open(write_study(tmp_path / STUDY_FILE, candidates, OBJ, space, errored=errored))
    trials = _by_id(study)
    assert len(study.trials) == len(candidates) + 1  # t6 is both a candidate and errored: once
    e0 = trials["e0"]
    assert e0.state == TrialState.FAIL and e0.values is None
    assert e0.user_attrs["error"] == "RuntimeError: out of memory"
    assert e0.params == {"lr": 0.01, "dim": 8, "alpha": 0.5, "loss": "cd", "T": 3.0, "cd_samples": 9,
                         "cd_lambda": 5.0}
    t6 = trials["t6"]
    assert t6.state == TrialState.FAIL and t6.user_attrs["error"] == "killed"
    assert t6.params["rd_k"] == 25

    alone = _by_id(_open(write_study(tmp_path / "b.log", candidates, OBJ, space)))
    assert alone["t6"].state == TrialState.FAIL
    assert alone["t6"].user_attrs["error"] == "missing objective(s): latency_ms"


def test_trials_stopped_at_a_rung_are_pruned_and_never_best(tmp_path, candidates, space):
    # a stopped trial that reached a point that would dominate the whole front: still not a best trial
    stopped = pd.DataFrame([_row("s0", "rd", 4, 0.02, 0.7, 0.99, 0.01, rd_k=10.0, rd_lambda=3.0, epoch=3)])
    study = _open(write_study(tmp_path / STUDY_FILE, candidates, OBJ, space, pruned=stopped))
    s0 = _by_id(study)["s0"]
    assert s0.state == TrialState.PRUNED and s0.values is None
    assert s0.user_attrs["recall@20"] == 0.99 and s0.user_attrs["epoch"] == 3
    assert s0.params["rd_k"] == 10 and "error" not in s0.user_attrs
    assert "s0" not in {t.user_attrs["trial_id"] for t in study.best_trials}


def test_rewrite_replaces_without_duplicates(tmp_path, candidates, space, errored):
    first = write_study(tmp_path, candidates, OBJ, space, errored=errored)  # a directory: STUDY_FILE in it
    assert first == tmp_path / STUDY_FILE
    n = len(_open(first).trials)
    second = write_study(tmp_path, candidates.iloc[:-1], OBJ, space, errored=errored)
    write_study(tmp_path / STUDY_FILE, candidates, OBJ, space, errored=errored)
    assert second == first
    assert len(_open(first).trials) == n
    assert sorted(os.listdir(tmp_path)) == [STUDY_FILE]  # no temp or lock file left behind


def test_study_metadata(tmp_path, candidates, space):
    teacher = {"dim": 64, "recall@20": 0.22, "latency_ms": 0.6, "test_ndcg@20": np.float64(0.13), "x": NaN}
    path = write_study(tmp_path / STUDY_FILE, candidates, OBJ, space, teacher=teacher,
                       attrs={"latency_catalog_items": 1_000_000, "k": np.int64(20)})
    study = load_study(tmp_path)
    assert study.study_name == "kdtune"
    assert study.metric_names == ["recall@20", "latency_ms"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    attrs = study.user_attrs
    assert attrs["teacher"] == {"dim": 64, "recall@20": 0.22, "latency_ms": 0.6, "test_ndcg@20": 0.13}
    assert attrs["objectives"] == OBJ
    assert attrs["latency_catalog_items"] == 1_000_000 and attrs["k"] == 20
    assert attrs["space"] == space.to_dict() and attrs["space_name"] == "default"
    assert len(load_study(path).trials) == len(candidates)


def test_generic_params_of_any_type(tmp_path):
    """A searched categorical `index`, a stepped float and a stepped int, with a fixed lr."""
    space = SearchSpace(
        params={
            "dim": Param("dim", "int", low=4, high=32, step=4),
            "alpha": Param("alpha", "float", low=0.1, high=0.9, step=0.1),
            "loss": Param("loss", "categorical", choices=("rd", "bpr")),
            "index": Param("index", "categorical", choices=("flat", "bf16", "sq8")),
        },
        fixed={"lr": 0.01, "epochs": 5},
    )
    df = pd.DataFrame([
        {"trial_id": "a", "dim": 8.0, "alpha": 0.30000000000000004, "loss": "rd", "index": "sq8",
         "recall@20": 0.1, "latency_ms": 0.2, "lr": 0.01, "epochs": 5},
        {"trial_id": "plain-dim12", "kind": "plain", "dim": 12, "lr": 0.01, "loss": "bpr",
         "recall@20": 0.05, "latency_ms": 0.1},
    ])
    trials = _by_id(_open(write_study(tmp_path / STUDY_FILE, df, OBJ, space)))
    a = trials["a"]
    assert a.params == {"dim": 8, "alpha": 0.30000000000000004, "loss": "rd", "index": "sq8"}
    assert a.distributions["dim"] == IntDistribution(4, 32, step=4)
    assert a.distributions["alpha"] == FloatDistribution(0.1, 0.9, step=0.1)
    assert a.distributions["index"] == CategoricalDistribution(["flat", "bf16", "sq8"])
    assert "lr" not in a.user_attrs and "epochs" not in a.user_attrs  # fixed: in the study's space
    plain = trials["plain-dim12"]
    # lr is fixed in the space, so not a distribution; loss stays an attribute though bpr is a choice.
    assert plain.params == {"dim": 12}
    assert plain.user_attrs["lr"] == 0.01 and plain.user_attrs["loss"] == "bpr"


def test_failed_write_keeps_the_previous_file(tmp_path, candidates, space, monkeypatch):
    import kdtune.report.study

    path = write_study(tmp_path / STUDY_FILE, candidates, OBJ, space)
    before = path.read_bytes()

    def crash(file, *args):
        with open(file, "a") as f:
            f.write("partial")
        raise OSError("disk full")

    monkeypatch.setattr(kdtune.report.study, "_write_journal", crash)
    with pytest.raises(OSError, match="disk full"):
        write_study(path, candidates.iloc[:2], OBJ, space)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [STUDY_FILE]


def test_plain_value_outside_a_distribution_becomes_an_attribute(tmp_path):
    space = shared_weight_space()
    space.params["lr"] = Param("lr", "categorical", choices=(0.001, 0.03))
    df = pd.DataFrame([{"trial_id": "plain-dim4", "kind": "plain", "dim": 4, "lr": 0.0054772, "loss": "bpr",
                        "recall@20": 0.05, "latency_ms": 0.1}])
    plain = _by_id(_open(write_study(tmp_path / STUDY_FILE, df, OBJ, space)))["plain-dim4"]
    assert plain.params == {"dim": 4} and plain.user_attrs["lr"] == 0.0054772


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": 0.5}, "outside the space"),
        ({"dim": 12}, "not among the choices"),
        ({"rd_k": 7.5}, "not an integer"),
        ({"rd_k": NaN}, "'rd_k' is missing"),
        ({"alpha": NaN}, "'alpha' is missing"),
    ],
)
def test_complete_trial_that_does_not_fit_the_space_is_an_error(tmp_path, space, change, message):
    row = _row("bad", "rd", 8, 0.01, 0.5, 0.1, 0.2, rd_k=10.0, rd_lambda=2.0)
    with pytest.raises(ValueError, match=message):
        write_study(tmp_path / STUDY_FILE, pd.DataFrame([{**row, **change}]), OBJ, space)
    assert not (tmp_path / STUDY_FILE).exists()
    assert os.listdir(tmp_path) == []  # the temp file is removed too


def test_bad_inputs(tmp_path, candidates, space):
    with pytest.raises(ValueError, match="duplicated trial_id"):
        write_study(tmp_path / STUDY_FILE, pd.concat([candidates, candidates.iloc[:1]]), OBJ, space)
    with pytest.raises(ValueError, match="direction"):
        write_study(tmp_path / STUDY_FILE, candidates, {"recall@20": "up"}, space)
    with pytest.raises(KeyError, match="ndcg@20"):
        write_study(tmp_path / STUDY_FILE, candidates, {"ndcg@20": "max"}, space)
    with pytest.raises(FileNotFoundError):
        load_study(tmp_path / "nope.log")
    assert not (tmp_path / "nope.log").exists()


def test_empty_candidates_and_quiet_optuna(tmp_path, space):
    before = optuna.logging.get_verbosity()
    empty = pd.DataFrame(columns=["trial_id", "recall@20", "latency_ms"])
    study = load_study(write_study(tmp_path / STUDY_FILE, empty, OBJ, space))
    assert study.trials == [] and study.best_trials == []
    assert optuna.logging.get_verbosity() == before
