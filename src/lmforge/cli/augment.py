"""Augment the training split of a labelled task (EDA, back-translation, contextual substitution).

The recipe has an `augment:` section: `data` (a built-in task or a labelled file, as in
`finetune`), `operations` (eda, back_translate, contextual_substitute, each with its options) and
`seed`. Validation and test examples are never augmented, and a copy equal to one of them is
dropped. Writes RUN/augmented.jsonl (every split; copies carry meta.augmented_from and
meta.augment) in a run directory (config.yaml, stats.json, logs/, report.html); fine-tune on it with
`data: {path: RUN/augmented.jsonl}`. The same operations are pipeline stages for `lmforge run`.

Examples:

  lmforge augment recipes/augment-zh-sentiment.yaml --out runs/aug-zh

  lmforge augment recipes/augment-zh-ner.yaml --out runs/aug-ner --preview 5
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmforge.cli.run import NO_CUSTOM_STAGES


def augment_command(
    recipe: Path = typer.Argument(..., help="YAML recipe with an `augment:` section."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default: runs/RECIPE-NAME)."),
    preview: int = typer.Option(3, min=0, help="Print this many augmented examples next to their originals."),
    seed: int | None = typer.Option(None, help="Override augment.seed."),
    no_custom_stages: bool = NO_CUSTOM_STAGES,
) -> None:
    from lmforge.api import augment
    from lmforge.augment.task import preview_run
    from lmforge.cli.console import console
    from lmforge.cli.console import out as stdout

    with console.status("augmenting"):
        result = augment(recipe, out, seed=seed, allow_custom_stages=not no_custom_stages)
    s = result.steps["augment"]
    stdout.print(f"train {s['train']} + {s['augmented']} augmented (dropped {s['leak_dropped']} equal to a val/test "
                 f"text); val {s['val']}, test {s['test']}; {s['seconds']:.1f}s", highlight=False)
    for name, st in s["operations"].items():
        made = {k.removeprefix("op_"): v for k, v in st.get("counters", {}).items() if k.startswith("op_")}
        other = {k: v for k, v in st.get("counters", {}).items() if not k.startswith("op_")}
        stdout.print(f"  {name}: {st['out'] - st['in']} copies {made or ''} {other or ''}".rstrip(), highlight=False,
                     markup=False)
    for src, copy in preview_run(result.run_dir, preview):
        stdout.print(f"\n[{copy['meta']['augment']['op']}]\n  - {_shown(src)}\n  + {_shown(copy)}", highlight=False,
                     markup=False)
    stdout.print(f"\nwrote {result.run_dir / s['file']}", highlight=False)


def _shown(row: dict) -> str:
    return row.get("text") or " ".join(row.get("tokens", []))
