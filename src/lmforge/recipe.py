"""Recipes: YAML files whose top-level keys are the steps of the flow, validated by typed configs.

```yaml
input: {builtin: {}}                      # or {files: ["data/*.jsonl"]}
executor: {kind: local, workers: 2}       # or {kind: ray, address: "ray://..."}
pipeline:                                 # streaming and global stages, in order
  - normalize: {}
  - length_filter: {min_chars: 20}
  - exact_dedup: {}
tokenizer: {vocab_size: 4096}
pretrain: {preset: tiny, steps: 300}
generate: {prompts: ["人民", "The "]}
```
Every error names the field (`pipeline[1].length_filter.min_chars`), the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from lmforge.augment.task import AugmentTaskConfig
from lmforge.collect.source import InputConfig
from lmforge.config import StrictModel, validate
from lmforge.errors import ConfigError
from lmforge.finetune.config import FinetuneConfig
from lmforge.pipeline.executors import ExecutorConfig
from lmforge.pipeline.registry import resolve_stage
from lmforge.tokenize.bpe import TokenizerConfig
from lmforge.train.config import PretrainConfig


class SampleConfig(StrictModel):
    prompts: list[str] = Field(default_factory=lambda: ["The ", "我们"], min_length=1)
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(0.8, ge=0.0)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0


class Recipe(StrictModel):
    name: str = "recipe"
    input: InputConfig | None = None
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    pipeline: list[dict[str, Any]] = Field(default_factory=list)
    tokenizer: TokenizerConfig | None = None
    pretrain: PretrainConfig | None = None
    generate: SampleConfig | None = None
    finetune: FinetuneConfig | None = None
    augment: AugmentTaskConfig | None = None

    @model_validator(mode="after")
    def _has_work(self) -> Recipe:
        if self.input is None and self.finetune is None and self.augment is None:
            raise ValueError("a recipe needs an 'input' section (data steps) or a 'finetune' section, or an 'augment' section")
        if self.input is None and (self.pipeline or self.tokenizer or self.pretrain or self.generate):
            raise ValueError("pipeline, tokenizer, pretrain and generate need an 'input' section")
        return self

    @field_validator("pipeline", mode="before")
    @classmethod
    def _stage_entries(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("must be a list of single-key mappings like '- normalize: {}'")
        for i, entry in enumerate(value):
            if isinstance(entry, str):
                value[i] = {entry: {}}
            elif not (isinstance(entry, dict) and len(entry) == 1):
                raise ValueError(f"entry [{i}] must be a single-key mapping like '- normalize: {{}}', got {entry!r}")
        return value

    def stage_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, fully resolved config) per pipeline entry."""
        specs = []
        for entry in self.pipeline:
            (name, cfg), = entry.items()
            specs.append((name, cfg))
        return specs

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in, as saved beside the output."""
        return self.model_dump(mode="json", exclude_none=True)


def _resolve_pipeline(recipe: Recipe, where: str) -> None:
    """Validate each stage's config with its own model and store the resolved values."""
    for i, entry in enumerate(recipe.pipeline):
        (name, cfg), = entry.items()
        try:
            cls = resolve_stage(name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: pipeline[{i}]: {exc}") from None
        model = validate(cls.Config, cfg, where=where, prefix=f"pipeline[{i}].{name}")
        entry[name] = model.model_dump(mode="json")


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping of steps (input, pipeline, ...), got {type(data).__name__}")
    recipe = validate(Recipe, data, where=where)
    _resolve_pipeline(recipe, where)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe (safe_load only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: recipe is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    return parse_recipe(data, where=str(path))
