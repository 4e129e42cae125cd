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
    tokenizer: Path | None = typer.Option(None, help="Tokenizer directory (default: the model's own)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory: report.json, report.md, report.html, stats.json."),
    max_docs: int = typer.Option(2000, help="Perplexity: documents to score at most."),
) -> None:
    from lmforge.cli.console import console
    from lmforge.evaluate.report import to_markdown

    if out is not None:  # a run directory: report.json/.md beside config.yaml, stats.json, logs/, report.html
        from lmforge.api import evaluate

        result = evaluate(model, data, out, metrics=metrics, tokenizer=tokenizer, max_docs=max_docs)
        scores = result.steps["evaluate"]["results"]
    else:
        from lmforge.finetune.evaluate import evaluate_model

        scores = evaluate_model(model, data, metrics, tokenizer, max_docs)
    console.print(to_markdown(scores, title=f"{model} on {data}"))
