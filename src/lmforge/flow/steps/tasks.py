"""The labelled-data steps: fine-tune, augment, label, evaluate.

Each one calls the library function its command calls, in the run directory the runner owns, and
returns the figures as its summary (stats.json's `steps`, the report's tables).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from lmforge import progress
from lmforge.augment.task import AugmentTaskConfig
from lmforge.config import StrictModel
from lmforge.finetune.config import FinetuneConfig
from lmforge.pipeline.step import Step, StepContext, Summary


class FinetuneStep(Step):
    """One fine-tune, a from-scratch comparison (`compare_scratch`), or a grid (`search`); writes into RUN."""

    name = "finetune"
    Config = FinetuneConfig

    def writes(self) -> list[str]:
        if self.config.search:
            return ["search.json"]
        return ["comparison.json"] if self.config.compare_scratch else ["best", "report.json"]

    def run(self, ctx: StepContext) -> Summary:
        from lmforge.finetune.run import compare_scratch, finetune
        from lmforge.finetune.search import search

        cfg = self.config
        if cfg.search:
            rows = search(cfg, ctx.run_dir)
            return {"mode": "search", "runs": rows, "best": rows[0]}
        with progress.task("fine-tune", total=None) as bar:
            def on_step(step: int, loss: float) -> None:
                bar.advance()
                if ctx.on_train_step is not None:
                    ctx.on_train_step(step, loss)

            if cfg.compare_scratch:
                results = compare_scratch(cfg, ctx.run_dir, on_step=on_step)
                return {"mode": "compare_scratch", **{name: _scores(r) for name, r in results.items()}}
            return {"mode": "single", **_scores(finetune(cfg, ctx.run_dir, on_step=on_step))}


def _scores(result: Any) -> dict[str, Any]:
    return {"val": result.val, "test": result.test, "steps": result.steps}


class AugmentStep(Step):
    """Augment the training split of a labelled task into RUN/augmented.jsonl."""

    name = "augment"
    Config = AugmentTaskConfig

    def writes(self) -> list[str]:
        return ["augmented.jsonl"]

    def run(self, ctx: StepContext) -> Summary:
        from lmforge.augment.task import run_augment

        with progress.task("augment", total=None):
            result = run_augment(self.config, ctx.run_dir)
        return {"file": result.path.relative_to(ctx.run_dir).as_posix(), **result.stats}


class LabelConfig(StrictModel):
    """The `label:` section (and `lmforge label split`): labelled texts to a leakage-free dataset in RUN.

    With `lfs`, the texts are first labelled weakly by labelling functions (RUN/weak.jsonl); then
    train/val/test splits (near-duplicates kept on one side) and optional folds are written.
    """

    source: str = Field(description="labelled or unlabelled texts (JSONL, CSV, Label Studio JSON) or builtin:NAME")
    lfs: str | None = Field(None, description="labelling functions (a YAML file or a built-in set): weak-label first")
    method: Literal["label_model", "majority"] = "label_model"
    kind: Literal["classification", "ner", "instruction"] | None = Field(None, description="[default: detected]")
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    folds: int = Field(0, ge=0, description="k >= 2 also writes fold-0..k-1 of train + val")
    format: Literal["jsonl", "csv", "hf"] = "jsonl"
    near_duplicates: bool = Field(True, description="keep near-duplicate texts in the same split")
    text_field: str = "text"
    label_field: str = "label"


class LabelStep(Step):
    name = "label"
    Config = LabelConfig

    def writes(self) -> list[str]:
        return ["task.json"] + (["weak.jsonl"] if self.config.lfs else [])

    def run(self, ctx: StepContext) -> Summary:
        from lmforge.evaluate.report import jsonable
        from lmforge.label.commands import split_source, weak_label_source

        cfg = self.config
        source = _data_arg(cfg.source, ctx)
        summary: dict[str, Any] = {}
        if cfg.lfs is not None:
            lfs = str(ctx.base_dir / cfg.lfs) if cfg.lfs.endswith((".yaml", ".yml")) else cfg.lfs  # or a built-in set
            weak = weak_label_source(source, lfs, cfg.method, out=ctx.path("weak.jsonl"))
            summary["weak"] = jsonable({"texts": len(weak.items), "labelled": weak.written, **weak.result.metrics,
                                        "functions": weak.result.summary})
            source = str(ctx.path("weak.jsonl"))
        with progress.task("label: split", total=None):
            result = split_source(source, ctx.run_dir, kind=cfg.kind, val=cfg.val, test=cfg.test, seed=cfg.seed,
                                  folds=cfg.folds, fmt=cfg.format, near_duplicates=cfg.near_duplicates,
                                  text_field=cfg.text_field, label_field=cfg.label_field)
        return {**summary, "dataset": jsonable(result.info), "folds": result.folds}


class EvaluateConfig(StrictModel):
    """The `evaluate:` section (and `lmforge evaluate`): a model scored on labelled data or text."""

    model: str = Field(description="fine-tuned model directory, lmforge checkpoint or HF causal LM directory")
    data: str = Field(description="labelled file, builtin:NAME, text/JSONL/run directory for perplexity, or "
                                  "multiple-choice questions (C-Eval/CMMLU/MMLU files, builtin:choice) for choice")
    metrics: Literal["auto", "perplexity", "choice"] = Field(
        "auto", description="auto: the task's metrics; perplexity; or choice: multiple-choice accuracy")
    tokenizer: str | None = Field(None, description="tokenizer directory [default: the model's own]")
    max_docs: int = Field(2000, gt=0, description="perplexity: documents to score at most")
    shots: int = Field(0, ge=0, le=25, description="choice: solved examples before each question")
    choice_scoring: Literal["letter", "text"] = Field(
        "letter", description="choice: log P of the answer letter, or of each option's full text (cloze)")
    device: str = Field("auto", description="choice: auto, cpu, cuda or cuda:N")
    batch_size: int = Field(8, gt=0, description="choice: sequences per forward pass")
    seed: int = Field(0, description="choice: draws the solved examples of subjects without a dev split")
    on_error: Literal["raise", "skip"] = Field("raise", description="choice: a bad row stops the run, or is skipped")


class EvaluateStep(Step):
    """Scores into RUN/report.json and report.md, the summary holding the same numbers."""

    name = "evaluate"
    Config = EvaluateConfig

    def writes(self) -> list[str]:
        return ["report.json", "report.md"] + (["predictions.jsonl"] if self.config.metrics == "choice" else [])

    def run(self, ctx: StepContext) -> Summary:
        from lmforge.evaluate.report import jsonable, write_report
        from lmforge.finetune.evaluate import evaluate_model

        cfg = self.config
        tokenizer = ctx.base_dir / cfg.tokenizer if cfg.tokenizer else None
        if cfg.metrics == "choice":
            from lmforge.evaluate.choice import evaluate_choice

            result = evaluate_choice(ctx.base_dir / cfg.model, _data_arg(cfg.data, ctx), tokenizer=tokenizer,
                                     shots=cfg.shots, scoring=cfg.choice_scoring, device=cfg.device,
                                     batch_size=cfg.batch_size, seed=cfg.seed, on_error=cfg.on_error,
                                     predictions=ctx.path("predictions.jsonl"))
        else:
            with progress.task(f"evaluate: {cfg.model}", total=None):
                result = evaluate_model(ctx.base_dir / cfg.model, _data_arg(cfg.data, ctx), cfg.metrics, tokenizer,
                                        cfg.max_docs)
        write_report(ctx.path("report"), result, title=f"{cfg.model} on {cfg.data}")
        return {"file": "report.json", "results": jsonable(result)}


def _data_arg(data: str, ctx: StepContext) -> str:
    """`builtin:NAME` as given; a path relative to the recipe's directory."""
    return data if data.startswith("builtin:") else str(ctx.base_dir / data)


class ReportConfig(StrictModel):
    """The `report:` section: the run's one HTML page (always written; this only tunes it)."""

    enabled: bool = Field(True, description="false: no report.html (e.g. a run that only feeds another)")


class ReportStep(Step):
    """RUN/report.html from what the run holds; redone whenever an earlier step ran. Never fails the run."""

    name = "report"
    Config = ReportConfig
    cached = False

    def writes(self) -> list[str]:
        return ["report.html"] if self.config.enabled else []

    def run(self, ctx: StepContext) -> Summary:
        if not self.config.enabled:
            return {"file": None}
        from lmforge.report import write_report_safely

        path = write_report_safely(ctx.run_dir)
        return {"file": path.relative_to(ctx.run_dir).as_posix() if path is not None else None}
