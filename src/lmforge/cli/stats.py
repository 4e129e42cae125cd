"""Show the per-stage counts of a run: records in/out, drops by reason, bytes, seconds.

Examples:

  lmforge stats runs/demo

  lmforge stats runs/demo --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def stats_command(
    run_dir: Path = typer.Argument(..., help="A run directory (holds stats.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print stats.json as it is."),
) -> None:
    from lmforge.cli.console import out
    from lmforge.cli.summary import stats_table
    from lmforge.errors import UserError

    path = run_dir / "stats.json"
    if not path.is_file():
        raise UserError(f"no stats.json in {run_dir}: is it a run directory of 'lmforge run' or 'lmforge demo'?")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if as_json:
        out.print_json(data=stats)
    else:
        out.print(stats_table(stats))
