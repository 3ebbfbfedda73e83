"""The errors module: one base class, compatible re-exports, and `run_cli` turning only those into one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtune import cli, data, errors
from kdtune.cli import run_cli
from kdtune.errors import DataError, KdtuneError, SpaceError, UsageError
from kdtune.search import spacefile as space


@pytest.mark.parametrize("cls", [DataError, SpaceError, UsageError])
def test_hierarchy(cls: type) -> None:
    # KdtuneError for run_cli; ValueError for callers that already catch a bad value that way.
    assert issubclass(cls, KdtuneError) and issubclass(cls, ValueError)
    assert not issubclass(KdtuneError, ValueError)


def test_old_import_paths_are_the_same_classes() -> None:
    assert cli.UsageError is UsageError
    assert data.DataError is DataError
    assert space.SpaceError is SpaceError
    assert errors.__all__ == ["KdtuneError", "DataError", "SpaceError", "UsageError", "TrialOutOfMemory"]


@pytest.mark.parametrize("cls", [KdtuneError, DataError, SpaceError, UsageError])
def test_run_cli_reports_domain_errors_in_one_line(cls: type, capsys: pytest.CaptureFixture) -> None:
    def main(argv: list[str] | None) -> int:
        raise cls("something the user can fix")

    assert run_cli(main, []) == 2
    assert capsys.readouterr().err == "error: something the user can fix\n"


@pytest.mark.parametrize("exc", [FileNotFoundError(2, "No such file", "/x"), ValueError("bug"), KeyError("k")])
def test_run_cli_lets_bugs_keep_their_traceback(exc: Exception) -> None:
    def main(argv: list[str] | None) -> int:
        raise exc

    with pytest.raises(type(exc)):
        run_cli(main, [])


def test_unreadable_movielens_file_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("1::2::5::10\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match="could not read .*ratings.dat: Permission denied"):
        data.load_movielens(path)


def test_unusable_cache_folders_are_data_errors(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    small = data.synthetic(n_users=20, n_items=30, mean_items=5)
    with pytest.raises(DataError, match="could not write the split cache"):
        data.split(small, cache_dir=not_a_dir / "splits")
    with pytest.raises(DataError, match="could not write the dataset cache"):
        data.fetch_movielens("ml-100k", cache_dir=not_a_dir)
