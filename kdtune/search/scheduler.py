"""Pareto-aware asynchronous successive halving (a Ray Tune ``TrialScheduler``).

Ray's ASHA and HyperBand prune on one metric and Optuna refuses to prune multi-objective studies, so
this module stops trials whose (recall, latency) vector is poor *in the Pareto sense*. The design
follows MOASHA (Salinas et al., "A multi-objective perspective on jointly tuning hardware and
hyperparameters", 2021): at each rung, the objective vectors recorded there are ordered by
non-dominated sorting, ties inside a front are broken by an epsilon-net (farthest-first traversal),
and a trial continues iff it is in the top ``ceil(n / eta)`` of that order.

Two layers:

* Pure rung logic on numbers: fronts from :func:`kdtune.search.pareto.nondominated_sort`, the order and
  the promotion rule in :mod:`kdtune.search.rungs` (:func:`~kdtune.search.rungs.priority_rank`,
  :func:`~kdtune.search.rungs.promote`, :func:`~kdtune.search.rungs.rung_milestones`): plain numpy, every
  column minimised (maximised objectives are negated by :func:`~kdtune.search.pareto.to_minimisation`, as
  Optuna does). Testable without Ray.
* :class:`ParetoASHA`, a thin ``FIFOScheduler`` subclass that records each trial's objective vector
  when it reaches a rung, asks :func:`promote`, and (optionally) persists its rung records to JSON.

How a STOP reaches the searcher (checked in ray 2.60, ``ray/tune/execution/tune_controller.py``):
``_process_trial_result`` (l. 1559) asks ``scheduler.on_trial_result`` (l. 1581); on STOP it marks the
result ``done`` and skips ``search_alg.on_trial_result`` (l. 1584-1589), then stores the result with
``trial.update_last_result`` (l. 1603). The queued decision runs ``stop_trial`` (l. 1301-1302 ->
l. 1410), which for a RUNNING trial calls ``search_alg.on_trial_complete(trial_id,
result=flatten_dict(trial.last_result))`` (l. 1433). ``SearchGenerator`` (``search_generator.py``
l. 133) and ``ConcurrencyLimiter`` (``concurrency_limiter.py`` l. 113) forward it, and
``OptunaSearch.on_trial_complete`` (``optuna/optuna_search.py`` l. 543-569) tells the study the listed
metrics with state COMPLETE. So a stopped trial enters the Optuna study with the values it reached
at its last rung; no wrapper is needed. The one way to lose it is a stopping result without every
searcher metric (Optuna then logs a warning and the trial stays RUNNING): this scheduler never stops
on a result missing one of its objectives, so give the searcher the same metrics as the scheduler.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from kdtune.search.pareto import check_directions, non_dominated, to_minimisation
from kdtune.search.rungs import promote, rung_milestones

__all__ = ["ParetoASHA"]

logger = logging.getLogger(__name__)

CONTINUE = TrialScheduler.CONTINUE
STOP = TrialScheduler.STOP
_STATE_VERSION = 1


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not numeric."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class ParetoASHA(FIFOScheduler):
    """Asynchronous successive halving on a Pareto objective (MOASHA's rule inside Ray Tune).

    Args:
        objectives: metric name -> ``"max"`` or ``"min"``, e.g. ``{"recall@20": "max",
            "latency_ms": "min"}``. Every result must carry them all to be judged.
        time_attr: monotonic progress key of the results (``training_iteration`` = epochs reported).
        grace_period: first rung; no trial is stopped before it.
        reduction_factor: eta; about one trial in eta continues past each rung.
        max_t: a trial is stopped when ``time_attr`` reaches it (rungs lie strictly below).
        final_key: results where this key is true (a trial's closing report, sent after its last epoch
            with its best epoch's figures) are passed through untouched: not recorded, never stopped.
        stop_at_max_t: stop a trial when ``time_attr`` reaches ``max_t`` (ASHA's rule). ``False`` lets
            the trial end by itself, so its closing report (and checkpoint) still arrives.
        group_by: a config key (e.g. ``"loss"``): a trial is then compared at a rung only with the trials
            recorded there whose config has the same value, i.e. successive halving runs within each
            group. For trials whose learning curves differ in shape by group (a loss that starts slowly
            but ends higher), an early rung ranks trials of one group far better than across groups.
            The first trial of each group at a rung always continues, and so does a trial on the
            Pareto front of every trial recorded at the rung (the best so far at its latency, whatever
            its group), which the quota inside a group could otherwise stop. ``None``: one group.
        state_path: JSON file for the rung records, rewritten atomically after every change and read
            back when the scheduler starts or is unpickled (``Tuner.restore`` unpickles the scheduler
            as it was when the Tuner was created). Keep it inside the run directory: a file left by an
            unrelated run would be taken as this run's history.

    A trial is recorded at a rung by its first result with ``time_attr >= milestone`` (the highest
    such milestone, as ASHA), once. A trial restarted with the same id (after a restore or a failure)
    that passes a rung it was recorded at again replaces its earlier vector there and gets the
    decision it got then, so a resumed search decides as the uninterrupted one would have.
    """

    # A scheduler unpickled from before grouping existed has no instance value: one group, as it ran
    # (and its state file has no "group_by").
    _group_by: str | None = None

    def __init__(
        self,
        objectives: Mapping[str, str],
        time_attr: str = "training_iteration",
        grace_period: float = 1,
        reduction_factor: float = 3,
        max_t: float = 100,
        state_path: str | os.PathLike[str] | None = None,
        final_key: str | None = None,
        stop_at_max_t: bool = True,
        group_by: str | None = None,
    ) -> None:
        super().__init__()
        check_directions(objectives)
        self._objectives = dict(objectives)
        self._time_attr = time_attr
        self._eta = reduction_factor
        self._max_t = max_t
        self._final_key = final_key
        self._stop_at_max_t = stop_at_max_t
        self._group_by = group_by
        self._milestones = rung_milestones(grace_period, reduction_factor, max_t)
        self._state_path = os.fspath(state_path) if state_path is not None else None
        # rung index -> {trial_id: {"values": [minimised floats], "time": t, "decision": str[, "group": str]}};
        # dicts keep insertion order, which fixes the tie-break order across restores.
        self._rungs: list[dict[str, dict[str, Any]]] = [{} for _ in self._milestones]
        self._reset_live_tracking()
        self._load()

    # -- bookkeeping -------------------------------------------------------------------------

    def _reset_live_tracking(self) -> None:
        # Per trial, since it last (re)started in this driver: rungs already handled, last time seen.
        self._handled: dict[str, set[int]] = {}
        self._last_time: dict[str, float] = {}
        self._warned: set[tuple[str, str]] = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tune pickles the scheduler when the Tuner is created; a restored driver unpickles that old
        # copy, so the file on disk (if any) is the truth about what was recorded since.
        self.__dict__.update(state)
        self._reset_live_tracking()
        self._load()

    def relocate(self, directory: str | os.PathLike[str], known_trials: Iterable[str] | None = None) -> None:
        """After a restore: keep the state file in ``directory`` (the run's current place; it may have moved
        since the scheduler was pickled), read the records from there, and forget those of trials outside
        ``known_trials`` (when given). A trial that reached a rung after Tune last saved its state is
        unknown to the restored search (it is run afresh under another id), so its records are dropped
        rather than left to sway later decisions."""
        if self._state_path:
            self._state_path = os.path.join(os.fspath(directory), os.path.basename(self._state_path))
            self._load()
        if known_trials is None:
            return
        known = set(known_trials)
        dropped = [tid for rung in self._rungs for tid in rung if tid not in known]
        if dropped:
            self._rungs = [{t: r for t, r in rung.items() if t in known} for rung in self._rungs]
            logger.info("ParetoASHA: forgot %d record(s) of trials the restored search does not know", len(dropped))
            self._persist()

    def _config(self) -> dict[str, Any]:
        return {"objectives": self._objectives, "time_attr": self._time_attr, "milestones": self._milestones,
                "group_by": self._group_by}

    def state_dict(self) -> dict[str, Any]:
        """The rung records as a JSON-ready dict (non-finite values written as null)."""
        rungs = [
            {
                tid: {**rec, "values": [v if math.isfinite(v) else None for v in rec["values"]]}
                for tid, rec in rung.items()
            }
            for rung in self._rungs
        ]
        return {"version": _STATE_VERSION, **self._config(), "rungs": rungs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the rung records with ``state`` (as written by :meth:`state_dict`)."""
        mine = json.loads(json.dumps(self._config()))
        theirs = {k: state.get(k) for k in mine}
        # Objective order fixes the vector layout, so compare it too (dict equality ignores it).
        if mine != theirs or list(mine["objectives"]) != list(theirs["objectives"] or {}):
            raise ValueError(f"scheduler state was written for {theirs}, this scheduler is {mine}")
        self._rungs = [
            {
                tid: {**rec, "values": [math.nan if v is None else float(v) for v in rec["values"]]}
                for tid, rec in rung.items()
            }
            for rung in state["rungs"]
        ]

    def _load(self) -> None:
        if self._state_path and os.path.exists(self._state_path):
            with open(self._state_path, encoding="utf-8") as fh:
                self.load_state_dict(json.load(fh))
            logger.info("ParetoASHA: loaded rung records from %s", self._state_path)

    def _persist(self) -> None:
        if not self._state_path:
            return
        tmp = f"{self._state_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.state_dict(), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        # os.replace is atomic: a driver killed mid-write leaves the previous file, never half of one.
        os.replace(tmp, self._state_path)

    # -- the decision, on plain data -----------------------------------------------------------

    def group_of(self, config: Mapping[str, Any] | None) -> str | None:
        """The rung group of a trial with this config (``None`` when the scheduler does not group)."""
        if self._group_by is None:
            return None
        return str((config or {}).get(self._group_by))

    def decide(self, trial_id: str, result: Mapping[str, Any], group: str | None = None) -> str:
        """CONTINUE or STOP for one result of ``trial_id`` (of rung group ``group``, see ``group_by``);
        records it if it reaches a new rung."""
        if self._final_key is not None and result.get(self._final_key):
            return CONTINUE
        t = _number(result.get(self._time_attr))
        values = {name: _number(result.get(name)) for name in self._objectives}
        missing = [k for k, v in values.items() if v is None] + ([self._time_attr] if t is None else [])
        if missing:
            for key in missing:
                if (trial_id, key) not in self._warned:  # once per trial and key, not every epoch
                    self._warned.add((trial_id, key))
                    logger.warning("ParetoASHA: trial %s reported no numeric %r; continuing", trial_id, key)
            return CONTINUE
        if t >= self._max_t:
            # the trial has had its full budget (ASHA stops it; it may also be left to end itself)
            return STOP if self._stop_at_max_t else CONTINUE
        last = self._last_time.get(trial_id)
        if last is not None and t <= last:
            # Time went back: the trial was restarted from a checkpoint (or from scratch).
            self._handled.pop(trial_id, None)
        self._last_time[trial_id] = t
        reached = [i for i, m in enumerate(self._milestones) if t >= m]
        if not reached:
            return CONTINUE
        rung_idx = reached[-1]
        handled = self._handled.setdefault(trial_id, set())
        if rung_idx in handled:
            return CONTINUE
        handled.add(rung_idx)
        rung = self._rungs[rung_idx]
        vec = to_minimisation(values, self._objectives).tolist()
        earlier = rung.get(trial_id)
        if earlier is not None:
            # Re-run of a trial recorded here before: replace its vector only if it passed the
            # milestone at or before the point it was first recorded (a resume from a later
            # checkpoint does not re-measure the rung), and repeat the decision it got then.
            if t <= earlier["time"]:
                earlier.update(values=vec, time=t)
                self._persist()
            return earlier["decision"]
        rung[trial_id] = {"values": vec, "time": t, "decision": CONTINUE,
                          **({"group": group} if group is not None else {})}
        ids = list(rung)
        points = np.array([rung[i]["values"] for i in ids], dtype=float)
        me = ids.index(trial_id)
        mine = [j for j, i in enumerate(ids) if rung[i].get("group") == group]
        keep = promote(points[mine], mine.index(me), self._eta)
        # grouped: the best so far at its latency over the whole rung goes on too
        decision = CONTINUE if keep or (group is not None and non_dominated(points)[me]) else STOP
        rung[trial_id]["decision"] = decision
        self._persist()
        logger.debug(
            "ParetoASHA: trial %s at rung %s (%d recorded in its group): %s",
            trial_id, self._milestones[rung_idx], len(mine), decision,
        )  # fmt: skip
        return decision

    def _forget(self, trial_id: str) -> None:
        self._handled.pop(trial_id, None)
        self._last_time.pop(trial_id, None)

    # -- TrialScheduler hooks ------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Accept and ignore TuneConfig's metric/mode: the objectives are this scheduler's own."""
        return True

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Judge one result (see :meth:`decide`)."""
        return self.decide(trial.trial_id, result, self.group_of(getattr(trial, "config", None)))

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """Drop the trial's live tracking; its rung records stay."""
        self._forget(trial.trial_id)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._forget(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._forget(trial.trial_id)

    # -- reporting -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per rung: milestone, trials recorded, promoted (CONTINUE) and stopped (STOP)."""
        rungs = []
        for milestone, rung in zip(self._milestones, self._rungs, strict=True):
            stopped = sum(rec["decision"] == STOP for rec in rung.values())
            rungs.append(
                {
                    "milestone": milestone,
                    "recorded": len(rung),
                    "promoted": len(rung) - stopped,
                    "stopped": stopped,
                }
            )
        return {
            "objectives": dict(self._objectives),
            "time_attr": self._time_attr,
            "reduction_factor": self._eta,
            "max_t": self._max_t,
            "rungs": rungs,
        }

    def debug_string(self) -> str:
        """One line for Tune's status table: objectives, eta, and per rung promoted/recorded."""
        parts = [f"{r['milestone']}: {r['promoted']}/{r['recorded']} promoted" for r in self.stats()["rungs"]]
        objs = ", ".join(f"{k} {v}" for k, v in self._objectives.items())
        return f"Using ParetoASHA ({objs}; eta={self._eta}, max_t={self._max_t}, {self._time_attr}): " + (
            " | ".join(parts) if parts else "no rungs below max_t"
        )
