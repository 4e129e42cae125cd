"""Export a model as a Hugging Face directory or a GGUF file for llama.cpp and Ollama (offline).

Accepts an lmforge checkpoint, a model fine-tuned by `lmforge finetune` (instruction tuning, LoRA
merged) or a Hugging Face directory of a family lmforge imports. Decoders become their family's
class (Llama, Qwen2, Qwen3, Qwen3-MoE, Qwen2-MoE, Mistral, Mixtral, GPT-2; lmforge's own layout
is Llama's), BERT encoders BertForPreTraining. The tokenizer is copied beside the weights (HF) or
written into the file (GGUF), so `from_pretrained(OUT)` and `llama-cli -m OUT` work as they are.

Examples:

  lmforge export runs/demo/pretrain/checkpoint --tokenizer runs/demo/tokenizer --out runs/demo/hf
  lmforge export runs/qwen-sft/model --format gguf --gguf-type q8_0 --out qwen-sft-q8.gguf
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmforge.cli.console import model_path, tokenizer_path


def export_command(
    checkpoint: Path = typer.Argument(
        ..., parser=model_path, help="lmforge checkpoint, fine-tuned model or Hugging Face directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory (hf) or file (gguf) to write."),
    tokenizer: Path | None = typer.Option(
        None, parser=tokenizer_path, help="Tokenizer directory (default: beside the model or its run)."),
    format: str = typer.Option("hf", "--format", help="hf (a transformers directory) or gguf (one llama.cpp file)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF weights: f32, f16, bf16 or q8_0."),
) -> None:
    from lmforge.cli.console import console
    from lmforge.errors import ConfigError
    from lmforge.models.export import export_gguf, export_hf

    if format == "hf":
        path, cls = export_hf(checkpoint, tokenizer, out)
    elif format == "gguf":
        path, cls = export_gguf(checkpoint, tokenizer, out, gguf_type)
    else:
        raise ConfigError(f"--format must be hf or gguf (got {format!r})")
    console.print(f"exported {cls} to {path}")
