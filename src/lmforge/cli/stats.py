"""Show the per-stage counts of a run: records in/out, drops by reason, bytes, seconds.

Examples:

  lmforge stats runs/demo

  lmforge stats runs/demo --json
"""

from __future__ import annotations

from pathlib import Path

import typer


def stats_command(
    run_dir: Path = typer.Argument(..., help="A run directory (holds stats.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print stats.json as it is."),
) -> None:
    from lmforge.cli.console import out
    from lmforge.cli.summary import stats_table
    from lmforge.report.data import read_stats_file

    stats = read_stats_file(run_dir)
    if as_json:
        out.print_json(data=stats)
    else:
        out.print(stats_table(stats))
