"""Generate text from a trained model: an lmforge run, checkpoint, fine-tuned chat model or HF directory.

Several prompts are decoded together (continuous batching); `--chat` wraps each prompt in the
model's chat template; `--stream` prints the text as it is decoded. With `--out` the samples go
to a JSON-lines file, one row {id, prompt, samples, meta} per prompt: the input of
`lmforge label serve FILE --kind pairwise`, which turns people's choices into preference pairs.

Examples:

  lmforge generate runs/demo "中国的"

  lmforge generate runs/demo "The function" --temperature 0 --max-new-tokens 40

  lmforge generate runs/ft-chat/model "写一句问候" --chat --stream

  lmforge generate hf-dir "A" "B" -n 3 --seed 1 --stop "\\n"

  lmforge generate runs/ft-chat/model --prompts-file prompts.jsonl -n 4 --chat --top-p 0.95 --out samples.jsonl
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmforge.cli.console import model_path, tokenizer_path


def generate_command(
    model: Path = typer.Argument(
        ..., parser=model_path, help="Run directory, lmforge checkpoint, fine-tuned model or HF directory."),
    prompts: list[str] | None = typer.Argument(None, help="One or more prompts (or --prompts-file)."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="JSON lines of prompts: {prompt} or "
                                             "{messages} (chat template), optional id and meta."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the samples here as JSON lines, one "
                                    "{id, prompt, samples, meta} row per prompt, instead of printing them."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=0, help="Tokens to generate at most."),
    temperature: float = typer.Option(0.8, min=0.0, help="0 is greedy."),
    top_k: int = typer.Option(50, min=0, help="Sample among the k most likely tokens (0: all)."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling mass (1: off)."),
    repetition_penalty: float = typer.Option(1.0, min=0.0, help="> 1 discourages repeats (1: off)."),
    n: int = typer.Option(1, "-n", "--num-samples", min=1, help="Samples per prompt."),
    stop: list[str] = typer.Option([], "--stop", help="Stop at this text (repeatable); not included."),
    seed: int = typer.Option(0, help="Same seed, same text."),
    chat: bool = typer.Option(False, "--chat", help="Apply the model's chat template (user turn)."),
    stream: bool = typer.Option(False, "--stream", help="Print text as it is generated (one prompt, n=1)."),
    tokenizer: Path | None = typer.Option(
        None, parser=tokenizer_path, help="Tokenizer directory (default: beside the model or its run)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", help="float32, bfloat16, float16, or auto: float32 on a CPU, the checkpoint's dtype on a GPU."),
) -> None:
    from lmforge.cli.console import console
    from lmforge.errors import UserError
    from lmforge.serve.commands import generate_completions, stream_completion

    prompts = prompts or []
    if prompts_file is not None and prompts:
        raise UserError("give prompts as arguments or --prompts-file, not both")
    if prompts_file is None and not prompts:
        raise UserError("no prompts: give one or more as arguments, or --prompts-file FILE")
    if prompts_file is not None and out is None:
        raise UserError("--prompts-file needs --out FILE for the samples")
    stops = [s.encode().decode("unicode_escape") for s in stop]  # "\\n" typed in a shell is a newline
    if stream:
        if len(prompts) > 1 or n > 1 or out is not None:
            raise UserError("--stream prints one completion: give one prompt, -n 1 and no --out")
        for piece in stream_completion(model, prompts[0], max_new_tokens, temperature, top_k, top_p,
                                       repetition_penalty, stops, seed, chat, tokenizer, device, dtype):
            console.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
        console.print()
        return
    if out is not None:
        _write_samples(model, out, prompts_file, prompts, max_new_tokens, temperature, top_k, top_p,
                       repetition_penalty, n, stops, seed, chat, tokenizer, device, dtype)
        return
    results = generate_completions(model, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty, n,
                                   stops, seed, chat, tokenizer, device, dtype)
    for prompt, completions in zip(prompts, results, strict=True):
        for i, c in enumerate(completions):
            head = f"[bold]{prompt}[/]" + (f" [dim](sample {i + 1})[/]" if n > 1 else "")
            console.print(head, highlight=False)
            console.print(c.text, highlight=False, markup=False, soft_wrap=True)
            console.print(f"[dim]({len(c.token_ids)} tokens, {c.finish_reason})[/]", highlight=False)


def _write_samples(model: Path, out: Path, prompts_file: Path | None, prompts: list[str], *args) -> None:
    from lmforge.cli.console import console, rich_progress
    from lmforge.serve.commands import generate_samples

    with rich_progress():
        done = generate_samples(model, out, prompts_file, prompts, *args)
    console.print(f"{done.samples:,} samples of {done.prompts:,} prompts written to {done.path}", highlight=False)
