"""Report sections for training, fine-tuning, samples and configs (the data sections live in build.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmforge.records import read_json
from lmforge.report import plots, training
from lmforge.report.data import read_jsonl
from lmforge.report.html import Details, Figure, Grid, Section, Table, Text
from lmforge.report.run import Run


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "run"


def _val_series(log: training.TrainLog) -> dict[str, list[tuple[float, float]]]:
    """Validation losses to draw: the total, plus each objective when there are several (MLM + NSP)."""
    losses = {"val loss": log.val.get("loss", [])}
    terms = [k for k in log.val if k not in ("loss", "lm") and k in log.terms]
    if len(terms) > 1:
        losses.update({f"val {k}": log.val[k] for k in terms})
    return losses


def _curves(log: training.TrainLog, title: str, dense: list | None = None) -> list[Any]:
    """Loss/learning-rate and throughput figures of one training log."""
    train = [(float(s), float(v)) for s, v in dense] if dense else log.loss
    extra = log.terms if len(log.terms) > 1 else None
    blocks: list[Any] = []
    name = f"{title}: training and validation loss, learning rate"
    blocks.append(Figure(plots.loss_curves(train, _val_series(log), log.lr, name, extra), name,
                         "training loss at every step" if dense else "training loss at each logged step"))
    if log.tokens_per_s:
        name = f"{title}: throughput" + (", MFU" if log.mfu else "") + " and gradient norm"
        caption = ("MFU: model FLOPs per second over the device's peak" if log.mfu else
                   "MFU not measured: the device's peak FLOP/s is unknown (CPU); pretrain.peak_tflops sets it")
        blocks.append(Figure(plots.throughput(log.tokens_per_s, log.mfu, log.grad_norm, name), name, caption))
    return blocks


def _mean(points: list[tuple[float, float]], skip_first: bool = True) -> float | None:
    values = [v for _, v in (points[1:] if skip_first and len(points) > 1 else points)]
    return sum(values) / len(values) if values else None


def pretrain_sections(run: Run) -> list[Section] | None:
    sections = []
    for path in training.find_logs(run.dir):
        if (path.parent / "report.json").is_file():
            continue  # a fine-tune: its own section
        log = training.read_log(run.dir, path)
        if not log.loss and not log.val:
            continue
        info = run.steps.get("pretrain") if path.parent == run.dir / "pretrain" else None
        dense = (info or {}).get("losses")
        title = "Pretraining" if info is not None or log.name == "pretrain" else f"Training ({log.name})"
        blocks = _curves(log, title, dense)
        val = log.val.get("loss", [])
        rows = [["steps", log.steps], ["tokens seen", log.tokens or None],
                ["train loss first → last", _arrow(log.loss)],
                ["validation loss first → last", _arrow(val)]]
        if info and info.get("val_ppl_after") is not None:
            rows.append(["validation perplexity before → after",
                         f"{info['val_ppl_before']:,.2f} → {info['val_ppl_after']:,.2f}"])
        elif val and (run.config.get("pretrain") or {}).get("arch", "gpt") == "gpt" and "lm" in log.val:
            rows.append(["validation perplexity first → last", _arrow([(s, math.exp(v)) for s, v in val])])
        tps = (info or {}).get("tokens_per_second") or _mean(log.tokens_per_s)
        rows += [["tokens / s (training steps)", tps],
                 ["MFU (mean)", _mean(log.mfu) if log.mfu else "not measured"],
                 ["wall time (s)", (info or {}).get("seconds") or log.elapsed]]
        if info:
            rows += [["resumed from step", info.get("resumed_from")], ["stopped early", info.get("stopped_early")],
                     ["checkpoint", info.get("checkpoint")]]
        blocks.append(Table(["", ""], rows, kv=True))
        sections.append(Section(_slug(f"train-{log.name}"), title, blocks))
    return sections or None


def _arrow(points: list[tuple[float, float]]) -> str | None:
    return f"{points[0][1]:.4g} → {points[-1][1]:.4g}" if points else None


# --------------------------------------------------------------------------- fine-tuning


def _metric_rows(report: dict[str, Any]) -> list[list[Any]]:
    names = list(dict.fromkeys([*(report.get("val") or {}), *(report.get("test") or {})]))
    return [[n, (report.get("val") or {}).get(n), (report.get("test") or {}).get(n)] for n in names]


def _evaluation_blocks(name: str, ev: training.Evaluation) -> list[Any]:
    what = "entity type" if ev.kind == "ner" else "class"
    title = f"{name}: confusion matrix (test" + (", per tag)" if ev.kind == "ner" else ")")
    blocks: list[Any] = [Figure(plots.confusion(ev.labels, ev.matrix, title), title,
                                "rows: true labels, columns: predicted; colour: share of the true class")]
    labels = list(ev.per_class)
    title = f"{name}: F1 per {what} (test)"
    blocks.append(Figure(plots.bars(labels, [ev.per_class[k]["f1"] for k in labels], title, "F1", fmt="{:.3f}",
                                    xmax=1.12),
                         title))
    rows = [[k, v["precision"], v["recall"], v["f1"], v["support"]] for k, v in ev.per_class.items()]
    blocks.append(Table([what, "precision", "recall", "F1", "support"], rows,
                        caption="test set, " + ", ".join(f"{k} {_short(v)}" for k, v in ev.summary.items())))
    if ev.examples:
        header = ["tokens/tags (→ predicted)", "", "errors"] if ev.kind == "ner" else ["text", "gold", "predicted"]
        blocks.append(Details("Test examples (errors first)",
                              [Table(header, [[e["text"], e["gold"], e["pred"]] for e in ev.examples], wide_text=True)]))
    return blocks


def _short(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def _padding(padding: dict[str, Any] | None) -> str | None:
    """Conversation tuning's padding share, packed against one conversation per row."""
    if not padding:
        return None
    return " / ".join(f"{padding[k]['padding']:.1%} {k}" for k in ("packed", "unpacked") if k in padding)


def finetune_sections(run: Run) -> list[Section] | None:
    sections = []
    for path in training.find_logs(run.dir):
        log = training.read_log(run.dir, path)
        ft = training.read_finetune(run.dir, log)
        if ft is None:
            continue
        name = f"Fine-tuning: {ft.name}"
        r = ft.report
        meta = r.get("data") or {}
        facts = [["task", r.get("task")], ["data", meta.get("name")], ["source", meta.get("source")],
                 ["license", meta.get("license")],
                 ["examples (train / val / test)", " / ".join(f"{v:,}" for v in (r.get("sizes") or {}).values())],
                 ["labels", ", ".join(map(str, ft.task.get("labels") or [])) or None], ["steps", r.get("steps")],
                 ["stopped early", r.get("stopped_early")], ["seconds", r.get("seconds")],
                 ["training examples / s", r.get("train_examples_per_second")],
                 ["training tokens / s", r.get("train_tokens_per_second")], ["padding", _padding(r.get("padding"))],
                 ["dropped in encoding", (r.get("encoding") or {}).get("dropped")]]
        blocks: list[Any] = [Grid([Table(["", ""], [f for f in facts if f[1] is not None], kv=True),
                                   Table(["metric", "validation (best)", "test"], _metric_rows(r))])]
        blocks += _curves(log, ft.name)[:1]
        scores = {k: v for k, v in log.val.items() if k != "loss"}
        if scores:
            title = f"{ft.name}: validation metrics"
            blocks.append(Figure(plots.metric_curves(scores, title), title))
        if ft.evaluation is not None:
            blocks += _evaluation_blocks(ft.name, ft.evaluation)
        if ft.answers:
            rows = [[a.get("prompt", ""), a.get("reference", ""), a.get("answer", "")] for a in ft.answers[:12]]
            blocks.append(Table(["prompt", "reference", "generated answer"], rows, wide_text=True,
                                caption="greedy answers to test prompts"))
        sections.append(Section(_slug(f"ft-{ft.name}"), name, blocks))
    sections += _comparison_sections(run.dir)
    return sections or None


def _comparison_sections(run_dir: Path) -> list[Section]:
    """Pretrained-vs-scratch tables of the run and of fine-tunes one directory down (the demo's ft-*)."""
    out = []
    for where in [run_dir, *sorted(p for p in run_dir.iterdir() if p.is_dir())]:
        comparison = training.read_comparison(where)
        if not comparison:
            continue
        names = list(comparison)
        metrics = list(dict.fromkeys(k for v in comparison.values() for k in (v.get("test") or {})))
        rows = [[m, *((comparison[n].get("test") or {}).get(m) for n in names)] for m in metrics]
        if len(names) == 2:
            for row in rows:
                a, b = row[1], row[2]
                row.append(b - a if isinstance(a, int | float) and isinstance(b, int | float) else None)
        header = ["test metric", *names, *(["Δ (second − first)"] if len(names) == 2 else [])]
        title = "Pretrained vs from scratch" + ("" if where == run_dir else f": {where.name}")
        out.append(Section(_slug(f"comparison-{where.name}"), title, [Table(header, rows)]))
    search = training.read_search(run_dir)
    if search and search.get("runs"):
        runs = search["runs"]
        header = list(dict.fromkeys(k for row in runs for k in row))
        out.append(Section("search", "Hyperparameter search", [
            Text(f"Ranked by {search.get('selected_by', 'validation')}, best first."),
            Table(header, [[row.get(k) for k in header] for row in runs])]))
    return out


# --------------------------------------------------------------------------- samples and configs


def samples_section(run: Run) -> Section | None:
    path = run.dir / "samples.jsonl"
    samples = read_jsonl(path, limit=200) if path.is_file() else (run.steps.get("generate") or {}).get("samples")
    if not samples:
        return None
    gen = run.config.get("generate") or {}
    caption = ", ".join(f"{k} {gen[k]}" for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed") if k in gen)
    return Section("samples", "Generated samples", [
        Table(["prompt", "completion"], [[s.get("prompt", ""), s.get("completion", "")] for s in samples],
              wide_text=True, caption=caption)])


def evaluation_section(run: Run) -> Section | None:
    """An `lmforge evaluate` run: its figures, and one table per breakdown (subjects, languages, classes)."""
    path = run.dir / "report.json"
    if not (run.dir / "steps" / "evaluate.done").is_file() or not path.is_file():
        return None
    report = read_json(path)
    scalars = [[k, v] for k, v in report.items() if not isinstance(v, dict | list)]
    blocks: list[Any] = [Table(["", ""], scalars, kv=True)]
    for name, value in report.items():
        rows = value.items() if isinstance(value, dict) else ()
        if not rows or not all(isinstance(v, dict) for _, v in rows):
            continue
        columns = list(dict.fromkeys(c for _, v in rows for c in v if not isinstance(v[c], dict | list)))
        blocks.append(Table([name.rstrip("s") or name, *columns], [[k, *(v.get(c) for c in columns)] for k, v in rows],
                            caption=f"by {name.rstrip('s')}"))
    return Section("evaluation", "Evaluation", blocks)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config as dotted keys; lists of scalars stay whole, lists of mappings get an index."""
    if isinstance(value, dict):
        if not value and prefix:
            return [(prefix, {})]
        return [kv for k, v in value.items() for kv in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return [kv for i, v in enumerate(value) for kv in flatten(v, f"{prefix}[{i}]")]
    return [(prefix, value)]


def _config_table(config: dict[str, Any]) -> Grid:
    """One small table per nested section (top-level scalars together first), laid out side by side."""
    def nested(v: Any) -> bool:
        return bool(v) and (isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v)))

    tables = []
    scalars = [[k, v] for k, v in config.items() if not nested(v)]
    if scalars:
        tables.append(Table(["key", "value"], scalars, kv=True))
    for key, value in config.items():
        if nested(value):
            rows = [[k.removeprefix(key).removeprefix("."), v] for k, v in flatten(value, key)]
            tables.append(Table(["key", "value"], rows, caption=key, kv=True))
    return Grid(tables)


def configs_section(run: Run) -> Section | None:
    blocks: list[Any] = []
    if run.config:
        blocks.append(Details("Recipe, fully resolved (config.yaml)", [_config_table(run.config)], open=True))
    model = run.dir / "pretrain" / "checkpoint" / "config.json"
    if model.is_file():
        blocks.append(Details("Model (pretrain/checkpoint/config.json)",
                              [_config_table({k: v for k, v in read_json(model).items() if k != "extra"})]))
    tok = run.dir / "tokenizer" / "lmforge_tokenizer.json"
    if tok.is_file():
        blocks.append(Details("Tokenizer (tokenizer/lmforge_tokenizer.json)", [_config_table(read_json(tok))]))
    for path in training.find_logs(run.dir):
        config = training.saved_config(path.parent)
        if config:
            name = path.parent.relative_to(run.dir).as_posix()
            blocks.append(Details(f"Fine-tuning {name if name != '.' else run.dir.name} (finetune.json)",
                                  [_config_table(config)]))
    if not blocks:
        return None
    return Section("configs", "Configs", blocks)
