"""Run a whole recipe in one run directory: data pipeline, tokenizer, pretraining, samples.

Each step leaves a completion marker, so re-running the same recipe on the same run
directory resumes at the first unfinished step (and, inside the data pipeline, at the
first unfinished shard).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge import progress
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


def save_config(run_dir: Path, recipe: Recipe) -> None:
    """Save the resolved config; refuse to resume a run directory made by a different recipe.

    The executor may differ between attempts (it does not change the output).
    """
    resolved = recipe.resolved()
    path = run_dir / "config.yaml"
    if path.exists():
        previous = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run_dir, recipe)
    with _log_to(run_dir / "logs" / "run.log"):
        return _run_steps(recipe, run_dir, base_dir, executor, on_train_step)


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
        steps["tokens"] = _tokens_step(recipe, run_dir, output_dir)
        steps["pretrain"] = _pretrain_step(recipe, run_dir, on_train_step)
        stats = write_stats(run_dir, steps)
    if recipe.generate is not None:
        if "pretrain" not in steps:
            raise ConfigError("generate: needs a 'pretrain' step in the same recipe")
        steps["generate"] = _generate_step(recipe, run_dir)
        stats = write_stats(run_dir, steps)
    return RunResult(run_dir, stats, output_dir, steps)


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


def _is_validation(record_id: str, percent: float) -> bool:
    """Stable document-level split: the same id always lands on the same side."""
    h = int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little")
    return (h % 10_000) < percent * 100


def _tokenizer_step(recipe: Recipe, run_dir: Path, output_dir: Path) -> dict[str, Any]:
    from lmforge.tokenize.bpe import train_tokenizer

    tok_dir = run_dir / "tokenizer"
    marker = tok_dir / "step.done"
    if (cached := _cached(marker)) is not None:
        return cached
    percent = recipe.pretrain.val_percent if recipe.pretrain else 0.0
    t0 = time.perf_counter()
    texts = (r.text for r in iter_output(output_dir) if not _is_validation(r.id, percent))
    with progress.task("tokenizer: train", total=1) as bar:
        train_tokenizer(texts, recipe.tokenizer, tok_dir)
        bar.advance()
    info = {"dir": "tokenizer", "vocab_size": recipe.tokenizer.vocab_size, "seconds": round(time.perf_counter() - t0, 2)}
    write_json_atomic(marker, info)
    return info


def _tokens_step(recipe: Recipe, run_dir: Path, output_dir: Path) -> dict[str, Any]:
    from lmforge.tokenize.bpe import eos_id, load_tokenizer
    from lmforge.tokenize.encode import encode_documents, write_token_file

    tokens_dir = run_dir / "tokens"
    marker = tokens_dir / "step.done"
    if (cached := _cached(marker)) is not None:
        return cached
    t0 = time.perf_counter()
    tok = load_tokenizer(run_dir / "tokenizer")
    percent = recipe.pretrain.val_percent
    train, val = [], []
    for r in iter_output(output_dir):
        (val if _is_validation(r.id, percent) else train).append(r.text)
    if not val:
        raise UserError(f"pretrain.val_percent={percent} held out no documents; raise it or add data")
    info: dict[str, Any] = {"documents": {"train": len(train), "val": len(val)}}
    with progress.task("tokenizer: encode", total=len(train) + len(val)) as bar:
        for split, texts in (("train", train), ("val", val)):
            arr = encode_documents(tok, texts, eos_id(tok))
            write_token_file(tokens_dir / f"{split}.tok", arr)
            info[f"{split}_tokens"] = int(arr.size)
            bar.advance(len(texts))
    info["chars_per_token"] = round(sum(map(len, train)) / max(1, info["train_tokens"]), 3)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(marker, info)
    return info


def _pretrain_step(recipe: Recipe, run_dir: Path, on_step) -> dict[str, Any]:
    from lmforge.tokenize.bpe import load_tokenizer
    from lmforge.tokenize.encode import read_token_file
    from lmforge.train.pretrain import pretrain

    out = run_dir / "pretrain"
    marker = out / "step.done"
    if (cached := _cached(marker)) is not None:
        return cached
    tok = load_tokenizer(run_dir / "tokenizer")
    with progress.task("pretrain", total=recipe.pretrain.steps) as bar:

        def step_done(step: int, loss: float) -> None:
            bar.advance()
            if step % 10 == 0:
                bar.update(f"pretrain (loss {loss:.3f})")
            if on_step is not None:
                on_step(step, loss)

        result = pretrain(
            recipe.pretrain,
            read_token_file(run_dir / "tokens" / "train.tok"),
            read_token_file(run_dir / "tokens" / "val.tok"),
            vocab_size=tok.get_vocab_size(),
            out_dir=out,
            on_step=step_done,
        )
    losses = result.train_losses
    info = {
        "checkpoint": str(result.checkpoint.relative_to(run_dir)),
        "steps": result.steps,
        "first_loss": round(losses[0][1], 4) if losses else None,
        "last_loss": round(losses[-1][1], 4) if losses else None,
        "losses": [[s, round(v, 4)] for s, v in losses],
        "val_ppl_before": round(result.val_ppl_before, 3),
        "val_ppl_after": round(result.val_ppl_after, 3),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "seconds": round(result.seconds, 2),
    }
    write_json_atomic(marker, info)
    return info


def _generate_step(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    from lmforge.serve.generate import GenerationConfig, generate, load_for_generation

    cfg = recipe.generate
    model, tok = load_for_generation(run_dir / "pretrain" / "checkpoint", run_dir / "tokenizer")
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed)
    outputs = generate(model, tok, cfg.prompts, gen)
    samples = [{"prompt": p, "completion": c} for p, c in zip(cfg.prompts, outputs, strict=True)]
    with atomic_path(run_dir / "samples.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    return {"file": "samples.jsonl", "samples": samples}
