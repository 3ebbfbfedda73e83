"""Which table column holds the user, the item, the rating and the timestamp.

Named explicitly (``--columns user=userID,item=artistID,rating=weight``) or detected from the common
spellings below (case-insensitive). A role named explicitly is never guessed; the other roles are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kdtune.errors import DataError

ROLES = ("user", "item", "rating", "timestamp")
"""The columns a table can contribute; user and item are required."""

SPELLINGS: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "user_id", "uid"),
    "item": ("item", "itemid", "item_id", "movieid", "artistid", "iid"),
    "rating": ("rating", "weight", "score", "count"),
    "timestamp": ("timestamp", "ts", "time"),
}
"""Lower-case names recognised for each role when ``--columns`` does not name it."""

HOW_TO_NAME = "name them with --columns user=NAME,item=NAME[,rating=NAME][,timestamp=NAME]"


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"user=a,item=b"`` (or a mapping) -> ``{"user": "a", "item": "b"}``, checked for typos.

    Raises `DataError` for an unknown role, a role given twice, an empty name, or one column given
    for two roles.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        pairs = []
        for part in filter(None, (p.strip() for p in str(spec).split(","))):
            role, sep, column = part.partition("=")
            if not sep:
                raise DataError(f"columns {spec!r}: {part!r} is not ROLE=COLUMN ({HOW_TO_NAME})")
            pairs.append((role.strip(), column.strip()))
        if not pairs:
            raise DataError(f"columns {spec!r}: empty ({HOW_TO_NAME})")
    out: dict[str, str] = {}
    for role, column in pairs:
        if role not in ROLES:
            raise DataError(f"columns {spec!r}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if not column:
            raise DataError(f"columns {spec!r}: no column name for {role!r}")
        if role in out:
            raise DataError(f"columns {spec!r}: {role!r} is given twice")
        if column in out.values():
            raise DataError(f"columns {spec!r}: column {column!r} is given for two roles")
        out[role] = column
    return out


def resolve_columns(
    found: Sequence[str], columns: str | Mapping[str, str] | None, source: str
) -> dict[str, str | None]:
    """Map each role to a column of ``found`` (the table's header): explicit first, then detected.

    Returns ``{role: column or None}`` with user and item always set. Raises `DataError`, listing the
    columns found, when a named column is absent, when a role has two candidates (ambiguous), or when
    no user or item column can be found.
    """
    found = [str(c) for c in found]
    listed = f"columns found: {', '.join(found) or 'none'}"
    explicit = parse_columns(columns)
    for role, column in explicit.items():
        if column not in found:
            raise DataError(f"{source}: no column {column!r} for {role} ({listed})")
    taken = set(explicit.values())
    out: dict[str, str | None] = {}
    for role in ROLES:
        if role in explicit:
            out[role] = explicit[role]
            continue
        candidates = [c for c in found if c.lower() in SPELLINGS[role] and c not in taken]
        if len(candidates) > 1:
            raise DataError(f"{source}: ambiguous {role} column: {' or '.join(map(repr, candidates))} "
                            f"({listed}); {HOW_TO_NAME}")
        if not candidates and role in ("user", "item"):
            raise DataError(f"{source}: no {role} column recognised ({listed}); {HOW_TO_NAME}")
        out[role] = candidates[0] if candidates else None
        taken.update(candidates)
    return out
