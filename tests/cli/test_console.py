"""The CLI's consoles wrap to the window on a terminal and never elsewhere (pipes, files, test captures)."""

from __future__ import annotations

import io

import pytest
from rich.table import Table

from lmforge.cli.console import CliConsole

LINE = "classification dataset in /some/long/path/to/a/dataset (jsonl): train 48, val 6, test 6; " \
       "labels ['neg', 'pos']; leaking pairs across splits: 0"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _table() -> Table:
    table = Table(title="agreement per annotator pair")
    for col in ("pair", "items", "agreement", "Cohen's kappa"):
        table.add_column(col)
    table.add_row("1 vs 2", "20", "0.900", "0.798")
    return table


@pytest.mark.parametrize("columns", [None, "20", "300"])
def test_off_a_terminal_output_does_not_depend_on_the_window(monkeypatch, columns):
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setenv("FORCE_COLOR", "1")  # forcing colours gives a pipe no window
    buf = io.StringIO()
    console = CliConsole(file=buf, highlight=False, color_system=None)
    console.print(LINE)
    console.print(_table())
    text = buf.getvalue()
    assert text.splitlines()[0] == LINE
    assert "| 1 vs 2 | 20    | 0.900     | 0.798         |" in text.replace("│", "|").replace("┃", "|")


def test_on_a_terminal_rich_still_fits_the_window(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    buf = _Tty()
    console = CliConsole(file=buf, highlight=False, color_system=None)
    console.print(LINE)
    assert max(len(line) for line in buf.getvalue().splitlines()) <= 40
    console.width = 300  # a width set in code wins on a terminal and off it
    assert console.width == 300


def test_off_a_terminal_a_log_record_is_one_line(monkeypatch, capsys):
    import logging

    from lmforge.cli.console import setup_logging

    monkeypatch.setenv("COLUMNS", "20")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(False)
        message = "wrote shard " + "/very/long/path" * 20
        logging.getLogger("lmforge.test").warning(message)
    finally:
        root.handlers[:], root.level = saved
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("WARNING  " + message)
