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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
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
    cancelled: bool = False


@dataclass
class _Seq:
    request: Request
    index: int
    slot: int
    generator: torch.Generator
    text: IncrementalText
    last: int = 0
    produced: int = 0


def check_fits(prompt_tokens: int, params: SamplingParams, max_len: int) -> None:
    """Refuse a request whose prompt plus new tokens cannot fit the model's context (any backend)."""
    if prompt_tokens == 0:
        raise InputError("the prompt is empty")
    if prompt_tokens + params.max_new_tokens > max_len:
        raise InputError(
            f"this model's context is {max_len} tokens, but {prompt_tokens} prompt tokens "
            f"+ max_tokens {params.max_new_tokens} need {prompt_tokens + params.max_new_tokens}")


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
        req = Request(list(prompt_ids), params, sink, stop_ids=stop_ids)
        with self._lock:
            self._waiting.append(req)
        return req

    def check_fits(self, prompt_tokens: int, params: SamplingParams) -> None:
        check_fits(prompt_tokens, params, self.max_len)

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

    @torch.inference_mode()
    def step(self) -> int:
        """Admit what fits, then one token for every running sequence; returns sequences advanced."""
        self._drop_cancelled()
        self._admit()
        if not self._running:
            return 0
        slots = sorted(self._running)
        hi = slots[-1] + 1
        last = [0] * hi  # idle slots inside the range feed a dummy token and are ignored
        for slot in slots:
            last[slot] = self._running[slot].last
        tokens = torch.tensor(last, dtype=torch.long).view(hi, 1)  # (B, 1)
        self.cache.select(slice(0, hi), 1)
        x = self.model.features(tokens.to(self.device), kv_cache=self.cache)  # (B, 1, C)
        logits = self.model.lm_head(x[:, -1])  # (B, V)
        if len(slots) == hi:
            self.cache.lengths[:hi] += 1
        else:
            self.cache.lengths[slots] += 1
            logits = logits[slots]
        self._advance(slots, logits)
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
        """Give waiting requests slots (all n samples or none), prefill them, take their first tokens."""
        admitted: list[tuple[Request, list[int]]] = []
        with self._lock:
            while self._waiting and len(self._free) >= self._waiting[0].params.n:
                req = self._waiting.popleft()
                self._free.sort()
                admitted.append((req, [self._free.pop(0) for _ in range(req.params.n)]))
        if not admitted:
            return
        try:
            first = self._prefill([(slots[0], req.prompt_ids) for req, slots in admitted])
        except Exception:
            for _, slots in admitted:
                self._free.extend(slots)
            raise
        for (req, slots), logits in zip(admitted, first, strict=True):
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

    def _prefill(self, prompts: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
        """Run prompts into their slots; return each one's logits (1, V) for its first new token.

        Prompts in consecutive slots share one forward pass, right-padded to the longest: the
        padding lands past each row's length, where the row's next tokens overwrite it before
        any query may see it.
        """
        out: dict[int, torch.Tensor] = {}
        order = sorted(prompts)
        runs: list[list[tuple[int, list[int]]]] = []
        for slot, ids in order:
            if runs and runs[-1][-1][0] == slot - 1:
                runs[-1].append((slot, ids))
            else:
                runs.append([(slot, ids)])
        for run in runs:
            lo, width = run[0][0], max(len(ids) for _, ids in run)
            for slot, _ in run:
                self.cache.set_length(slot, 0)
            idx = torch.tensor([ids + [0] * (width - len(ids)) for _, ids in run], dtype=torch.long)  # (B, T)
            self.cache.select(slice(lo, lo + len(run)), width)
            x = self.model.features(idx.to(self.device), kv_cache=self.cache)  # (B, T, C)
            ends = torch.tensor([len(ids) - 1 for _, ids in run], device=x.device)
            logits = self.model.lm_head(x[torch.arange(len(run), device=x.device), ends])  # (B, V)
            for row, (slot, ids) in enumerate(run):
                self.cache.set_length(slot, len(ids))
                out[slot] = logits[row : row + 1]
        return [out[slot] for slot, _ in prompts]

    def _advance(self, slots: list[int], logits: torch.Tensor) -> None:
        seqs = [self._running[s] for s in slots]
        params = [s.request.params for s in seqs]
        seen = self.seen[slots] if any(p.repetition_penalty != 1.0 for p in params) else None
        picks = choose(logits, params, [s.generator for s in seqs], seen)
        self.seen[slots, picks] = True
        for seq, token in zip(seqs, picks, strict=True):
            req = seq.request
            if token in req.stop_ids:
                self._finish(seq, "stop")
                continue
            seq.produced += 1
            seq.last = token
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
        seq.request.sink(Event(seq.index, delta + seq.text.flush(), ids or [], reason))

    def _release(self, slot: int) -> None:
        self._running.pop(slot, None)
        self.cache.set_length(slot, 0)
        self._free.append(slot)
