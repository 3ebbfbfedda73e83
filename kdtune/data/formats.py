"""File loaders (MovieLens, CiteULike, CSV/TSV/Parquet), format inference, k-core, and `load`.

`load` is the single entry point: synthetic data, a MovieLens name (downloaded), or a file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from kdtune.data.columns import resolve_columns
from kdtune.data.download import DEFAULT_CACHE_DIR, MOVIELENS_FILES, MOVIELENS_NAME, fetch_movielens
from kdtune.data.generator import parse_synthetic_spec, synthetic
from kdtune.data.interactions import Interactions
from kdtune.errors import DataError

FORMATS = ("movielens", "citeulike", "csv", "tsv", "parquet")
TABLE_FORMATS = ("csv", "tsv", "parquet")
_SEP = {"csv": ",", "tsv": "\t"}


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    return path


def _cannot_read(path: Path, exc: OSError) -> DataError:
    return DataError(f"could not read {path}: {exc.strerror or exc}")


def _not_a_table(path: Path, fmt: str, exc: Exception) -> DataError:
    reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
    return DataError(f"could not read {path} as {fmt}: {reason}")


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline()
    except OSError as exc:
        raise _cannot_read(path, exc) from exc


def _keep_rated(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray | None, ts: np.ndarray | None,
    min_rating: float | None, source: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Drop rows rated below ``min_rating``; raise if that leaves nothing."""
    if len(users) == 0:
        raise DataError(f"{source}: no interactions in the file")
    if min_rating is not None and ratings is not None:
        keep = ratings >= min_rating
        if not keep.any():
            raise DataError(f"{source}: no interaction left after min_rating={min_rating} "
                            f"(ratings range {ratings.min():g}..{ratings.max():g})")
        users, items = users[keep], items[keep]
        ts = None if ts is None else ts[keep]
    return users, items, ts


def _movielens_layout(path: Path, first_line: str) -> str:
    """``"100k"`` (tab), ``"1m"`` (``::``) or ``"csv"`` from the file name, else from the first line."""
    by_name = {"u.data": "100k", "ratings.dat": "1m", "ratings.csv": "csv"}
    if path.name in by_name:
        return by_name[path.name]
    if "::" in first_line:
        return "1m"
    if "\t" in first_line:
        return "100k"
    if "," in first_line:
        return "csv"
    raise DataError(f"{path}: not a MovieLens ratings file (expected tab, '::' or comma separated fields)")


def load_movielens(path: str | os.PathLike, min_rating: float | None = 4.0) -> Interactions:
    """Load a MovieLens ratings file: ML-100K ``u.data``, ML-1M ``ratings.dat`` or ML-latest ``ratings.csv``.

    Ratings ``>= min_rating`` become implicit positives (``None`` keeps every rating); timestamps are kept.
    """
    path = _check_file(path)
    first = _first_line(path)
    layout = _movielens_layout(path, first)
    header = 0 if layout == "csv" and not first.split(",")[0].strip().lstrip("-").isdigit() else None
    try:
        # ML-1M's "::" separator would need pandas' slow python engine: turn it into tabs first.
        source = io.BytesIO(path.read_bytes().replace(b"::", b"\t")) if layout == "1m" else path
        df = pd.read_csv(source, sep="," if layout == "csv" else "\t", header=header, usecols=[0, 1, 2, 3])
        cols = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    except OSError as exc:
        raise _cannot_read(path, exc) from exc
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: malformed MovieLens file ({str(exc).splitlines()[0]})") from exc
    if np.isnan(cols).any():
        bad = int(np.isnan(cols).any(axis=1).argmax()) + 1 + (header is not None)
        raise DataError(f"{path}:{bad}: missing or non-numeric field")
    users, items, ts = _keep_rated(cols[:, 0].astype(np.int64), cols[:, 1].astype(np.int64), cols[:, 2],
                                   cols[:, 3], min_rating, str(path))
    return Interactions.from_raw(users, items, ts, name=_short_name(path))


def load_citeulike(path: str | os.PathLike) -> Interactions:
    """Load a CiteULike ``users.dat``: line ``u`` (0-based) is a count followed by that many item ids.

    Users whose count is 0 (or whose line is blank) have no interactions and so vanish in the id
    remapping; item ids are the 0-based ids of the file, kept in ``item_ids``.
    """
    path = _check_file(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise _cannot_read(path, exc) from exc
    users_out, items_out = [], []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = np.array(fields, dtype=np.int64)
        except ValueError:
            bad = next((f for f in fields if not f.lstrip("-").isdigit()), line.strip())
            raise DataError(f"{path}:{lineno}: expected integers, found {bad!r}") from None
        count, ids = int(values[0]), values[1:]
        if count != len(ids):
            raise DataError(f"{path}:{lineno}: count says {count} items but {len(ids)} item ids follow")
        if (ids < 0).any():
            raise DataError(f"{path}:{lineno}: negative item id {int(ids.min())}")
        users_out.append(np.full(count, lineno - 1, dtype=np.int64))
        items_out.append(ids)
    if not items_out or sum(len(i) for i in items_out) == 0:
        raise DataError(f"{path}: no interactions in the file")
    return Interactions.from_raw(np.concatenate(users_out), np.concatenate(items_out),
                                 name=_short_name(path))


def load_table(
    path: str | os.PathLike,
    fmt: str,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    min_rating: float | None = None,
) -> Interactions:
    """Load a table (``fmt`` in csv, tsv, parquet; csv/tsv with a header row) of user/item interactions.

    Rows with a missing user or item are dropped. Timestamps may be numbers or dates (converted to
    seconds since the epoch). ``min_rating`` needs ``rating_col``.
    """
    path = _check_file(path)
    if fmt not in TABLE_FORMATS:
        raise DataError(f"unknown table format {fmt!r} (expected csv, tsv or parquet)")
    if min_rating is not None and rating_col is None:
        raise DataError("min_rating needs rating_col (the column holding the ratings)")
    try:
        df = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, sep=_SEP[fmt])
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise _not_a_table(path, fmt, exc) from exc
    for col in (user_col, item_col, rating_col, timestamp_col):
        if col is not None and col not in df.columns:
            raise DataError(f"{path}: no column {col!r} (columns found: {', '.join(map(str, df.columns))})")
    df = df.dropna(subset=[user_col, item_col])
    for col in (user_col, item_col):  # integer ids read as floats because of missing values
        if pd.api.types.is_float_dtype(df[col]) and (df[col] % 1 == 0).all():
            df[col] = df[col].astype(np.int64)
    ratings = ts = None
    if rating_col is not None:
        ratings = pd.to_numeric(df[rating_col], errors="coerce").to_numpy(dtype=np.float64)
    if timestamp_col is not None:
        ts = _to_seconds(df[timestamp_col], path, timestamp_col)
    users, items, ts = _keep_rated(df[user_col].to_numpy(), df[item_col].to_numpy(), ratings, ts,
                                   min_rating, str(path))
    return Interactions.from_raw(users, items, ts, name=_short_name(path))


def _to_seconds(col: pd.Series, path: Path, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64)
    try:
        stamps = pd.to_datetime(col, utc=True)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: column {name!r} holds neither numbers nor dates") from exc
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)


def _table_columns(path: Path, fmt: str) -> list[str]:
    """Column names of a table without reading its rows."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return [str(c) for c in pd.read_csv(path, sep=_SEP[fmt], nrows=0).columns]
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise _not_a_table(path, fmt, exc) from exc


def _short_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def kcore_filter(data: Interactions, k: int) -> Interactions:
    """Iteratively drop users and items with fewer than ``k`` interactions, then remap the ids.

    ``user_ids``/``item_ids`` keep the original ids of the survivors; ``k <= 0`` returns ``data`` as is.
    """
    if k <= 0:
        return data
    users, items = data.row_ids().numpy(), data.indices.numpy()
    keep = np.ones(len(users), dtype=bool)
    while True:
        u_cnt = np.bincount(users[keep], minlength=data.n_users)
        i_cnt = np.bincount(items[keep], minlength=data.n_items)
        new_keep = keep & (u_cnt[users] >= k) & (i_cnt[items] >= k)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    if not keep.any():
        raise DataError(f"{data.name}: no interaction left after the {k}-core filter")
    u_used, u_codes = np.unique(users[keep], return_inverse=True)
    i_used, i_codes = np.unique(items[keep], return_inverse=True)
    ts = None if data.timestamps is None else data.timestamps.numpy()[keep]
    uid = u_used if data.user_ids is None else data.user_ids[u_used]
    iid = i_used if data.item_ids is None else data.item_ids[i_used]
    return Interactions.from_arrays(u_codes, i_codes, len(u_used), len(i_used), ts, uid, iid,
                                    name=f"{data.name} ({k}-core)", origin=data.origin)



def infer_format(path: str | os.PathLike) -> str:
    """The format of a data file from its name: users.dat, u.data/ratings.dat/ratings.csv, or extension."""
    path = Path(path)
    if path.name == "users.dat":
        return "citeulike"
    if path.name in MOVIELENS_FILES:
        return "movielens"
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv", ".parquet"):
        return ext[1:]
    raise DataError(f"cannot tell the format of {path}; pass fmt= one of {', '.join(FORMATS)}")


def load(
    spec: str,
    fmt: str | None = None,
    min_rating: float | None = None,
    kcore: int = 0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    columns: str | Mapping[str, str] | None = None,
) -> Interactions:
    """Load interactions from ``spec``: ``"synthetic[:key=value,...]"``, a MovieLens name, or a path.

    A MovieLens name (``ml-100k``, ``ml-1m``, ``ml-latest-small``...) is fetched into ``cache_dir``.
    A directory is searched for ``users.dat`` or a MovieLens ratings file. Tables (csv/tsv/parquet) take
    their user/item/rating/timestamp columns from ``columns`` (``"user=userID,item=artistID"`` or a
    mapping) and detect the roles it does not name (see `kdtune.data.columns`); the rating column is only
    read when ``min_rating`` is given (a threshold: counts such as play counts work too), a timestamp
    column whenever there is one. ``min_rating`` defaults to 4.0 for MovieLens and to no filter
    elsewhere; ``kcore > 0`` then applies `kcore_filter`.
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec == "synthetic" or spec.startswith("synthetic:"):
        if min_rating is not None:
            raise DataError("min_rating does not apply to synthetic data (it has no ratings)")
        _no_columns(columns, "synthetic data")
        data = synthetic(**parse_synthetic_spec(spec, seed))
    else:
        if MOVIELENS_NAME.match(spec) and not path.exists():
            path = fetch_movielens(spec, cache_dir or DEFAULT_CACHE_DIR)
            fmt = fmt or "movielens"
        elif path.is_dir():
            found = [path / f for f in ("users.dat", *MOVIELENS_FILES) if (path / f).is_file()]
            if not found:
                raise DataError(f"{path} is a directory without users.dat or a MovieLens ratings file")
            path = found[0]
        elif not path.exists():
            raise DataError(f"no such file or dataset: {spec!r} (expected a path, 'synthetic' or a "
                            "MovieLens name like ml-1m)")
        fmt = fmt or infer_format(path)
        if fmt not in TABLE_FORMATS:
            _no_columns(columns, f"{fmt} data ({path})")
        if fmt == "movielens":
            data = load_movielens(path, 4.0 if min_rating is None else min_rating)
        elif fmt == "citeulike":
            if min_rating is not None:
                raise DataError("min_rating does not apply to CiteULike data (it has no ratings)")
            data = load_citeulike(path)
        elif fmt in TABLE_FORMATS:
            cols = resolve_columns(_table_columns(path, fmt), columns, str(path))
            if min_rating is not None and cols["rating"] is None:
                raise DataError(f"{path}: min_rating needs a rating column and none was recognised; "
                                "name it with --columns rating=NAME")
            data = load_table(path, fmt, user_col=cols["user"], item_col=cols["item"], min_rating=min_rating,
                              rating_col=cols["rating"] if min_rating is not None else None,
                              timestamp_col=cols["timestamp"])
        else:
            raise DataError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return kcore_filter(data, kcore)


def _no_columns(columns: str | Mapping[str, str] | None, what: str) -> None:
    """Refuse a column mapping for data that has no header to map (it would be silently ignored)."""
    if columns is not None:
        raise DataError(f"columns apply to csv/tsv/parquet tables, not to {what}; "
                        "pass --format csv or tsv to read a file as a table")
