"""Language-model scores: perplexity and bits per byte, from the total negative log-likelihood.

Perplexity over a test set is exp(total NLL / total predicted tokens): every token weighs the
same. The mean of per-sequence perplexities is a different and misleading number: exp is
convex, so a few short, badly predicted sequences dominate it (in the tests, one 1-token
sequence makes it nearly eight times the per-token figure). Everything here therefore sums
NLL and tokens first and divides once.

Perplexity depends on the tokenizer (a bigger vocabulary has fewer, harder tokens), so it
only compares models that share one. Bits per byte divides the same total NLL by the UTF-8
bytes of the text instead, which compares models across tokenizers, and is fair to Chinese,
whose characters take three bytes each.

torch is imported inside the functions: the two formulas need only `math`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from lmforge.errors import ConfigError, InputError, UserError

log = logging.getLogger(__name__)


def perplexity_from_nll(total_nll: float, total_tokens: int) -> float:
    """exp(total_nll / total_tokens), with NLL in nats summed over every predicted token; inf on overflow."""
    if total_tokens <= 0:
        raise InputError(f"total_tokens must be positive to compute perplexity (got {total_tokens})")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


def bits_per_byte(total_nll_nats: float, total_bytes: int) -> float:
    """Total NLL converted from nats to bits, per UTF-8 byte of the text that was scored."""
    if total_bytes <= 0:
        raise InputError(f"total_bytes must be positive to compute bits per byte (got {total_bytes})")
    return total_nll_nats / (math.log(2) * total_bytes)


def _logits(output: Any):
    """Logits from a tensor, a (logits, loss) tuple (lmforge's GPT) or an object with .logits (transformers)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise UserError(
            f"model returned {type(output).__name__}; lm_scores needs logits: a tensor, "
            "a (logits, loss) tuple or an object with .logits"
        )
    return logits


def _context_length(model: Any) -> int | None:
    """The longest input the model takes: block_size (lmforge) or max_position_embeddings (transformers)."""
    config = getattr(model, "config", None)
    for name in ("block_size", "max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _encode(tokenizer: Any, text: str) -> list[int]:
    encoded = tokenizer.encode(text) if hasattr(tokenizer, "encode") else tokenizer(text)
    ids = getattr(encoded, "ids", encoded)  # tokenizers.Encoding has .ids; transformers returns a list
    return [int(i) for i in ids]


def _sequences(items: Iterable[Any]) -> list[list[int]]:
    """Flatten 1-D sequences and 2-D batches (rows of equal length) into lists of token ids."""
    out: list[list[int]] = []
    for item in items:
        rows = item.tolist() if hasattr(item, "tolist") else list(item)
        if rows and isinstance(rows[0], list):
            out.extend([int(t) for t in row] for row in rows)
        else:
            out.append([int(t) for t in rows])
    return out


def _windows(seqs: list[list[int]], length: int | None) -> list[list[int]]:
    """Cut sequences into windows of at most length + 1 tokens that overlap by one token.

    Each window predicts its tokens after the first, so every token but a sequence's first is
    predicted exactly once (context restarts at a window boundary, as in `perplexity.py`).
    """
    out = []
    for seq in seqs:
        step = length or max(len(seq) - 1, 1)
        out.extend(seq[start : start + step + 1] for start in range(0, len(seq) - 1, step))
    return out


def lm_scores(
    model: Any,
    sequences: Iterable[Any] | None = None,
    *,
    texts: Sequence[str] | None = None,
    tokenizer: Any = None,
    bos_id: int | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """Total NLL of a causal LM on token sequences or texts, and the perplexity it implies.

    Give `sequences` (token-id lists, 1-D tensors, or 2-D batches) or `texts` with a
    `tokenizer` (anything with `.encode(text)` returning ids or an object with `.ids`).
    `bos_id` is put before each text so that its first token is predicted too; without it the
    first token is only context and bits per byte slightly flatters the model (a transformers
    tokenizer that adds BOS itself needs no `bos_id`). Sequences longer than `max_length`
    (default: the model's context length) are scored in consecutive windows. `model(ids)` may
    return logits, a (logits, loss) tuple or an object with `.logits`; padding goes on the right,
    where a causal model never looks, and is left out of the loss.

    Returns `nll` (nats, summed), `tokens` (predicted tokens), `loss` (mean NLL per token),
    `perplexity`, `sequences`, and with `texts` also `bytes` and `bits_per_byte`.
    """
    import torch
    import torch.nn.functional as F

    if (sequences is None) == (texts is None):
        raise UserError("lm_scores needs exactly one of sequences= (token ids) or texts= (with tokenizer=)")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer (got {batch_size!r})")
    n_bytes = None
    if texts is not None:
        if isinstance(texts, str):
            raise InputError("texts must be a list of strings, not a single string")
        if tokenizer is None:
            raise UserError("lm_scores with texts= needs tokenizer= to turn them into token ids")
        texts = list(texts)
        seqs = [([bos_id] if bos_id is not None else []) + _encode(tokenizer, t) for t in texts]
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        if bos_id is None:
            log.info("no bos_id: the first token of each text is context only, not scored")
    else:
        seqs = _sequences(sequences)
    if not seqs:
        raise InputError("nothing to score: sequences/texts is empty")
    length = max_length or _context_length(model)
    if length is not None and length < 1:
        raise ConfigError(f"max_length must be a positive integer (got {length!r})")
    windows = sorted(_windows(seqs, length), key=len, reverse=True)  # similar lengths batch with less padding
    if not windows:
        raise InputError("nothing to score: every sequence has fewer than 2 tokens, so no token has a context")
    if device is None:
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = param.device if param is not None else "cpu"

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for first in range(0, len(windows), batch_size):
                batch = windows[first : first + batch_size]
                width = len(batch[0])
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                targets = torch.full((len(batch), width - 1), -100, dtype=torch.long)
                for row, window in enumerate(batch):
                    ids[row, : len(window)] = torch.tensor(window)
                    targets[row, : len(window) - 1] = torch.tensor(window[1:])
                ids, targets = ids.to(device), targets.to(device)
                logits = _logits(model(ids[:, :-1]))
                nll = F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
                )
                total_nll += nll.item()
                total_tokens += int((targets != -100).sum())
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)

    scores: dict[str, Any] = {
        "nll": total_nll,
        "tokens": total_tokens,
        "loss": total_nll / total_tokens,
        "perplexity": perplexity_from_nll(total_nll, total_tokens),
        "sequences": len(seqs),
    }
    if n_bytes:
        scores["bytes"] = n_bytes
        scores["bits_per_byte"] = bits_per_byte(total_nll, n_bytes)
    return scores

