"""Fine-tune one model on one labelled task, pick the best validation checkpoint, score it on the test split.

`finetune(cfg, out)` leaves in `out/`:
  task/             the exact train/val/test examples used (JSONL + task.json)
  log.jsonl         training loss and validation loss + task metric at every evaluation
  best/             the model at its best validation metric (LoRA adapters merged), with tokenizer
  report.json/.md   validation and test metrics of the best model
`compare_scratch(cfg, out)` does it twice, pretrained and from scratch. The other jobs live beside
this runner: the data (`task_data`), what differs per task kind (`specs`), LoRA (`lora`), test
scoring (`evaluate`) and grid search (`search`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import InputError, UserError
from lmforge.finetune.config import FinetuneConfig
from lmforge.finetune.specs import TaskSpec, spec_for
from lmforge.finetune.task_data import load_task_data
from lmforge.tasks.examples import TaskData

log = logging.getLogger(__name__)

__all__ = ["FinetuneResult", "TaskModelExport", "compare_scratch", "finetune", "load_task_data", "load_tokenizer"]


@dataclass
class FinetuneResult:
    out_dir: Path
    best_dir: Path
    val: dict[str, float]
    test: dict[str, float]
    steps: int
    seconds: float
    examples_per_second: float  # training examples over the time of the optimizer steps
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


@dataclass
class TaskModelExport:
    """Writes the trainer's best and final models as fine-tuned task models (with the tokenizer)."""

    info: dict[str, Any]
    tokenizer: Any

    def save(self, model: torch.nn.Module, path: Path, extra: dict[str, Any]) -> None:
        from lmforge.models.heads import save_task_model

        save_task_model(model, path, {**self.info, **{k: v for k, v in extra.items() if k != "config"}}, self.tokenizer)


def load_tokenizer(cfg: FinetuneConfig):
    """The transformers tokenizer given, or the one the model source resolves to (see models.source)."""
    from transformers import AutoTokenizer

    if cfg.model.tokenizer:
        path = Path(cfg.model.tokenizer)
    elif cfg.model.source:
        from lmforge.models.source import resolve_source

        path = resolve_source(cfg.model.source).require_tokenizer("give finetune.model.tokenizer (its directory)")
    else:
        raise UserError("finetune.model.tokenizer: a model trained from scratch needs a tokenizer directory")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the tokenizer at {path}: {exc}") from None


def _scratch_backbone(cfg: FinetuneConfig, vocab_size: int, pad_id: int) -> torch.nn.Module:
    from lmforge.train.config import PretrainConfig
    from lmforge.train.pretrain import build_model

    pcfg = PretrainConfig(arch=cfg.model.arch, model=cfg.model.pretrain_model().model_dump(exclude_none=True),
                          seq_len=cfg.seq_len, seed=cfg.seed)
    return build_model(pcfg, vocab_size, pad_id=pad_id if cfg.model.arch == "bert" else None)


def _build_model(cfg: FinetuneConfig, labels: list[str], tokenizer) -> torch.nn.Module:
    from lmforge.finetune import tasks
    from lmforge.finetune.heads import build_task_model

    torch.manual_seed(cfg.seed)
    scratch = None if cfg.model.source else _scratch_backbone(cfg, len(tokenizer), tasks.pad_id_of(tokenizer))
    kind = "instruction" if cfg.task in ("conversation", "preference") else cfg.task  # a causal LM either way
    model = build_task_model(kind, cfg.model.source, labels, cfg.head.dropout, scratch,
                             fresh=cfg.model.init == "scratch", pool=cfg.head.pool, window=cfg.head.window,
                             crf=cfg.head.crf)
    if cfg.lora is not None:
        from lmforge.finetune.lora import apply_lora

        model = apply_lora(model, cfg.lora)
    return model


def _train_config(cfg: FinetuneConfig, n_train: int, val_batches: int) -> FinetuneConfig:
    """Steps from epochs, five evaluations per run unless set, each one over the whole validation split."""
    steps = cfg.steps if cfg.epochs is None else max(1, math.ceil(
        cfg.epochs * n_train / (cfg.batch_size * cfg.grad_accum)))
    eval_every = cfg.eval_every if cfg.eval_every is not None else max(1, steps // 5)
    return cfg.model_copy(update={"steps": steps, "eval_batches": val_batches, "eval_every": eval_every,
                                  "warmup_steps": min(cfg.warmup_steps, steps // 2)})


def _trainer(cfg: FinetuneConfig, spec: TaskSpec, data: TaskData, tokenizer, out: Path,
             on_step: Callable[[int, float], None] | None):
    from lmforge.train.evaluation import Selection, ValidationPolicy
    from lmforge.train.trainer import Trainer

    model = _build_model(cfg, data.labels, tokenizer)
    parts = spec.trainer_parts(cfg, data, tokenizer, model, out)
    tcfg = _train_config(cfg, parts.rows, parts.val.num_batches)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    policy = ValidationPolicy(metrics=spec.metrics(parts.val, data.labels, device), select=Selection(*cfg.selection()),
                              keep_best=True)
    kind = "instruction" if spec.generative else cfg.task  # chat-tuned models load and serve as causal LMs
    info = {"kind": kind, "trained_as": cfg.task, "labels": data.labels,
            "config": cfg.model_dump(mode="json", by_alias=True)}
    trainer = Trainer(model, parts.objective, parts.train, tcfg, out, val_source=parts.val, on_step=on_step,
                      policy=policy, export=TaskModelExport(info, tokenizer))
    return trainer, parts


def finetune(cfg: FinetuneConfig, out_dir: str | Path, on_step: Callable[[int, float], None] | None = None,
             data: TaskData | None = None) -> FinetuneResult:
    from lmforge.evaluate.report import write_report
    from lmforge.finetune.evaluate import evaluate_saved

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data or load_task_data(cfg)
    data.save(out / "task")
    tokenizer = load_tokenizer(cfg)
    trainer, parts = _trainer(cfg, spec_for(cfg.task), data, tokenizer, out, on_step)
    result = trainer.fit()
    best_val = _best(result.val_losses, cfg.selection())
    test = evaluate_saved(out / "best", data, cfg, tokenizer, predictions=out / "test_predictions.jsonl",
                          pairs=parts.test) if data.test else {}
    seconds = time.perf_counter() - t0
    examples_per_second = result.steps * cfg.batch_size * cfg.grad_accum / max(result.train_seconds, 1e-9)
    report = {"task": cfg.task, "data": data.meta, "sizes": {k: len(v) for k, v in data.splits().items()},
              "steps": result.steps, "stopped_early": result.stopped_early, "val": best_val, "test": test,
              "seconds": round(seconds, 2), "train_examples_per_second": round(examples_per_second, 1),
              "train_tokens_per_second": round(result.tokens_per_second, 1), **parts.facts}
    write_report(out / "report", report, title=f"fine-tuning: {cfg.task}")
    return FinetuneResult(out, out / "best", best_val, test, result.steps, seconds, examples_per_second,
                          result.val_losses)


def _best(history: list[tuple[int, dict[str, float]]], selection: tuple[str, str]) -> dict[str, float]:
    key, mode = selection
    pick = max if mode == "max" else min
    return dict(pick(history, key=lambda item: item[1][key])[1]) if history else {}


def compare_scratch(cfg: FinetuneConfig, out_dir: str | Path,
                    on_step: Callable[[int, float], None] | None = None) -> dict[str, FinetuneResult]:
    """Fine-tune the pretrained model and the same architecture from scratch on the same data; compare."""
    from lmforge.evaluate.report import compare_table
    from lmforge.records import write_json_atomic

    if not cfg.model.source:
        raise UserError("finetune.compare_scratch needs model.from: the pretrained model to compare against")
    out = Path(out_dir)
    data = load_task_data(cfg)
    results = {}
    for name, init in (("pretrained", "pretrained"), ("scratch", "scratch")):
        run_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"init": init})})
        results[name] = finetune(run_cfg, out / name, on_step=on_step, data=data)
    table = compare_table({f"{name} (test)": r.test for name, r in results.items()})
    (out / "comparison.md").write_text(f"# pretrained then fine-tuned vs from scratch\n\n{table}\n", encoding="utf-8")
    write_json_atomic(out / "comparison.json", {name: {"val": r.val, "test": r.test, "steps": r.steps}
                                                for name, r in results.items()})
    return results
