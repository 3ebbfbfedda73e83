"""`python -m kdtune.compare`: the three-row table, JSON output, and one-line errors on bad input."""

import json
import subprocess
import sys

import pytest

from kdtune.cli import run_cli
from kdtune.cli.compare import main

TINY = ["--data", "synthetic:users=200,items=300", "--epochs", "2", "--student-dim", "4", "--teacher-dim", "8"]


def test_compare_prints_three_rows_as_json(tmp_path, capsys):
    assert run_cli(main, [*TINY, "--loss", "rd", "--json", "--cache-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["teacher", "plain student", "distilled (rd)"]
    for r in rows:
        assert 0 <= r["recall@20"] <= 1 and 0 <= r["ndcg@20"] <= 1 and r["latency_ms"] > 0
    assert rows[1]["params"] == rows[2]["params"] < rows[0]["params"]


def test_compare_table(tmp_path, capsys):
    assert run_cli(main, [*TINY, "--loss", "soft_bce", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| model" in out and "distilled (soft_bce)" in out and "test split" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "/nonexistent/users.dat"], "/nonexistent/users.dat"),
        (["--data", "x.unknownext"], "format"),
        (["--loss", "nope"], "unknown loss"),
        (["--k", "5000", *TINY], "larger than the catalogue"),
        (["--loss-param", "rd_k=3", "--loss", "soft_bce"], "--loss-param"),
        (["--data", "synthetic:users=200,items=300", "--kcore", "100000"], "no interaction left"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "x.unknownext").write_text("1 2\n")
    argv = [a.replace("x.unknownext", str(tmp_path / "x.unknownext")) for a in argv]
    assert run_cli(main, [*argv, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message.lower() in err.lower()


def test_malformed_citeulike_line_names_file_and_line(tmp_path):
    bad = tmp_path / "users.dat"
    bad.write_text("2 1 2\n3 4 5\n")
    proc = subprocess.run([sys.executable, "-m", "kdtune.compare", "--data", str(bad)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "2" in proc.stderr


def test_loss_params_parse_to_their_defaults_types():
    from kdtune.cli.compare import parse_loss_params

    got = parse_loss_params(["cd_samples=4", "cd_lambda=2.5", "cd_guide=teacher"], "cd")
    assert got == {"cd_samples": 4, "cd_lambda": 2.5, "cd_guide": "teacher"}
    assert isinstance(got["cd_samples"], int)
