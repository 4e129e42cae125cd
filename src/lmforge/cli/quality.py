"""Learned quality filtering: rate documents with a model, train a fast classifier, score a corpus.

Examples:

  lmforge quality annotate runs/web --url http://127.0.0.1:8000/v1 --model demo --out runs/web/annotate

  lmforge quality train runs/web/annotate --label-key annotation.score --out models/edu

  lmforge quality train --good runs/wiki --bad runs/spam --out models/good-vs-spam

  lmforge quality train labelled.jsonl --label-key label --positive good --out models/good
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help=__doc__, no_args_is_help=True, context_settings={"show_default": True})


@app.command("train")
def train_command(
    data: list[str] = typer.Argument(None, help="Labelled texts: record run/stage directories or shards (label in "
                                                "meta, --label-key a dotted path), JSONL/CSV/Label Studio/Parquet "
                                                "files (label in a field)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for quality.json + model.safetensors."),
    label_key: str = typer.Option("annotation.score", "--label-key", help="Where the label is: a field, or a "
                                  "dotted path in record meta."),
    good: list[str] = typer.Option(None, "--good", help="A corpus whose every document is good (repeatable)."),
    bad: list[str] = typer.Option(None, "--bad", help="A corpus whose every document is bad (repeatable)."),
    kind: str = typer.Option("auto", help="auto (regression for numeric ratings with more than two values, "
                                          "else classification), classification or regression."),
    positive: str | None = typer.Option(None, help="Classification: the good label, whose probability is the "
                                                   "score \\[default: good/high/pos..., or the expected value "
                                                   "of numeric labels]."),
    bits: int = typer.Option(20, min=10, max=26, help="2**bits hashed feature slots (20: 4 MB per output)."),
    ngrams: int = typer.Option(2, min=1, max=4, help="Token n-grams up to this length (words in English, "
                                                     "characters in Chinese)."),
    c: float = typer.Option(4.0, "--c", min=1e-6, help="Inverse regularisation strength."),
    val_fraction: float = typer.Option(0.1, min=0.0, max=0.5, help="Held out for the reported metrics."),
    on_error: str = typer.Option("raise", help="A bad labelled row: raise (file:line) or skip (counted)."),
    seed: int = typer.Option(0),
) -> None:
    """Train the fast quality classifier (hashed n-grams + a linear model) from labelled documents."""
    from lmforge.cli.console import console
    from lmforge.errors import ConfigError
    from lmforge.quality.train import train_and_save

    if kind not in ("auto", "classification", "regression"):
        raise ConfigError(f"--kind: {kind!r} is not allowed; allowed: auto, classification, regression")
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"--on-error: {on_error!r} is not allowed; allowed: raise, skip")
    with console.status("training the quality classifier"):
        model = train_and_save(out, data or [], label_key, good or [], bad or [], on_error, kind=kind,
                               positive=positive, bits=bits, ngrams=ngrams, c=c, val_fraction=val_fraction,
                               seed=seed)
    console.print(f"{model.kind} model -> {out}: " + ", ".join(f"{k} {v}" for k, v in model.metrics.items()))


@app.command("annotate")
def annotate_command(
    data: str = typer.Argument(..., help="Documents to rate: a run or stage directory, or a .parquet/.jsonl file."),
    url: str = typer.Option(..., "--url", help="Base URL of an OpenAI-compatible API (lmforge serve, vLLM, a "
                                               "hosted one), e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(..., "--model", help="The model name the endpoint expects."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: rated shards, quarantine, annotate.json "
                                                      "and the answer cache (a re-run asks only what is missing)."),
    sample: int = typer.Option(1000, min=0, help="Documents to rate, a seeded sample (0: all)."),
    seed: int = typer.Option(0, help="Seed of the sample."),
    template: str = typer.Option("auto", help="edu_en, edu_zh, auto (edu_zh for Chinese documents, else edu_en) "
                                              "or a template file with a {text} placeholder."),
    endpoint: str = typer.Option("chat", help="chat (/chat/completions) or completions (/completions)."),
    key_env: str = typer.Option("LMFORGE_ANNOTATE_KEY", "--key-env", help="Environment variable holding the API "
                                                                          "key (never pass the key itself)."),
    max_chars: int = typer.Option(4000, min=1, help="Each document is cut to this many characters."),
    max_tokens: int = typer.Option(256, min=1, help="Longest answer, in tokens."),
    concurrency: int = typer.Option(8, min=1, max=1024, help="Requests in flight."),
    rps: float | None = typer.Option(None, "--rps", help="Request starts per second \\[default: no limit]."),
    retries: int = typer.Option(4, min=0, max=20, help="Retries of a connection error, timeout, 429 or 5xx."),
    max_requests: int | None = typer.Option(None, "--max-requests", help="Stop after this many requests, "
                                                                         "retries included."),
    budget_seconds: float | None = typer.Option(None, "--budget-seconds", help="Start no request after this "
                                                                               "many seconds."),
    extra_body: str | None = typer.Option(None, "--extra-body", help='More request fields as JSON, e.g. '
                                                                     '\'{"top_p": 0.9}\'.'),
) -> None:
    """Rate a sample of documents with a model (educational value 0-5) to train a quality classifier on.

    Answers are cached in OUT/cache: the same command run again only asks for what is missing.

    Examples:

      lmforge quality annotate runs/web --url http://127.0.0.1:8000/v1 --model demo --out runs/web/annotate

      lmforge quality annotate runs/web --url https://api.example.com/v1 --model big --out rated --rps 5

      lmforge quality annotate docs.jsonl --url http://127.0.0.1:8000/v1 --model demo --out rated --template my.txt
    """
    import json
    import logging

    from lmforge.cli.console import console, rich_progress
    from lmforge.config import validate
    from lmforge.errors import ConfigError, Interrupted
    from lmforge.quality.annotate import AnnotateConfig, annotate

    try:
        body = json.loads(extra_body) if extra_body else {}
    except ValueError as exc:
        raise ConfigError(f"--extra-body: not valid JSON ({exc})") from None
    cfg = validate(AnnotateConfig, {
        "url": url, "model": model, "sample": sample or None, "seed": seed, "template": template,
        "endpoint": endpoint, "api_key_env": key_env, "max_chars": max_chars, "max_tokens": max_tokens,
        "concurrency": concurrency, "requests_per_second": rps, "retries": retries, "max_requests": max_requests,
        "budget_seconds": budget_seconds, "extra_body": body}, where="quality annotate")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    try:
        with rich_progress():
            result = annotate(cfg, data, out)
    except KeyboardInterrupt:
        raise Interrupted() from None
    s = result.stats
    console.print(f"{s['parsed']} rated, {s['unparsable']} unparsable, {s['http_errors']} HTTP errors "
                  f"({s['cached']} from the cache, {s['requests']} requests, {s['retries']} retries) -> {out}")
    console.print("scores: " + ", ".join(f"{k}: {v}" for k, v in s["scores"].items()))
    if not result.complete:
        console.print(f"[yellow]stopped by the budget with {s['remaining']} documents not rated; run the same "
                      "command again to continue (answers are cached)[/yellow]")
        raise typer.Exit(1)
