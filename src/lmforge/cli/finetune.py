"""Fine-tune a model on a labelled task, pick the best validation checkpoint, score it on the test split.

The recipe has a `finetune:` section (task, data, model, training settings); see
recipes/finetune-zh-sentiment.yaml. The model is an lmforge checkpoint, a Hugging Face directory on
disk, or a fresh preset; `lora:` trains adapters and merges them on save; `search:` runs a grid;
`compare_scratch: true` also trains the same architecture from scratch and writes a comparison.

Examples:

  lmforge finetune recipes/finetune-zh-sentiment.yaml --out runs/ft-sentiment

  lmforge finetune recipes/finetune-zh-sentiment.yaml --out runs/ft --from runs/bert-tiny/pretrain/checkpoint
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmforge.cli.run import NO_CUSTOM_STAGES


def finetune_command(
    recipe: Path = typer.Argument(..., help="YAML recipe with a `finetune:` section."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory [default: runs/<recipe name>]."),
    source: str | None = typer.Option(None, "--from", help="Override finetune.model.from (checkpoint or HF dir)."),
    epochs: float | None = typer.Option(None, min=0.01, help="Override finetune.epochs."),
    no_custom_stages: bool = NO_CUSTOM_STAGES,
) -> None:
    from lmforge.cli.console import console, rich_progress
    from lmforge.errors import ConfigError
    from lmforge.evaluate.report import to_markdown
    from lmforge.finetune.config import FinetuneConfig
    from lmforge.finetune.run import compare_scratch, finetune, search
    from lmforge.recipe import load_recipe

    r = load_recipe(recipe, allow_custom_stages=not no_custom_stages)
    if r.finetune is None:
        raise ConfigError(f"{recipe}: needs a 'finetune:' section")
    section = r.finetune.model_dump(by_alias=True)
    if source is not None:
        section["model"]["from"] = source
    if epochs is not None:
        section["epochs"] = epochs
    cfg = FinetuneConfig.model_validate(section)
    run_dir = out or Path("runs") / r.name
    with rich_progress():
        if cfg.search:
            rows = search(cfg, run_dir)
            console.print(to_markdown(rows, title="hyperparameter search (best first)"))
        elif cfg.compare_scratch:
            results = compare_scratch(cfg, run_dir)
            console.print((run_dir / "comparison.md").read_text(encoding="utf-8"))
            del results
        else:
            result = finetune(cfg, run_dir)
            console.print(to_markdown({"val": result.val, "test": result.test}, title=f"fine-tuned: {run_dir}"))
    from lmforge.report import write_report_safely

    if (report := write_report_safely(run_dir)) is not None:
        console.print(f"report: {report}  (open it in a browser; works offline)")
