"""What the trainer needs from a task: an objective (losses) and a batch source (data).

Losses are *sums* over their units (target tokens, masked tokens, sentence pairs). The trainer
counts the units of every micro-batch in an optimizer step, across gradient-accumulation steps
and data-parallel ranks, and divides each sum by that global count. The gradient is then exactly
the gradient of the large batch, whatever the split: averaging per-micro-batch means instead
would weight a short micro-batch's tokens more than a long one's.

Batch sources are random access: `micro_batch(i)` is a pure function of the seed and `i`. The
trainer's data position is one integer, a resumed run fetches exactly the batches the killed run
would have fetched next, and nothing already trained on is read again.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn as nn

from lmforge.errors import InputError

IGNORE = -100  # label value that no loss term counts

Batch = dict[str, torch.Tensor]


@runtime_checkable
class Objective(Protocol):
    """Turns a model and a micro-batch into summed loss terms."""

    terms: tuple[str, ...]

    def counts(self, batch: Batch) -> dict[str, int]:
        """Units each term (and each of `reported(self)`) sums over in this micro-batch, read from the batch alone."""
        ...

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Each term's loss summed over its units (float32 scalars)."""
        ...


def reported(objective: Objective) -> tuple[str, ...]:
    """The loss terms and then the objective's `metrics`: sums it returns that are logged, averaged like
    the terms over their units, but never trained on (preference rewards and accuracy)."""
    return (*objective.terms, *getattr(objective, "metrics", ()))


@runtime_checkable
class BatchSource(Protocol):
    """Micro-batches by global index: deterministic, random access, CPU tensors."""

    def micro_batch(self, index: int) -> Batch: ...


@runtime_checkable
class SlicedTokens(Protocol):
    """A token stream that reads one window without indexing the whole array (a `TokenDataset` over shards)."""

    def slice(self, start: int, stop: int) -> np.ndarray: ...


class CausalLM:
    """Next-token prediction for an lmforge GPT: cross-entropy summed over every label that is not IGNORE.

    The model computes the loss itself without returning logits, so on CPUs the output layer and
    the loss run fused and the (tokens x vocabulary) logits never exist in full.
    """

    terms = ("lm",)

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"lm": int((batch["labels"] != IGNORE).sum())}

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        _, loss = model(batch["input_ids"], batch["labels"], ignore_index=IGNORE, reduction="sum", return_logits=False)
        return {"lm": loss.float()}


class TokenWindows:
    """Micro-batches of random contiguous windows from a token stream (a `TokenDataset` or array).

    Row starts for batch i come from a generator seeded with (seed, i), so any batch can be made
    without drawing the ones before it. A window may cross a document boundary, where the EOS
    token tells the model a new document starts (as in GPT-2 and nanoGPT).
    """

    def __init__(self, tokens, seq_len: int, batch_size: int, seed: int) -> None:
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        if len(tokens) < seq_len + 2:
            raise InputError(
                f"the token stream has {len(tokens)} tokens but seq_len={seq_len} needs at least {seq_len + 2}; "
                "add more text or lower seq_len"
            )

    def _row(self, start: int) -> np.ndarray:
        if isinstance(self.tokens, SlicedTokens):
            return self.tokens.slice(start, start + self.seq_len + 1)
        return np.asarray(self.tokens[start : start + self.seq_len + 1])

    def micro_batch(self, index: int) -> Batch:
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        rows = torch.from_numpy(np.stack([self._row(int(s)) for s in starts]).astype(np.int64))  # (B, T + 1)
        return {"input_ids": rows[:, :-1], "labels": rows[:, 1:]}


class EvalWindows(TokenWindows):
    """Evenly spaced windows covering a validation stream: the same rows on every evaluation."""

    def micro_batch(self, index: int) -> Batch:
        span = len(self.tokens) - self.seq_len - 1
        first = index * self.batch_size
        starts = [(first + j) * (self.seq_len + 1) % max(1, span) for j in range(self.batch_size)]
        rows = torch.from_numpy(np.stack([self._row(s) for s in starts]).astype(np.int64))  # (B, T + 1)
        return {"input_ids": rows[:, :-1], "labels": rows[:, 1:]}
