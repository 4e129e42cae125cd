"""The generation engine: continuous batching over a slot cache.

Each call to `step()` admits waiting requests into free cache slots (one prefill each, shared
by a request's n samples), then advances every running sequence by one token in a single
forward pass. Sequences leave as soon as they finish, so a short answer never waits for a long
one and a new request never waits for a batch to drain. The engine is single-threaded by design:
one thread calls `step()`; `submit()` and `cancel()` may come from any thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.errors import InputError
from lmforge.models.gpt import GPT
from lmforge.models.sizes import available_memory
from lmforge.serve.cache import SlotCache
from lmforge.serve.detok import IncrementalText
from lmforge.serve.sampling import SamplingParams, choose

logger = logging.getLogger(__name__)

PROMPT_LOGPROB_CHUNK = 256  # prompt positions scored per output-layer call: bounds (positions x vocabulary)


@dataclass
class TokenLogprob:
    """A token's log-probability under the model (log-softmax of the raw logits) and the most likely
    alternatives at its position, best first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Event:
    """What one step produced for one sample: new text, and why it ended if it did."""

    index: int  # which of the request's n samples
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length"
    logprobs: list[TokenLogprob] | None = None  # one per token_ids, when the request asked
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on a sample's first event; the first is None


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
    prompt_logprobs: list[TokenLogprob | None] | None = None  # sent with the first event, then dropped


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """Each row's token's log-probability under logits (N, V) and the row's `top` most likely tokens."""
    if not tokens:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    chosen = lp.gather(1, torch.tensor(tokens, device=lp.device)[:, None])[:, 0].tolist()
    values, ids = (lp.topk(min(top, lp.size(-1)), dim=-1) if top else (lp[:, :0], lp[:, :0].long()))
    return [TokenLogprob(t, c, list(zip(i, v, strict=True)))
            for t, c, i, v in zip(tokens, chosen, ids.tolist(), values.tolist(), strict=True)]


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
        kv_bytes = 2 * self.cache.k.numel() * self.cache.k.element_size()
        if kv_bytes > 256 << 20:  # worth knowing when it is large (a 32k context has GBs per slot)
            logger.info("KV cache: %d slots x %d tokens = %.1f GB (--max-model-len caps it)", slots, self.max_len,
                        kv_bytes / 1e9)
        self._pack_weights()
        self.stop_ids = frozenset(stop_ids or [])
        self.vocab = model.config.vocab_size
        self.seen = torch.zeros(slots, self.vocab, dtype=torch.bool, device=self.device)  # repetition penalty
        self._free = list(range(slots))
        self._running: dict[int, _Seq] = {}  # slot -> sequence
        self._waiting: deque[Request] = deque()
        self._lock = threading.Lock()

    def _pack_weights(self) -> None:
        """On a CPU, oneDNN-packed weight copies make decoding 1.5-2x faster; they cost the weights'
        memory again, so they are made only while half of the available memory stays free."""
        if self.device.type != "cpu" or os.environ.get("LMFORGE_PACK_WEIGHTS", "1") == "0":
            return
        used = self.model.pack_for_inference(available_memory() // 2)
        if used:
            logger.info("decoding with %.0f MB of packed weights (LMFORGE_PACK_WEIGHTS=0 turns this off)", used / 1e6)

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
            first = self._prefill([(slots[0], req.prompt_ids, req.params.prompt_logprobs) for req, slots in admitted])
        except Exception:
            for _, slots in admitted:
                self._free.extend(slots)
            raise
        for (req, slots), (logits, prompt_lp) in zip(admitted, first, strict=True):
            for slot in slots[1:]:
                self.cache.copy_slot(slots[0], slot)
            seqs = []
            for i, slot in enumerate(slots):
                self.seen[slot].zero_()
                self.seen[slot, req.prompt_ids] = True
                seq = _Seq(req, i, slot, req.params.generator(i), IncrementalText(self.tokenizer, req.params.stop),
                           prompt_logprobs=prompt_lp)
                self._running[slot] = seq
                seqs.append(seq)
            if req.params.max_new_tokens == 0:
                for seq in seqs:
                    self._finish(seq, "length")
                continue
            self._advance(slots, logits.expand(len(slots), -1))

    def _prefill(self, prompts: list[tuple[int, list[int], int | None]]
                 ) -> list[tuple[torch.Tensor, list[TokenLogprob | None] | None]]:
        """Run prompts into their slots; return each one's logits (1, V) for its first new token, and
        its prompt tokens' log-probabilities where the third item (alternatives wanted) is not None.

        Prompts in consecutive slots share one forward pass, right-padded to the longest: the
        padding lands past each row's length, where the row's next tokens overwrite it before
        any query may see it.
        """
        out: dict[int, tuple[torch.Tensor, list[TokenLogprob | None] | None]] = {}
        order = sorted(prompts, key=lambda p: p[0])
        runs: list[list[tuple[int, list[int], int | None]]] = []
        for prompt in order:
            if runs and runs[-1][-1][0] == prompt[0] - 1:
                runs[-1].append(prompt)
            else:
                runs.append([prompt])
        for run in runs:
            lo, width = run[0][0], max(len(ids) for _, ids, _ in run)
            for slot, _, _ in run:
                self.cache.set_length(slot, 0)
            idx = torch.tensor([ids + [0] * (width - len(ids)) for _, ids, _ in run], dtype=torch.long)  # (B, T)
            self.cache.select(slice(lo, lo + len(run)), width)
            x = self.model.features(idx.to(self.device), kv_cache=self.cache)  # (B, T, C)
            ends = torch.tensor([len(ids) - 1 for _, ids, _ in run], device=x.device)
            logits = self.model.lm_head(x[torch.arange(len(run), device=x.device), ends])  # (B, V)
            for row, (slot, ids, top) in enumerate(run):
                self.cache.set_length(slot, len(ids))
                prompt_lp = None
                if top is not None:  # position t predicts token t+1; nothing predicts the first
                    prompt_lp = [None]
                    for t in range(0, len(ids) - 1, PROMPT_LOGPROB_CHUNK):  # (chunk, V) at a time, not (T, V)
                        end = min(t + PROMPT_LOGPROB_CHUNK, len(ids) - 1)
                        prompt_lp += token_logprobs(self.model.lm_head(x[row, t:end]), ids[t + 1 : end + 1], top)
                out[slot] = (logits[row : row + 1], prompt_lp)
        return [out[slot] for slot, _, _ in prompts]

    def _advance(self, slots: list[int], logits: torch.Tensor) -> None:
        seqs = [self._running[s] for s in slots]
        params = [s.request.params for s in seqs]
        seen = self.seen[slots] if any(p.repetition_penalty != 1.0 for p in params) else None
        picks = choose(logits, params, [s.generator for s in seqs], seen)
        self.seen[slots, picks] = True
        scored = [r for r, p in enumerate(params) if p.logprobs is not None]
        reports: dict[int, TokenLogprob] = {}
        if scored:  # of the raw logits: what the model says, before bias, penalty and temperature
            lps = token_logprobs(logits[scored], [picks[r] for r in scored], max(params[r].logprobs for r in scored))
            reports = {r: TokenLogprob(lp.token, lp.logprob, lp.top[: params[r].logprobs])
                       for r, lp in zip(scored, lps, strict=True)}
        for row, (seq, token) in enumerate(zip(seqs, picks, strict=True)):
            req = seq.request
            if token in req.stop_ids:
                self._finish(seq, "stop")
                continue
            seq.produced += 1
            seq.last = token
            delta, stopped = seq.text.add(token)
            lp = [reports[row]] if row in reports else None
            if stopped:
                self._finish(seq, "stop", delta, [token], lp)
            elif seq.produced >= req.params.max_new_tokens:
                self._finish(seq, "length", delta, [token], lp)
            else:
                self._send(seq, Event(seq.index, delta, [token], logprobs=lp))

    def _finish(self, seq: _Seq, reason: str, delta: str = "", ids: list[int] | None = None,
                logprobs: list[TokenLogprob] | None = None) -> None:
        """Free the slot and send the last text, including what was held back for safety."""
        self._release(seq.slot)
        self._send(seq, Event(seq.index, delta + seq.text.flush(), ids or [], reason, logprobs=logprobs))

    def _send(self, seq: _Seq, event: Event) -> None:
        if seq.prompt_logprobs is not None:
            event.prompt_logprobs, seq.prompt_logprobs = seq.prompt_logprobs, None
        seq.request.sink(event)

    def _release(self, slot: int) -> None:
        self._running.pop(slot, None)
        self.cache.set_length(slot, 0)
        self._free.append(slot)
