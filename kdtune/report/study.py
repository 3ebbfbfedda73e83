"""A run's candidates as an Optuna study on disk, for optuna-dashboard, ``optuna.load_study`` and friends.

Ray's ``OptunaSearch`` keeps its study in memory, so it dies with the run. :func:`write_study` rebuilds
an equivalent study from plain data (the candidate table of the front computation, the search space,
the objectives) into an Optuna journal file, by default ``<run>/optuna-journal.log``::

    optuna-dashboard results/<run>/optuna-journal.log

    import kdtune.report.study
    study = kdtune.report.study.load_study("results/<run>")
    study.best_trials            # the Pareto front, same trials as kdtune.search.pareto.pareto_front

How rows become trials: a row with every objective is a COMPLETE trial (``values`` in objective order);
one with a missing objective a FAIL trial (user attribute ``error``). Params are the searched params the
trial has (top-level ones, conditional ones where their ``when`` holds) with the space's distributions;
fixed values are recorded once, in the study attribute ``space``. A plain student (``kind == "plain"``)
gets only ``dim`` and ``lr`` as params; a value the distribution cannot hold becomes a user attribute.
Every other non-NaN column is a user attribute, except Ray's bookkeeping (:data:`SKIPPED_COLUMNS`).

Nothing is executed or unpickled: the journal is JSON lines written and read by Optuna itself.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from kdtune.search.pareto import check_directions
from kdtune.search.space import Param, SearchSpace

__all__ = ["STUDY_FILE", "SKIPPED_COLUMNS", "write_study", "load_study", "distribution"]

STUDY_FILE = "optuna-journal.log"
"""Name of the journal file inside a run directory."""

SKIPPED_COLUMNS = frozenset({
    "checkpoint", "checkpoint_dir_name", "should_checkpoint", "done", "date", "timestamp", "pid",
    "hostname", "node_ip", "time_this_iter_s", "time_since_restore", "iterations_since_restore",
    "experiment_tag", "logdir", "config", "gpu_ids", "cuda_visible_devices",
})
"""Ray bookkeeping columns of a trial table that are not user attributes: machine-specific (host,
pid, absolute checkpoint paths, so the run directory stays relocatable) or meaningless outside Ray."""

_PLAIN_PARAMS = ("dim", "lr")
_DIRECTIONS = {"max": "maximize", "min": "minimize"}


def distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution ``param.suggest`` samples from (same bounds, ``log`` and ``step``)."""
    if param.type == "float":
        return FloatDistribution(float(param.low), float(param.high), log=param.log,
                                 step=None if param.step is None else float(param.step))
    if param.type == "int":
        return IntDistribution(int(param.low), int(param.high), log=param.log, step=int(param.step or 1))
    return CategoricalDistribution(list(param.choices))


def write_study(
    path: str | Path,
    candidates: pd.DataFrame,
    objectives: Mapping[str, str],
    space: SearchSpace,
    *,
    study_name: str = "kdtune",
    teacher: Mapping[str, Any] | pd.Series | None = None,
    errored: pd.DataFrame | None = None,
    pruned: pd.DataFrame | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``candidates`` (and ``errored`` trials) as one Optuna study in a journal file; return its path.

    ``path`` is the journal file, or an existing directory to write :data:`STUDY_FILE` into. The file
    is replaced atomically (temp file + ``os.replace``), so a re-export never duplicates trials; an
    optuna-dashboard already watching it must be restarted to see the new file.

    ``candidates`` needs ``trial_id`` (unique), the objective columns and the searched params of the
    space; ``kind`` (``"distilled"`` when absent, ``"plain"`` for plain students) is optional, as are
    any extra columns (user attributes). ``objectives`` maps a column to ``"max"`` or ``"min"`` (the
    convention of :func:`kdtune.search.pareto.pareto_front`) and sets the study's directions and metric names.

    ``errored`` (``trial_id``, params, ``error``) become FAIL trials (an errored candidate is not added
    twice: its ``error`` becomes a user attribute). ``pruned`` (``trial_id``, params, metrics reached) are
    trials a scheduler stopped at a rung: PRUNED, their last metrics user attributes, never best trials.
    ``teacher`` (its figures: dim, scores, size...) is stored as study user attribute ``"teacher"``;
    ``attrs`` (e.g. ``{"latency_catalog_items": 1_000_000, "k": 20}``) as further study user attributes.

    Raises ``KeyError`` for a missing objective or ``trial_id`` column, ``ValueError`` for an unknown
    direction, a duplicated ``trial_id``, or a COMPLETE distilled trial whose param is missing or
    outside the space (the table and the space do not belong together); nothing is written then.
    """
    ids = _checked_ids(candidates, objectives, errored, pruned)
    trials = _trials(candidates, ids, objectives, space, errored, pruned)
    study_attrs: dict[str, Any] = {
        "objectives": dict(objectives),
        "space_name": space.name,
        "space": space.to_dict(),
    }
    if teacher is not None:
        study_attrs["teacher"] = _attrs(dict(teacher))
    study_attrs.update(_attrs(dict(attrs or {})))

    out = Path(path)
    if out.is_dir():
        out = out / STUDY_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    # A unique name beside the target (same filesystem, so os.replace is atomic); not mkstemp, whose
    # 0600 mode would hide the journal from a dashboard run by another user.
    tmp = str(out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    directions = [_DIRECTIONS[direction] for direction in objectives.values()]
    try:
        _write_journal(tmp, study_name, directions, list(objectives), study_attrs, trials)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, tmp + ".lock"):
            if os.path.lexists(leftover):
                os.unlink(leftover)
    return out


def _checked_ids(candidates: pd.DataFrame, objectives: Mapping[str, str], errored: pd.DataFrame | None,
                 pruned: pd.DataFrame | None) -> pd.Series:
    """The candidates' trial ids, after checking the objectives, the id columns and their uniqueness."""
    check_directions(objectives)
    for col in objectives:
        if col not in candidates.columns:
            raise KeyError(f"objective column {col!r} not in the candidate table")
    for name, table in (("candidates", candidates), ("errored", errored), ("pruned", pruned)):
        if table is not None and len(table) and "trial_id" not in table.columns:
            raise KeyError(f"{name}: no trial_id column")
    ids = candidates["trial_id"].astype(str) if len(candidates) else pd.Series([], dtype=str)
    if ids.duplicated().any():
        raise ValueError(f"candidates: duplicated trial_id {sorted(set(ids[ids.duplicated()]))}")
    return ids


def _trials(candidates: pd.DataFrame, ids: pd.Series, objectives: Mapping[str, str], space: SearchSpace,
            errored: pd.DataFrame | None, pruned: pd.DataFrame | None) -> list:
    """The study's frozen trials: candidates (COMPLETE, or FAIL without an objective), errored trials that
    are not candidates (FAIL), and pruned ones (PRUNED)."""
    errors: dict[str, Any] = {}
    extra_failed: list[Mapping[str, Any]] = []
    if errored is not None:
        known = set(ids)
        for row in errored.to_dict("records"):
            if str(row["trial_id"]) in known:
                errors[str(row["trial_id"])] = row.get("error")
            else:
                extra_failed.append(row)
    trials = [_trial(row, objectives, space, errors.get(str(row["trial_id"])))
              for row in candidates.to_dict("records")]
    trials += [_trial(row, objectives, space, row.get("error"), failed=True) for row in extra_failed]
    if pruned is not None:
        trials += [_trial(row, objectives, space, None, state=TrialState.PRUNED) for row in pruned.to_dict("records")]
    return trials


def load_study(path: str | Path, study_name: str | None = None) -> optuna.Study:
    """Open a study written by :func:`write_study` (the journal file or its run directory).

    ``study_name`` may be omitted when the file holds one study (as :func:`write_study` writes).
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    file = Path(path)
    if file.is_dir():
        file = file / STUDY_FILE
    # JournalFileBackend creates a missing file: refuse first, so a typo does not leave an empty journal.
    if not file.is_file():
        raise FileNotFoundError(f"no Optuna journal at {file}")
    storage = JournalStorage(JournalFileBackend(str(file)))
    with _quiet_optuna():
        return optuna.load_study(study_name=study_name, storage=storage)


# ----------------------------------------------------------------------------- internals


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO lines ("A new study created...") and its ExperimentalWarning on
    ``set_metric_names`` while a study is built or opened; the previous verbosity is restored."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _write_journal(file: str, study_name: str, directions: list[str], metric_names: list[str],
                   study_attrs: dict[str, Any], trials: list[optuna.trial.FrozenTrial]) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(file))
    with _quiet_optuna():
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions)
        study.set_metric_names(metric_names)
        for key, value in study_attrs.items():
            study.set_user_attr(key, value)
        for trial in trials:
            study.add_trial(trial)


def _missing(value: Any) -> bool:
    """True for None/NaN/NaT (pandas' notion of a missing cell); False for lists and other objects."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes: not a missing scalar
        return False


def _plain(value: Any) -> Any:
    """A JSON-safe Python value (Optuna's journal is JSON): numpy scalars unwrapped, dates as ISO text."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, pd.Timestamp | _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not _missing(v)}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    return str(value)


def _attrs(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in values.items() if not _missing(v)}


def _param_value(param: Param, value: Any) -> Any:
    """``value`` in the type the distribution holds, or raise ``ValueError`` if it cannot hold it.

    Tables store ints as floats once a column has a NaN (``rd_k`` 10.0), so ints are recovered here;
    a categorical value is replaced by the equal choice, preferring one of the same type.
    """
    value = _plain(value)
    if param.type == "categorical":
        equal = [c for c in param.choices if c == value and (c is None) == (value is None)]
        same_type = [c for c in equal if type(c) is type(value)]
        if not equal:
            raise ValueError(f"{value!r} is not among the choices")
        return (same_type or equal)[0]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    if param.type == "int":
        if float(value) != int(value):
            raise ValueError(f"{value!r} is not an integer")
        value = int(value)
    else:
        value = float(value)
    inside = param.low <= value <= param.high
    if inside and param.step is not None:
        # The tolerance Optuna's own check uses, so a value that went through a CSV still fits.
        units = (value - param.low) / param.step
        inside = abs(units - round(units)) < 1e-8
    if not inside:
        raise ValueError(f"{value!r} is outside the space ({param.describe()})")
    return value


def _trial(row: Mapping[str, Any], objectives: Mapping[str, str], space: SearchSpace, error: Any,
           failed: bool = False, state: TrialState = TrialState.FAIL) -> optuna.trial.FrozenTrial:
    """One candidate (or errored) row as a FrozenTrial ready for ``study.add_trial``."""
    trial_id = str(row["trial_id"])
    kind = row.get("kind")
    kind = "distilled" if _missing(kind) else str(kind)
    values = [pd.to_numeric(pd.Series([row.get(c)]), errors="coerce").iloc[0] for c in objectives]
    missing = [c for c, v in zip(objectives, values, strict=True) if math.isnan(v)]
    complete = not failed and not missing and state != TrialState.PRUNED
    # Strict only where a wrong param would misplace a COMPLETE trial of the search itself.
    strict = complete and kind != "plain"

    params, dists, demoted = _params(row, space, kind, strict, trial_id)
    skip = set(params) | SKIPPED_COLUMNS | (set(objectives) if state != TrialState.PRUNED else set())
    if kind != "plain":
        # Fixed values live in the study's `space` attribute; an inactive conditional param's cell
        # (normally NaN) is not an attribute either. A plain student keeps its other cells (loss=bpr).
        skip |= (set(space.fixed) | set(space.params) | set(space.conditional)) - set(demoted)
    user_attrs = _attrs({k: v for k, v in row.items() if k not in skip})
    user_attrs.update(trial_id=trial_id, kind=kind)
    if not _missing(error):
        user_attrs["error"] = _plain(error)
    elif missing and "error" not in user_attrs and state != TrialState.PRUNED:
        user_attrs["error"] = "missing objective(s): " + ", ".join(missing)

    if complete:
        return optuna.trial.create_trial(params=params, distributions=dists,
                                         values=[float(v) for v in values], user_attrs=user_attrs)
    return optuna.trial.create_trial(state=state, params=params, distributions=dists, user_attrs=user_attrs)


def _params(row: Mapping[str, Any], space: SearchSpace, kind: str, strict: bool, trial_id: str
            ) -> tuple[dict[str, Any], dict[str, BaseDistribution], dict[str, Any]]:
    """The row's searched params with their distributions, and the values no distribution can hold
    (``demoted``: they become user attributes); ``strict`` raises instead of demoting or skipping."""
    params: dict[str, Any] = {}
    dists: dict[str, BaseDistribution] = {}
    demoted: dict[str, Any] = {}

    def add(param: Param) -> None:
        raw = row.get(param.name)
        if _missing(raw):
            if strict:
                raise ValueError(f"trial {trial_id}: searched param {param.name!r} is missing")
            return
        try:
            params[param.name] = _param_value(param, raw)
            dists[param.name] = distribution(param)
        except ValueError as exc:
            if strict:
                raise ValueError(f"trial {trial_id}: param {param.name!r}: {exc}") from None
            demoted[param.name] = raw

    if kind == "plain":
        for name in _PLAIN_PARAMS:
            if name in space.params:
                add(space.params[name])
        return params, dists, demoted
    for param in space.params.values():
        add(param)
    # `when` refers to top-level params, so activity is decided from the values just normalised.
    for param in space.conditional.values():
        if param.active(params):
            add(param)
    return params, dists, demoted
