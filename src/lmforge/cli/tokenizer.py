"""Train a tokenizer, compare it with public ones, and encode a run into token shards.

Examples:

  lmforge tokenizer train --corpus peoples_daily --corpus python_docs --vocab-size 32000 --out tok

  lmforge tokenizer train runs/demo --kind unigram --vocab-size 16000 --jieba --out tok-uni

  lmforge tokenizer inspect tok tok-uni

  lmforge tokenizer inspect tok --text runs/demo --no-compare

  lmforge tokenizer encode runs/demo --tokenizer tok --workers 2

Training on --corpus leaves out the held-out 5% that `inspect` measures on by default, so
the comparison is on unseen text. Re-running an interrupted `encode` resumes it.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help=__doc__, no_args_is_help=True, context_settings={"show_default": True})

CORPUS = typer.Option(None, "--corpus", help="Built-in corpus (see `lmforge corpora list`), repeatable.")


@app.command("train")
def train_command(
    sources: list[Path] = typer.Argument(None, help="Run or stage directories, or .parquet/.jsonl/.txt files."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the tokenizer to."),
    corpus: list[str] = CORPUS,
    kind: str = typer.Option("byte_bpe", help="byte_bpe, unigram or wordpiece."),
    vocab_size: int = typer.Option(4096, help="Vocabulary size, special tokens included."),
    min_frequency: int = typer.Option(2, min=1, help="Least count for a merge or piece (BPE, WordPiece)."),
    jieba: bool = typer.Option(False, help="Cut Chinese training text at jieba word boundaries first."),
    chat_template: bool = typer.Option(True, help="Add <|im_start|>/<|im_end|> and a ChatML chat template."),
    max_chars: int | None = typer.Option(None, min=1, help="Train on at most this many characters."),
) -> None:
    """Learn a vocabulary; the directory loads with transformers.AutoTokenizer.from_pretrained."""
    from lmforge.cli.console import out as stdout
    from lmforge.tokenize.commands import train_from_sources

    done = train_from_sources(sources, out, corpus, kind, vocab_size, min_frequency, jieba, chat_template, max_chars)
    stdout.print(f"trained {done.config.kind} with {done.vocab_size:,} tokens into {out}")


@app.command("inspect")
def inspect_command(
    tokenizers: list[Path] = typer.Argument(..., help="Tokenizer directories to measure."),
    text: list[Path] = typer.Option(None, "--text", help="Measure on these runs/files (default: held-out built-in text)."),
    corpus: list[str] = CORPUS,
    compare: bool = typer.Option(True, help="Add cl100k_base, o200k_base and GPT-2 (built offline when possible)."),
    limit_chars: int = typer.Option(1_000_000, min=1, help="At most this many characters per language."),
) -> None:
    """Fertility (tokens per character and per word), byte-fallback and unknown rates, longest tokens."""
    from rich.table import Table

    from lmforge.cli.console import out
    from lmforge.tokenize.commands import inspect_tokenizers

    found = inspect_tokenizers(tokenizers, text, corpus, compare, limit_chars)
    table = Table(title="tokens per character and per word (lower is better)")
    for col in ("tokenizer", "lang", "vocab", "chars", "tok/char", "tok/word", "fallback %", "unk %"):
        table.add_column(col, justify="left" if col in ("tokenizer", "lang") else "right")
    sizes = found.vocab_sizes
    for r in found.rows:
        table.add_row(r.tokenizer, r.lang, f"{sizes[r.tokenizer]:,}", f"{r.chars:,}", f"{r.tokens_per_char:.3f}",
                      f"{r.tokens_per_word:.3f}", f"{100 * r.fallback / max(1, r.tokens):.2f}",
                      f"{100 * r.unknown / max(1, r.tokens):.2f}")
    out.print(table)
    for path, encoding in found.shard_encoding:
        out.print(f"{path}: shard encoding uses {encoding}")
    for name, why in found.missing.items():
        out.print(f"{name}: unavailable, {why}")
    longest = Table(title="longest tokens")
    for col in ("tokenizer", "longest (no Chinese)", "longest Chinese"):
        longest.add_column(col)
    for e in found.encoders:
        longest.add_row(e.name, "  ".join(repr(s) for s in e.longest(5)),
                        "  ".join(repr(s) for s in e.longest(5, han=True)))
    out.print(longest)


@app.command("encode")
def encode_command(
    run: Path = typer.Argument(..., help="Run directory (its final stage is encoded) or a stage directory."),
    tokenizer: Path | None = typer.Option(None, help="Tokenizer directory (default: RUN/tokenizer)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Token shard directory (default: RUN/tokens)."),
    executor: str = typer.Option("local", help="local or ray."),
    workers: int | None = typer.Option(None, min=1, help="Local worker processes (default: CPU cores)."),
    ray_address: str | None = typer.Option(None, help="Address of an existing Ray cluster."),
    batch_size: int = typer.Option(1024, min=1, help="Documents per encode call."),
) -> None:
    """Encode record shards into shard-XXXXX.tok + .idx files, in parallel and resumably."""
    from lmforge.cli.console import out as stdout
    from lmforge.cli.console import rich_progress
    from lmforge.errors import Interrupted
    from lmforge.tokenize.commands import encode_run

    try:
        with rich_progress():
            manifest = encode_run(run, tokenizer, out, executor, workers, ray_address, batch_size)
    except KeyboardInterrupt:
        raise Interrupted() from None
    stdout.print(f"{manifest['documents']:,} documents, {manifest['tokens']:,} tokens ({manifest['dtype']}) "
                 f"in {len(manifest['shards'])} shards: {manifest['out']}")
