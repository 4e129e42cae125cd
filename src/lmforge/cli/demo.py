"""Run the end-to-end demo on built-in Chinese and English text, offline, on CPU.

Reads the built-in corpora, cleans and deduplicates them, trains a byte-level BPE
tokenizer, pretrains a tiny GPT, and prints the loss falling, the held-out perplexity
before and after training, and a few generated samples.

Examples:

  lmforge demo

  lmforge demo --out /tmp/demo --steps 100
"""

from __future__ import annotations

from pathlib import Path

import typer


def demo_command(
    out: Path = typer.Option(Path("lmforge-demo"), "--out", "-o", help="Run directory."),
    steps: int | None = typer.Option(None, min=1, help="Pretraining steps [default: the recipe's]."),
    workers: int | None = typer.Option(None, min=1, help="Local worker processes [default: CPU cores]."),
) -> None:
    from lmforge.cli.console import rich_progress
    from lmforge.cli.summary import print_run_summary
    from lmforge.demo import run_demo
    from lmforge.errors import Interrupted

    try:
        with rich_progress():
            result = run_demo(out, steps=steps, workers=workers)
    except KeyboardInterrupt:
        raise Interrupted() from None
    print_run_summary(result)
