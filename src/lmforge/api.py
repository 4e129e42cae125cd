"""The Python calls behind the commands: `lmforge pretrain` is `lmforge.api.pretrain(...)`, and so on.

Each takes a recipe (a path or a parsed `Recipe`) and the same overrides as its command, runs it
under the one runner and returns the `RunResult`; the command only adds progress bars and tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError
from lmforge.flow import run_recipe
from lmforge.flow.recipe import Recipe, load_recipe, parse_recipe
from lmforge.flow.runner import RunResult, distributed_rank

RecipeLike = Recipe | str | Path


def _recipe(recipe: RecipeLike, allow_custom_stages: bool) -> tuple[Recipe, Path]:
    """The parsed recipe (a copy: overrides never change the caller's) and the directory its relative
    paths resolve against."""
    if isinstance(recipe, Recipe):
        return recipe.model_copy(deep=True), Path(".")
    return load_recipe(recipe, allow_custom_stages=allow_custom_stages), Path(recipe).parent


def _needs(recipe: Recipe, source: RecipeLike, section: str, hint: str) -> None:
    if getattr(recipe, section) is None:
        where = source if isinstance(source, (str, Path)) else f"recipe {recipe.name}"
        article = "an" if section[0] in "aeiou" else "a"
        raise ConfigError(f"{where}: needs {article} '{section}:' section ({hint})")


def run(recipe: RecipeLike, out: str | Path | None = None, *, executor: str | None = None, workers: int | None = None,
        ray_address: str | None = None, allow_custom_stages: bool = True) -> RunResult:
    """`lmforge run`: every section of the recipe, resumably, in `out` [default runs/<name>].

    `executor` (local or ray), `workers` and `ray_address` override the recipe's `executor:` section.
    """
    r, base = _recipe(recipe, allow_custom_stages)
    ex = r.executor.model_copy()
    if executor is not None:
        ex.kind = executor
    if workers is not None:
        ex.workers = workers
    if ray_address is not None:
        ex.kind, ex.address = "ray", ray_address
    return run_recipe(r, out or Path("runs") / r.name, base_dir=base, executor=ex)


def pretrain(recipe: RecipeLike, out: str | Path | None = None, *, steps: int | None = None,
             device: str | None = None, init_from: str | Path | None = None, export_hf: str | Path | None = None,
             allow_custom_stages: bool = True,
             on_train_step: Callable[[int, float], None] | None = None) -> RunResult:
    """`lmforge pretrain`: the data steps, tokenizer and training; `export_hf` also writes an HF model."""
    r, base = _recipe(recipe, allow_custom_stages)
    _needs(r, recipe, "pretrain", "`lmforge run` runs data-only recipes")
    model = r.pretrain.model.model_copy(update={"source": str(init_from)}) if init_from else None  # model.from
    updates = {"steps": steps, "device": device, "model": model}
    r.pretrain = r.pretrain.model_copy(update={k: v for k, v in updates.items() if v is not None})
    result = run_recipe(r, out or Path("runs") / r.name, base_dir=base, on_train_step=on_train_step)
    if export_hf is not None and distributed_rank() == 0:
        from lmforge.models.export import export_hf as export

        run_dir = result.run_dir  # the local mirror of a run on a store
        export(run_dir / "pretrain" / "checkpoint", run_dir / "tokenizer", export_hf)
    return result


def finetune(recipe: RecipeLike, out: str | Path | None = None, *, source: str | None = None,
             epochs: float | None = None, allow_custom_stages: bool = True,
             on_train_step: Callable[[int, float], None] | None = None) -> RunResult:
    """`lmforge finetune`: fine-tune (or compare with scratch, or grid-search) and score on the test split."""
    r, base = _recipe(recipe, allow_custom_stages)
    _needs(r, recipe, "finetune", "task, data, model and training settings")
    section: dict[str, Any] = r.finetune.model_dump(by_alias=True)
    if source is not None:
        section["model"]["from"] = source
    if epochs is not None:
        section["epochs"] = epochs
    r.finetune = type(r.finetune).model_validate(section)
    return run_recipe(r, out or Path("runs") / r.name, base_dir=base, on_train_step=on_train_step)


def augment(recipe: RecipeLike, out: str | Path | None = None, *, seed: int | None = None,
            allow_custom_stages: bool = True) -> RunResult:
    """`lmforge augment`: augmented copies of a labelled task's training split in RUN/augmented.jsonl."""
    r, base = _recipe(recipe, allow_custom_stages)
    _needs(r, recipe, "augment", "pipeline recipes with augmentation stages run with `lmforge run`")
    if seed is not None:
        r.augment = r.augment.model_copy(update={"seed": seed})
    return run_recipe(r, out or Path("runs") / r.name, base_dir=base)


def evaluate(model: str | Path, data: str, out: str | Path, *, metrics: str = "auto",
             tokenizer: str | Path | None = None, max_docs: int = 2000, **choice: Any) -> RunResult:
    """`lmforge evaluate --out`: scores of a model on labelled data or text, as a run directory.

    `choice` are the multiple-choice fields of the `evaluate:` section (shots, choice_scoring, device,
    batch_size, seed, on_error), for metrics="choice".
    """
    section = {"model": str(model), "data": data, "metrics": metrics, "max_docs": max_docs, **choice}
    if tokenizer is not None:
        section["tokenizer"] = str(tokenizer)
    r = parse_recipe({"name": f"evaluate-{Path(model).name}", "evaluate": section}, where="evaluate")
    return run_recipe(r, out)


def label(source: str, out: str | Path, **options: Any) -> RunResult:
    """`lmforge label split` (and weak labelling with `lfs=`): a leakage-free dataset as a run directory.

    `options` are the fields of the `label:` section (kind, val, test, seed, folds, format, lfs, ...).
    """
    r = parse_recipe({"name": f"label-{Path(source).stem}", "label": {"source": source, **options}}, where="label")
    return run_recipe(r, out)
