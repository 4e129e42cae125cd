"""Show the per-stage counts of a run: records in/out, drops by reason, bytes, seconds.

Examples:

  lmforge stats runs/demo

  lmforge stats runs/demo --json

  lmforge stats s3://bucket/runs/cc        # a run on a store: only its stats.json is fetched
"""

from __future__ import annotations

import typer


def stats_command(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR",
                                  help="A run directory (holds stats.json), or its URL (s3://bucket/runs/x)."),
    as_json: bool = typer.Option(False, "--json", help="Print stats.json as it is."),
) -> None:
    from lmforge.cli.console import out
    from lmforge.cli.summary import stats_table
    from lmforge.flow.mirror import local_run
    from lmforge.report.data import read_stats_file

    stats = read_stats_file(local_run(run_dir, wanted=lambda rel: rel == "stats.json")[0])
    if as_json:
        out.print_json(data=stats)
    else:
        out.print(stats_table(stats))
