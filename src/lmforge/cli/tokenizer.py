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
    import itertools

    from lmforge.cli.console import out as stdout
    from lmforge.config import validate
    from lmforge.errors import UserError
    from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer
    from lmforge.tokenize.report import builtin_texts
    from lmforge.tokenize.shards import iter_source_texts

    if not sources and not corpus:
        raise UserError("give run directories or files to train on, or --corpus NAME")
    config = validate(
        TokenizerConfig,
        {"kind": kind, "vocab_size": vocab_size, "min_frequency": min_frequency, "jieba": jieba,
         "chat_template": chat_template, "max_training_chars": max_chars},
        where="tokenizer train",
    )
    from_files = (text for _, text in iter_source_texts(sources or []))
    built_in = builtin_texts("train", corpora=corpus).values() if corpus else []
    train_tokenizer(itertools.chain(from_files, *built_in), config, out)
    stdout.print(f"trained {config.kind} with {load_tokenizer(out).get_vocab_size():,} tokens into {out}")


@app.command("inspect")
def inspect_command(
    tokenizers: list[Path] = typer.Argument(..., help="Tokenizer directories to measure."),
    text: list[Path] = typer.Option(None, "--text", help="Measure on these runs/files [default: held-out built-in text]."),
    corpus: list[str] = CORPUS,
    compare: bool = typer.Option(True, help="Add cl100k_base, o200k_base and GPT-2 (built offline when possible)."),
    limit_chars: int = typer.Option(1_000_000, min=1, help="At most this many characters per language."),
) -> None:
    """Fertility (tokens per character and per word), byte-fallback and unknown rates, longest tokens."""
    from rich.table import Table

    from lmforge.cli.console import out
    from lmforge.tokenize.bpe import load_tokenizer
    from lmforge.tokenize.fast import status as encoding_status
    from lmforge.tokenize.report import builtin_texts, fertility, lmforge_encoder, reference_encoders
    from lmforge.tokenize.shards import iter_source_texts

    if text:
        samples: dict[str, list[str]] = {}
        used: dict[str, int] = {}
        for lang, t in iter_source_texts(text):
            if used.get(lang, 0) < limit_chars:
                samples.setdefault(lang, []).append(t)
                used[lang] = used.get(lang, 0) + len(t)
    else:
        samples = builtin_texts("heldout", limit_chars=limit_chars, corpora=corpus)
    encoders = [lmforge_encoder(p, name=str(p)) for p in tokenizers]
    missing: dict[str, str] = {}
    if compare:
        refs, missing = reference_encoders()
        encoders += refs
    rows = fertility(encoders, samples)

    table = Table(title="tokens per character and per word (lower is better)")
    for col in ("tokenizer", "lang", "vocab", "chars", "tok/char", "tok/word", "fallback %", "unk %"):
        table.add_column(col, justify="left" if col in ("tokenizer", "lang") else "right")
    sizes = {e.name: e.vocab_size for e in encoders}
    for r in rows:
        table.add_row(r.tokenizer, r.lang, f"{sizes[r.tokenizer]:,}", f"{r.chars:,}", f"{r.tokens_per_char:.3f}",
                      f"{r.tokens_per_word:.3f}", f"{100 * r.fallback / max(1, r.tokens):.2f}",
                      f"{100 * r.unknown / max(1, r.tokens):.2f}")
    out.print(table)
    for path in tokenizers:
        out.print(f"{path}: shard encoding uses {encoding_status(load_tokenizer(path))[1]}")
    for name, why in missing.items():
        out.print(f"{name}: unavailable, {why}")
    longest = Table(title="longest tokens")
    for col in ("tokenizer", "longest (no Chinese)", "longest Chinese"):
        longest.add_column(col)
    for e in encoders:
        longest.add_row(e.name, "  ".join(repr(s) for s in e.longest(5)),
                        "  ".join(repr(s) for s in e.longest(5, han=True)))
    out.print(longest)


@app.command("encode")
def encode_command(
    run: Path = typer.Argument(..., help="Run directory (its final stage is encoded) or a stage directory."),
    tokenizer: Path | None = typer.Option(None, help="Tokenizer directory [default: RUN/tokenizer]."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Token shard directory [default: RUN/tokens]."),
    executor: str = typer.Option("local", help="local or ray."),
    workers: int | None = typer.Option(None, min=1, help="Local worker processes [default: CPU cores]."),
    ray_address: str | None = typer.Option(None, help="Address of an existing Ray cluster."),
    batch_size: int = typer.Option(1024, min=1, help="Documents per encode call."),
) -> None:
    """Encode record shards into shard-XXXXX.tok + .idx files, in parallel and resumably."""
    from lmforge.cli.console import out as stdout
    from lmforge.cli.console import rich_progress
    from lmforge.config import validate
    from lmforge.errors import Interrupted
    from lmforge.pipeline.executors import ExecutorConfig, make_executor
    from lmforge.tokenize.shards import encode_shards

    kind = "ray" if ray_address else executor
    ex = make_executor(validate(ExecutorConfig, {"kind": kind, "workers": workers, "address": ray_address},
                                where="tokenizer encode"))
    try:
        with rich_progress():
            manifest = encode_shards(run, tokenizer or run / "tokenizer", out or run / "tokens", ex, batch_size)
    except KeyboardInterrupt:
        raise Interrupted() from None
    finally:
        ex.close()
    stdout.print(f"{manifest['documents']:,} documents, {manifest['tokens']:,} tokens ({manifest['dtype']}) "
                 f"in {len(manifest['shards'])} shards: {out or run / 'tokens'}")
