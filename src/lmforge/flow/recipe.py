"""Recipes: YAML files whose top-level keys are the steps of the flow, validated by typed configs.

Each section is one Step (`build_steps`), run in the fixed order of `SECTIONS` by the runner:

```yaml
input: {builtin: {}}                      # or {files: ["data/*.jsonl"]}
executor: {kind: local, workers: 2}       # or {kind: ray, address: "ray://..."}
pipeline:                                 # streaming and global stages, in order
  - normalize: {}
  - length_filter: {min_chars: 20}
  - exact_dedup: {}
tokenizer: {vocab_size: 4096}
pretrain: {model: {preset: tiny}, steps: 300}
generate: {prompts: ["人民", "The "]}
```
Every error names the field (`pipeline[1].length_filter.min_chars`), the value and what is allowed.
A custom stage (`package.module:Class`) is code: loading the recipe imports its module, unless
custom stages are turned off (`allow_custom_stages=False`, `lmforge run --no-custom-stages`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from lmforge.augment.task import AugmentTaskConfig
from lmforge.config import StrictModel, load_yaml_file, short_repr, validate
from lmforge.errors import ConfigError
from lmforge.finetune.config import FinetuneConfig
from lmforge.flow.steps.data import InputStep, PipelineStep, StageList
from lmforge.flow.steps.lm import (
    GenerateStep,
    PretrainStep,
    SampleConfig,
    TokenizerStep,
    TokensConfig,
    TokensStep,
)
from lmforge.flow.steps.tasks import (
    AugmentStep,
    EvaluateConfig,
    EvaluateStep,
    FinetuneStep,
    LabelConfig,
    LabelStep,
    ReportConfig,
    ReportStep,
)
from lmforge.pipeline.executors import ExecutorConfig
from lmforge.pipeline.input import InputConfig
from lmforge.pipeline.registry import is_custom, resolve_stage
from lmforge.pipeline.step import Step
from lmforge.quality.annotate import AnnotateConfig, AnnotateStep
from lmforge.tokenize.bpe import TokenizerConfig
from lmforge.train.config import PretrainConfig

SECTIONS = ("input", "pipeline", "annotate", "tokenizer", "tokens", "pretrain", "generate", "finetune", "augment",
            "label", "evaluate", "report")


class Recipe(StrictModel):
    name: str = "recipe"
    input: InputConfig | None = None
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    pipeline: list[dict[str, Any]] = Field(default_factory=list)
    annotate: AnnotateConfig | None = None
    tokenizer: TokenizerConfig | None = None
    tokens: TokensConfig | None = None
    pretrain: PretrainConfig | None = None
    generate: SampleConfig | None = None
    finetune: FinetuneConfig | None = None
    augment: AugmentTaskConfig | None = None
    label: LabelConfig | None = None
    evaluate: EvaluateConfig | None = None
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _has_work(self) -> Recipe:
        own_input = self.annotate is not None and self.annotate.input is not None
        if all(getattr(self, s) is None for s in ("input", "finetune", "augment", "label", "evaluate")) and not own_input:
            raise ValueError("a recipe needs an 'input' section (data steps), or a 'finetune', 'augment', 'label' "
                             "or 'evaluate' section (or 'annotate' with its own input)")
        if self.annotate is not None and self.annotate.input is None and self.input is None:
            raise ValueError("annotate rates the pipeline's output: give an 'input' section, or annotate.input")
        if self.input is None and (self.pipeline or self.tokenizer or self.pretrain or self.generate or self.tokens):
            raise ValueError("pipeline, tokenizer, tokens, pretrain and generate need an 'input' section")
        if (self.tokens is not None or self.pretrain is not None) and self.tokenizer is None:
            raise ValueError("tokens and pretrain encode with the recipe's tokenizer: add a 'tokenizer' section")
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
                raise ValueError(
                    f"entry [{i}] must be a single-key mapping like '- normalize: {{}}', got {short_repr(entry)}"
                )
        return value


    def stage_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, fully resolved config) per pipeline entry, as the pipeline step reads them."""
        return StageList(stages=self.pipeline).specs()

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in, as saved beside the output."""
        return self.model_dump(mode="json", exclude_none=True)


def build_steps(recipe: Recipe) -> list[Step]:
    """The recipe's sections as Steps, in run order; `tokens` comes with `pretrain` even when not written,
    and runs on its own when written without it (token shards for another trainer)."""
    steps: list[Step] = []
    if recipe.input is not None:
        steps += [InputStep(recipe.input), PipelineStep(StageList(stages=recipe.pipeline))]
    if recipe.annotate is not None:
        steps.append(AnnotateStep(recipe.annotate))
    percent = recipe.pretrain.val_percent if recipe.pretrain is not None else 0.0
    if recipe.tokenizer is not None:
        steps.append(TokenizerStep(recipe.tokenizer, holdout_percent=percent))
    if recipe.pretrain is not None or recipe.tokens is not None:
        steps.append(TokensStep(recipe.tokens or TokensConfig(), default_percent=percent))
    if recipe.pretrain is not None:
        steps.append(PretrainStep(recipe.pretrain))
    sections = ((GenerateStep, recipe.generate), (FinetuneStep, recipe.finetune), (AugmentStep, recipe.augment),
                (LabelStep, recipe.label), (EvaluateStep, recipe.evaluate))
    steps += [cls(cfg) for cls, cfg in sections if cfg is not None]
    steps.append(ReportStep(recipe.report))
    return steps


def _resolve_pipeline(recipe: Recipe, where: str, allow_custom_stages: bool) -> None:
    """Validate each stage's config with its own model and store the resolved values.

    Custom stages are refused first, all of them, before any stage module is imported.
    """
    if not allow_custom_stages:
        for i, entry in enumerate(recipe.pipeline):
            (name, _), = entry.items()
            if is_custom(name):
                try:
                    resolve_stage(name, allow_custom=False)
                except ConfigError as exc:
                    raise ConfigError(f"{where}: pipeline[{i}]: {exc}") from None
    for i, entry in enumerate(recipe.pipeline):
        (name, cfg), = entry.items()
        try:
            cls = resolve_stage(name, allow_custom=allow_custom_stages)
        except ConfigError as exc:
            raise ConfigError(f"{where}: pipeline[{i}]: {exc}") from None
        model = validate(cls.Config, cfg, where=where, prefix=f"pipeline[{i}].{name}")
        entry[name] = model.model_dump(mode="json")


def parse_recipe(data: Any, where: str = "recipe", allow_custom_stages: bool = True) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping of steps (input, pipeline, ...), got {type(data).__name__}")
    recipe = validate(Recipe, data, where=where)
    _resolve_pipeline(recipe, where, allow_custom_stages)
    return recipe


def load_recipe(path: str | Path, allow_custom_stages: bool = True) -> Recipe:
    """Read and validate a YAML recipe through the bounded safe loader (`config.load_yaml_file`).

    With `allow_custom_stages=False` a recipe naming a custom stage is refused before its code loads.
    """
    return parse_recipe(load_yaml_file(path, "recipe"), where=str(path), allow_custom_stages=allow_custom_stages)
