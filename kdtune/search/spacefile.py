"""Search-space files: read, validate, and turn into Optuna define-by-run suggestions.

A space is a YAML mapping with these top-level keys (any other key is an error)::

    description: free text (optional)
    params:        # searched in every trial
      lr:    {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
      dim:   {type: categorical, choices: [4, 8, 16, 32]}
      alpha: {type: float, low: 0.1, high: 0.9}
      loss:  {type: categorical, choices: [soft_bce, rd]}
    conditional:   # searched only in trials where every `when` entry holds
      T:     {when: {loss: [soft_bce]}, type: float, low: 1.0, high: 10.0, log: true}
      rd_k:  {when: {loss: [rd]}, type: int, low: 5, high: 40}
    fixed:         # passed unchanged to every trial, not searched
      epochs: 40

Parameter types and their keys:

- ``float``: ``low``, ``high``, optional ``log`` (default false) and ``step`` (not with ``log``);
- ``int``: ``low``, ``high``, optional ``log`` and ``step`` (default 1; not both);
- ``categorical``: ``choices`` (a non-empty list of distinct str/int/float/bool/null values).

``when`` maps a categorical parameter of ``params`` to the list of its choices for which the entry
is searched (a single value is a one-element list); several keys must all hold.

Every key must be one the trainable accepts, so a bad space fails when loaded rather than in the
first trial: the trainer settings :data:`TRAIN_KEYS`, the model keys :data:`MODEL_KEYS`, or a
parameter of the chosen loss (``LossDef.params`` of :mod:`kdtune.losses`). It is an error (not a
warning), because the trainable rejects a config holding a key its loss does not take, to give:

- a loss parameter (``rd_k``) in a trial whose loss lacks it: such a parameter must be
  ``conditional`` with ``when: {loss: [...]}`` listing only losses that take it;
- ``T`` in a trial whose loss ignores temperature (``LossDef.uses_temperature`` false): ``T`` may
  only be active for losses that use it (top-level only when every chosen loss does).

Required: ``lr``, ``dim`` and ``loss`` (in ``params`` or ``fixed``) and ``alpha`` (anywhere) unless
the only loss is ``bpr``. Files are read with ``yaml.safe_load``; write floats as ``1.0e-3`` (PyYAML
reads ``1e-3`` as a string; numeric strings are accepted for float bounds anyway).
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kdtune.errors import SpaceError
from kdtune.search.space import Param, SearchSpace
from kdtune.search.spacecheck import check_semantics

__all__ = ["SpaceError", "Param", "SearchSpace", "load_space", "parse_space", "packaged_spaces"]


TOP_LEVEL_KEYS = ("description", "params", "conditional", "fixed")
TYPES = ("float", "int", "categorical")
_SPEC_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


# ----------------------------------------------------------------------------- loading


def _spaces_root() -> Any:
    """The shipped spaces: the repository's ``search_spaces/`` folder next to the package in a source tree
    (the only copy), else the installed package ``kdtune.spaces``. The source tree comes first: the package
    an editable install registers points at *its* checkout, which need not be the one imported (a second
    working tree of the repository)."""
    beside = Path(__file__).resolve().parents[2] / "search_spaces"
    if beside.is_dir():
        return beside
    return importlib.resources.files("kdtune.spaces")


def packaged_spaces() -> list[str]:
    """Names of the spaces shipped with kdtune (``search_spaces/*.yaml``, usable as ``load_space(name)``)."""
    return sorted(p.name.removesuffix(".yaml") for p in _spaces_root().iterdir() if p.name.endswith(".yaml"))


def load_space(path_or_name: str | Path) -> SearchSpace:
    """Load and validate a space from a YAML file, or by name (``"default"``, ``"smoke"``) from the
    copies shipped in the package. An existing file path wins over a packaged name."""
    path = Path(path_or_name)
    if path.is_file():
        try:
            text, source, name = path.read_text(), str(path), path.stem
        except (OSError, UnicodeDecodeError) as exc:
            raise SpaceError(f"search space {path}: cannot be read ({exc})") from None
    else:
        name = str(path_or_name)
        resource = _spaces_root() / f"{name}.yaml"
        if path.suffix in (".yaml", ".yml") or "/" in name or not resource.is_file():
            raise SpaceError(
                f"search space {str(path_or_name)!r}: no such file and no packaged space of that name "
                f"(packaged: {', '.join(packaged_spaces())})"
            )
        text, source = resource.read_text(), f"<packaged {name}.yaml>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"{source}: not valid YAML: {exc}") from None
    return parse_space(data, source=source, name=name)


def parse_space(data: Any, source: str = "<dict>", name: str = "space") -> SearchSpace:
    """Validate a space given as plain data (parsed YAML or :meth:`SearchSpace.to_dict`)."""
    return _Validator(source).space(data, name)


class _Validator:
    """Builds a :class:`SearchSpace`, raising :class:`SpaceError` messages prefixed by ``source``."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, msg: str) -> SpaceError:
        return SpaceError(f"{self.source}: {key}: {msg}")

    def space(self, data: Any, name: str) -> SearchSpace:
        if not isinstance(data, Mapping):
            raise self.fail("<top level>", f"a search space is a mapping, got {type(data).__name__}")
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                raise self.fail(str(key), f"unknown top-level key (allowed: {', '.join(TOP_LEVEL_KEYS)})")
        description = data.get("description") or ""
        if not isinstance(description, str):
            raise self.fail("description", "must be a string")
        if "params" not in data:
            raise self.fail("params", "missing (the searched parameters)")
        params = {n: self.param(f"params.{n}", n, s) for n, s in self.section(data, "params").items()}
        if "loss" in params and params["loss"].type != "categorical":
            raise self.fail("params.loss", "must be categorical over registered loss names")
        fixed = dict(self.section(data, "fixed"))
        for n, v in fixed.items():
            if v is not None and not isinstance(v, str | int | float | bool):
                raise self.fail(f"fixed.{n}", f"must be a scalar, got {type(v).__name__}")
        conditional: dict[str, Param] = {}
        for n, s in self.section(data, "conditional").items():
            key = f"conditional.{n}"
            if n in params or n in fixed:
                raise self.fail(key, "already defined in " + ("params" if n in params else "fixed"))
            if not isinstance(s, Mapping) or "when" not in s:
                raise self.fail(f"{key}.when", "missing: a conditional entry needs `when: {param: [values]}`")
            conditional[n] = self.param(key, n, s, when=self.when(f"{key}.when", s["when"], params))
        for n in fixed:
            if n in params:
                raise self.fail(f"fixed.{n}", "also defined in params")
        space = SearchSpace(
            params, conditional, fixed, name=name, source=self.source, description=description
        )
        check_semantics(space, self.fail)
        return space

    def section(self, data: Mapping, key: str) -> Mapping:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping of name -> entry, got {type(value).__name__}")
        return value

    def number(self, key: str, value: Any, integer: bool) -> float | int:
        if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise self.fail(key, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if integer:
            if float(value) != int(value):
                raise self.fail(key, f"must be an integer for type int, got {value!r}")
            return int(value)
        return float(value)

    def param(self, key: str, name: str, spec: Any, when: dict | None = None) -> Param:
        if not isinstance(spec, Mapping):
            raise self.fail(key, f"must be a mapping with a `type`, got {spec!r}")
        ptype = spec.get("type")
        if ptype not in TYPES:
            raise self.fail(f"{key}.type", f"unknown parameter type {ptype!r} (allowed: {', '.join(TYPES)})")
        allowed = _SPEC_KEYS[ptype] | ({"when"} if when is not None else set())
        for k in spec:
            if k not in allowed:
                raise self.fail(
                    f"{key}.{k}", f"unknown key for a {ptype} parameter (allowed: {sorted(allowed)})"
                )
        if ptype == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{key}.choices", "must be a non-empty list")
            for c in choices:
                if c is not None and not isinstance(c, str | int | float | bool):
                    raise self.fail(f"{key}.choices", f"choices must be scalars, got {c!r}")
            if len({(type(c), c) for c in choices}) != len(choices):
                raise self.fail(f"{key}.choices", f"duplicate choices in {choices}")
            return Param(name, ptype, choices=tuple(choices), when=when or {})
        integer = ptype == "int"
        for bound in ("low", "high"):
            if bound not in spec:
                raise self.fail(f"{key}.{bound}", "missing")
        low = self.number(f"{key}.low", spec["low"], integer)
        high = self.number(f"{key}.high", spec["high"], integer)
        if low >= high:
            raise self.fail(f"{key}.low", f"low ({low}) must be below high ({high})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{key}.log", f"must be true or false, got {log!r}")
        if log and low <= 0:
            raise self.fail(f"{key}.log", f"a log scale needs low > 0, got low={low}")
        step = spec.get("step")
        if step is not None:
            step = self.number(f"{key}.step", step, integer)
            if step <= 0:
                raise self.fail(f"{key}.step", f"must be > 0, got {step}")
            if log and not (integer and step == 1):
                raise self.fail(f"{key}.step", "cannot be combined with log: true (Optuna rejects it)")
        return Param(name, ptype, low=low, high=high, log=log, step=step, when=when or {})

    def when(self, key: str, when: Any, params: Mapping[str, Param]) -> dict[str, tuple]:
        if not isinstance(when, Mapping) or not when:
            raise self.fail(key, "must be a non-empty mapping {param: [values]}")
        out: dict[str, tuple] = {}
        for ref, values in when.items():
            if ref not in params:
                raise self.fail(
                    f"{key}.{ref}", f"unknown parameter {ref!r}: `when` refers to a param in `params`"
                )
            target = params[ref]
            if target.type != "categorical":
                raise self.fail(f"{key}.{ref}", f"{ref!r} is {target.type}; `when` needs a categorical param")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise self.fail(f"{key}.{ref}", "empty list of values")
            for v in values:
                if v not in target.choices:
                    raise self.fail(f"{key}.{ref}", f"value {v!r} is not among the choices of {ref!r}")
            out[ref] = tuple(values)
        return out
