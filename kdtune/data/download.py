"""Named datasets: MovieLens downloaded by name, checked against a SHA-256, extracted and cached."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from kdtune.config import DEFAULT_CACHE_DIR
from kdtune.errors import DataError

MOVIELENS_FILES = ("u.data", "ratings.dat", "ratings.csv")  # ML-100K, ML-1M/10M, ML-latest/20M/25M
MOVIELENS_BASE_URL = "https://files.grouplens.org/datasets/movielens"
# SHA-256 of the official zips (as published in tensorflow_datasets' url_checksums/movielens.txt).
MOVIELENS_SHA256: dict[str, str] = {
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    "ml-latest-small": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    "ml-20m": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
    "ml-25m": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
}
MOVIELENS_NAME = re.compile(r"^ml-[a-z0-9-]+$")


def fetch_movielens(
    name: str,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``{base_url}/{name}.zip``, verify its SHA-256, extract and cache the ratings file.

    Returns the cached ratings file (``<cache_dir>/movielens/<name>/<u.data|ratings.dat|ratings.csv>``);
    once it is there no network is used. Names in `MOVIELENS_SHA256` are checked against that table;
    for any other name the checksum seen on the first download is recorded in
    ``<cache_dir>/movielens/<name>.zip.sha256`` and later downloads must match it.
    """
    if not MOVIELENS_NAME.match(name):
        raise DataError(f"not a MovieLens dataset name: {name!r} (e.g. ml-100k, ml-1m, ml-latest-small)")
    root = Path(cache_dir).expanduser() / "movielens"
    target_dir = root / name
    for fname in MOVIELENS_FILES:
        if (target_dir / fname).is_file():
            return target_dir / fname
    url = f"{(base_url or MOVIELENS_BASE_URL).rstrip('/')}/{name}.zip"
    try:
        return _download(name, root, target_dir, url, timeout)
    except OSError as exc:  # the cache folder (the user's --cache-dir) is not writable
        raise DataError(f"could not write the dataset cache {root}: {exc.strerror or exc} "
                        "(choose another cache folder)") from exc


def _download(name: str, root: Path, target_dir: Path, url: str, timeout: float) -> Path:
    """Download, check and extract into ``target_dir``; OSErrors of the cache folder propagate."""
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f"{name}.", suffix=".zip.part")
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"could not download {url}: {reason}; pass a local file instead") from exc
        seen = digest.hexdigest()
        record = root / f"{name}.zip.sha256"
        expected = MOVIELENS_SHA256.get(name)
        if expected is None and record.is_file():
            expected = record.read_text().strip()
        if expected is not None and seen != expected:
            raise DataError(f"checksum mismatch for {url}: expected sha256 {expected}, got {seen}; "
                            "the download is corrupt or the file changed upstream")
        if expected is None:
            record.write_text(seen + "\n")
        return _extract_ratings(Path(tmp), target_dir, url)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _extract_ratings(archive: Path, target_dir: Path, url: str) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist() if Path(m).name in MOVIELENS_FILES}
            if not members:
                raise DataError(f"{url}: the archive holds no {'/'.join(MOVIELENS_FILES)} ratings file")
            fname = next(f for f in MOVIELENS_FILES if f in members)
            data = zf.read(members[fname])
    except zipfile.BadZipFile as exc:
        raise DataError(f"{url}: not a valid zip archive ({exc})") from exc
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / fname
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=fname, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, target)
    return target
