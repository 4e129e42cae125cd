"""Collect text from a source into a run directory of Parquet shards (resumable).

Every source option of a recipe's `input` step can be given with --set key=value.

Examples:

  lmforge collect files 'data/**/*.txt' --out runs/files

  lmforge collect warc crawl/*.warc.gz --out runs/cc

  lmforge collect crawl https://example.org/ --set max_pages=200 --set delay=2 --out runs/site

  lmforge collect sql sqlite:///reviews.db --set table=reviews --set text_column=body --out runs/db

  lmforge collect api https://api.example.org/posts --set pagination=cursor --set items='$.data[*]' --out runs/api

  lmforge collect dataset ~/datasets/my_corpus --set split=train --out runs/ds
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help=__doc__, no_args_is_help=True, context_settings={"show_default": True})

OUT = typer.Option(..., "--out", "-o", help="Run directory.")
SET = typer.Option(None, "--set", "-s", help="Source option as key=value (YAML value), repeatable.")
SHARD = typer.Option(500, "--shard-size", min=1, help="Records per output shard.")


def _options(pairs: list[str] | None) -> dict[str, Any]:
    from lmforge.config import parse_yaml
    from lmforge.errors import ConfigError

    opts: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            opts[key.strip()] = parse_yaml(value, where=f"--set {key.strip()}")
        except ConfigError:  # not a YAML value: the text itself
            opts[key.strip()] = value
    return opts


def _collect(source: str, config: dict[str, Any], out: Path, shard_size: int) -> None:
    from lmforge.cli.console import rich_progress
    from lmforge.cli.summary import print_run_summary
    from lmforge.errors import Interrupted
    from lmforge.flow import collect

    try:
        with rich_progress():
            result = collect(source, config, out, shard_size=shard_size)
    except KeyboardInterrupt:
        raise Interrupted() from None
    print_run_summary(result)


@app.command("files")
def files_command(paths: list[str] = typer.Argument(..., help="Files, directories or globs."),
                  out: Path = OUT, set_: list[str] | None = SET, shard_size: int = SHARD) -> None:
    """Text, Markdown, HTML, JSON(L), CSV/TSV, Parquet and PDF files, with encoding detection."""
    _collect("files", {"paths": paths, **_options(set_)}, out, shard_size)


@app.command("warc")
def warc_command(paths: list[str] = typer.Argument(..., help="WARC/ARC files or globs."),
                 out: Path = OUT, set_: list[str] | None = SET, shard_size: int = SHARD) -> None:
    """HTTP responses from WARC and ARC files (damaged gzip members are quarantined, not fatal)."""
    _collect("warc", {"paths": paths, **_options(set_)}, out, shard_size)


@app.command("crawl")
def crawl_command(seeds: list[str] = typer.Argument(..., help="Seed URLs (http/https)."),
                  out: Path = OUT, set_: list[str] | None = SET, shard_size: int = SHARD) -> None:
    """A polite crawl (robots.txt, per-host delay, size caps) written as WARC plus records."""
    _collect("crawl", {"seeds": seeds, **_options(set_)}, out, shard_size)


@app.command("sql")
def sql_command(url: str = typer.Argument(..., help="SQLAlchemy URL, e.g. sqlite:///data.db."),
                out: Path = OUT, set_: list[str] | None = SET, shard_size: int = SHARD) -> None:
    """Rows of a table or query, streamed with a server-side cursor (set table= or query=)."""
    _collect("sql", {"url": url, **_options(set_)}, out, shard_size)


@app.command("api")
def api_command(url: str = typer.Argument(..., help="JSON API endpoint (http/https)."),
                out: Path = OUT, set_: list[str] | None = SET, shard_size: int = SHARD) -> None:
    """A paginated JSON API (page, offset, cursor or Link pagination; token from an env var)."""
    _collect("api", {"url": url, **_options(set_)}, out, shard_size)


@app.command("dataset")
def dataset_command(path: str = typer.Argument(..., help="Dataset folder on disk."),
                    out: Path = OUT, set_: list[str] | None = SET, shard_size: int = SHARD) -> None:
    """A dataset on disk: datasets.save_to_disk, Parquet/Arrow/JSONL folders, hub snapshots."""
    _collect("dataset", {"path": path, **_options(set_)}, out, shard_size)
