"""Rotary position embeddings and the ways checkpoints stretch them past their training length.

Rope rotates each pair of dimensions (i, i + D/2) of q and k by the angle `position * inv_freq[i]`,
so q.k depends only on the distance between two tokens. A model trained on 8k tokens sees angles
it never met when asked for 128k; the scalings below change `inv_freq` (and, for YaRN, the size of
cos/sin) so long positions land on angles the model knows. Each matches `transformers`' formula of
the same name, because a checkpoint's weights only work with the rope they were trained with:

    default   inv_freq[i] = 1 / base^(2i/D)
    linear    inv_freq / factor: positions squeezed evenly (Position Interpolation)
    dynamic   the base grows with the sequence once it passes the original length (NTK-aware);
              computed from the current length on every call, never from an earlier call's
    llama3    long wavelengths divided by factor, short ones kept, a smooth ramp between
    yarn      the same idea per dimension by rotation count, plus cos/sin scaled by ~0.1 ln(factor) + 1

`RopeScaling` is what GPTConfig stores (`rope_scaling: {type: llama3, factor: 8, ...}`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lmforge.config import short_repr
from lmforge.errors import ConfigError

# Each type's required and optional keys (besides `type`); values are positive numbers.
SCALINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "linear": (("factor",), ()),
    "dynamic": (("factor",), ("original_max_position_embeddings",)),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor", "original_max_position_embeddings"),
             ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate")),
}


def check_scaling(scaling: dict[str, Any] | None, where: str = "model.rope_scaling") -> None:
    """A ConfigError naming the key unless `scaling` is None or a complete, known scaling."""
    if scaling is None:
        return
    if not isinstance(scaling, dict) or scaling.get("type") not in SCALINGS:
        kind = scaling.get("type") if isinstance(scaling, dict) else scaling
        raise ConfigError(f"{where}.type must be one of {sorted(SCALINGS)} (got {short_repr(kind)})")
    required, optional = SCALINGS[scaling["type"]]
    for key in required:
        if key not in scaling:
            raise ConfigError(f"{where}.{key} is required for rope scaling {scaling['type']!r}")
    for key, value in scaling.items():
        if key == "type":
            continue
        if key not in required + optional:
            raise ConfigError(f"{where}.{key} is not a {scaling['type']} setting; allowed: {list(required + optional)}")
        if key == "truncate":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.truncate must be true or false (got {short_repr(value)})")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                    or not 0 < value < math.inf):
            raise ConfigError(f"{where}.{key} must be a positive number (got {short_repr(value)})")
    if scaling["type"] == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ConfigError(f"{where}.high_freq_factor must exceed low_freq_factor")


def _plain(head_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)


def _llama3(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    old_len, factor = s["original_max_position_embeddings"], s["factor"]
    low_wavelen, high_wavelen = old_len / s["low_freq_factor"], old_len / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(head_dim: int, base: float, s: dict[str, Any]) -> tuple[torch.Tensor, float]:
    factor, old_len = s["factor"], s["original_max_position_embeddings"]
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all = s.get("mscale"), s.get("mscale_all_dim")
        attention_factor = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all) if mscale and mscale_all
                            else _yarn_mscale(factor))

    def dim_at(rotations: float) -> float:  # the dimension that turns `rotations` times over old_len
        return head_dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_at(s.get("beta_fast") or 32), dim_at(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # (D/2,)
    keep = 1 - ramp  # 1: fast dimensions kept as trained (extrapolate), 0: slow ones interpolated
    extrapolated = _plain(head_dim, base)
    return extrapolated / factor * (1 - keep) + extrapolated * keep, float(attention_factor)


def inv_freq_for(head_dim: int, base: float, scaling: dict[str, Any] | None,
                 seq_len: int = 0, max_positions: int = 0) -> tuple[torch.Tensor, float]:
    """(inv_freq (D/2,), cos/sin multiplier) for a sequence of `seq_len` tokens."""
    kind = None if scaling is None else scaling["type"]
    if kind == "linear":
        return _plain(head_dim, base) / scaling["factor"], 1.0
    if kind == "llama3":
        return _llama3(_plain(head_dim, base), scaling), 1.0
    if kind == "yarn":
        return _yarn(head_dim, base, scaling)
    if kind == "dynamic":
        original = scaling.get("original_max_position_embeddings") or max_positions
        if seq_len > original:
            factor = scaling["factor"]
            base = base * ((factor * seq_len / original) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return _plain(head_dim, base), 1.0


def rope_tables(head_dim: int, length: int, base: float = 10000.0, scaling: dict[str, Any] | None = None,
                max_positions: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles, (length, D/2) each, in float32."""
    inv_freq, multiplier = inv_freq_for(head_dim, base, scaling, length, max_positions)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, D/2)
    return angles.cos() * multiplier, angles.sin() * multiplier


def is_dynamic(scaling: dict[str, Any] | None) -> bool:
    """Dynamic NTK tables depend on the sequence's length, so they are computed per forward pass."""
    return scaling is not None and scaling["type"] == "dynamic"


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1[i], x2[i]) by a position-dependent angle so q.k depends on relative position."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, D/2) or (B, 1, T, D/2), broadcast over heads
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
