"""What the report reads about training: the trainer's log.jsonl, fine-tuning results and test predictions.

Every training run (pretraining, each fine-tune, each point of a grid search) leaves a
`log.jsonl` in its own directory: training records (loss, per-objective terms, learning rate,
gradient norm, tokens/s, MFU) every `log_every` steps and validation records at each
evaluation. Fine-tunes add `report.json`, `task/task.json` and `test_predictions.jsonl`, from
which the confusion matrix and per-class scores are computed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.records import read_json
from lmforge.report.data import read_jsonl

SKIP_DIRS = {"stages", "tokens", "checkpoints", "tensorboard", "task", "best", "checkpoint", "logs", "tokenizer"}
MAX_LOG_LINES = 1_000_000


@dataclass
class TrainLog:
    """One training run's curves, as (step, value) pairs."""

    name: str  # directory relative to the run directory ("pretrain", "pretrained", "." ...)
    path: Path
    loss: list[tuple[float, float]] = field(default_factory=list)
    terms: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    lr: list[tuple[float, float]] = field(default_factory=list)
    grad_norm: list[tuple[float, float]] = field(default_factory=list)
    tokens_per_s: list[tuple[float, float]] = field(default_factory=list)
    mfu: list[tuple[float, float]] = field(default_factory=list)
    val: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    tokens: int = 0
    elapsed: float = 0.0

    @property
    def steps(self) -> int:
        return int(self.loss[-1][0]) if self.loss else 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def find_logs(run_dir: Path) -> list[Path]:
    """log.jsonl files of the run and of training runs up to two directories down, in name order."""
    found = []
    for pattern in ("log.jsonl", "*/log.jsonl", "*/*/log.jsonl"):
        for path in sorted(run_dir.glob(pattern)):
            parts = path.relative_to(run_dir).parts[:-1]
            if not any(p in SKIP_DIRS for p in parts) and path.is_file():
                found.append(path)
    return found


def read_log(run_dir: Path, path: Path) -> TrainLog:
    rel = path.parent.relative_to(run_dir).as_posix()
    out = TrainLog(name=rel if rel != "." else run_dir.name, path=path.parent)
    for row in read_jsonl(path, limit=MAX_LOG_LINES):
        step = _number(row.get("step"))
        if step is None:
            continue
        out.elapsed = max(out.elapsed, _number(row.get("elapsed")) or 0.0)
        if isinstance(row.get("val"), dict):
            for key, value in row["val"].items():
                if (v := _number(value)) is not None:
                    out.val.setdefault(key, []).append((step, v))
            continue
        if (loss := _number(row.get("loss"))) is None:
            continue
        out.loss.append((step, loss))
        for key, value in (row.get("terms") or {}).items():
            if (v := _number(value)) is not None:
                out.terms.setdefault(key, []).append((step, v))
        for name, series in (("lr", out.lr), ("grad_norm", out.grad_norm), ("tokens_per_s", out.tokens_per_s),
                             ("mfu", out.mfu)):
            if (v := _number(row.get(name))) is not None:
                series.append((step, v))
        out.tokens = int(_number(row.get("tokens")) or out.tokens)
    return out


# --------------------------------------------------------------------------- fine-tuning


@dataclass
class Evaluation:
    """Test-set scores computed from saved predictions."""

    kind: str
    labels: list[str]
    matrix: list[list[int]]
    per_class: dict[str, dict[str, float]]  # label or entity type -> precision, recall, f1, support
    summary: dict[str, float]
    examples: list[dict[str, Any]]  # a few test rows, wrong ones first


@dataclass
class FinetuneRun:
    name: str
    report: dict[str, Any]
    task: dict[str, Any]
    evaluation: Evaluation | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)  # instruction tuning: prompt, reference, answer
    config: dict[str, Any] | None = None


def read_finetune(run_dir: Path, log: TrainLog) -> FinetuneRun | None:
    d = log.path
    if not (d / "report.json").is_file():
        return None
    task = read_json(d / "task" / "task.json") if (d / "task" / "task.json").is_file() else {}
    report = read_json(d / "report.json")
    run = FinetuneRun(log.name, report, task)
    run.config = saved_config(d)
    predictions = d / "test_predictions.jsonl"
    if predictions.is_file():
        rows = read_jsonl(predictions)
        kind = report.get("task") or task.get("kind")
        if kind == "instruction":
            run.answers = rows
        elif rows:
            run.evaluation = evaluate_predictions(kind, rows, list(task.get("labels") or []))
    return run


def saved_config(d: Path) -> dict[str, Any] | None:
    """The fine-tuning config saved beside the model (best/ or checkpoint/finetune.json)."""
    for sub in ("best", "checkpoint"):
        if (d / sub / "finetune.json").is_file():
            return read_json(d / sub / "finetune.json").get("config")
    return None


def evaluate_predictions(kind: str, rows: list[dict[str, Any]], labels: list[str]) -> Evaluation | None:
    """Confusion matrix and per-class (or per-entity-type) scores from gold/pred pairs."""
    from lmforge.evaluate import classification_report, ner_report

    if kind == "classification":
        gold, pred = [str(r["gold"]) for r in rows], [str(r["pred"]) for r in rows]
        order = labels or None
        report = classification_report(gold, pred, labels=order)
        per_class = report["per_class"]
        summary = {"accuracy": report["accuracy"], "f1_macro": report["macro"]["f1"],
                   "f1_weighted": report["weighted"]["f1"], "examples": report["support"]}
        wrong = [r for r in rows if r["gold"] != r["pred"]]
        right = [r for r in rows if r["gold"] == r["pred"]]
        examples = [{"text": r.get("text", ""), "gold": r["gold"], "pred": r["pred"]} for r in (wrong + right)[:12]]
        return Evaluation(kind, [str(x) for x in report["labels"]], report["confusion_matrix"], per_class, summary,
                          examples)
    if kind == "ner":
        gold = [[str(t) for t in r["gold"]] for r in rows]
        pred = [[str(t) for t in r["pred"]] for r in rows]
        entities = ner_report(gold, pred)
        tags = classification_report([t for s in gold for t in s], [t for s in pred for t in s], labels=labels or None)
        summary = {"f1": entities["f1"], "precision": entities["precision"], "recall": entities["recall"],
                   "token_accuracy": entities["token_accuracy"], "sentences": len(rows)}
        wrong = [r for r in rows if r["gold"] != r["pred"]]
        examples = [{"text": " ".join(f"{w}/{g}" + (f"→{p}" if p != g else "")
                                      for w, g, p in zip(r.get("tokens") or ["?"] * len(r["gold"]), r["gold"],
                                                         r["pred"], strict=False)),
                     "gold": "", "pred": f"{sum(g != p for g, p in zip(r['gold'], r['pred'], strict=False))} wrong"}
                    for r in wrong[:8]]
        return Evaluation(kind, [str(x) for x in tags["labels"]], tags["confusion_matrix"], entities["per_type"],
                          summary, examples)
    return None


def read_comparison(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "comparison.json"
    return read_json(path) if path.is_file() else None


def read_search(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "search.json"
    return read_json(path) if path.is_file() else None
