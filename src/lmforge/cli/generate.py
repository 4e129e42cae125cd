"""Generate text from a trained model: an lmforge run, checkpoint, fine-tuned chat model or HF directory.

Several prompts are decoded together (continuous batching); `--chat` wraps each prompt in the
model's chat template; `--stream` prints the text as it is decoded.

Examples:

  lmforge generate runs/demo "中国的"

  lmforge generate runs/demo "The function" --temperature 0 --max-new-tokens 40

  lmforge generate runs/ft-chat/model "写一句问候" --chat --stream

  lmforge generate hf-dir "A" "B" -n 3 --seed 1 --stop "\\n"
"""

from __future__ import annotations

from pathlib import Path

import typer


def generate_command(
    model: Path = typer.Argument(..., help="Run directory, lmforge checkpoint, fine-tuned model or HF directory."),
    prompts: list[str] = typer.Argument(..., help="One or more prompts."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=0, help="Tokens to generate at most."),
    temperature: float = typer.Option(0.8, min=0.0, help="0 is greedy."),
    top_k: int = typer.Option(50, min=0, help="Sample among the k most likely tokens (0: all)."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling mass (1: off)."),
    repetition_penalty: float = typer.Option(1.0, min=0.0, help="> 1 discourages repeats (1: off)."),
    n: int = typer.Option(1, "-n", min=1, help="Samples per prompt."),
    stop: list[str] = typer.Option([], "--stop", help="Stop at this text (repeatable); not included."),
    seed: int = typer.Option(0, help="Same seed, same text."),
    chat: bool = typer.Option(False, "--chat", help="Apply the model's chat template (user turn)."),
    stream: bool = typer.Option(False, "--stream", help="Print text as it is generated (one prompt, n=1)."),
    tokenizer: Path | None = typer.Option(None, help="Tokenizer directory (default: beside the model or its run)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", help="float32, bfloat16, float16, or auto: float32 on a CPU, the checkpoint's dtype on a GPU."),
) -> None:
    from lmforge.cli.console import console
    from lmforge.errors import UserError
    from lmforge.serve.commands import generate_completions, stream_completion

    stops = [s.encode().decode("unicode_escape") for s in stop]  # "\\n" typed in a shell is a newline
    if stream:
        if len(prompts) > 1 or n > 1:
            raise UserError("--stream prints one completion: give one prompt and -n 1")
        for piece in stream_completion(model, prompts[0], max_new_tokens, temperature, top_k, top_p,
                                       repetition_penalty, stops, seed, chat, tokenizer, device, dtype):
            console.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
        console.print()
        return
    results = generate_completions(model, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty, n,
                                   stops, seed, chat, tokenizer, device, dtype)
    for prompt, completions in zip(prompts, results, strict=True):
        for i, c in enumerate(completions):
            head = f"[bold]{prompt}[/]" + (f" [dim](sample {i + 1})[/]" if n > 1 else "")
            console.print(head, highlight=False)
            console.print(c.text, highlight=False, markup=False, soft_wrap=True)
            console.print(f"[dim]({len(c.token_ids)} tokens, {c.finish_reason})[/]", highlight=False)
