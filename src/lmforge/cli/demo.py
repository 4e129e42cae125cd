"""Run the end-to-end demo on built-in Chinese and English text, offline, on CPU.

Crawls a small bilingual site the demo serves on 127.0.0.1, adds the built-in corpora, cleans,
filters, PII-masks and deduplicates them, trains a BPE tokenizer and a tiny GPT, a WordPiece
tokenizer and a tiny BERT, augments a Chinese sentiment set with EDA and fine-tunes the GPT on
it, fine-tunes the BERT as a Chinese NER tagger (both against the same models from scratch),
generates samples and writes OUT/report.html. About 5-10 minutes on 2 cores; Ctrl-C and the same
command again resumes where it stopped. --serve then serves the GPT over the OpenAI API.

Examples:

  lmforge demo

  lmforge demo --out /tmp/demo --quick

  lmforge demo --serve --port 8000
"""

from __future__ import annotations

from pathlib import Path

import typer


def demo_command(
    out: Path = typer.Option(Path("lmforge-demo"), "--out", "-o", help="Run directory."),
    steps: int | None = typer.Option(None, min=1, help="GPT pretraining steps (default: the recipe's)."),
    workers: int | None = typer.Option(None, min=1, help="Local worker processes (default: CPU cores)."),
    quick: bool = typer.Option(False, "--quick", help="A much smaller run (about a minute) to try the flow."),
    serve: bool = typer.Option(False, "--serve", help="Serve the pretrained GPT afterwards (OpenAI API)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port for --serve (on 127.0.0.1)."),
    api_key: str | None = typer.Option(None, "--api-key", help="Key for --serve (default: a random one, printed)."),
) -> None:
    from lmforge.cli.console import out as console_out
    from lmforge.cli.console import rich_progress
    from lmforge.cli.summary import demo_table, print_run_summary
    from lmforge.demo import FULL, QUICK, run_demo
    from lmforge.errors import Interrupted

    try:
        with rich_progress():
            result = run_demo(out, steps=steps, workers=workers, size=QUICK if quick else FULL)
    except KeyboardInterrupt:
        raise Interrupted() from None
    print_run_summary(result.data)
    console_out.print(demo_table(result))
    if serve:
        import secrets

        from lmforge.serve.http import serve as serve_model
        from lmforge.serve.protocol import ServeConfig

        key = api_key or f"sk-demo-{secrets.token_hex(8)}"
        console_out.print(f"serving the demo GPT as model 'lmforge-demo' on http://127.0.0.1:{port}/v1 "
                          f"with API key [bold]{key}[/] (Ctrl-C stops)")
        serve_model(out, ServeConfig(port=port, api_keys=[key], model_name="lmforge-demo"))
