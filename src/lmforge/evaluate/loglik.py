"""Log-likelihoods of continuations after a context, batched: what multiple-choice scoring measures.

The token boundary is where such scores go wrong. A tokenizer may merge characters across the
boundary ("Answer:" + " A" is `Answer`, `:`, ` A` for a byte-level BPE, but a SentencePiece model
writes the space into the letter's token), so the continuation is never encoded on its own. As
lm-evaluation-harness does, whitespace ending the context moves to the continuation, then the
context and context + continuation are encoded and the continuation is the tail of the second
beyond the first. When the first is not a prefix of the second (the context's last token merged
into the continuation's first), the continuation's own encoding is scored after the context's, so
the context is always exactly the tokens the model saw.

Every sequence starts as a document does in training: after the tokenizer's own BOS when it adds one
(Llama), else after `<|endoftext|>` when the vocabulary has it (lmforge, GPT-2, Qwen), which is the
separator those models saw between documents.

Padding goes on the right, where a causal model never looks. The output layer runs only where it is
needed: at the scored positions of lmforge's GPT (its final hidden states there), and over the last
positions of a batch from the first scored one for a transformers model (`logits_to_keep`; batches
hold sequences of similar length), so a 150k-token vocabulary costs memory per scored token, not per
input token.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmforge.errors import InputError, UserError
from lmforge.evaluate.lm import _context_length, _logits

log = logging.getLogger(__name__)

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


class Encoder:
    """Text to token ids without special tokens, and the ids every scored sequence starts with."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix = self._prefix()

    def encode(self, text: str, special: bool = False) -> list[int]:
        encoded = self.tokenizer.encode(text, add_special_tokens=special)
        return [int(i) for i in getattr(encoded, "ids", encoded)]

    def _prefix(self) -> list[int]:
        from lmforge.tokenize.bpe import EOS_TOKEN

        plain, special = self.encode("a"), self.encode("a", special=True)
        for start in range(len(special) - len(plain) + 1):
            if special[start : start + len(plain)] == plain:
                if start:
                    return special[:start]  # the BOS the tokenizer adds itself
                break
        eos = self.tokenizer.token_to_id(EOS_TOKEN) if hasattr(self.tokenizer, "token_to_id") else None
        return [int(eos)] if eos is not None else []


def split_continuations(encoder: Encoder, context: str, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """(context ids, each continuation's ids), with the boundary drawn as the module docstring says."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuations = [context[-spaces:] + c for c in continuations]
        context = context[:-spaces]
    ctx = encoder.encode(context)
    out = []
    for cont in continuations:
        whole = encoder.encode(context + cont)
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            out.append(whole[len(ctx) :])
        else:
            out.append(encoder.encode(cont))
    return ctx, out


class Scorer:
    """Log-probabilities from a causal LM (lmforge's GPT or a transformers model), `batch_size` rows at a time."""

    def __init__(self, model: Any, batch_size: int = 8, max_len: int | None = None) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size must be a positive integer (got {batch_size!r})")
        self.model = model.eval()
        self.batch_size = batch_size
        self.max_len = max_len or _context_length(model)
        self.device = next(model.parameters()).device
        self.own = hasattr(model, "features") and hasattr(model, "lm_head")  # lmforge's GPT
        params = () if self.own else inspect.signature(model.forward).parameters
        self.keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)

    def _logits_at(self, ids, rows: list[int], cols: list[int]):
        """float32 logits (len(rows), V) at (row, column) pairs of the right-padded batch `ids`."""
        if self.own:
            hidden = self.model.features(ids)
            return self.model.lm_head(hidden[rows, cols]).float()
        extra = {}
        if self.keep_arg:  # transformers computes the logits of the last `keep` positions only
            first = min(cols)
            extra[self.keep_arg] = ids.size(1) - first
            cols = [c - first for c in cols]
        return _logits(self.model(input_ids=ids, use_cache=False, **extra))[rows, cols].float()

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices in batches of similar length, longest first, so padding is small and memory peaks early."""
        if self.max_len is not None and lengths and max(lengths) > self.max_len:
            raise UserError(f"a sequence of {max(lengths)} tokens is longer than the model's context {self.max_len}")
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _run(self, seqs: list[list[int]], wanted: Callable[[int], list[int]], batch: list[int]):
        """Log-softmax rows at the columns `wanted(i)` of each sequence in `batch`, in that order."""
        import torch

        width = max(len(seqs[i]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        rows: list[int] = []
        cols: list[int] = []
        for r, i in enumerate(batch):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            at = wanted(i)
            rows += [r] * len(at)
            cols += at
        with torch.no_grad():
            return torch.log_softmax(self._logits_at(ids.to(self.device), rows, cols), dim=-1)

    def next_token(self, contexts: list[list[int]], candidates: list[list[int]],
                   advance: Callable[[int], None] | None = None) -> list[list[float]]:
        """log P(token | context) of each context's candidate tokens: one forward pass per context."""
        out: list[list[float]] = [[] for _ in contexts]
        for batch in self._batches([len(c) for c in contexts]):
            logp = self._run(contexts, lambda i: [len(contexts[i]) - 1], batch)
            for r, i in enumerate(batch):
                out[i] = logp[r, candidates[i]].tolist()
            if advance:
                advance(len(batch))
        return out

    def continuations(self, requests: list[Request], advance: Callable[[int], None] | None = None) -> list[list[float]]:
        """Per-token log-probabilities of each continuation after its context (an empty one scores [])."""
        import torch

        out: list[list[float]] = [[] for _ in requests]
        todo = [i for i, (_, cont) in enumerate(requests) if cont]
        seqs = [(ctx + cont)[:-1] for ctx, cont in requests]  # the last token is only predicted
        for part in self._batches([len(seqs[i]) for i in todo]):
            batch = [todo[j] for j in part]
            logp = self._run(seqs, lambda i: list(range(len(requests[i][0]) - 1, len(seqs[i]))), batch)
            targets = torch.tensor([t for i in batch for t in requests[i][1]], device=logp.device)
            picked = logp.gather(1, targets[:, None])[:, 0].tolist()
            start = 0
            for i in batch:
                n = len(requests[i][1])
                out[i], start = picked[start : start + n], start + n
            if advance:
                advance(len(batch))
        if advance and len(todo) < len(requests):
            advance(len(requests) - len(todo))
        return out


def load_lm(path: str | Path, tokenizer: str | Path | None = None, device: str = "auto") -> tuple[Any, Any]:
    """(causal LM in eval mode, tokenizers.Tokenizer) behind a model path.

    lmforge runs, checkpoints and instruction-tuned models, and HF directories of the families lmforge
    imports, load as lmforge's GPT (models.source.load_causal_lm, as `generate` and `serve` do); an HF
    directory of another family loads with transformers' AutoModelForCausalLM.
    """
    from lmforge.models.hf import FAMILIES
    from lmforge.models.source import load_causal_lm, resolve_source
    from lmforge.tokenize.bpe import load_tokenizer

    source = resolve_source(path, tokenizer)
    tok = load_tokenizer(source.require_tokenizer("pass --tokenizer DIR (an lmforge run keeps it in RUN/tokenizer)"))
    if source.is_hf and source.meta.get("model_type") not in FAMILIES:
        model = _transformers_lm(source.path, device)
    else:
        model = load_causal_lm(source, device).eval()
    vocab = getattr(model.config, "vocab_size", None)
    if isinstance(vocab, int) and tok.get_vocab_size() > vocab:
        raise InputError(f"the tokenizer has {tok.get_vocab_size()} tokens but the model at {source.path} has "
                         f"{vocab}: they do not belong together (pass --tokenizer DIR)")
    return model, tok


def _transformers_lm(path: Path, device: str) -> Any:
    import torch
    import transformers

    from lmforge.models.checkpoint_io import resolve_device
    from lmforge.models.sizes import check_hf_dir

    check_hf_dir(path)
    target = resolve_device(device)
    dtype = torch.bfloat16 if target.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **{key: dtype})
    log.info("loaded %s with transformers (%s is not a family lmforge imports)", path, model.config.model_type)
    return model.to(target).eval()
