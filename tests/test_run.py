"""The typed Run: run.json read and written by one owner, relocatable paths, settings as dataclasses."""

import json
import shutil
from pathlib import Path

import pytest

from kdtune.config import DataSettings, SearchSettings
from kdtune.errors import UsageError
from kdtune.search.run import Run
from kdtune.search.space import Param, SearchSpace

RUN = Path(__file__).resolve().parents[1] / "results" / "citeulike-a-50"


def as_recorded(record: dict) -> SearchSpace:
    """The space a run recorded, built as it was (an older run's space need not pass today's checks)."""

    def param(name: str, d: dict) -> Param:
        when = {key: tuple(values) for key, values in d.get("when", {}).items()}
        if d["type"] == "categorical":
            return Param(name, "categorical", choices=tuple(d["choices"]), when=when)
        return Param(name, d["type"], low=d["low"], high=d["high"], log=d.get("log", False), step=d.get("step"),
                     when=when)

    return SearchSpace({n: param(n, d) for n, d in record["params"].items()},
                       {n: param(n, d) for n, d in record["conditional"].items()}, dict(record["fixed"]),
                       description=record.get("description", ""))


def test_a_run_record_round_trips_exactly(tmp_path):
    shutil.copy(RUN / "run.json", tmp_path / "run.json")
    run = Run.load(tmp_path)
    assert isinstance(run.data, DataSettings) and isinstance(run.search, SearchSettings)
    assert run.data.k == 20 and run.search.trials == 50 and run.status == "finished"
    run.space = as_recorded(before_space := json.loads((RUN / "run.json").read_text())["space"])
    assert run.space.to_dict() == before_space
    run.save()
    before, after = (json.loads(p.read_text()) for p in (RUN / "run.json", tmp_path / "run.json"))
    assert list(after) == list(before)
    # every recorded value is kept; a setting added since is written with its default
    assert {key: value for key, value in after["search"].items() if key in before["search"]} == before["search"]
    assert {**after, "search": None} == {**before, "search": None}


def test_paths_inside_the_run_are_stored_relative(tmp_path):
    run = Run(dir=tmp_path)
    assert run.relative(str(tmp_path / "ray" / "search")) == "ray/search"
    assert run.relative("s3://bucket/x") == "s3://bucket/x"
    assert run.resolve("ray/search") == str(tmp_path / "ray" / "search")
    assert run.experiment() == str(tmp_path / "ray" / "search") and run.experiment_path == "ray/search"


def test_unreadable_or_missing_records_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="is not a kdtune run"):
        Run.load(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(UsageError, match="is unreadable"):
        Run.load(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"data": {"k": 20}, "search": {"no_such_setting": 1}}))
    with pytest.raises(UsageError, match="is unreadable"):
        Run.load(tmp_path)
