"""`read_stats_file`, what `lmforge stats` shows: the file as written, or one plain sentence."""

import json

import pytest

from lmforge.errors import UserError
from lmforge.report.data import read_stats_file


def test_reads_stats_json_as_written(tmp_path):
    stats = {"stages": [{"name": "clean", "in": 3, "out": 2}], "totals": {"records_out": 2}}
    (tmp_path / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    assert read_stats_file(tmp_path) == stats


def test_a_missing_or_broken_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no stats.json in .*is it a run directory"):
        read_stats_file(tmp_path)
    (tmp_path / "stats.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="stats.json is not valid JSON"):
        read_stats_file(tmp_path)
