"""The training loop shared by pretraining (GPT, BERT) and fine-tuning.

One optimizer step = `grad_accum` micro-batches on each of `world_size` processes. Micro-batch
`m` of step `s` on rank `r` is global batch number `(s * grad_accum + m) * world_size + r` of the
batch source, so a 2-process run with grad_accum 1 sees exactly the batches of a 1-process run
with grad_accum 2. Every loss term is summed over its units and divided by the units of the
whole step (counted before the forward passes and summed over ranks): the gradient is the
large-batch gradient however the batch is split.

Resumable checkpoints (`save_every`) hold weights, optimizer state, RNG states and the step; the
data position *is* the step, since batches are fetched by index. A run killed at any point and
started again continues the loss curve bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lmforge.models import cpu_kernels
from lmforge.train import distributed, state
from lmforge.train.checkpoint import WEIGHTS, resolve_device, save_checkpoint
from lmforge.train.config import TrainConfig
from lmforge.train.objectives import BatchSource, Objective
from lmforge.train.optim import build_optimizers, lr_factor, set_lr

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s by device name, for MFU (H200 has the H100's compute, more memory).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    train_losses: list[tuple[int, float]]
    val_losses: list[tuple[int, dict[str, float]]]
    tokens_per_second: float
    seconds: float
    stopped_early: bool = False
    train_seconds: float = 0.0  # optimizer steps only: no evaluation, checkpointing or setup
    resumed_from: int | None = None

    @property
    def val_before(self) -> dict[str, float]:
        return self.val_losses[0][1] if self.val_losses else {}

    @property
    def val_after(self) -> dict[str, float]:
        return self.val_losses[-1][1] if self.val_losses else {}


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast trains faster than float32 here: GPUs that support it, and CPUs with native
    bfloat16 dot products (AVX-512 BF16, AMX), where bf16 matmuls run at twice the float32 rate. Other CPUs
    emulate bfloat16, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_kernels.NATIVE_BF16


def peak_flops(device: torch.device, cfg: TrainConfig) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class _Log:
    """log.jsonl (always) and TensorBoard (when installed); only rank 0 writes."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None) -> None:
        self.enabled, self.path, self.tb = enabled, out / "log.jsonl", None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # Lines after the checkpoint come from the killed attempt and will be written again.
            kept = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        self.file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed (pip install tensorboard); logging to log.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        train_source: BatchSource,
        cfg: TrainConfig,
        out_dir: str | Path,
        val_source: BatchSource | None = None,
        on_step: Callable[[int, float], None] | None = None,
        extra: dict[str, Any] | None = None,
        evaluator: Callable[[nn.Module], dict[str, float]] | None = None,
        select: tuple[str, str] = ("loss", "min"),
        keep_best: bool = False,
        saver: Callable[[nn.Module, Path, dict[str, Any]], Any] | None = None,
    ) -> None:
        """`evaluator(model)` adds task metrics (accuracy, F1) to each validation; `select` = (metric,
        "min" | "max") decides which validation is best, for early stopping and, with `keep_best`,
        for the model saved to `out_dir/best`. `saver(model, dir, extra)` replaces the lmforge
        checkpoint format for models that are not plain lmforge models (task heads, HF models)."""
        self.model, self.objective, self.cfg = model, objective, cfg
        self.saver = saver
        self.evaluator, self.select, self.keep_best = evaluator, select, keep_best
        self.train_source, self.val_source = train_source, val_source
        self.out = Path(out_dir)
        self.on_step = on_step
        self.extra = extra or {}
        self.dist = distributed.from_env()
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.ckpt_root = self.out / "checkpoints"

    # ------------------------------------------------------------------ setup

    def _amp(self) -> tuple[bool, torch.dtype]:
        precision = self.cfg.precision
        if precision == "auto":
            precision = "bf16" if bf16_is_fast(self.device) else "fp32"
            log.info("precision auto: %s on this %s", precision, self.device.type)
        if precision == "bf16" and self.device.type == "cpu" and not cpu_kernels.NATIVE_BF16:
            log.warning("this CPU has no native bfloat16 (AVX-512 BF16 or AMX): bf16 is emulated and slower than fp32")
        if precision == "fp16" and self.device.type != "cuda":
            log.warning("fp16 autocast needs a GPU; training in fp32")
            precision = "fp32"
        return precision != "fp32", torch.float16 if precision == "fp16" else torch.bfloat16

    def setup(self) -> dict[str, Any] | None:
        """Build the wrapped model and optimizers; restore the newest checkpoint if there is one."""
        from safetensors.torch import load_model

        resume = state.latest(self.ckpt_root)
        if resume is not None:
            load_model(self.model, str(resume / WEIGHTS), strict=True)
        torch.manual_seed(self.cfg.seed + 1000 + self.dist.rank)  # dropout draws differ per rank
        self.model.to(self.device)
        if hasattr(self.model, "checkpoint_activations"):
            self.model.checkpoint_activations = self.cfg.activation_checkpointing
        self.wrapped = distributed.wrap(self.model, self.dist, self.cfg.distributed, self.device)
        if self.cfg.compile:
            self.wrapped.compile()  # in place: parameter names (and checkpoints) stay unchanged
        self.optimizers = build_optimizers(self.model, self.cfg, self.device)
        self.amp, self.amp_dtype = self._amp()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        if resume is None:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        trainer, osd, rng = state.read_state(resume, self.dist.rank)
        set_optimizer_state_dict(self.wrapped, self.optimizers, osd, options=StateDictOptions(full_state_dict=True))
        state.set_rng_state(rng)
        if trainer.get("scaler"):
            self.scaler.load_state_dict(trainer["scaler"])
        log.info("resumed from %s (step %d)", resume, trainer["step"])
        return trainer

    # ------------------------------------------------------------------ one step

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients over ranks only on the last micro-batch of a step."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        if hasattr(self.wrapped, "set_requires_gradient_sync"):  # FSDP2
            self.wrapped.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.wrapped.no_sync()

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

    def backward(self, step: int) -> tuple[dict[str, float], int]:
        """Forward/backward every micro-batch of 0-based `step`; (mean loss per term, tokens).

        Afterwards each parameter's .grad is the gradient of the whole step's token-mean loss.
        """
        cfg, d, terms = self.cfg, self.dist, self.objective.terms
        first = step * cfg.grad_accum
        batches = [self.train_source.micro_batch((first + m) * d.world_size + d.rank) for m in range(cfg.grad_accum)]
        local = [sum(self.objective.counts(b)[t] for b in batches) for t in terms]
        local.append(sum(b["input_ids"].numel() for b in batches))
        totals = distributed.all_sum(torch.tensor(local, dtype=torch.float64), d).tolist()
        counts, tokens = totals[:-1], int(totals[-1])
        sums = torch.zeros(len(terms), dtype=torch.float64, device=self.device)
        for m, batch in enumerate(batches):
            with self._sync(m == len(batches) - 1):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    parts = self.objective.sums(self.wrapped, self._to_device(batch))
                # DDP and FSDP average gradients over ranks; scaling by world_size makes that a sum.
                loss = sum(parts[t] / max(c, 1.0) for t, c in zip(terms, counts, strict=True)) * d.world_size
                self.scaler.scale(loss).backward()
            sums += torch.stack([parts[t].detach().double() for t in terms])  # no GPU sync per micro-batch
        sums = distributed.all_sum(sums.cpu(), d)
        return {t: float(s / max(c, 1.0)) for t, s, c in zip(terms, sums.tolist(), counts, strict=True)}, tokens

    def update(self) -> float | None:
        """Clip, step every optimizer, clear gradients; returns the gradient norm before clipping."""
        cfg = self.cfg
        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        grad_norm = None
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return grad_norm

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean of each term over the validation batches (rounded up to a multiple of the world size)."""
        if self.val_source is None:
            return {}
        if getattr(self.evaluator, "includes_loss", False):  # one pass gives the loss and the metrics
            self.wrapped.eval()
            out = self.evaluator(self.wrapped)
            self.wrapped.train()
            return out
        terms, d = self.objective.terms, self.dist
        self.wrapped.eval()
        sums = torch.zeros(2 * len(terms), dtype=torch.float64)
        for i in range(math.ceil(self.cfg.eval_batches / d.world_size)):
            batch = self.val_source.micro_batch(i * d.world_size + d.rank)
            counts = self.objective.counts(batch)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                parts = self.objective.sums(self.wrapped, self._to_device(batch))
            sums += torch.tensor([float(parts[t]) for t in terms] + [counts[t] for t in terms], dtype=torch.float64)
        sums = distributed.all_sum(sums, d).tolist()
        out = {t: sums[i] / max(sums[len(terms) + i], 1.0) for i, t in enumerate(terms)}
        out["loss"] = sum(out[t] for t in terms)
        if self.evaluator is not None:
            out.update(self.evaluator(self.wrapped))
        self.wrapped.train()
        return out

    def _better(self, value: float, best: float) -> bool:
        return value > best if self.select[1] == "max" else value < best

    # ------------------------------------------------------------------ checkpoints

    def _full_states(self, with_optimizer: bool) -> tuple[dict, dict]:
        """Whole (unsharded) model and optimizer state on rank 0's CPU; every rank must call it."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        if with_optimizer:
            return get_state_dict(self.wrapped, self.optimizers, options=opts)
        return get_model_state_dict(self.wrapped, options=opts), {}

    def _cpu_copy(self, model_state: dict) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # building a model draws init values; training must not notice
            copy = type(self.model)(self.model.config)
        missing, unexpected = copy.load_state_dict(model_state, strict=False)
        tied = {n for n, p in copy.named_parameters(remove_duplicate=False)} - {n for n, _ in copy.named_parameters()}
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        return copy

    def save_model(self, path: Path, extra: dict[str, Any]) -> Path:
        if self.saver is not None:
            if self.dist.main:
                self.saver(self.model, path, extra)
            distributed.barrier(self.dist)
            return path
        model_state, _ = self._full_states(with_optimizer=False)
        if self.dist.main:
            save_checkpoint(self._cpu_copy(model_state), self.model.config, path, extra=extra)
        distributed.barrier(self.dist)
        return path

    def save_resumable(self, step: int, trainer_state: dict[str, Any]) -> None:
        root, d = self.ckpt_root, self.dist
        tmp = root / f"{state.step_dir_name(step)}.tmp"
        if d.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier(d)
        state.write_rank_files(tmp, d.rank)
        model_state, optim_state = self._full_states(with_optimizer=True)
        if d.main:
            if hasattr(self.model, "model_type"):
                save_checkpoint(self._cpu_copy(model_state), self.model.config, tmp, extra={"step": step})
            else:  # a task model: the weights alone, which is all that resuming reads
                from safetensors.torch import save_model as save_weights

                save_weights(self.model, str(tmp / WEIGHTS), metadata={"format": "pt"})
            scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
            state.write_main_files(tmp, optim_state, {**trainer_state, "step": step, "scaler": scaler})
            state.publish(root, tmp, step, self.cfg.keep_checkpoints)
        distributed.barrier(d)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        cfg, d = self.cfg, self.dist
        t_start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        distributed.init(d, self.device)
        resumed = self.setup()
        start = resumed["step"] if resumed else 0
        logger = _Log(self.out, d.main, cfg.tensorboard, start if resumed else None)
        flops = getattr(self.model, "flops_per_token", None)
        flops_per_token = flops(cfg.seq_len) if callable(flops) else None
        peak = peak_flops(self.device, cfg)

        key = self.select[0]
        worst = -math.inf if self.select[1] == "max" else math.inf
        best = resumed.get("best_val", worst) if resumed else worst
        bad_evals = resumed.get("bad_evals", 0) if resumed else 0
        val_losses = [tuple(v) for v in resumed.get("val_losses", [])] if resumed else []
        train_losses: list[tuple[int, float]] = []
        if not resumed:
            val = self.evaluate()
            if val:
                val_losses.append((0, val))
                logger.write({"step": 0, "val": val, "elapsed": time.perf_counter() - t_start})
                log.info("step 0 val loss %.4f", val["loss"])
                best = val[key]
                if self.keep_best:
                    self.save_model(self.out / "best", {**self.extra, "step": 0, "val": val})

        self.wrapped.train()
        stopped_early = False
        train_seconds, train_tokens = 0.0, 0
        window_start, window_tokens = time.perf_counter(), 0
        step = start
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            factor = lr_factor(step - 1, cfg)
            set_lr(self.optimizers, factor)
            losses, tokens = self.backward(step - 1)
            grad_norm = self.update()
            loss = sum(losses.values())
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            train_seconds += time.perf_counter() - t0
            train_tokens += tokens
            window_tokens += tokens
            train_losses.append((step, loss))
            if self.on_step is not None and d.main:
                self.on_step(step, loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step}; lower lr or enable grad_clip")

            if step % cfg.log_every == 0 or step in (start + 1, cfg.steps):
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                mfu = flops_per_token * tps / (peak * d.world_size) if flops_per_token and peak else None
                logger.write({"step": step, "loss": loss, "terms": losses, "lr": cfg.lr * factor,
                              "grad_norm": grad_norm, "tokens_per_s": tps, "mfu": mfu,
                              "tokens": train_tokens, "elapsed": now - t_start})
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s%s", step, cfg.steps, loss, cfg.lr * factor, tps,
                         f" mfu {mfu:.1%}" if mfu else "")
                window_start, window_tokens = time.perf_counter(), 0

            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps and self.val_source is not None:
                val = self.evaluate()
                val_losses.append((step, val))
                logger.write({"step": step, "val": val, "elapsed": time.perf_counter() - t_start})
                log.info("step %d val loss %.4f", step, val["loss"])
                if self._better(val[key], best):
                    best, bad_evals = val[key], 0
                    if self.keep_best:
                        self.save_model(self.out / "best", {**self.extra, "step": step, "val": val})
                else:
                    bad_evals += 1
                    if cfg.early_stopping and bad_evals >= cfg.early_stopping:
                        log.info("early stopping at step %d: no better val %s in %d evaluations", step, key, bad_evals)
                        stopped_early = True
                window_start = time.perf_counter()  # evaluation time is not training throughput

            if cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps and not stopped_early:
                self.save_resumable(step, {"best_val": best, "bad_evals": bad_evals,
                                           "val_losses": [list(v) for v in val_losses]})
                window_start = time.perf_counter()
            if stopped_early:
                break

        if not stopped_early or not val_losses or val_losses[-1][0] != step:
            val = self.evaluate()
            if val:
                val_losses.append((step, val))
                logger.write({"step": step, "val": val, "elapsed": time.perf_counter() - t_start})
                log.info("final val loss %.4f", val["loss"])
        logger.close()
        extra = {**self.extra, "steps": step, "val": val_losses[-1][1] if val_losses else None}
        if self.keep_best and val_losses and self._better(val_losses[-1][1][key], best):
            self.save_model(self.out / "best", extra)  # the final evaluation can be the best one too
        checkpoint = self.save_model(self.out / "checkpoint", extra)
        return TrainResult(
            checkpoint=checkpoint,
            steps=step,
            train_losses=train_losses,
            val_losses=val_losses,
            tokens_per_second=train_tokens / max(train_seconds, 1e-9),
            seconds=time.perf_counter() - t_start,
            stopped_early=stopped_early,
            resumed_from=start if resumed else None,
            train_seconds=train_seconds,
        )
