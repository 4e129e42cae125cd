"""The language-model steps: tokenizer, token shards, pretraining (GPT or BERT), samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from lmforge import progress
from lmforge.config import StrictModel
from lmforge.errors import UserError
from lmforge.pipeline.executors import make_executor
from lmforge.pipeline.runner import iter_output
from lmforge.pipeline.step import Step, StepContext, Summary
from lmforge.records import atomic_path
from lmforge.tokenize.bpe import TokenizerConfig
from lmforge.train.config import PretrainConfig


def data_output(ctx: StepContext) -> Path:
    """The final data stage of this run (what the tokenizer and the token shards read)."""
    return ctx.run_dir / ctx.summary("pipeline")["output"]


class TokenizerStep(Step):
    name = "tokenizer"
    Config = TokenizerConfig

    def __init__(self, config: TokenizerConfig, holdout_percent: float = 0.0) -> None:
        super().__init__(config)
        self.holdout_percent = holdout_percent  # documents held out for validation never train the tokenizer

    def reads(self) -> list[str]:
        return ["stages"]

    def writes(self) -> list[str]:
        return ["tokenizer"]

    def run(self, ctx: StepContext) -> Summary:
        from lmforge.tokenize.bpe import train_tokenizer
        from lmforge.tokenize.shards import in_holdout

        texts = (r.text for r in iter_output(data_output(ctx)) if not in_holdout(r.id, self.holdout_percent))
        with progress.task("tokenizer: train", total=1) as bar:
            train_tokenizer(texts, self.config, ctx.path("tokenizer"))
            bar.advance()
        return {"dir": "tokenizer", "vocab_size": self.config.vocab_size}


class TokensConfig(StrictModel):
    """The `tokens:` section: how the corpus becomes train/val token shards."""

    val_percent: float | None = Field(None, ge=0.0, lt=100.0,
                                      description="held-out share of documents [default: pretrain.val_percent]")


class TokensStep(Step):
    """Encode the corpus into train/ and val/ token shards, in parallel, resumable per shard."""

    name = "tokens"
    Config = TokensConfig

    def __init__(self, config: TokensConfig, default_percent: float = 0.0) -> None:
        super().__init__(config)
        self.percent = config.val_percent if config.val_percent is not None else default_percent

    def reads(self) -> list[str]:
        return ["stages", "tokenizer"]

    def writes(self) -> list[str]:
        return ["tokens"]

    def run(self, ctx: StepContext) -> Summary:
        from lmforge.tokenize.shards import encode_shards

        info: dict[str, Any] = {"documents": {}}
        with make_executor(ctx.executor) as ex:
            for split in ("train", "val"):
                manifest = encode_shards(data_output(ctx), ctx.path("tokenizer"), ctx.path("tokens") / split, ex,
                                         holdout=(self.percent, split))
                info["documents"][split] = manifest["documents"]
                info[f"{split}_tokens"] = manifest["tokens"]
                if split == "train":
                    info["chars_per_token"] = round(manifest["chars"] / max(1, manifest["tokens"]), 3)
        if not info["documents"]["val"]:
            field = "tokens.val_percent" if self.config.val_percent is not None else "pretrain.val_percent"
            raise UserError(f"{field}={self.percent} held out no documents; raise it or add data")
        return info


class PretrainStep(Step):
    """Train from scratch (or continue from `model.from`) on the token shards; resumes from checkpoints."""

    name = "pretrain"
    Config = PretrainConfig
    every_rank = True  # under torchrun every process trains

    def reads(self) -> list[str]:
        return ["tokenizer", "tokens"]

    def writes(self) -> list[str]:
        return ["pretrain", "pretrain/checkpoint"]

    def check(self, steps: list[Step]) -> None:
        """The model must fit before hours of data steps run, not after."""
        from lmforge.train.config import check_model_size

        for step in steps:
            if isinstance(step, TokenizerStep):
                check_model_size(self.config, step.config.vocab_size)

    def run(self, ctx: StepContext) -> Summary:
        cfg = self.config
        with progress.task("pretrain", total=cfg.steps) as bar:
            def on_step(step: int, loss: float) -> None:
                bar.advance()
                if step % 10 == 0:
                    bar.update(f"pretrain (loss {loss:.3f})")
                if ctx.on_train_step is not None:
                    ctx.on_train_step(step, loss)

            result, val = _train(cfg, ctx, on_step)
        losses = result.train_losses
        return {
            "arch": cfg.arch,
            "checkpoint": result.checkpoint.relative_to(ctx.run_dir).as_posix(),
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


def _train(cfg: PretrainConfig, ctx: StepContext, on_step) -> tuple[Any, dict[str, float]]:
    from lmforge.tokenize.dataset import TokenDataset
    from lmforge.train.pretrain import pretrain, pretrain_bert

    train, val = TokenDataset(ctx.path("tokens") / "train"), TokenDataset(ctx.path("tokens") / "val")
    out = ctx.path("pretrain")
    if cfg.arch == "bert":
        result = pretrain_bert(cfg, train, val, ctx.path("tokenizer"), out, on_step=on_step)
        return result, {"val_before": result.val_before, "val_after": result.val_after}
    from lmforge.tokenize.bpe import load_tokenizer

    vocab = load_tokenizer(ctx.path("tokenizer")).get_vocab_size()
    ppl = pretrain(cfg, train, val, vocab_size=vocab, out_dir=out, on_step=on_step)
    return ppl.train, {"val_ppl_before": round(ppl.val_ppl_before, 3), "val_ppl_after": round(ppl.val_ppl_after, 3)}


class SampleConfig(StrictModel):
    """The `generate:` section: prompts sampled from the pretrained GPT into samples.jsonl."""

    prompts: list[str] = Field(default_factory=lambda: ["The ", "我们"], min_length=1)
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(0.8, ge=0.0)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0


class GenerateStep(Step):
    name = "generate"
    Config = SampleConfig

    def reads(self) -> list[str]:
        return ["tokenizer", "pretrain/checkpoint"]

    def writes(self) -> list[str]:
        return ["samples.jsonl"]

    def check(self, steps: list[Step]) -> None:
        from lmforge.errors import ConfigError

        for step in steps:
            if isinstance(step, PretrainStep) and step.config.arch != "gpt":
                raise ConfigError("generate: needs a GPT (pretrain.arch: gpt); a BERT encoder does not generate text")

    def run(self, ctx: StepContext) -> Summary:
        from lmforge.serve.generate import generate, load_for_generation
        from lmforge.serve.sampling import SamplingParams

        cfg = self.config
        model, tok = load_for_generation(ctx.path("pretrain/checkpoint"), ctx.path("tokenizer"))
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_k=cfg.top_k or 0, top_p=cfg.top_p, seed=cfg.seed)
        outputs = generate(model, tok, cfg.prompts, params)
        samples = [{"prompt": p, "completion": c} for p, c in zip(cfg.prompts, outputs, strict=True)]
        with atomic_path(ctx.path("samples.jsonl")) as tmp:
            tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
        return {"file": "samples.jsonl", "samples": samples}
