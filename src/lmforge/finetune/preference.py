"""Preference tuning: DPO (sigmoid), IPO, and the reference-free SimPO and ORPO, as a Trainer objective.

Each loss compares the policy's log-probability of the chosen and the rejected answer to one
prompt (summed over the answer's tokens, or averaged with `length_normalize`):

- dpo:   -log σ(β·[(π_c − ref_c) − (π_r − ref_r)]), with label smoothing ε mixing in the flipped pair;
- ipo:   ((π_c − ref_c) − (π_r − ref_r) − 1/(2β))², on length-averaged log-probabilities by default;
- simpo: -log σ(β·(π̄_c − π̄_r) − γ), averaged log-probabilities, no reference;
- orpo:  −π̄_c − β·log σ(log odds(π̄_c) − log odds(π̄_r)), the chosen answer's NLL plus the odds ratio.

Losses are summed over pairs and the Trainer divides by the pairs of the whole step, so gradient
accumulation and data parallelism give the large-batch gradient exactly, as in pretraining.

The reference model's log-probabilities are computed once, before training, into Parquet shards
under the run directory (`reference/`, each shard written atomically with a `.done` marker), so
the reference never sits in memory beside the policy, and a killed run resumes the pass where it
stopped. By default the reference is the model training starts from, read before the first step
(with LoRA that is the base with its adapters switched off); `preference.reference` names another.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.finetune.chat_data import PairSource
from lmforge.finetune.config import PreferenceSettings
from lmforge.finetune.tasks import logits_of
from lmforge.train.objectives import IGNORE, Batch

log = logging.getLogger(__name__)

REFERENCE_FREE = ("simpo", "orpo")


def sequence_logps(model: nn.Module, batch: Batch, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's target tokens, their count), each (rows,).

    lmforge models (`fused`) never hold the logits of more than one row; a Hugging Face model's are whole."""
    targets = batch["targets"]  # (R, T)
    counts = (targets != IGNORE).sum(-1)
    if fused:
        return -model(input_ids=batch["input_ids"], targets=targets, per_row=True).float(), counts
    logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))  # (R, T, V)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return -nll.view(targets.shape).sum(-1), counts  # (R,), (R,)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, accurate on both sides of −log 2."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def pair_losses(settings: PreferenceSettings, chosen: torch.Tensor, rejected: torch.Tensor,
                ref_chosen: torch.Tensor | None, ref_rejected: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen reward, rejected reward) per pair, from (normalised) log-probabilities (b,) each."""
    beta, eps = settings.beta, settings.label_smoothing
    if settings.loss in ("dpo", "ipo"):
        h = (chosen - ref_chosen) - (rejected - ref_rejected)
        if settings.loss == "dpo":
            loss = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
        else:
            loss = (h - 1 / (2 * beta)) ** 2
        return loss, beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    if settings.loss == "simpo":
        z = beta * (chosen - rejected) - settings.simpo_gamma
        loss = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        return loss, beta * chosen, beta * rejected
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))  # orpo
    return -chosen - beta * F.logsigmoid(log_odds), beta * chosen, beta * rejected


class PreferenceObjective:
    """Summed pair losses, plus rewards, margin, accuracy and (with a reference) the KL proxy as metrics.

    The KL proxy is the mean over both answers of log π − log π_ref summed over the answer: how far
    the policy has moved on the preference data (not a KL on its own samples)."""

    terms = ("pref",)

    def __init__(self, settings: PreferenceSettings, fused: bool = True) -> None:
        self.settings, self.fused = settings, fused
        self.normalize = settings.normalized
        extra = () if settings.loss in REFERENCE_FREE else ("kl",)
        self.metrics = ("reward_chosen", "reward_rejected", "margin", "accuracy", *extra)

    def counts(self, batch: Batch) -> dict[str, int]:
        pairs = int(batch["pair"].numel())
        return {name: pairs for name in (*self.terms, *self.metrics)}

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logp, n = sequence_logps(model, batch, self.fused)
        b = int(batch["pair"].numel())
        scale = n.clamp(min=1).to(logp.dtype) if self.normalize else torch.ones_like(logp)
        policy = logp / scale
        ref = None
        if self.settings.loss not in REFERENCE_FREE:
            if "ref" not in batch:
                raise RuntimeError("preference batches need reference log-probabilities (compute_reference first)")
            ref = batch["ref"].to(logp.dtype) / scale
        loss, r_c, r_r = pair_losses(self.settings, policy[:b], policy[b:], None if ref is None else ref[:b],
                                     None if ref is None else ref[b:])
        out = {"pref": loss.sum(), "reward_chosen": r_c.detach().sum(), "reward_rejected": r_r.detach().sum(),
               "margin": (r_c - r_r).detach().sum(), "accuracy": (r_c > r_r).float().sum()}
        if ref is not None:
            moved = (logp - batch["ref"].to(logp.dtype)).detach()
            out["kl"] = ((moved[:b] + moved[b:]) / 2).sum()
        return out


# --------------------------------------------------------------------------- reference log-probabilities


def fingerprint(sources: dict[str, PairSource], model_id: str) -> str:
    """What the reference pass depends on: every pair's ids and the reference model's identity."""
    h = hashlib.sha256(model_id.encode())
    for name, source in sorted(sources.items()):
        h.update(name.encode())
        for c, r, p in zip(source.data.chosen, source.data.rejected, source.data.prompt_len, strict=True):
            h.update(c.tobytes())
            h.update(r.tobytes())
            h.update(p.to_bytes(8, "little"))
    return h.hexdigest()


@torch.no_grad()
def _shard_logps(model: nn.Module, source: PairSource, pairs: range, device: torch.device,
                 autocast: Callable, fused: bool) -> np.ndarray:
    """(len(pairs), 2) reference log-probabilities, in batches of the source's batch size."""
    out = np.zeros((len(pairs), 2), dtype=np.float64)
    ordered = PairSource(source.data, source.batch_size, source.seed, shuffle=False)
    for first in range(pairs.start, pairs.stop, source.batch_size):
        index = first // source.batch_size
        batch = {k: v.to(device) for k, v in ordered.micro_batch(index).items()}
        with autocast():
            logp, _ = sequence_logps(model, batch, fused)
        b = int(batch["pair"].numel())
        rows = batch["pair"].cpu().numpy() - pairs.start
        out[rows, 0], out[rows, 1] = logp[:b].double().cpu().numpy(), logp[b:].double().cpu().numpy()
    return out


def compute_reference(model: nn.Module, sources: dict[str, PairSource], directory: Path, model_id: str,
                      device: torch.device, autocast: Callable, shard_pairs: int = 512,
                      on_shard: Callable[[int, int], None] | None = None, write: bool = True) -> None:
    """Fill each source's `reference` from shards in `directory`, computing the missing ones with `model`.

    Shards of an earlier pass over other pairs or another reference are discarded (the fingerprint
    in meta.json says which). `shard_pairs` is rounded to whole batches, so a shard is whole batches.
    Only one process of a data-parallel run writes (`write`); the others compute what is missing
    for themselves, which gives them the same numbers.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.models.protocols import is_hf_model
    from lmforge.records import atomic_path, write_json_atomic

    meta, stamp = directory / "meta.json", fingerprint(sources, model_id)
    stale = meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("fingerprint") != stamp
    if write:
        directory.mkdir(parents=True, exist_ok=True)
        if stale:
            log.info("reference log-probabilities in %s belong to other data or another model: recomputing",
                     directory)
            for old in directory.glob("*-*.*"):
                old.unlink()
        write_json_atomic(meta, {"fingerprint": stamp, "model": model_id})
    was_training = model.training
    model.eval()
    try:
        for name, source in sources.items():
            step = max(1, shard_pairs // source.batch_size) * source.batch_size
            table = np.zeros((len(source.data), 2), dtype=np.float64)
            shards = range(0, len(source.data), step)
            for k, start in enumerate(shards):
                path = directory / f"{name}-{k:05d}.parquet"
                done = path.with_suffix(".done")
                pairs = range(start, min(start + step, len(source.data)))
                if done.is_file() and not stale:
                    part = pq.read_table(path)
                    values = np.stack([part["chosen"].to_numpy(), part["rejected"].to_numpy()], axis=1)
                else:
                    values = _shard_logps(model, source, pairs, device, autocast, not is_hf_model(model))
                    if write:
                        with atomic_path(path) as tmp:
                            pq.write_table(pa.table({"pair": list(pairs), "chosen": values[:, 0],
                                                     "rejected": values[:, 1]}), tmp)
                        done.write_text("", encoding="utf-8")
                table[pairs.start : pairs.stop] = values
                if on_shard is not None:
                    on_shard(k + 1, len(shards))
            source.reference = table
    finally:
        model.train(was_training)


def reference_pass(cfg, model: nn.Module, sources: dict[str, PairSource], directory: Path) -> None:
    """Reference log-probabilities for every split, from `cfg.preference.reference` or from `model` as it
    is before the first step (a peft model with its adapters off), at the precision training will use."""
    import contextlib
    import gc

    from lmforge import progress
    from lmforge.models.checkpoint_io import resolve_device
    from lmforge.train import distributed
    from lmforge.train.runtime import autocast_settings

    device = resolve_device(cfg.device)
    amp, amp_dtype = autocast_settings(cfg.precision, device)
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp)  # noqa: E731
    given = cfg.preference.reference
    if given:
        from lmforge.finetune.heads import build_task_model

        reference = build_task_model("instruction", given, [], 0.0)
        model_id = f"model {Path(given).resolve()}"
    else:
        reference = model
        model_id = f"start {cfg.model.source} {cfg.model.init} seed {cfg.seed}"
    model_id += f" precision {cfg.precision} on {device.type}"
    reference.to(device)
    adapters_off = getattr(reference, "disable_adapter", None) if not given else None
    with (adapters_off() if adapters_off else contextlib.nullcontext()), \
            progress.task("reference log-probabilities (shards)", total=None) as bar:
        compute_reference(reference, sources, directory, model_id, device, autocast,
                          on_shard=lambda done, total: bar.advance(), write=distributed.from_env().main)
    if given:
        del reference
        gc.collect()
