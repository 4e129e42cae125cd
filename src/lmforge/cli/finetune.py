"""Fine-tune a model on a labelled task, pick the best validation checkpoint, score it on the test split.

The recipe has a `finetune:` section (task, data, model, training settings); see
recipes/finetune-zh-sentiment.yaml. Tasks: classification, ner, instruction, conversation (multi-turn
chat, packed; recipes/chat-sft-qwen.yaml) and preference (DPO, IPO, SimPO, ORPO; recipes/dpo-qwen.yaml,
docs/chat-tuning.md). The model is an lmforge checkpoint, a Hugging Face directory on
disk, or a fresh preset; `lora:` trains adapters and merges them on save; `search:` runs a grid;
`compare_scratch: true` also trains the same architecture from scratch and writes a comparison.

Examples:

  lmforge finetune recipes/finetune-zh-sentiment.yaml --out runs/ft-sentiment

  lmforge finetune recipes/finetune-zh-sentiment.yaml --out runs/ft --from runs/bert-tiny/pretrain/checkpoint

  lmforge finetune recipes/dpo-qwen.yaml --out runs/qwen-dpo --from runs/qwen-chat/best
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmforge.cli.run import NO_CUSTOM_STAGES


def finetune_command(
    recipe: Path = typer.Argument(..., help="YAML recipe with a `finetune:` section."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default: runs/<recipe name>)."),
    source: str | None = typer.Option(None, "--from", help="Override finetune.model.from (checkpoint or HF dir)."),
    epochs: float | None = typer.Option(None, min=0.01, help="Override finetune.epochs."),
    no_custom_stages: bool = NO_CUSTOM_STAGES,
) -> None:
    from lmforge.api import finetune
    from lmforge.cli.console import console, rich_progress
    from lmforge.evaluate.report import to_markdown

    with rich_progress():
        result = finetune(recipe, out, source=source, epochs=epochs, allow_custom_stages=not no_custom_stages)
    step = result.steps["finetune"]
    if step["mode"] == "search":
        console.print(to_markdown(step["runs"], title="hyperparameter search (best first)"))
    elif step["mode"] == "compare_scratch":
        console.print((result.run_dir / "comparison.md").read_text(encoding="utf-8"))
    else:
        console.print(to_markdown({"val": step["val"], "test": step["test"]}, title=f"fine-tuned: {result.run_dir}"))
    if result.report is not None and result.report.is_file():
        console.print(f"report: {result.report}  (open it in a browser; works offline)")
