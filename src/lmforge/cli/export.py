"""Export an lmforge checkpoint as a standard Hugging Face model directory (offline).

GPTs become LlamaForCausalLM (rotary, RMSNorm, SwiGLU), Qwen3ForCausalLM (the same with QK-norm)
or GPT2LMHeadModel (learned positions, LayerNorm, GELU); BERT encoders become BertForPreTraining.
The tokenizer is copied beside the weights, so `AutoModel*.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)` work.

Examples:

  lmforge export runs/demo/pretrain/checkpoint --tokenizer runs/demo/tokenizer --out runs/demo/hf
"""

from __future__ import annotations

from pathlib import Path

import typer


def export_command(
    checkpoint: Path = typer.Argument(..., help="lmforge checkpoint directory (config.json + model.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the Hugging Face model to."),
    tokenizer: Path | None = typer.Option(None, help="lmforge tokenizer directory to include."),
) -> None:
    from lmforge.cli.console import console
    from lmforge.models.export import export_hf

    path, cls = export_hf(checkpoint, tokenizer, out)
    console.print(f"exported {cls} to {path}")
