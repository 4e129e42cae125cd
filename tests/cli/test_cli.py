from __future__ import annotations

import json
import subprocess
import sys

from lmforge import __version__
from lmforge.cli.main import main


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_version_and_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # help is laid out for a window (typer's own console): give it a wide one
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lmforge {__version__}"
    assert main(["run", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "Examples" in help_text and "lmforge run recipes/demo.yaml" in help_text and "--workers" in help_text
    assert main(["demo", "--help"]) == 0
    assert "default: lmforge-demo" in capsys.readouterr().out.replace("[", "").replace("]", "")


def test_run_then_stats(make_recipe, tmp_path, capsys):
    recipe = make_recipe(shard_size=60, workers=2)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "exact_duplicate" in printed and "written 215" in printed
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["totals"]["records_out"] == 215
    assert main(["stats", str(out)]) == 0
    assert "length_filter" in capsys.readouterr().out


def test_user_errors_are_one_line_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {builtin: {}}\npipeline:\n  - length_filter: {min_chars: many}\n")
    res = cli("run", str(bad), "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pipeline[0].length_filter.min_chars" in lines[0], res.stderr
    assert "Traceback" not in res.stderr

    res = cli("stats", str(tmp_path))
    assert res.returncode == 2 and "no stats.json" in res.stderr

    res = cli("--debug", "run", str(tmp_path / "missing.yaml"))
    assert res.returncode != 0 and "Traceback" in res.stderr and "recipe file not found" in res.stderr


def test_usage_error_exit_code():
    res = cli("run", "a.yaml", "--workers", "0")
    assert res.returncode == 2 and "Invalid value" in res.stderr
