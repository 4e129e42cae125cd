"""Write one self-contained HTML report of a run directory (opens offline, no server needed).

It shows what the run holds: data funnel with drop reasons, document lengths and languages,
duplicate clusters, tokenizer fertility by language, loss and learning-rate curves, throughput
and MFU, fine-tuning scores with confusion matrix and per-class F1, generated samples and the
resolved configs. `lmforge run`, `pretrain`, `finetune` and `demo` write it at the end already;
run this to rebuild it or to write it elsewhere.

Examples:

  lmforge report runs/demo

  lmforge report runs/ft-sentiment --out /tmp/ft-sentiment.html

  lmforge report s3://bucket/runs/cc       # pulls the run into its local mirror, publishes report.html
"""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR",
                                  help="A run directory (of lmforge run, pretrain, finetune or demo), or its URL "
                                       "(s3://bucket/runs/x): a finished run, pulled into its local mirror."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default: RUN_DIR/report.html, "
                                                              "published to the store for a URL)."),
) -> None:
    from lmforge.cli.console import out as stdout
    from lmforge.flow.mirror import local_run
    from lmforge.report import write_report

    local, mirror = local_run(run_dir)
    path = write_report(local, out)
    shown = str(path)
    if mirror is not None and out is None:
        mirror.publish_file(path.name)
        shown = f"{mirror.shown}/{path.name}"
    stdout.print(f"report: {shown}  ({path.stat().st_size / 1e3:,.0f} kB)", highlight=False, soft_wrap=True)
