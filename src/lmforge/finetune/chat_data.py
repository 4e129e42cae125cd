"""Conversations and preference pairs as token ids, with the server's own chat encoder.

Every conversation is encoded by `tokenize.chat.ChatEncoder`, the object `lmforge serve` builds
for the same tokenizer directory: the prompt a fine-tuned model learns to answer is, token for
token, the prompt the server will give it, and special-token strings typed inside a message stay
text in training as they do in serving.

The loss covers every assistant turn, not only the last. A turn's learned tokens are found by
encoding the conversation up to it twice: with the generation prompt (what the server sends
before the model speaks) and with the turn itself; the tokens in between are the answer and its
end-of-turn marker, with the whitespace a template writes after that marker left out. Both
encodings must be prefixes of the whole conversation's ids, which holds for every template that
renders earlier turns the same whatever follows (ChatML, Llama 3, Qwen2.5); a template that
does not (Qwen3 drops earlier reasoning) is refused per row with the turn named.

Packing puts several conversations in one row of at most `seq_len` tokens (best fit,
decreasing), each keeping its own positions and seeing only itself (models.attention.PackedDocuments).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmforge.errors import UserError
from lmforge.finetune.tasks import Encoded, ExampleSource, logits_of
from lmforge.tasks.examples import ConversationExample, InstructionExample, PreferenceExample, Turn
from lmforge.tasks.spans import RowError
from lmforge.train.objectives import IGNORE, Batch

log = logging.getLogger(__name__)


def messages_of(example: ConversationExample | InstructionExample) -> list[dict[str, str]]:
    """{role, content} dicts of a conversation; an instruction pair is a one-turn conversation."""
    if isinstance(example, InstructionExample):
        return [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.response}]
    return [t.to_dict() for t in example.messages]


def prompt_messages(prompt: str | tuple[Turn, ...]) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [t.to_dict() for t in prompt]


class TurnEncoder:
    """Token ids of conversations and which of them are learned (see the module docstring)."""

    def __init__(self, chat) -> None:  # a tokenize.chat.ChatEncoder
        self.chat = chat
        self.controls = set(chat.special_ids.values())
        self._blank: dict[int, bool] = {}

    def _is_blank(self, token: int) -> bool:
        if token not in self._blank:
            self._blank[token] = token not in self.controls and not self.chat.tokenizer.decode(
                [token], skip_special_tokens=False).strip()
        return self._blank[token]

    def answer_end(self, ids: list[int], start: int, end: int) -> int:
        """`end` less the whitespace tokens after the turn's last control token (ChatML's newline)."""
        if not any(t in self.controls for t in ids[start:end]):
            return end
        while end > start and ids[end - 1] not in self.controls and self._is_blank(ids[end - 1]):
            end -= 1
        return end

    def encode(self, messages: list[dict[str, str]]) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, [(start, end) of each assistant turn's learned tokens]) of one conversation."""
        full = self.chat.encode(messages, add_generation_prompt=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise RowError("the conversation starts with an assistant turn: there is nothing it answers")
            prompt = self.chat.encode(messages[:i], add_generation_prompt=True)
            turn = self.chat.encode(messages[: i + 1], add_generation_prompt=False)
            if full[: len(prompt)] != prompt or full[: len(turn)] != turn or len(turn) <= len(prompt):
                raise RowError(f"the chat template renders turn {i} differently once later turns follow, so the "
                               "served prompt would differ from the trained one")
            spans.append((len(prompt), self.answer_end(turn, len(prompt), len(turn))))
        return full, spans


@dataclass
class EncodeStats:
    """What encoding did to the examples: kept, cut at an earlier turn, dropped (with the first reason)."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    learned_tokens: int = 0

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def encode_conversations(examples: Sequence[ConversationExample | InstructionExample], chat, max_len: int,
                         pad_id: int) -> tuple[Encoded, EncodeStats]:
    """Ids and per-token labels (the token itself where learned, IGNORE elsewhere).

    A conversation longer than `max_len` keeps its turns up to the last answer that ends within it
    (a cut answer would teach stopping mid-sentence); one whose first answer does not fit is dropped.
    """
    encoder, stats = TurnEncoder(chat), EncodeStats(examples=len(examples))
    ids, labels = [], []
    for example in examples:
        try:
            full, spans = encoder.encode(messages_of(example))
        except RowError as exc:
            stats.drop(str(exc))
            continue
        fitting = [s for s in spans if s[1] <= max_len]
        if not fitting:
            stats.drop(f"the first answer ends after seq_len={max_len} tokens")
            continue
        if len(fitting) < len(spans) or len(full) > max_len:
            stats.truncated += 1
            full = full[: max_len if len(fitting) == len(spans) else fitting[-1][1]]
        row = np.asarray(full, dtype=np.int64)
        label = np.full(len(row), IGNORE, dtype=np.int64)
        for start, end in fitting:
            label[start:end] = row[start:end]
        ids.append(row)
        labels.append(label)
        stats.kept += 1
        stats.tokens += len(row)
        stats.learned_tokens += int((label != IGNORE).sum())
    if stats.dropped:
        log.warning("%d of %d conversations dropped (%s)", stats.dropped, stats.examples,
                    "; ".join(f"{n}: {r}" for r, n in list(stats.reasons.items())[:3]))
    if not ids:
        raise UserError(f"no conversation could be encoded ({stats.reasons})")
    return Encoded(ids, labels, pad_id), stats


# --------------------------------------------------------------------------- packing


def pack(lengths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Example indices grouped into rows of at most `capacity` tokens: best fit, longest first.

    Ties in length are broken by a seeded shuffle, so the packing is a function of (lengths, seed).
    The rows' free space is kept sorted, so each example finds its row by bisection.
    """
    import bisect

    order = np.random.default_rng([seed, 7]).permutation(len(lengths))
    order = sorted(order.tolist(), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row), ascending
    for i in order:
        n = int(lengths[i])
        at = bisect.bisect_left(free, (n, -1))  # the fullest row that still fits it
        if at < len(free):
            room, row = free.pop(at)
            rows[row].append(i)
            bisect.insort(free, (room - n, row))
        else:
            rows.append([i])
            bisect.insort(free, (capacity - n, len(rows) - 1))
    return rows


@dataclass
class Rows:
    """Rows of one or more examples each (what ExampleSource orders and batches)."""

    members: list[list[int]]

    def __len__(self) -> int:
        return len(self.members)


class ChatSource(ExampleSource):
    """Micro-batches of conversations: one per row, or packed several per row (`packed=True`).

    Each batch has `input_ids`, `targets` (the next token where it is learned, else IGNORE; never
    across two documents) and, when packed, `doc_ids` and `positions` for the attention mask.
    """

    def __init__(self, data: Encoded, batch_size: int, seed: int, shuffle: bool = True, packed: bool = False,
                 capacity: int = 0) -> None:
        self.encoded, self.packed = data, packed
        members = pack([len(x) for x in data.ids], capacity, seed) if packed else [[i] for i in range(len(data))]
        super().__init__(Rows(members), batch_size, seed, shuffle)  # type: ignore[arg-type]

    def padding(self) -> dict[str, float]:
        """Padding share of one ordered pass: the figure packing exists to lower."""
        real = padded = 0
        for i in range(self.num_batches):
            rows = [self.data.members[r] for r in super().rows(i) if r < len(self.data)]
            widths = [sum(len(self.encoded.ids[e]) for e in row) for row in rows]
            real += sum(widths)
            padded += max(widths) * len(widths)
        return {"rows": len(self.data), "tokens": real, "padded_tokens": padded,
                "padding": round(1 - real / max(padded, 1), 4)}

    def micro_batch(self, index: int) -> Batch:
        rows = self.rows(index)
        if not rows:
            raise IndexError(f"batch {index} is past the end of {len(self.data)} rows")
        members = [self.data.members[r] for r in rows]
        width = max(sum(len(self.encoded.ids[e]) for e in row) for row in members)
        ids = np.full((len(rows), width), self.encoded.pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), IGNORE, dtype=np.int64)
        docs = np.full((len(rows), width), -1, dtype=np.int64)  # padding: a document of its own
        pos = np.zeros((len(rows), width), dtype=np.int64)
        for b, row in enumerate(members):
            at = 0
            for d, e in enumerate(row):
                x, y = self.encoded.ids[e], self.encoded.labels[e]
                n = len(x)
                ids[b, at : at + n] = x
                targets[b, at : at + n - 1] = y[1:]  # position t predicts token t + 1 of the same document
                docs[b, at : at + n] = d
                pos[b, at : at + n] = np.arange(n)
                at += n
            pos[b, at:] = np.arange(width - at)
        batch = {"input_ids": torch.from_numpy(ids), "targets": torch.from_numpy(targets)}
        if self.packed:
            batch |= {"doc_ids": torch.from_numpy(docs), "positions": torch.from_numpy(pos)}
        return batch


# --------------------------------------------------------------------------- preference pairs


@dataclass
class PairEncoded:
    """Per pair: the chosen and rejected sequences (prompt + answer) and where the answer starts."""

    chosen: list[np.ndarray]
    rejected: list[np.ndarray]
    prompt_len: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.chosen)


def encode_pairs(examples: Sequence[PreferenceExample], chat, max_len: int, pad_id: int
                 ) -> tuple[PairEncoded, EncodeStats]:
    """Both answers of each pair after the same rendered prompt; an answer too long is cut at `max_len`
    (counted as truncated), a prompt that leaves no room for one is dropped."""
    encoder, stats = TurnEncoder(chat), EncodeStats(examples=len(examples))
    out = PairEncoded([], [], [], pad_id)
    for example in examples:
        context = prompt_messages(example.prompt)
        try:
            seqs = [encoder.encode([*context, {"role": "assistant", "content": a}])
                    for a in (example.chosen, example.rejected)]
        except (RowError, UserError) as exc:
            stats.drop(str(exc))
            continue
        starts = {spans[-1][0] for _, spans in seqs}
        if len(starts) != 1:
            stats.drop("the two answers follow differently rendered prompts")
            continue
        start = starts.pop()
        if start >= max_len - 1:
            stats.drop(f"the prompt alone takes {start} of seq_len={max_len} tokens")
            continue
        cut = [ids[: min(spans[-1][1], max_len)] for ids, spans in seqs]
        stats.truncated += any(spans[-1][1] > max_len for _, spans in seqs)
        out.chosen.append(np.asarray(cut[0], dtype=np.int64))
        out.rejected.append(np.asarray(cut[1], dtype=np.int64))
        out.prompt_len.append(start)
        stats.kept += 1
        stats.tokens += len(cut[0]) + len(cut[1])
        stats.learned_tokens += len(cut[0]) + len(cut[1]) - 2 * start
    if not out.chosen:
        raise UserError(f"no preference pair could be encoded ({stats.reasons})")
    return out, stats


class PairSource(ExampleSource):
    """Micro-batches of pairs: rows 0..b-1 the chosen sequences, rows b..2b-1 the rejected, `targets`
    the next answer token (IGNORE over prompt and padding), `pair` each pair's index, and once
    reference log-probabilities exist, `ref` (2b,) in the same order."""

    def __init__(self, data: PairEncoded, batch_size: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(data, batch_size, seed, shuffle)  # type: ignore[arg-type]
        self.reference: np.ndarray | None = None  # (pairs, 2): chosen, rejected

    def micro_batch(self, index: int) -> Batch:
        rows = self.rows(index)
        if not rows:
            raise IndexError(f"batch {index} is past the end of {len(self.data)} pairs")
        seqs = [self.data.chosen[r] for r in rows] + [self.data.rejected[r] for r in rows]
        starts = [self.data.prompt_len[r] for r in rows] * 2
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.data.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        targets = np.full((len(seqs), width), IGNORE, dtype=np.int64)
        for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
            targets[i, start - 1 : len(s) - 1] = s[start:]  # position t predicts token t + 1
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                 "targets": torch.from_numpy(targets), "pair": torch.tensor(rows, dtype=torch.int64)}
        if self.reference is not None:
            ref = self.reference[rows]  # (b, 2)
            batch["ref"] = torch.from_numpy(np.concatenate([ref[:, 0], ref[:, 1]]).astype(np.float64))
        return batch


class ChatLM:
    """Next-token loss summed over the learned (assistant) tokens.

    lmforge models compute it without materialising the logits, packed or not; a Hugging Face
    model (unpacked only) goes through its logits."""

    terms = ("lm",)

    def __init__(self, fused: bool = True) -> None:
        self.fused = fused

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"lm": int((batch["targets"] != IGNORE).sum())}

    def sums(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        if self.fused:
            packed = {k: batch[k] for k in ("doc_ids", "positions") if k in batch}
            return {"lm": model(input_ids=batch["input_ids"], targets=batch["targets"], **packed).float()}
        logits = logits_of(model(input_ids=batch["input_ids"]))  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(),
                                                 ignore_index=IGNORE, reduction="sum")
        return {"lm": loss}
