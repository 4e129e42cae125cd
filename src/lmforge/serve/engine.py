"""The generation engine: continuous batching over a slot cache.

Each call to `step()` admits waiting requests into free cache slots (one prefill each, shared
by a request's n samples), then advances every running sequence by one token in a single
forward pass. Sequences leave as soon as they finish, so a short answer never waits for a long
one and a new request never waits for a batch to drain. The engine is single-threaded by design:
one thread calls `step()`; `submit()` and `cancel()` may come from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.errors import InputError
from lmforge.models.gpt import GPT
from lmforge.serve.cache import SlotCache
from lmforge.serve.detok import IncrementalText
from lmforge.serve.sampling import SamplingParams, choose

logger = logging.getLogger(__name__)


@dataclass
class Event:
    """What one step produced for one sample: new text, and why it ended if it did."""

    index: int  # which of the request's n samples
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length"


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    stop_ids: frozenset[int] = frozenset()
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    completion_tokens: int = 0
    unfinished: int = 0


@dataclass
class _Seq:
    request: Request
    index: int
    slot: int
    generator: torch.Generator
    text: IncrementalText
    last: int = 0
    produced: int = 0


class Engine:
    def __init__(self, model: GPT, tokenizer: Any, slots: int = 8, max_len: int | None = None,
                 stop_ids: list[int] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cache = SlotCache(model, slots, max_len)
        self.max_len = self.cache.max_len
        self.device = next(model.parameters()).device
        self.stop_ids = frozenset(stop_ids or [])
        self.vocab = model.config.vocab_size
        self.seen = torch.zeros(slots, self.vocab, dtype=torch.bool, device=self.device)  # repetition penalty
        self._free = list(range(slots))
        self._running: dict[int, _Seq] = {}  # slot -> sequence
        self._waiting: deque[Request] = deque()
        self._lock = threading.Lock()
        self.tokens_generated = 0
        self.steps = 0

    # ---- any thread

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None],
               extra_stop_ids: list[int] | None = None) -> Request:
        self.check_fits(len(prompt_ids), params)
        if params.n > self.cache.slots:
            raise InputError(f"n={params.n} exceeds the server's {self.cache.slots} batch slots")
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab]
        if bad:
            raise InputError(f"prompt token ids out of range for a vocabulary of {self.vocab}: {bad[:5]}")
        stop_ids = frozenset() if params.ignore_eos else self.stop_ids | frozenset(extra_stop_ids or [])
        req = Request(list(prompt_ids), params, sink, stop_ids=stop_ids, unfinished=params.n)
        with self._lock:
            self._waiting.append(req)
        return req

    def check_fits(self, prompt_tokens: int, params: SamplingParams) -> None:
        if prompt_tokens == 0:
            raise InputError("the prompt is empty")
        if prompt_tokens + params.max_new_tokens > self.max_len:
            raise InputError(
                f"this model's context is {self.max_len} tokens, but {prompt_tokens} prompt tokens "
                f"+ max_tokens {params.max_new_tokens} need {prompt_tokens + params.max_new_tokens}")

    def cancel(self, req: Request) -> None:
        req.cancelled = True

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def abort_all(self) -> None:
        """End every request with finish_reason "error" (the engine cannot go on)."""
        for slot, seq in list(self._running.items()):
            self._release(slot)
            seq.request.sink(Event(seq.index, "", [], "error"))
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            for i in range(req.params.n):
                req.sink(Event(i, "", [], "error"))

    # ---- the engine thread

    @torch.no_grad()
    def step(self) -> int:
        """Admit what fits, then one token for every running sequence; returns sequences advanced."""
        self._drop_cancelled()
        self._admit()
        if not self._running:
            return 0
        hi = max(self._running) + 1
        tokens = torch.zeros(hi, 1, dtype=torch.long)  # (B, 1); idle slots in range feed a dummy
        for slot, seq in self._running.items():
            tokens[slot, 0] = seq.last
        self.cache.select(slice(0, hi), 1)
        x = self.model.features(tokens.to(self.device), kv_cache=self.cache)  # (B, 1, C)
        logits = self.model.lm_head(x[:, -1])  # (B, V)
        slots = sorted(self._running)
        for slot in slots:
            self.cache.lengths[slot] += 1
        self._advance(slots, logits[slots] if len(slots) < hi else logits)
        self.steps += 1
        return len(slots)

    def run(self) -> None:
        """Step until nothing is left: offline generation."""
        while self.busy:
            self.step()

    def _drop_cancelled(self) -> None:
        for slot, seq in list(self._running.items()):
            if seq.request.cancelled:
                self._release(slot)
        with self._lock:
            self._waiting = deque(r for r in self._waiting if not r.cancelled)

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or len(self._free) < self._waiting[0].params.n:
                    return
                req = self._waiting.popleft()
            self._free.sort()
            slots = [self._free.pop(0) for _ in range(req.params.n)]
            try:
                logits = self._prefill(req.prompt_ids, slots[0])
            except Exception:
                self._free.extend(slots)
                raise
            for slot in slots[1:]:
                self.cache.copy_slot(slots[0], slot)
            seqs = []
            for i, slot in enumerate(slots):
                self.seen[slot].zero_()
                self.seen[slot, req.prompt_ids] = True
                seq = _Seq(req, i, slot, req.params.generator(i), IncrementalText(self.tokenizer, req.params.stop))
                self._running[slot] = seq
                seqs.append(seq)
            if req.params.max_new_tokens == 0:
                for seq in seqs:
                    self._finish(seq, "length")
                continue
            self._advance(slots, logits.expand(len(slots), -1))

    def _prefill(self, prompt_ids: list[int], slot: int) -> torch.Tensor:
        """Run the prompt into `slot`; return the logits (1, V) for its first new token."""
        self.cache.set_length(slot, 0)
        idx = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)  # (1, T)
        self.cache.select(slice(slot, slot + 1), len(prompt_ids))
        x = self.model.features(idx, kv_cache=self.cache)  # (1, T, C)
        self.cache.set_length(slot, len(prompt_ids))
        return self.model.lm_head(x[:, -1])  # (1, V)

    def _advance(self, slots: list[int], logits: torch.Tensor) -> None:
        seqs = [self._running[s] for s in slots]
        picks = choose(logits, [s.request.params for s in seqs], [s.generator for s in seqs],
                       self.seen[slots])
        for seq, token in zip(seqs, picks, strict=True):
            self.tokens_generated += 1
            req = seq.request
            if token in req.stop_ids:
                self._finish(seq, "stop")
                continue
            seq.produced += 1
            req.completion_tokens += 1
            seq.last = token
            self.seen[seq.slot, token] = True
            delta, stopped = seq.text.add(token)
            if stopped:
                self._finish(seq, "stop", delta, [token])
            elif seq.produced >= req.params.max_new_tokens:
                self._finish(seq, "length", delta, [token])
            else:
                req.sink(Event(seq.index, delta, [token]))

    def _finish(self, seq: _Seq, reason: str, delta: str = "", ids: list[int] | None = None) -> None:
        """Free the slot and send the last text, including what was held back for safety."""
        self._release(seq.slot)
        seq.request.unfinished -= 1
        seq.request.sink(Event(seq.index, delta + seq.text.flush(), ids or [], reason))

    def _release(self, slot: int) -> None:
        self._running.pop(slot, None)
        self.cache.set_length(slot, 0)
        self._free.append(slot)
