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

import contextlib
import os
from pathlib import Path

import typer

from lmforge.cli.run import NO_CUSTOM_STAGES


def pretrain_command(
    recipe: Path = typer.Argument(..., help="YAML recipe with a `pretrain:` section."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe name>)."),
    steps: int | None = typer.Option(None, min=1, help="Override pretrain.steps."),
    device: str | None = typer.Option(None, help="Override pretrain.device: auto, cpu, cuda, cuda:N."),
    init_from: Path | None = typer.Option(None, help="Continue from an lmforge checkpoint or an HF model directory."),
    export_hf: Path | None = typer.Option(None, help="Also export the trained model as a Hugging Face model here."),
    no_custom_stages: bool = NO_CUSTOM_STAGES,
) -> None:
    from lmforge.api import pretrain
    from lmforge.cli.console import rich_progress
    from lmforge.cli.summary import print_run_summary
    from lmforge.errors import Interrupted

    main_rank = int(os.environ.get("RANK", 0)) == 0
    try:
        with rich_progress() if main_rank else contextlib.nullcontext():
            result = pretrain(recipe, out, steps=steps, device=device, init_from=init_from, export_hf=export_hf,
                              allow_custom_stages=not no_custom_stages)
    except KeyboardInterrupt:
        raise Interrupted() from None
    if main_rank:
        print_run_summary(result)
