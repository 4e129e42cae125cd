"""Evaluate a model on labelled data or text: task metrics for fine-tuned models, perplexity for LMs.

MODEL is a fine-tuned model directory (from `lmforge finetune`), an lmforge checkpoint or a Hugging
Face causal LM directory. DATA is a labelled file (JSONL, CSV, Label Studio JSON), `builtin:NAME`
for a built-in task's test split, or, for perplexity, a text/JSONL file or run directory.

Examples:

  lmforge evaluate runs/ft-sentiment/best builtin:zh_sentiment

  lmforge evaluate runs/demo/pretrain/checkpoint runs/demo --metrics perplexity --tokenizer runs/demo/tokenizer
"""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate_command(
    model: Path = typer.Argument(..., help="Fine-tuned model, lmforge checkpoint or HF causal LM directory."),
    data: str = typer.Argument(..., help="Labelled file, builtin:NAME, or text for perplexity."),
    metrics: str = typer.Option("auto", help="auto (by task), or perplexity."),
    tokenizer: Path | None = typer.Option(None, help="Tokenizer directory [default: the model's own]."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write report.json and report.md here."),
    max_docs: int = typer.Option(2000, help="Perplexity: documents to score at most."),
) -> None:
    from lmforge.cli.console import console
    from lmforge.evaluate.report import to_markdown, write_report
    from lmforge.finetune.evaluate import evaluate_lm, evaluate_task

    if metrics == "perplexity":
        result = evaluate_lm(model, data, tokenizer, max_docs)
    elif metrics == "auto":
        result = evaluate_task(model, data, tokenizer)
    else:
        from lmforge.errors import ConfigError

        raise ConfigError(f"--metrics must be auto or perplexity (got {metrics!r})")
    console.print(to_markdown(result, title=f"{model} on {data}"))
    if out is not None:
        write_report(out / "report", result, title=f"{model} on {data}")
