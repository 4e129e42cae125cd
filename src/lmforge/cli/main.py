"""`lmforge` entry point: global options, command registration and error handling.

User mistakes (`UserError`) print one line and exit 2; other failures print one line and
exit 1; `--debug` shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from lmforge.cli import (
    augment,
    collect,
    corpora,
    demo,
    evaluate,
    export,
    finetune,
    pretrain,
    run,
    stats,
    tokenizer,
)
from lmforge.cli import generate as generate_cli
from lmforge.cli import label as label_cli
from lmforge.cli import quality as quality_cli
from lmforge.cli import report as report_cli
from lmforge.cli import serve as serve_cli
from lmforge.cli.console import console, setup_logging
from lmforge.errors import UserError
from lmforge.version import __version__

app = typer.Typer(
    name="lmforge",
    help="From raw Chinese/English text to a served language model.\n\n"
    "Examples:\n\n  lmforge demo\n\n  lmforge run recipes/demo.yaml --out runs/demo\n\n  lmforge stats runs/demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmforge {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
) -> None:
    _state["debug"] = debug or bool(os.environ.get("LMFORGE_DEBUG"))
    setup_logging(_state["debug"])


app.command("run", help=run.__doc__, no_args_is_help=True)(run.run_command)
app.command("pretrain", help=pretrain.__doc__, no_args_is_help=True)(pretrain.pretrain_command)
app.command("finetune", help=finetune.__doc__, no_args_is_help=True)(finetune.finetune_command)
app.command("augment", help=augment.__doc__, no_args_is_help=True)(augment.augment_command)
app.command("evaluate", help=evaluate.__doc__, no_args_is_help=True)(evaluate.evaluate_command)
app.command("export", help=export.__doc__, no_args_is_help=True)(export.export_command)
app.command("stats", help=stats.__doc__, no_args_is_help=True)(stats.stats_command)
app.command("generate", help=generate_cli.__doc__, no_args_is_help=True)(generate_cli.generate_command)
app.command("serve", help=serve_cli.__doc__, no_args_is_help=True)(serve_cli.serve_command)
app.command("report", help=report_cli.__doc__, no_args_is_help=True)(report_cli.report_command)
app.command("demo", help=demo.__doc__)(demo.demo_command)
app.add_typer(collect.app, name="collect")
app.add_typer(corpora.app, name="corpora")
app.add_typer(tokenizer.app, name="tokenizer")
app.add_typer(label_cli.app, name="label")
app.add_typer(quality_cli.app, name="quality")


def main(argv: list[str] | None = None) -> int:
    """Click (inside typer) reports usage errors itself (exit 2); we add one-line errors for the rest."""
    try:
        app(args=argv, prog_name="lmforge")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UserError as exc:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/] {type(exc).__name__}: {escape(str(exc))} (re-run with --debug for the traceback)",
                      highlight=False, soft_wrap=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
