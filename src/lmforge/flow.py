"""Run a whole recipe in one run directory: data pipeline, tokenizer, pretraining, samples.

Each step leaves a completion marker, so re-running the same recipe on the same run
directory resumes at the first unfinished step (and, inside the data pipeline, at the
first unfinished shard).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge import progress
from lmforge.config import load_yaml_file
from lmforge.errors import ConfigError, UserError
from lmforge.pipeline.executors import ExecutorConfig, make_executor
from lmforge.pipeline.runner import collect_stats, iter_output, run_pipeline
from lmforge.recipe import Recipe
from lmforge.records import atomic_path, read_json, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    stats: dict[str, Any]
    output_dir: Path
    steps: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None  # RUN/report.html, written at the end (None if it could not be)


def save_config(run_dir: Path, recipe: Recipe) -> None:
    """Save the resolved config; refuse to resume a run directory made by a different recipe.

    The executor may differ between attempts (it does not change the output).
    """
    resolved = recipe.resolved()
    path = run_dir / "config.yaml"
    if path.exists():
        previous = load_yaml_file(path, "run config") or {}
        ignore = {"executor", "name"}
        changed = sorted(k for k in set(previous) | set(resolved)
                         if k not in ignore and previous.get(k) != resolved.get(k))
        if changed:
            raise ConfigError(
                f"{run_dir} holds a run of a different recipe (differs in: {', '.join(changed)}); "
                "use another --out directory to start a new run"
            )
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), encoding="utf-8")


def write_stats(run_dir: Path, steps: dict[str, Any]) -> dict[str, Any]:
    stats = collect_stats(run_dir)
    stats["steps"] = steps
    write_json_atomic(run_dir / "stats.json", stats)
    return stats


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    base_dir: str | Path = ".",
    executor: ExecutorConfig | None = None,
    on_train_step: Callable[[int, float], None] | None = None,
) -> RunResult:
    run_dir, base_dir = Path(run_dir), Path(base_dir)
    if recipe.pretrain is not None and recipe.tokenizer is not None:
        from lmforge.train.config import check_model_size

        check_model_size(recipe.pretrain, recipe.tokenizer.vocab_size)  # before hours of data steps
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run_dir, recipe)
    with _log_to(run_dir / "logs" / "run.log"):
        result = _run_steps(recipe, run_dir, base_dir, executor, on_train_step)
        if distributed_rank() == 0:
            from lmforge.report import write_report_safely

            result.report = write_report_safely(run_dir)
        return result


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Append this attempt's log lines to the run's own log file (every attempt, resumed ones too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("lmforge")
    previous = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def _run_steps(recipe: Recipe, run_dir: Path, base_dir: Path, executor: ExecutorConfig | None,
               on_train_step: Callable[[int, float], None] | None) -> RunResult:
    log.info("run %s: recipe %s", run_dir, recipe.name)
    if recipe.input is None:
        raise ConfigError(f"recipe {recipe.name} has no 'input' section; a fine-tuning recipe runs with `lmforge finetune`")
    if distributed_rank() > 0:
        return _follow(recipe, run_dir, on_train_step)
    ex = make_executor(executor or recipe.executor)
    try:
        output_dir = run_pipeline(run_dir, recipe.input, recipe.stage_specs(), ex, base_dir)
    finally:
        ex.close()
    steps: dict[str, Any] = {}
    stats = write_stats(run_dir, steps)
    if recipe.tokenizer is not None:
        steps["tokenizer"] = _tokenizer_step(recipe, run_dir, output_dir)
        stats = write_stats(run_dir, steps)
    if recipe.pretrain is not None:
        if recipe.tokenizer is None:
            raise ConfigError("pretrain: needs a 'tokenizer' step in the same recipe")
        if recipe.pretrain.arch == "gpt":
            steps["tokens"] = _tokens_step(recipe, run_dir, output_dir)
        _write_ready(run_dir, output_dir)
        steps["pretrain"] = _pretrain_step(recipe, run_dir, output_dir, on_train_step)
        stats = write_stats(run_dir, steps)
    if recipe.generate is not None:
        if "pretrain" not in steps:
            raise ConfigError("generate: needs a 'pretrain' step in the same recipe")
        if recipe.pretrain.arch != "gpt":
            raise ConfigError("generate: needs a GPT (pretrain.arch: gpt); a BERT encoder does not generate text")
        steps["generate"] = _generate_step(recipe, run_dir)
        stats = write_stats(run_dir, steps)
    return RunResult(run_dir, stats, output_dir, steps)


READY = "pretrain-data.ready"


def _write_ready(run_dir: Path, output_dir: Path) -> None:
    """Tell the other torchrun processes that the data is prepared (rank 0 prepares it alone)."""
    write_json_atomic(run_dir / READY, {"output_dir": str(output_dir.relative_to(run_dir))})


def _follow(recipe: Recipe, run_dir: Path, on_train_step) -> RunResult:
    """Ranks > 0: wait for rank 0's data, then join the training (every rank must run the trainer)."""
    if recipe.pretrain is None:
        raise ConfigError("only pretraining runs under torchrun; run data steps with a single process")
    ready = run_dir / READY
    deadline = time.monotonic() + float(os.environ.get("LMFORGE_DATA_WAIT_S", 3600))
    while not ready.exists():
        if time.monotonic() > deadline:
            raise UserError(f"rank {distributed_rank()}: rank 0 did not prepare the data ({ready} never appeared)")
        time.sleep(0.5)
    output_dir = run_dir / read_json(ready)["output_dir"]
    steps = {"pretrain": _pretrain_step(recipe, run_dir, output_dir, on_train_step)}
    return RunResult(run_dir, {}, output_dir, steps)


def collect(source: str, config: dict[str, Any], run_dir: str | Path, shard_size: int = 500,
            base_dir: str | Path = ".") -> RunResult:
    """Read one source into `run_dir/stages/00-input` (what `lmforge collect` does)."""
    from lmforge.recipe import parse_recipe

    recipe = parse_recipe({"name": f"collect-{source}", "input": {source: config, "shard_size": shard_size}},
                          where=f"collect {source}")
    return run_recipe(recipe, run_dir, base_dir=base_dir)


# --------------------------------------------------------------------------- steps


def _cached(marker: Path) -> dict[str, Any] | None:
    return read_json(marker) if marker.exists() else None


def distributed_rank() -> int:
    return int(os.environ.get("RANK", 0))


def _tokenizer_step(recipe: Recipe, run_dir: Path, output_dir: Path) -> dict[str, Any]:
    from lmforge.tokenize.bpe import train_tokenizer
    from lmforge.tokenize.shards import in_holdout

    tok_dir = run_dir / "tokenizer"
    marker = tok_dir / "step.done"
    if (cached := _cached(marker)) is not None:
        return cached
    percent = recipe.pretrain.val_percent if recipe.pretrain else 0.0
    t0 = time.perf_counter()
    texts = (r.text for r in iter_output(output_dir) if not in_holdout(r.id, percent))
    with progress.task("tokenizer: train", total=1) as bar:
        train_tokenizer(texts, recipe.tokenizer, tok_dir)
        bar.advance()
    info = {"dir": "tokenizer", "vocab_size": recipe.tokenizer.vocab_size, "seconds": round(time.perf_counter() - t0, 2)}
    write_json_atomic(marker, info)
    return info


def _tokens_step(recipe: Recipe, run_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Encode the corpus into train/ and val/ token shards (in parallel, resumable per shard)."""
    from lmforge.tokenize.shards import encode_shards

    tokens_dir = run_dir / "tokens"
    marker = tokens_dir / "step.done"
    if (cached := _cached(marker)) is not None:
        return cached
    t0 = time.perf_counter()
    percent = recipe.pretrain.val_percent
    info: dict[str, Any] = {"documents": {}}
    ex = make_executor(recipe.executor)
    try:
        for split in ("train", "val"):
            manifest = encode_shards(output_dir, run_dir / "tokenizer", tokens_dir / split, ex,
                                     holdout=(percent, split))
            info["documents"][split] = manifest["documents"]
            info[f"{split}_tokens"] = manifest["tokens"]
            if split == "train":
                info["chars_per_token"] = round(manifest["chars"] / max(1, manifest["tokens"]), 3)
    finally:
        ex.close()
    if not info["documents"]["val"]:
        raise UserError(f"pretrain.val_percent={percent} held out no documents; raise it or add data")
    info["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(marker, info)
    return info


def _split_texts(output_dir: Path, percent: float) -> tuple[list[str], list[str]]:
    from lmforge.tokenize.shards import in_holdout

    train, val = [], []
    for r in iter_output(output_dir):
        (val if in_holdout(r.id, percent) else train).append(r.text)
    if not val:
        raise UserError(f"pretrain.val_percent={percent} held out no documents; raise it or add data")
    return train, val


def _pretrain_step(recipe: Recipe, run_dir: Path, output_dir: Path, on_step) -> dict[str, Any]:
    from lmforge.tokenize.bpe import load_tokenizer
    from lmforge.tokenize.dataset import TokenDataset
    from lmforge.train.pretrain import pretrain, pretrain_bert

    cfg = recipe.pretrain
    out = run_dir / "pretrain"
    marker = out / "step.done"
    if (cached := _cached(marker)) is not None:
        return cached
    tok = load_tokenizer(run_dir / "tokenizer")
    with progress.task("pretrain", total=cfg.steps) as bar:

        def step_done(step: int, loss: float) -> None:
            bar.advance()
            if step % 10 == 0:
                bar.update(f"pretrain (loss {loss:.3f})")
            if on_step is not None:
                on_step(step, loss)

        if cfg.arch == "bert":
            train_texts, val_texts = _split_texts(output_dir, cfg.val_percent)
            result = pretrain_bert(cfg, train_texts, val_texts, run_dir / "tokenizer", out, on_step=step_done)
            val = {"val_before": result.val_before, "val_after": result.val_after}
        else:
            ppl = pretrain(cfg, TokenDataset(run_dir / "tokens" / "train"), TokenDataset(run_dir / "tokens" / "val"),
                           vocab_size=tok.get_vocab_size(), out_dir=out, on_step=step_done)
            result = ppl.train
            val = {"val_ppl_before": round(ppl.val_ppl_before, 3), "val_ppl_after": round(ppl.val_ppl_after, 3)}
    losses = result.train_losses
    info = {
        "arch": cfg.arch,
        "checkpoint": str(result.checkpoint.relative_to(run_dir)),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "stopped_early": result.stopped_early,
        "first_loss": round(losses[0][1], 4) if losses else None,
        "last_loss": round(losses[-1][1], 4) if losses else None,
        "losses": [[s, round(v, 4)] for s, v in losses],
        **val,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "seconds": round(result.seconds, 2),
    }
    if distributed_rank() == 0:
        write_json_atomic(marker, info)
    return info


def _generate_step(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    from lmforge.serve.generate import generate, load_for_generation
    from lmforge.serve.sampling import SamplingParams

    cfg = recipe.generate
    model, tok = load_for_generation(run_dir / "pretrain" / "checkpoint", run_dir / "tokenizer")
    gen = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                         top_k=cfg.top_k or 0, top_p=cfg.top_p, seed=cfg.seed)
    outputs = generate(model, tok, cfg.prompts, gen)
    samples = [{"prompt": p, "completion": c} for p, c in zip(cfg.prompts, outputs, strict=True)]
    with atomic_path(run_dir / "samples.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    return {"file": "samples.jsonl", "samples": samples}
