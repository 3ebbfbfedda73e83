"""Table columns: --columns mappings, detection of common spellings, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kdtune import data as D
from kdtune.cli import run_cli
from kdtune.cli.compare import main as compare_main
from kdtune.config import DataSettings
from kdtune.data import DataError, prepare

# Last.fm's user_artists.dat layout: play counts as the weight.
LASTFM = pd.DataFrame({"userID": [2, 2, 2, 3, 3, 4, 4, 4],
                       "artistID": [51, 52, 53, 51, 54, 52, 53, 55],
                       "weight": [13883, 11690, 3, 800, 1, 50, 2, 7]})


@pytest.fixture()
def lastfm(tmp_path: Path) -> Path:
    path = tmp_path / "user_artists.tsv"
    LASTFM.to_csv(path, sep="\t", index=False)
    return path


def test_lastfm_by_mapping_and_by_detection_agree(lastfm: Path) -> None:
    mapped = D.load(str(lastfm), columns="user=userID,item=artistID,rating=weight")
    detected = D.load(str(lastfm))
    assert (mapped.n_users, mapped.n_items, mapped.nnz) == (3, 5, 8)
    assert mapped.fingerprint() == detected.fingerprint()
    assert mapped.user_ids.tolist() == [2, 3, 4] and mapped.item_ids.tolist() == [51, 52, 53, 54, 55]
    assert D.load(str(lastfm), columns={"user": "userID", "item": "artistID"}).fingerprint() == \
        detected.fingerprint()


def test_counts_as_ratings_with_min_rating(lastfm: Path) -> None:
    kept = D.load(str(lastfm), min_rating=10)  # weight detected as the rating: a play-count threshold
    assert kept.nnz == int((LASTFM["weight"] >= 10).sum()) == 4
    assert D.load(str(lastfm), min_rating=10, columns="rating=weight").fingerprint() == kept.fingerprint()


def test_mapping_that_changes_what_is_loaded_changes_the_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"uid": [1, 1, 2, 3], "iid": [7, 8, 7, 9], "when": [5, 6, 7, 8],
                  "ts": [4, 3, 2, 1]}).to_csv(path, index=False)
    by_ts = D.load(str(path))  # ts detected; 'when' is not a known spelling
    by_when = D.load(str(path), columns="timestamp=when")
    swapped = D.load(str(path), columns="user=iid,item=uid")
    assert by_ts.timestamps.tolist() != by_when.timestamps.tolist()
    assert len({by_ts.fingerprint(), by_when.fingerprint(), swapped.fingerprint()}) == 3
    assert (swapped.n_users, swapped.n_items) == (3, 3)


def test_case_insensitive_detection(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"UserId": ["a", "b"], "MovieID": ["x", "x"], "Time": [1.0, 2.0]}).to_parquet(path)
    d = D.load(str(path))
    assert d.user_ids.tolist() == ["a", "b"] and d.timestamps.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(("header", "columns", "message"), [
    (["user", "user_id", "item"], None, r"ambiguous user column: 'user' or 'user_id' "
                                        r"\(columns found: user, user_id, item\); name them with --columns"),
    (["who", "what"], None, r"no user column recognised \(columns found: who, what\); name them with --columns"),
    (["user", "what"], None, r"no item column recognised \(columns found: user, what\)"),
    (["user", "item"], "user=who", r"no column 'who' for user \(columns found: user, item\)"),
    (["a", "b"], "user=a,colour=b", r"unknown role 'colour' \(roles: user, item, rating, timestamp\)"),
    (["a", "b"], "user=a,user=b", r"'user' is given twice"),
    (["a", "b"], "user=a,item=a", r"column 'a' is given for two roles"),
    (["a", "b"], "user:a", r"'user:a' is not ROLE=COLUMN"),
    (["a", "b"], "user=,item=b", r"no column name for 'user'"),
    (["a", "b"], ",", r"empty"),
])
def test_bad_mappings(tmp_path: Path, header: list[str], columns: str | None, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(",".join(header) + "\n" + ",".join(str(i) for i in range(len(header))) + "\n")
    with pytest.raises(DataError, match=message):
        D.load(str(path), columns=columns)


def test_explicit_role_is_not_guessed_again(tmp_path: Path) -> None:
    # 'user' and 'uid' would be ambiguous, but naming the user column settles it.
    path = tmp_path / "t.csv"
    path.write_text("user,uid,item\n1,10,5\n2,20,5\n")
    assert D.load(str(path), columns="user=uid").user_ids.tolist() == [10, 20]


def test_min_rating_without_a_rating_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match="min_rating needs a rating column.*--columns rating=NAME"):
        D.load(str(path), min_rating=3)


def test_columns_refused_for_headerless_formats(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="columns apply to csv/tsv/parquet tables"):
        D.load("synthetic", columns="user=a,item=b")
    users = tmp_path / "users.dat"
    users.write_text("1 4\n")
    with pytest.raises(DataError, match="not to citeulike data"):
        D.load(str(users), columns="user=a,item=b")


def test_prepare_data_passes_columns(lastfm: Path, tmp_path: Path) -> None:
    args = DataSettings(data=str(lastfm), columns="user=userID,item=artistID", min_rating=10, k=2,
                    cache_dir=str(tmp_path / "cache"))
    data, parts = prepare(args)
    assert data.nnz == 4 and parts.train.nnz + parts.valid.nnz + parts.test.nnz == 4


@pytest.mark.parametrize(("columns", "message"), [
    (None, "ambiguous user column"),
    ("user=userID,item=nope", "no column 'nope' for item"),
    ("user=userID,thing=x", "unknown role 'thing'"),
])
def test_cli_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, columns: str | None,
                             message: str) -> None:
    path = tmp_path / "plays.csv"
    path.write_text("userID,uid,artistID\n1,1,2\n")
    argv = ["--data", str(path), "--cache-dir", str(tmp_path / "cache")]
    assert run_cli(compare_main, [*argv, *(["--columns", columns] if columns else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    if "role" not in message:  # a misspelt role is a typo in the flag, not about the file
        assert "columns found: userID, uid, artistID" in err
