"""Pretrain a GPT (causal LM) or a BERT encoder (MLM + NSP) from a recipe, resumably.

The recipe's data steps (collect, clean, dedup, tokenizer, token shards) run first and are
skipped when already done; then training runs, continuing from the newest checkpoint in
<out>/pretrain/checkpoints when there is one (set pretrain.save_every).

Examples:

  lmforge pretrain recipes/gpt-tiny-cpu.yaml --out runs/gpt-tiny

  lmforge pretrain recipes/bert-tiny-cpu.yaml --out runs/bert-tiny --steps 50

  torchrun --nproc-per-node 8 -m lmforge.cli.main pretrain recipes/gpt2-124m.yaml --out runs/124m

  lmforge pretrain recipes/gpt-tiny-cpu.yaml --out runs/gpt-tiny --export-hf runs/gpt-tiny/hf
"""

from __future__ import annotations

import os
from pathlib import Path

import typer


def pretrain_command(
    recipe: Path = typer.Argument(..., help="YAML recipe with a `pretrain:` section."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory [default: runs/<recipe name>]."),
    steps: int | None = typer.Option(None, min=1, help="Override pretrain.steps."),
    device: str | None = typer.Option(None, help="Override pretrain.device: auto, cpu, cuda, cuda:N."),
    init_from: Path | None = typer.Option(None, help="Continue from an lmforge checkpoint or an HF model directory."),
    export_hf: Path | None = typer.Option(None, help="Also export the trained model as a Hugging Face model here."),
    no_custom_stages: bool = typer.Option(
        False, "--no-custom-stages",
        help="Refuse custom 'package.module:Class' stages (they run their module's code) before importing any.",
    ),
) -> None:
    from lmforge.cli.console import rich_progress
    from lmforge.cli.summary import print_run_summary
    from lmforge.errors import ConfigError, Interrupted
    from lmforge.flow import run_recipe
    from lmforge.recipe import load_recipe

    r = load_recipe(recipe, allow_custom_stages=not no_custom_stages)
    if r.pretrain is None:
        raise ConfigError(f"{recipe}: has no 'pretrain' section; `lmforge run` runs data-only recipes")
    updates = {k: v for k, v in {"steps": steps, "device": device,
                                 "init_from": str(init_from) if init_from else None}.items() if v is not None}
    if updates:
        r.pretrain = r.pretrain.model_copy(update=updates)
    run_dir = out or Path("runs") / r.name
    main_rank = int(os.environ.get("RANK", 0)) == 0
    try:
        if main_rank:
            with rich_progress():
                result = run_recipe(r, run_dir, base_dir=recipe.parent)
        else:
            result = run_recipe(r, run_dir, base_dir=recipe.parent)
    except KeyboardInterrupt:
        raise Interrupted() from None
    if not main_rank:
        return
    if export_hf is not None:
        from lmforge.models.export import export_hf as export

        export(run_dir / "pretrain" / "checkpoint", run_dir / "tokenizer", export_hf)
    print_run_summary(result)
