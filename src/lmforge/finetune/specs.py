"""One `TaskSpec` per task kind: how its examples are encoded, what loss trains it, what validation
measures, and how test predictions are scored and written.

Everything that differs between classification, NER and instruction tuning is here, so the
runner and the evaluator ask the spec instead of branching on the kind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lmforge.errors import UserError
from lmforge.finetune import tasks
from lmforge.tasks.examples import Example, TaskData
from lmforge.train.evaluation import ValidationMetrics
from lmforge.train.objectives import BatchSource, Objective

log = logging.getLogger(__name__)


@dataclass
class TrainerParts:
    """What a spec hands the Trainer: the loss, the batches, the rows per epoch, and facts for the report."""

    objective: Objective
    train: BatchSource
    val: BatchSource
    rows: int
    facts: dict[str, Any] = field(default_factory=dict)
    test: BatchSource | None = None  # scored after training by the objective (preference pairs)


class TaskSpec:
    kind: ClassVar[str]
    generative: ClassVar[bool] = False  # scored by generation and perplexity, not by predicted labels

    def trainer_parts(self, cfg, data: TaskData, tokenizer, model: torch.nn.Module, out: Path) -> TrainerParts:
        """Encoded examples in padded batches; the chat kinds pack, pair and precompute instead."""
        train, val = (self.encode(rows, tokenizer, data.labels, cfg.seq_len) for rows in (data.train, data.val))
        return TrainerParts(self.objective(data, cfg.class_weights),
                            tasks.ExampleSource(train, cfg.batch_size, cfg.seed),
                            tasks.ExampleSource(val, cfg.batch_size, cfg.seed, shuffle=False), len(train))

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

    def whole(self, examples: Sequence[Example], gold: list, pred: list, labels: list[str]) -> tuple[list, list]:
        """Gold and predicted labels of whole examples, for test scores (a tagger's are cut at seq_len)."""
        return gold, pred


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
        if class_weights:  # inverse-frequency tag weights cut test F1 from 0.32 to 0.14 on the built-in task
            log.warning("finetune.class_weights applies to classification only; ner trains unweighted")
        return tasks.TokenClassification()

    def score(self, gold, pred, labels):
        return tasks.ner_metrics(gold, pred, labels)

    def report(self, gold, pred, labels):
        from lmforge.evaluate import ner_report

        return ner_report([[labels[t] for t in r] for r in gold], [[labels[t] for t in r] for r in pred])

    def prediction_rows(self, examples, gold, pred, labels):
        # tags of the first piece of each word (after `whole`, O predicted for the words past seq_len)
        return [{"tokens": e.tokens[: len(g)], "gold": [labels[t] for t in g], "pred": [labels[t] for t in p]}
                for e, g, p in zip(examples, gold, pred, strict=True)]

    def whole(self, examples, gold, pred, labels):
        # The words past seq_len were never tagged: predicted O, so their entities count as missed,
        # as they would for any tagger that reads whole sentences (the CRF baseline does).
        if "O" not in labels:
            return gold, pred
        index = {tag: i for i, tag in enumerate(labels)}
        return ([g + [index[t] for t in e.tags[len(g):]] for e, g in zip(examples, gold, strict=True)],
                [p + [index["O"]] * (len(e.tags) - len(p)) for e, p in zip(examples, pred, strict=True)])


class InstructionSpec(TaskSpec):
    kind = "instruction"
    generative = True

    def encode(self, examples, tokenizer, labels, max_len):
        return tasks.encode_instructions(examples, tokenizer, max_len)

    def objective(self, data, class_weights):
        return tasks.ResponseLM()

    def metrics(self, source, labels, device):
        return None


def chat_encoder(tokenizer):
    """The server's chat encoder for the tokenizer's directory (see finetune.chat_data)."""
    from lmforge.tokenize.chat import chat_encoder_for

    return chat_encoder_for(tokenizer.name_or_path)


class ConversationSpec(TaskSpec):
    """Multi-turn chat tuning: every assistant turn learned, conversations packed (config `chat`)."""

    kind = "conversation"
    generative = True

    def trainer_parts(self, cfg, data, tokenizer, model, out):
        from lmforge.finetune.chat_data import ChatLM, ChatSource, encode_conversations
        from lmforge.models.protocols import is_hf_model

        fused = not is_hf_model(model)
        if cfg.chat.packing and not fused:
            raise UserError("finetune.chat.packing: packing needs a model lmforge runs itself (its checkpoints and "
                            "the Llama/Qwen/Mistral families); set chat.packing: false for this one")
        chat, pad = chat_encoder(tokenizer), tasks.pad_id_of(tokenizer)
        (train, stats), (val, _) = (encode_conversations(rows, chat, cfg.seq_len, pad) for rows in (data.train, data.val))
        sources = [ChatSource(enc, cfg.batch_size, cfg.seed, shuffle=shuffle, packed=cfg.chat.packing,
                              capacity=cfg.seq_len) for enc, shuffle in ((train, True), (val, False))]
        padding = {"unpacked": ChatSource(train, cfg.batch_size, cfg.seed, shuffle=False).padding()}
        if cfg.chat.packing:
            padding["packed"] = ChatSource(train, cfg.batch_size, cfg.seed, shuffle=False, packed=True,
                                           capacity=cfg.seq_len).padding()
        return TrainerParts(ChatLM(fused), sources[0], sources[1], len(sources[0].data),
                            {"encoding": stats.as_dict(), "padding": padding})

    def metrics(self, source, labels, device):
        return None


class PreferenceSpec(TaskSpec):
    """DPO, IPO, SimPO, ORPO (config `preference`), reference log-probabilities computed before training."""

    kind = "preference"
    generative = True

    def trainer_parts(self, cfg, data, tokenizer, model, out):
        from lmforge.finetune.chat_data import PairSource, encode_pairs
        from lmforge.finetune.preference import REFERENCE_FREE, PreferenceObjective

        chat, pad = chat_encoder(tokenizer), tasks.pad_id_of(tokenizer)
        encoded = {name: encode_pairs(rows, chat, cfg.seq_len, pad)
                   for name, rows in (("train", data.train), ("val", data.val), ("test", data.test)) if rows}
        sources = {name: PairSource(enc, cfg.batch_size, cfg.seed, shuffle=name == "train")
                   for name, (enc, _) in encoded.items()}
        if cfg.preference.loss not in REFERENCE_FREE:
            from lmforge.finetune.preference import reference_pass

            reference_pass(cfg, model, sources, out / "reference")
        from lmforge.models.protocols import is_hf_model

        return TrainerParts(PreferenceObjective(cfg.preference, not is_hf_model(model)), sources["train"], sources["val"],
                            len(sources["train"].data), {"encoding": encoded["train"][1].as_dict()},
                            test=sources.get("test"))

    def metrics(self, source, labels, device):
        return None


SPECS: dict[str, TaskSpec] = {s.kind: s for s in (ClassificationSpec(), NerSpec(), InstructionSpec(),
                                                   ConversationSpec(), PreferenceSpec())}


def spec_for(kind: str) -> TaskSpec:
    if kind not in SPECS:
        raise UserError(f"task kind must be one of {sorted(SPECS)} (got {kind!r})")
    return SPECS[kind]
