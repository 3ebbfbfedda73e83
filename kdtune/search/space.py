"""The search space as data: searched parameters (:class:`Param`) and the space (:class:`SearchSpace`).

Built and validated from YAML by :mod:`kdtune.search.spacefile` (``load_space``, ``parse_space``), which re-exports
both classes; this module holds only the data and how it is suggested, saved and described.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter; ``when`` is empty for top-level parameters."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def suggest(self, trial: Any) -> Any:
        """Ask ``trial`` (an ``optuna.trial.Trial`` or Ray's wrapper of one) for this parameter's value."""
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.choices))

    def warm_value(self, preferred: Any = None) -> Any:
        """A first value to try: ``preferred`` (e.g. a loss's reference default) where this parameter can
        take it, else the middle of its range (geometric on a log scale, the middle choice of a categorical)."""
        if self.type == "categorical":
            return preferred if preferred in self.choices else self.choices[len(self.choices) // 2]
        if preferred is not None and not isinstance(preferred, (bool, str)) and self.low <= preferred <= self.high:
            value = preferred
        else:
            value = (self.low * self.high) ** 0.5 if self.log else (self.low + self.high) / 2
        if self.type == "int":
            return int(round(value))
        if self.step is not None:  # on the grid that suggest_float(step=...) allows
            return self.low + round((value - self.low) / self.step) * self.step
        return float(value)

    def active(self, config: Mapping[str, Any]) -> bool:
        """Whether every ``when`` condition holds for the top-level values in ``config``."""
        return all(key in config and config[key] in values for key, values in self.when.items())

    def to_dict(self) -> dict[str, Any]:
        """The YAML entry of this parameter (what :func:`parse_space` reads back)."""
        out: dict[str, Any] = {}
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        out["type"] = self.type
        if self.type == "categorical":
            out["choices"] = list(self.choices)
            return out
        out["low"], out["high"] = self.low, self.high
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def describe(self) -> str:
        """One-line summary, e.g. ``float [0.001, 0.03] log``."""
        if self.type == "categorical":
            text = "categorical {" + ", ".join(map(str, self.choices)) + "}"
        else:
            text = f"{self.type} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")
            text += f" step {self.step:g}" if self.step is not None else ""
        for key, values in self.when.items():
            text += f"  when {key} in {{" + ", ".join(map(str, values)) + "}"
        return text


@dataclass
class SearchSpace:
    """A validated search space: top-level ``params``, ``conditional`` params and ``fixed`` values."""

    params: dict[str, Param]
    conditional: dict[str, Param] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    name: str = "space"
    source: str | None = None
    description: str = ""

    def _suggest_searched(self, trial: Any) -> dict[str, Any]:
        config = {name: p.suggest(trial) for name, p in self.params.items()}
        # `when` only refers to top-level params, so every condition can be decided now.
        for name, p in self.conditional.items():
            if p.active(config):
                config[name] = p.suggest(trial)
        return config

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Define-by-run sampling: the trial's full config (searched values plus ``fixed``)."""
        return {**self._suggest_searched(trial), **self.fixed}

    def define_by_run(self, trial: Any) -> dict[str, Any] | None:
        """The ``space`` callable for Ray's ``OptunaSearch``: suggests the searched params on ``trial``
        and returns the ``fixed`` values as constants (Ray merges them into the config)."""
        self._suggest_searched(trial)
        return dict(self.fixed) or None

    def warm_start_points(self, loss_defaults: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One first trial per loss of the space, at the loss's reference defaults (``loss_defaults[loss]``,
        e.g. ``LossDef.params``) where the space allows them and the middle of every other range (the middle
        dim, a geometric-middle rate and KD weight; ``flat`` serving): with a dozen losses, a sampler's random
        start would otherwise try some of them only at a poor setting or not at all, and never again."""
        points = []
        for loss in self.losses:
            config = {"loss": loss} if "loss" in self.params else {}
            for name, p in self.params.items():
                if name != "loss":
                    config[name] = p.warm_value("flat" if name == "index" else None)
            for name, p in self.conditional.items():
                if p.active({**config, **self.fixed}):
                    config[name] = p.warm_value(loss_defaults.get(loss, {}).get(name))
            points.append(config)
        return points

    def active_params(self, config: Mapping[str, Any]) -> list[str]:
        """Names of the searched params a config with these top-level values has (in suggestion order)."""
        return list(self.params) + [n for n, p in self.conditional.items() if p.active(config)]

    @property
    def losses(self) -> list[str]:
        """The loss names this space can propose."""
        if "loss" in self.fixed:
            return [self.fixed["loss"]]
        return list(self.params["loss"].choices)

    def dims(self) -> list[int]:
        """Every student embedding size the space can propose, ascending."""
        if "dim" in self.fixed:
            return [int(self.fixed["dim"])]
        p = self.params["dim"]
        if p.type == "categorical":
            return sorted(int(c) for c in p.choices)
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))

    def indexes(self) -> list[str]:
        """Every serving index the space can propose (``flat`` when it does not search one)."""
        if "index" in self.fixed:
            return [str(self.fixed["index"])]
        if "index" in self.params:
            return [str(c) for c in self.params["index"].choices]
        return ["flat"]

    def lr_range(self) -> tuple[float, float]:
        """``(low, high)`` of the learning rate (equal bounds when ``lr`` is fixed)."""
        if "lr" in self.fixed:
            return float(self.fixed["lr"]), float(self.fixed["lr"])
        p = self.params["lr"]
        if p.type == "categorical":
            return float(min(p.choices)), float(max(p.choices))
        return float(p.low), float(p.high)

    def save(self, path: str | Path) -> Path:
        """Write the space as YAML that :func:`load_space` reads back to an equal space."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        header = f"# kdtune search space {self.name!r}" + (
            f", saved from {self.source}" if self.source else ""
        )
        data = self.to_dict()

        def line(key: str, value: Any) -> str:
            # A one-key flow mapping minus its braces: `name: {type: float, ...}` on one line.
            return yaml.safe_dump(
                {key: value}, default_flow_style=True, sort_keys=False, width=10**6
            ).strip()[1:-1]

        lines = [header]
        if "description" in data:
            lines.append(line("description", data["description"]))
        for section in ("params", "conditional", "fixed"):
            entries = data[section]
            lines.append(f"{section}:" + ("" if entries else " {}"))
            lines += ["  " + line(name, entry) for name, entry in entries.items()]
        out.write_text("\n".join(lines) + "\n")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (YAML/JSON-ready, e.g. for ``run.json``); ``parse_space`` reads it back."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        out["params"] = {n: p.to_dict() for n, p in self.params.items()}
        out["conditional"] = {n: p.to_dict() for n, p in self.conditional.items()}
        out["fixed"] = dict(self.fixed)
        return out

    def describe(self) -> str:
        """Human-readable summary, one line per parameter."""
        names = [*self.params, *self.conditional, *self.fixed]
        width = max((len(n) for n in names), default=0)
        lines = [f"search space {self.name!r}" + (f" ({self.source})" if self.source else "")]
        if self.description:
            lines.append(f"  {self.description.strip()}")
        lines += [f"  {n:<{width}}  {p.describe()}" for n, p in self.params.items()]
        lines += [f"  {n:<{width}}  {p.describe()}" for n, p in self.conditional.items()]
        lines += [f"  {n:<{width}}  = {v!r} (fixed)" for n, v in self.fixed.items()]
        return "\n".join(lines)
