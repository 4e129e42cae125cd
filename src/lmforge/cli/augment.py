"""Augment the training split of a labelled task (EDA, back-translation, contextual substitution).

The recipe has an `augment:` section: `data` (a built-in task or a labelled file, as in
`finetune`), `operations` (eda, back_translate, contextual_substitute, each with its options) and
`seed`. Validation and test examples are never augmented, and a copy equal to one of them is
dropped. Writes RUN/augmented.jsonl (every split; copies carry meta.augmented_from and
meta.augment), RUN/stats.json and RUN/config.yaml; fine-tune on it with
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
    from lmforge.augment.task import run_augment
    from lmforge.cli.console import console
    from lmforge.cli.console import out as stdout
    from lmforge.errors import ConfigError
    from lmforge.recipe import load_recipe

    r = load_recipe(recipe, allow_custom_stages=not no_custom_stages)
    if r.augment is None:
        raise ConfigError(f"{recipe}: needs an 'augment:' section (pipeline recipes with augmentation stages "
                          "run with `lmforge run`)")
    cfg = r.augment if seed is None else r.augment.model_copy(update={"seed": seed})
    run_dir = out or Path("runs") / r.name
    with console.status("augmenting"):
        result = run_augment(cfg, run_dir, recipe={"name": r.name, "augment": cfg.model_dump(mode="json",
                                                                                              exclude_none=True)})
    s = result.stats
    stdout.print(f"train {s['train']} + {s['augmented']} augmented (dropped {s['leak_dropped']} equal to a val/test "
                 f"text); val {s['val']}, test {s['test']}; {s['seconds']:.1f}s", highlight=False)
    for name, st in s["operations"].items():
        made = {k.removeprefix("op_"): v for k, v in st.get("counters", {}).items() if k.startswith("op_")}
        other = {k: v for k, v in st.get("counters", {}).items() if not k.startswith("op_")}
        stdout.print(f"  {name}: {st['out'] - st['in']} copies {made or ''} {other or ''}".rstrip(), highlight=False,
                     markup=False)
    originals = {e.meta.get("id"): e for e in result.data.train if "augmented_from" not in e.meta}
    shown = 0
    for ex in result.data.train:
        if shown >= preview:
            break
        if "augmented_from" in ex.meta and ex.meta["augmented_from"] in originals:
            src = originals[ex.meta["augmented_from"]]
            stdout.print(f"\n[{ex.meta['augment']['op']}]\n  - {src.text or ' '.join(src.tokens)}\n"
                         f"  + {ex.text or ' '.join(ex.tokens)}", highlight=False, markup=False)
            shown += 1
    stdout.print(f"\nwrote {result.path}", highlight=False)
