"""Validation perplexity on fixed, non-overlapping windows.

Windows start at token 0 and never overlap, so two runs (or two checkpoints) are scored on
exactly the same tokens and their numbers are comparable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from lmforge.errors import UserError


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> float:
    """exp(mean next-token NLL) over windows of `seq_len` predictions each."""
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise UserError(
            f"perplexity needs at least seq_len + 1 = {seq_len + 1} tokens, got {len(tokens)}; "
            "use more validation text or a shorter seq_len"
        )
    if max_batches is not None:
        n_windows = min(n_windows, max_batches * batch_size)
    if device is None:
        device = next(model.parameters()).device

    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for first in range(0, n_windows, batch_size):
            rows = range(first, min(first + batch_size, n_windows))
            chunk = np.stack([np.asarray(tokens[r * seq_len : r * seq_len + seq_len + 1]) for r in rows])
            chunk = torch.from_numpy(chunk.astype(np.int64)).to(device)  # (B, seq_len + 1)
            _, loss = model(chunk[:, :-1], chunk[:, 1:])
            n = chunk[:, 1:].numel()
            total_nll += loss.item() * n
            total_tokens += n
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens)
