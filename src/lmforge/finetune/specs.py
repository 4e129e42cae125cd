"""One `TaskSpec` per task kind: how its examples are encoded, what loss trains it, what validation
measures, and how test predictions are scored and written.

Everything that differs between classification, NER and instruction tuning is here, so the
runner and the evaluator ask the spec instead of branching on the kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from lmforge.errors import UserError
from lmforge.finetune import tasks
from lmforge.tasks.examples import Example, TaskData
from lmforge.train.evaluation import ValidationMetrics
from lmforge.train.objectives import Objective


class TaskSpec:
    kind: ClassVar[str]
    generative: ClassVar[bool] = False  # scored by generation and perplexity, not by predicted labels

    def encode(self, examples: Sequence[Example], tokenizer, labels: list[str], max_len: int) -> tasks.Encoded:
        raise NotImplementedError

    def objective(self, data: TaskData, class_weights: bool) -> Objective:
        raise NotImplementedError

    def metrics(self, source: tasks.ExampleSource, labels: list[str], device: torch.device) -> ValidationMetrics | None:
        """Task metrics measured with the validation loss; None when the loss is the metric."""
        return tasks.TaskMetrics(self.score, source, labels, device)

    def score(self, gold: list, pred: list, labels: list[str]) -> dict[str, float]:
        """The few numbers that select checkpoints and fill tables."""
        raise NotImplementedError

    def report(self, gold: list, pred: list, labels: list[str]) -> dict[str, Any]:
        """The full report of `lmforge evaluate` (per-class or per-entity figures)."""
        raise NotImplementedError

    def prediction_rows(self, examples: Sequence[Example], gold: list, pred: list,
                        labels: list[str]) -> list[dict[str, Any]]:
        """Each test example's gold and predicted labels, for the report's confusion matrix."""
        raise NotImplementedError


class ClassificationSpec(TaskSpec):
    kind = "classification"

    def encode(self, examples, tokenizer, labels, max_len):
        return tasks.encode_classification(examples, tokenizer, labels, max_len)

    def objective(self, data, class_weights):
        return tasks.Classification(data.class_weights() if class_weights else None)

    def score(self, gold, pred, labels):
        return tasks.classification_metrics(gold, pred, labels)

    def report(self, gold, pred, labels):
        from lmforge.evaluate import classification_report

        return classification_report([labels[g] for g in gold], [labels[p] for p in pred], labels=labels)

    def prediction_rows(self, examples, gold, pred, labels):
        return [{"text": e.text, "gold": labels[g], "pred": labels[p]} for e, g, p in zip(examples, gold, pred, strict=True)]


class NerSpec(TaskSpec):
    kind = "ner"

    def encode(self, examples, tokenizer, labels, max_len):
        return tasks.encode_ner(examples, tokenizer, labels, max_len)

    def objective(self, data, class_weights):
        return tasks.TokenClassification()

    def score(self, gold, pred, labels):
        return tasks.ner_metrics(gold, pred, labels)

    def report(self, gold, pred, labels):
        from lmforge.evaluate import ner_report

        return ner_report([[labels[t] for t in r] for r in gold], [[labels[t] for t in r] for r in pred])

    def prediction_rows(self, examples, gold, pred, labels):
        # tags of the first piece of each word, for the words that fit in seq_len
        return [{"tokens": e.tokens[: len(g)], "gold": [labels[t] for t in g], "pred": [labels[t] for t in p]}
                for e, g, p in zip(examples, gold, pred, strict=True)]


class InstructionSpec(TaskSpec):
    kind = "instruction"
    generative = True

    def encode(self, examples, tokenizer, labels, max_len):
        return tasks.encode_instructions(examples, tokenizer, max_len)

    def objective(self, data, class_weights):
        return tasks.ResponseLM()

    def metrics(self, source, labels, device):
        return None


SPECS: dict[str, TaskSpec] = {s.kind: s for s in (ClassificationSpec(), NerSpec(), InstructionSpec())}


def spec_for(kind: str) -> TaskSpec:
    if kind not in SPECS:
        raise UserError(f"task kind must be one of {sorted(SPECS)} (got {kind!r})")
    return SPECS[kind]
