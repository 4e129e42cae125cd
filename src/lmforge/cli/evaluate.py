"""Evaluate a model on labelled data or text: task metrics for fine-tuned models, perplexity and
multiple-choice accuracy for LMs.

MODEL is a fine-tuned model directory (from `lmforge finetune`), an lmforge run or checkpoint or a Hugging
Face causal LM directory. DATA is a labelled file (JSONL, CSV, Label Studio JSON), `builtin:NAME`
for a built-in task's test split, or, for perplexity, a text/JSONL file or run directory. With
`--metrics choice`, DATA is a C-Eval, CMMLU or MMLU file or directory (CSV or JSONL) or
`builtin:choice` (40 questions, Chinese and English): accuracy per subject, per language and overall;
with --out, each question's scores go to RUN/predictions.jsonl.

Examples:

  lmforge evaluate runs/ft-sentiment/best builtin:zh_sentiment

  lmforge evaluate runs/demo/pretrain/checkpoint runs/demo --metrics perplexity --tokenizer runs/demo/tokenizer

  lmforge evaluate runs/demo builtin:choice --metrics choice --shots 5

  lmforge evaluate models/Qwen2.5-0.5B ceval/val --metrics choice --shots 5 --out runs/ceval
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmforge.cli.console import model_path, tokenizer_path


def evaluate_command(
    model: Path = typer.Argument(
        ..., parser=model_path, help="Fine-tuned model, lmforge checkpoint or HF causal LM directory."),
    data: str = typer.Argument(..., help="Labelled file, builtin:NAME, text for perplexity, or multiple-choice "
                                         "questions for choice."),
    metrics: str = typer.Option("auto", help="auto (by task), perplexity, or choice (multiple-choice accuracy)."),
    tokenizer: Path | None = typer.Option(
        None, parser=tokenizer_path, help="Tokenizer directory (default: the model's own)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory: report.json, report.md, report.html, stats.json."),
    max_docs: int = typer.Option(2000, help="Perplexity: documents to score at most."),
    shots: int = typer.Option(0, help="Choice: solved examples before each question (the dev split's, else "
                                      "other questions of the subject)."),
    choice_scoring: str = typer.Option("letter", "--choice-scoring",
                                       help="Choice: letter (log P of the answer letter) or text (of each option's "
                                            "full text, cloze form; also length-normalised)."),
    device: str = typer.Option("auto", help="Choice: auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(8, help="Choice: sequences per forward pass."),
) -> None:
    from lmforge.cli.console import console, rich_progress
    from lmforge.evaluate.report import to_markdown

    choice = {"shots": shots, "choice_scoring": choice_scoring, "device": device, "batch_size": batch_size}
    with rich_progress():
        if out is not None:  # a run directory: report.json/.md beside config.yaml, stats.json, logs/, report.html
            from lmforge.api import evaluate

            extra = choice if metrics == "choice" else {}
            result = evaluate(model, data, out, metrics=metrics, tokenizer=tokenizer, max_docs=max_docs, **extra)
            scores = result.steps["evaluate"]["results"]
        elif metrics == "choice":
            from lmforge.evaluate.choice import evaluate_choice

            scores = evaluate_choice(model, data, tokenizer=tokenizer, shots=shots, scoring=choice_scoring,
                                     device=device, batch_size=batch_size)
        else:
            from lmforge.finetune.evaluate import evaluate_model

            scores = evaluate_model(model, data, metrics, tokenizer, max_docs)
    console.print(to_markdown(scores, title=f"{model} on {data}"))
