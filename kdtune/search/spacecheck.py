"""Checks of a search space against the rest of kdtune: the loss registry (every loss known, every key used
by the losses it is set for, one KD weight per loss), the trainer and model keys, embedding sizes, serving
indexes, and the teacher's list length. :mod:`kdtune.search.spacefile` checks the YAML itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kdtune.config import MODEL_KEYS, TRAIN_KEYS
from kdtune.errors import SpaceError
from kdtune.search.space import SearchSpace


def check_semantics(space: SearchSpace, fail: Callable[[str, str], SpaceError]) -> None:
    """Checks of a parsed space against the loss registry and the keys the trainable accepts; ``fail(key,
    message)`` makes the error (naming the file and the key)."""
    from kdtune.losses import LOSSES

    for name in ("lr", "dim", "loss"):
        if name not in space.params and name not in space.fixed:
            section = "conditional" if name in space.conditional else "params"
            raise fail(f"{section}.{name}", "required parameter missing (in params or fixed)")
    if "loss" in space.params:
        for c in space.params["loss"].choices:
            if c not in LOSSES:
                raise fail(
                    "params.loss.choices", f"unknown loss {c!r} (registered: {', '.join(LOSSES)})"
                )
    elif space.fixed["loss"] not in LOSSES:
        raise fail(
            "fixed.loss", f"unknown loss {space.fixed['loss']!r} (registered: {', '.join(LOSSES)})"
        )
    losses = space.losses
    _weights(space, LOSSES, fail)
    _dim(space, fail)
    _index(space, fail)

    entries = [(f"params.{n}", n, p.when) for n, p in space.params.items()]
    entries += [(f"conditional.{n}", n, p.when) for n, p in space.conditional.items()]
    entries += [(f"fixed.{n}", n, {}) for n in space.fixed]
    for key, name, when in entries:
        active = [loss for loss in losses if loss in when.get("loss", losses)]
        if name in TRAIN_KEYS or (name in MODEL_KEYS and name != "T"):
            continue
        owner = _owner(name, LOSSES)
        if name == "T":
            bad = [loss for loss in active if not LOSSES[loss].uses_temperature]
            why = "does not use a temperature"
        elif owner is not None:
            bad = [loss for loss in active if loss != owner.name]
            why = f"is not {owner.name!r} (the loss {name!r} belongs to)"
            if not bad and name == owner.temperature_key and not owner.uses_temperature:
                bad, why = [owner.name], "does not use a temperature"
        elif any(name in d.params for d in LOSSES.values()):
            bad = [loss for loss in active if name not in LOSSES[loss].params]
            why = "has no such parameter"
        else:
            known = sorted({k for d in LOSSES.values() for k in d.params})
            raise fail(
                key,
                f"unknown key {name!r}: not a trainer setting ({', '.join(TRAIN_KEYS)}), a model key "
                f"({', '.join(MODEL_KEYS)}), a loss's own weight or temperature (<loss>_weight, <loss>_T) "
                f"or a parameter of any registered loss ({', '.join(known)})",
            )
        if bad:
            raise fail(
                key,
                f"loss {bad[0]!r} {why}, yet {name!r} would be set for it: make {name!r} conditional "
                "with `when: {loss: [...]}` listing only losses that take it",
            )

def _weights(space: SearchSpace, losses: Mapping[str, Any], fail: Callable[[str, str], SpaceError]) -> None:
    """Every distillation loss of the space gets one KD weight: the shared ``alpha`` or its own
    ``<loss>_weight`` (active for it), never both."""
    sections = (space.params, space.conditional, space.fixed)
    shared = any("alpha" in s for s in sections)
    for loss in space.losses:
        if loss == "bpr":
            continue
        key = losses[loss].weight_key
        own = key in space.fixed or any(
            key in s and loss in s[key].when.get("loss", (loss,)) for s in (space.params, space.conditional))
        if own and shared:
            raise fail(f"conditional.{key}", f"loss {loss!r} would get two KD weights, alpha and {key}")
        if not (own or shared):
            raise fail(f"conditional.{key}", f"required parameter missing: the KD weight of {loss!r} "
                            "(its own <loss>_weight, or a shared alpha)")


def _index(space: SearchSpace, fail: Callable[[str, str], SpaceError]) -> None:
    """``index`` is a fixed spec or a categorical over specs, never conditional; there is no ``precision``
    key: a student's serving precision is its index's (``flat``, ``sq8``, ``fp16``, ``bf16``)."""
    from kdtune.serving.index import INDEX_HELP, check_index

    for section in ("params", "conditional", "fixed"):
        if "precision" in getattr(space, section):
            raise fail(f"{section}.precision", "serving precision is set through index (flat, sq8, fp16, bf16, or "
                                               "an approximate index): search or fix index instead")
    if "index" in space.conditional:
        raise fail("conditional.index", "must be in params (categorical) or fixed")
    key = "fixed.index" if "index" in space.fixed else "params.index"
    if "index" in space.params and space.params["index"].type != "categorical":
        raise fail(key, f"must be categorical over index specs ({INDEX_HELP})")
    for value in space.indexes():
        try:
            check_index(value)
        except ValueError as exc:
            raise fail(key, str(exc)) from None


def _dim(space: SearchSpace, fail: Callable[[str, str], SpaceError]) -> None:
    if "dim" in space.fixed:
        values, key = [space.fixed["dim"]], "fixed.dim"
    else:
        p, key = space.params["dim"], "params.dim"
        if p.type == "float":
            raise fail(key, "must be categorical or int (an embedding size)")
        values = list(p.choices) if p.type == "categorical" else [p.low]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise fail(key, f"embedding sizes must be positive integers, got {v!r}")


def _owner(name: str, losses: Mapping[str, Any]) -> Any:
    """The loss whose own KD weight or temperature ``name`` is (``rd_weight``, ``cd_T``), or None."""
    return next((d for d in losses.values() if name in (d.weight_key, d.temperature_key)), None)


def check_teacher_list(space: SearchSpace, topn: int) -> None:
    """Every value a list-length parameter of the space can take (``rd_k``, ``rrd_k``, ...) fits the
    teacher's top-``topn`` list: a one-line :class:`SpaceError` naming the entry otherwise."""
    from kdtune.losses import LOSSES

    names = {p for loss in space.losses for p in LOSSES[loss].list_params}
    for name in sorted(names):
        if name in space.fixed:
            largest, key = space.fixed[name], f"fixed.{name}"
        elif name in space.params or name in space.conditional:
            section = "params" if name in space.params else "conditional"
            p = getattr(space, section)[name]
            largest, key = (max(p.choices) if p.type == "categorical" else p.high), f"{section}.{name}"
        else:
            continue
        if largest > topn:
            raise SpaceError(f"{space.source or space.name}: {key}: up to {largest} positions of the teacher's "
                             f"list, which has {topn} (raise --teacher-topn or lower the range)")
