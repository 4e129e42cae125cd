"""Label data: a local annotation web app, leakage-free splits, Label Studio interchange, weak supervision, quality.

DATASET / SOURCE is a JSONL, CSV/TSV or Label Studio JSON file, a saved dataset directory, or
`builtin:NAME` (a built-in task, e.g. builtin:zh_sentiment).

Examples:

  lmforge label serve reviews.jsonl --labels neg,pos

  lmforge label serve builtin:zh_sentiment --out answers.jsonl --strategy margin

  lmforge label answers reviews.answers.jsonl --out labelled.jsonl

  lmforge label serve samples.jsonl --kind pairwise --max-pairs 3

  lmforge label answers samples.answers.jsonl --out preferences.jsonl

  lmforge label split labelled.jsonl --out data/reviews --format hf

  lmforge label export-ls reviews.jsonl --labels neg,pos --out tasks.json

  lmforge label import-ls export.json --out data/from-ls

  lmforge label weak builtin:zh_sentiment --lfs zh_sentiment

  lmforge label agreement export.json

  lmforge label issues labelled.jsonl
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help=__doc__, no_args_is_help=True, context_settings={"show_default": True})

KIND = typer.Option("classification", "--kind", help="classification or ner.")


def _labels(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _table(title: str, columns: list[str], rows: list[list[object]]):
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    return table


@app.command("serve")
def serve_command(
    dataset: str = typer.Argument(..., help="Items to label: JSONL/CSV (text, optional id, prediction, score), "
                                            "Label Studio tasks .json, or builtin:NAME; for --kind pairwise "
                                            "JSONL of a prompt and samples (as `lmforge generate --out` writes) "
                                            "or answer_a and answer_b."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Answer log (JSONL) \\(default: DATASET.answers.jsonl)."),
    labels: str | None = typer.Option(None, help="Comma-separated classes or entity types \\[default: from the "
                                                 "built-in task or the predictions]."),
    kind: str = typer.Option("classification", "--kind", help="classification, ner, or pairwise (which of two "
                                                              "answers is better)."),
    max_pairs: int | None = typer.Option(None, "--max-pairs", min=1, help="Pairwise: compare at most this many "
                                         "pairs per prompt, a seeded choice \\[default: every pair]."),
    seed: int = typer.Option(0, help="Pairwise: seed of the left/right coin and of the --max-pairs choice."),
    strategy: str = typer.Option("entropy", help="Next item by: entropy, margin, least_confidence, diversity, "
                                                 "entropy+diversity, random or order."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; another host needs --key."),
    port: int = typer.Option(8765, min=0, max=65535),
    key: str | None = typer.Option(None, "--key", envvar="LMFORGE_LABEL_KEY",
                                   help="Access key: open the app with ?key=KEY (kept in a cookie)."),
    allow_host: str | None = typer.Option(None, "--allow-host", help="Comma-separated extra host names the app "
                                                                     "answers to (e.g. a reverse proxy's)."),
    max_body: int | None = typer.Option(None, "--max-body", help="Largest request body in bytes; larger ones get "
                                                                   "413 \\(default: 1048576)."),
    max_comment: int | None = typer.Option(None, "--max-comment", help="Longest comment in characters "
                                                                       "\\(default: 2000)."),
    annotator: str | None = typer.Option(None, help="Name saved with each answer \\(default: the login name)."),
    text_field: str = typer.Option("text", help="Field holding the text."),
) -> None:
    """Open a labelling web app at http://HOST:PORT (one item at a time, keyboard shortcuts, undo)."""
    from lmforge.cli.console import console
    from lmforge.label.app import serve
    from lmforge.label.commands import open_session

    session = open_session(dataset, out, _labels(labels), kind, strategy, annotator, max_comment, text_field,
                           max_pairs, seed)
    query = "?key=<your key>" if key else ""
    console.print(f"labelling {len(session.items):,} items ({len(session.store.current()):,} done) at "
                  f"http://{host}:{port}/{query} ; answers go to {session.store.path}. Ctrl+C stops.", highlight=False)
    serve(session, host, port, key, allowed_hosts=_labels(allow_host) or [], max_body_bytes=max_body)


@app.command("answers")
def answers_command(
    log: Path = typer.Argument(..., help="Answer log written by `lmforge label serve`."),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL of the labelled examples, or of the preference "
                                                     "pairs {prompt, chosen, rejected, meta} of a pairwise log."),
    kind: str = typer.Option("classification", "--kind", help="classification or ner; a pairwise log is "
                                                              "recognised as one."),
) -> None:
    """Write the standing answers (undone ones left out, the latest per item) as a labelled JSONL file.

    A pairwise log becomes a preference set: one row per pair decided a or b (its latest decision);
    ties and both-bad decisions are left out and counted.
    """
    from lmforge.cli.console import out as stdout
    from lmforge.label.commands import is_pairwise, write_answers, write_preferences

    if kind == "pairwise" or is_pairwise(log):
        prefs = write_preferences(log, out)
        stdout.print(f"{len(prefs.rows):,} preference pairs written to {out}; left out: {prefs.counts['tie']:,} "
                     f"ties, {prefs.counts['both_bad']:,} both bad", highlight=False)
        return
    stdout.print(f"{write_answers(log, out, kind):,} labelled examples written to {out}")


@app.command("split")
def split_command(
    source: str = typer.Argument(..., help="Labelled file, saved dataset directory, or builtin:NAME."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the dataset to."),
    kind: str | None = typer.Option(None, help="classification, ner or instruction \\[default: from the source, "
                                               "else classification]."),
    val: float = typer.Option(0.1, help="Validation fraction."),
    test: float = typer.Option(0.1, help="Test fraction."),
    seed: int = typer.Option(0, help="Seed of the split."),
    folds: int = typer.Option(0, min=0, help="Also write k folds (fold-K/train.jsonl, fold-K/heldout.jsonl) of "
                                             "train + val when at least 2."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl, csv or hf (a `datasets` directory)."),
    near_duplicates: bool = typer.Option(True, help="Keep near-identical texts in one split (MinHash), not "
                                                    "only identical ones."),
    text_field: str = typer.Option("text", help="Field holding the text (JSONL/CSV)."),
    label_field: str = typer.Option("label", help="Field holding the label; for lmforge records a dotted path "
                                                  "in meta (e.g. reviews.label)."),
) -> None:
    """Stratified train/val/test splits with no identical or near-identical text in two splits."""
    from lmforge.api import label
    from lmforge.cli.console import out as stdout

    result = label(source, out, kind=kind, val=val, test=test, seed=seed, folds=folds, format=fmt,
                   near_duplicates=near_duplicates, text_field=text_field, label_field=label_field)
    step = result.steps["label"]
    info = step["dataset"]
    stdout.print(f"{info['kind']} dataset in {out} ({fmt}): " +
                 ", ".join(f"{k} {v:,}" for k, v in info["sizes"].items()) +
                 f"; labels {info['labels']}; leaking pairs across splits: {info['leaking_pairs']}")
    if step["folds"]:
        stdout.print(f"{step['folds']} folds of train+val written to {out}/fold-*/ (val.jsonl is the held-out fold)")


@app.command("export-ls")
def export_ls_command(
    source: str = typer.Argument(..., help="Items (JSONL/CSV with text, optional prediction) or builtin:NAME."),
    out: Path = typer.Option(..., "--out", "-o", help="Label Studio tasks file (.json); the labelling config "
                                                     "goes beside it as <name>.config.xml."),
    labels: str | None = typer.Option(None, help="Comma-separated classes or entity types."),
    kind: str = KIND,
    model: Path | None = typer.Option(None, help="Fine-tuned classifier whose predictions become pre-annotations."),
    with_annotations: bool = typer.Option(False, help="Export the source's own labels as annotations "
                                                      "(SOURCE must be labelled)."),
) -> None:
    """Write Label Studio tasks, with predictions (from the items or --model) as pre-annotations."""
    from lmforge.cli.console import out as stdout
    from lmforge.label.commands import export_labelstudio

    done = export_labelstudio(source, out, _labels(labels), kind, model, with_annotations)
    stdout.print(f"{done.tasks:,} tasks written to {done.path}; labelling config in {done.config_path}")


@app.command("import-ls")
def import_ls_command(
    export: Path = typer.Argument(..., help="Label Studio JSON export (Export → JSON)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the dataset to."),
    kind: str | None = typer.Option(None, help="classification or ner \\(default: from the annotations)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl, csv or hf."),
    seed: int = typer.Option(0, help="Seed of the split."),
) -> None:
    """Completed annotations → a leakage-free split dataset; prints annotator agreement when tasks have several."""
    from lmforge.cli.console import out as stdout
    from lmforge.label.commands import import_labelstudio

    result = import_labelstudio(export, out, kind, fmt, seed)
    imported = result.imported
    stdout.print(f"{len(imported.tasks):,} annotated tasks ({imported.counts['annotations']:,} annotations) → "
                 f"{out}: " + ", ".join(f"{k} {v:,}" for k, v in result.info["sizes"].items()))
    report = result.agreement
    if report is not None:
        stdout.print(f"Fleiss' kappa {report['fleiss_kappa']:.3f} over {report['items_with_2plus']:,} tasks "
                     f"with 2+ annotators; {report['disagreements']:,} tasks with disagreements "
                     "(see `lmforge label agreement`)")


@app.command("weak")
def weak_command(
    source: str = typer.Argument(..., help="Texts (JSONL/CSV; a `label` field, if any, is used to measure) or "
                                           "builtin:NAME."),
    lfs: str = typer.Option(..., "--lfs", help="Labelling functions: a YAML file, or a built-in set (zh_sentiment)."),
    method: str = typer.Option("label_model", help="label_model or majority."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the weakly labelled texts (JSONL) here."),
) -> None:
    """Apply labelling functions, combine their votes, and report coverage, overlap, conflict and accuracy."""
    from lmforge.cli.console import out as stdout
    from lmforge.label.commands import weak_label_source

    weak = weak_label_source(source, lfs, method, out)
    result, has_gold = weak.result, weak.has_gold
    cols = ["function", "polarity", "coverage", "overlap", "conflict"] + \
        (["correct", "incorrect", "emp. accuracy"] if has_gold else []) + \
        (["learned accuracy"] if method == "label_model" else [])
    rows = [[s["name"], ",".join(s["polarity"]), s["coverage"], s["overlap"], s["conflict"]] +
            ([s["correct"], s["incorrect"], s["emp_accuracy"]] if has_gold else []) +
            ([s["learned_accuracy"]] if method == "label_model" else []) for s in result.summary]
    stdout.print(_table(f"labelling functions on {len(weak.items):,} texts", cols, rows))
    stdout.print(f"{method}: coverage {result.metrics['coverage']:.3f}" +
                 (f", accuracy on covered texts {result.metrics['accuracy']:.3f}" if has_gold else ""))
    if weak.written is not None:
        stdout.print(f"{weak.written:,} weakly labelled texts written to {out}")


@app.command("agreement")
def agreement_command(
    export: Path = typer.Argument(..., help="Label Studio JSON export with several annotations per task."),
    top: int = typer.Option(10, min=0, help="Disagreements to show."),
) -> None:
    """Cohen's kappa per annotator pair, Fleiss' kappa, and the tasks annotators disagree on most."""
    from lmforge.cli.console import out as stdout
    from lmforge.label.commands import annotator_agreement

    report = annotator_agreement(export, top)
    stdout.print(_table("agreement per annotator pair", ["pair", "items", "agreement", "Cohen's kappa"],
                        [[k, v["items"], v["agreement"], v["kappa"]] for k, v in report["pairwise"].items()]))
    fleiss = report["fleiss_kappa"]
    stdout.print(f"Fleiss' kappa: {'n/a' if fleiss is None else f'{fleiss:.3f}'} "
                 f"({report['items_with_2plus']:,} tasks with 2+ annotators; units are tokens for NER)")
    stdout.print(f"{report['disagreements']:,} tasks with disagreements; most split first:")
    for d in report["disagreement_examples"]:
        answers = "; ".join(f"{who}: {v if isinstance(v, str) else ' '.join(v)}" for who, v in d["answers"].items())
        stdout.print(f"  [{d['item']}] {d.get('text', '')}  →  {answers}", highlight=False)


@app.command("issues")
def issues_command(
    source: str = typer.Argument(..., help="Labelled classification file or builtin:NAME."),
    folds: int = typer.Option(5, min=2, help="Cross-validation folds for out-of-sample probabilities."),
    top: int = typer.Option(20, min=0, help="Suspects to show."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write every suspect as JSONL here."),
) -> None:
    """Find likely label errors (confident learning over a cross-validated TF-IDF classifier)."""
    from lmforge.cli.console import out as stdout
    from lmforge.label.commands import label_issues

    found = label_issues(source, folds, out)
    examples, suspects = found.examples, found.suspects
    stdout.print(f"{len(suspects):,} of {len(examples):,} labels look wrong ({len(suspects) / len(examples):.1%}):")
    for s in suspects[:top]:
        ex = examples[s["index"]]
        stdout.print(f"  {ex.meta.get('id', ex.meta.get('where', s['index']))}: {s['given']} → {s['suggested']} "
                     f"(p={s['given_prob']:.2f})  {ex.text[:80]}", highlight=False)
