"""Data and objective for BERT pretraining: masked language modelling plus NSP or SOP, from token shards.

`ShardPairs` makes sentence-pair examples lazily from WordPiece token shards, as BERT's
create_pretraining_data does for one document at a time: from a random place in the corpus,
sentences are gathered up to a target length and cut into segments A and B; B is the true
continuation or (NSP) a span of another document, or (SOP) A and B are swapped. Example `n` is a
pure function of (seed, n) that reads a few hundred tokens through memory maps, so memory stays
flat however large the corpus, and no pass over the data runs before training starts.

Masking is not baked in either: `BertPretrainSource` masks each micro-batch afresh from (seed,
index) (RoBERTa's dynamic masking), so any batch can be rebuilt without the others.

Whole-word masking picks words, not pieces: a Chinese word such as 人民 is two WordPiece tokens
(every Han character is its own token) and masking only one of them leaves an easy guess.
The shards keep each token's word and sentence starts (`lmforge.tokenize.words`): jieba words
for Chinese and Japanese documents, WordPiece's `##` continuation marker elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import ConfigError, InputError
from lmforge.lang import sentences as split_sentences
from lmforge.tokenize.bpe import ROLES
from lmforge.tokenize.words import CJK, SENTENCE, WORD
from lmforge.train.config import MLMConfig
from lmforge.train.objectives import IGNORE, Batch

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.tokenize.dataset import TokenDataset

logger = logging.getLogger(__name__)

__all__ = ["BertPretrainSource", "MaskedLM", "Pair", "ShardPairs", "SpecialIds", "eval_source", "special_ids",
           "split_sentences"]

_MASK_TAG, _PAIR_TAG = 1, 3  # distinct seed tags; numpy treats [s, i] and [s, i, 0] as one seed
_TRIES = 100  # fresh draws before giving up on a corpus with nothing to pair


# --------------------------------------------------------------------------- tokenizer roles


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    mask: int
    pad: int
    all: tuple[int, ...]  # every special token: never selected for masking, never a random replacement


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The ids MLM needs, in either spelling lmforge's tokenizers use ([MASK] or <|mask|>)."""
    found = {}
    for role in ("cls", "sep", "mask", "pad"):
        ids = [tokenizer.token_to_id(name) for name in ROLES[role]]
        found[role] = next((i for i in ids if i is not None), None)
        if found[role] is None:
            raise InputError(
                f"the tokenizer has no {role} token ({' or '.join(ROLES[role])}); "
                "MLM pretraining needs a tokenizer trained with tokenizer.kind: wordpiece"
            )
    added = tokenizer.get_added_tokens_decoder()
    every = sorted({i for i, tok in added.items() if tok.special} | set(found.values()))
    return SpecialIds(**found, all=tuple(every))


# --------------------------------------------------------------------------- sentence pairs

Segment = tuple[np.ndarray, np.ndarray]  # token ids (int64), word-start flags (bool)


def _concat(segments: list[Segment]) -> Segment:
    return np.concatenate([s[0] for s in segments]), np.concatenate([s[1] for s in segments])


def _split_in_two(segment: Segment, rng: np.random.Generator) -> list[Segment] | None:
    """Cut one sentence at a random word boundary, or None when it is a single word."""
    ids, starts = segment
    cuts = np.flatnonzero(starts[1:]) + 1
    if not len(cuts):
        return None
    c = int(cuts[rng.integers(len(cuts))])
    return [(ids[:c], starts[:c]), (ids[c:], starts[c:])]


def _truncate_pair(a: Segment, b: Segment | None, max_tokens: int,
                   rng: np.random.Generator) -> tuple[Segment, Segment | None]:
    """Trim the longer segment, from a random end each time, until the pair fits (as BERT does)."""
    spans = [[0, len(a[0])], [0, 0 if b is None else len(b[0])]]
    while (spans[0][1] - spans[0][0]) + (spans[1][1] - spans[1][0]) > max_tokens:
        longer = spans[0] if spans[0][1] - spans[0][0] > spans[1][1] - spans[1][0] else spans[1]
        if rng.random() < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1
    (a0, a1), (b0, b1) = spans
    a = (a[0][a0:a1], a[1][a0:a1])
    return a, None if b is None else (b[0][b0:b1], b[1][b0:b1])


def word_starts(flags: np.ndarray, whole_word: str) -> np.ndarray:
    """Which tokens start a maskable unit: words (on), words in CJK documents only (auto), tokens (off)."""
    if whole_word == "off":
        return np.ones(len(flags), dtype=bool)
    words = (flags & WORD) != 0
    if whole_word == "on":
        return words
    return words | ((flags & CJK) == 0)


@dataclass
class Pair:
    """One example before the special tokens: segments A and B, the NSP/SOP label, where they came from."""

    a: Segment
    b: Segment | None  # None when sentence_task is "none"
    label: int  # 0: B follows A; 1: B is from another document (NSP) or swapped with A (SOP)
    a_doc: int
    b_doc: int | None


class ShardPairs:
    """Sentence-pair examples drawn from WordPiece token shards: example `n` is a pure function of (seed, n).

    A is drawn at a token position chosen uniformly over the corpus (so documents contribute in
    proportion to their length, as when every document is cut into examples), then moved back to
    the start of its sentence. Only a window of `2 * max_seq_len` tokens around it is read.
    """

    def __init__(self, data: TokenDataset, cfg: MLMConfig, specials: SpecialIds, vocab_size: int, seed: int):
        self.data, self.cfg, self.specials, self.vocab_size, self.seed = data, cfg, specials, vocab_size, seed
        self.paired = cfg.sentence_task != "none"
        self.max_tokens = cfg.max_seq_len - (3 if self.paired else 2)
        self.window = 2 * cfg.max_seq_len
        for shard in range(data.num_shards):
            data.flags(shard)  # refuse shards encoded without word and sentence starts, up front
        if cfg.sentence_task == "nsp" and data.num_documents < 2:
            raise InputError(
                f"sentence_task 'nsp' needs at least 2 documents to draw random pairs (got {data.num_documents}); "
                "use sentence_task 'sop' or 'none'"
            )
        self._special_ids = np.array(specials.all, dtype=np.int64)

    def pair(self, number: int) -> Pair:
        rng = np.random.default_rng([self.seed, number, _PAIR_TAG])
        for _ in range(_TRIES):
            # Mostly full-length examples; a few short ones so the model also sees short inputs.
            target = self.max_tokens
            if rng.random() < self.cfg.short_seq_prob:
                target = int(rng.integers(2, self.max_tokens + 1))
            doc, shard, start, stop = self.data.document_at(int(rng.integers(len(self.data))))
            if stop - 1 <= start:  # a document with no text: its EOS alone
                continue
            anchor = start + int(rng.integers(stop - 1 - start))
            pair = self._make(rng, doc, self._sentences(shard, start, stop - 1, anchor, target), target)
            if pair is not None:
                return pair
        raise InputError(f"no MLM example could be drawn from {self.data.path} in {_TRIES} tries: "
                         "the documents hold no text, or only single words")

    def _sentences(self, shard: int, start: int, end: int, anchor: int, target: int) -> list[Segment]:
        """Whole sentences from the one holding `anchor` on, until they reach `target` tokens."""
        flags = self.data.flags(shard)
        lo = max(start, anchor - self.window)
        back = np.flatnonzero(np.asarray(flags[lo : anchor + 1]) & SENTENCE)
        first = lo + int(back[-1]) if len(back) else anchor
        hi = min(end, first + self.window)
        ids = np.asarray(self.data.shard_tokens(shard)[first:hi], dtype=np.int64)
        f = np.asarray(flags[first:hi])
        bounds = [0, *np.flatnonzero(f[1:] & SENTENCE) + 1, len(ids)]
        out, total = [], 0
        for a, b in zip(bounds, bounds[1:], strict=False):
            starts = word_starts(f[a:b], self.cfg.whole_word)
            starts[0] = True
            out.append((ids[a:b], starts))
            total += b - a
            if total >= target:
                break
        return out

    def _make(self, rng: np.random.Generator, doc: int, sents: list[Segment], target: int) -> Pair | None:
        """BERT's choice of A and B from a chunk of sentences; None when this chunk cannot make one."""
        if not self.paired:
            a, _ = _truncate_pair(_concat(sents), None, self.max_tokens, rng)
            return Pair(a, None, 0, doc, None)
        # The original makes every one-sentence chunk a random pair, which skews labels towards
        # "random" on corpora of short documents; cutting that sentence in two keeps them 50/50.
        segs = sents if len(sents) >= 2 else _split_in_two(sents[0], rng)
        if self.cfg.sentence_task == "nsp" and (segs is None or rng.random() < 0.5):
            a = _concat(sents[: int(rng.integers(1, len(sents))) if len(sents) >= 2 else 1])
            other = self._random_span(rng, doc, target - len(a[0]))
            if other is None:
                return None
            a, b = _truncate_pair(a, other[1], self.max_tokens, rng)
            return Pair(a, b, 1, doc, other[0])
        if segs is None:  # SOP on a single word: no order to predict
            return None
        a_end = int(rng.integers(1, len(segs)))
        a, b = _concat(segs[:a_end]), _concat(segs[a_end:])
        swapped = self.cfg.sentence_task == "sop" and rng.random() < 0.5
        if swapped:
            a, b = b, a
        a, b = _truncate_pair(a, b, self.max_tokens, rng)
        return Pair(a, b, int(swapped), doc, doc)

    def _random_span(self, rng: np.random.Generator, doc: int, target: int) -> tuple[int, Segment] | None:
        """Sentences of another document (never `doc`), from a random one of them on, up to `target` tokens."""
        for _ in range(10):
            other = int(rng.integers(self.data.num_documents))
            shard, start, stop = self.data.document(other)
            if other != doc and stop - 1 > start:
                anchor = start + int(rng.integers(stop - 1 - start))
                return other, _concat(self._sentences(shard, start, stop - 1, anchor, max(1, target)))
        return None

    def example(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """`[CLS] A [SEP] B [SEP]`: (input ids, token types, word ids, label).

        `word_ids` numbers the words from 0 (-1 on special tokens); masking picks whole word ids,
        so a word's pieces are masked together.
        """
        p, sp = self.pair(number), self.specials
        parts_ids = [[sp.cls], p.a[0], [sp.sep]]
        parts_starts = [[False], p.a[1], [False]]
        n_b = 0
        if p.b is not None:
            parts_ids += [p.b[0], [sp.sep]]
            parts_starts += [p.b[1], [False]]
            n_b = len(p.b[0]) + 1
        ids = np.concatenate(parts_ids).astype(np.int64)
        starts = np.concatenate(parts_starts).astype(bool)
        # [UNK] inside the text is special too: predicting it teaches nothing. The token after any
        # special starts a word of its own, even when truncation cut that word in half.
        special = np.isin(ids, self._special_ids)
        starts[special] = False
        starts[1:] |= special[:-1] & ~special[1:]
        words = np.cumsum(starts) - 1
        words[special] = -1
        types = np.zeros(len(ids), dtype=np.int64)
        types[len(ids) - n_b :] = 1
        return ids, types, words, p.label


# --------------------------------------------------------------------------- batches


class BertPretrainSource:
    """Padded, freshly masked micro-batches by index: a pure function of (seed, index).

    Micro-batch i holds examples i*B ... i*B+B-1 of the endless stream `pairs` draws, so data
    parallel ranks reading different indices never share an example. An evaluation source is
    the same with its own pairs and seed: the same indices give the same examples and masks.
    """

    def __init__(self, pairs: ShardPairs, cfg: MLMConfig, batch_size: int, seed: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer (got {batch_size!r})")
        self.pairs, self.cfg, self.batch_size, self.seed = pairs, cfg, batch_size, seed
        specials = np.array(pairs.specials.all, dtype=np.int64)
        # Random replacements are ordinary tokens: a random [SEP] or [CLS] would teach nothing.
        self._replacements = np.setdiff1d(np.arange(pairs.vocab_size, dtype=np.int64), specials)

    def micro_batch(self, index: int) -> Batch:
        rows = [self.pairs.example(index * self.batch_size + j) for j in range(self.batch_size)]
        B, T = len(rows), max(len(r[0]) for r in rows)
        input_ids = np.full((B, T), self.pairs.specials.pad, dtype=np.int64)
        token_type = np.zeros((B, T), dtype=np.int64)
        words = np.full((B, T), -1, dtype=np.int64)
        attention = np.zeros((B, T), dtype=np.int64)
        for r, (ids, types, word_ids, _) in enumerate(rows):
            input_ids[r, : len(ids)] = ids
            token_type[r, : len(ids)] = types
            words[r, : len(ids)] = word_ids
            attention[r, : len(ids)] = 1
        input_ids, labels = self._mask(input_ids, words, np.random.default_rng([self.seed, index, _MASK_TAG]))
        batch = {"input_ids": input_ids, "token_type_ids": token_type, "attention_mask": attention, "labels": labels}
        if self.cfg.sentence_task != "none":
            batch["next_sentence_label"] = np.array([r[3] for r in rows], dtype=np.int64)
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def _mask(self, input_ids: np.ndarray, words: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Choose ~mask_prob of each row's tokens in whole words, then apply BERT's 80/10/10 rule."""
        cfg = self.cfg
        selected = np.zeros(input_ids.shape, dtype=bool)
        for r in range(len(words)):
            w = words[r]
            eligible = w >= 0
            n_tokens = int(eligible.sum())
            if not n_tokens:
                continue
            target = max(1, int(n_tokens * cfg.mask_prob + 0.5))
            length = np.bincount(w[eligible])  # (words,) tokens per word
            order = rng.permutation(len(length))
            fits = np.cumsum(length[order])
            k = int(np.searchsorted(fits, target, side="right"))  # the first k words fit outright
            chosen = np.zeros(len(length), dtype=bool)
            chosen[order[:k]] = True
            covered = int(fits[k - 1]) if k else 0
            for word in order[k + 1 :]:  # like BERT: skip a word that would overshoot, try the next
                if covered >= target:
                    break
                if covered + length[word] <= target:
                    chosen[word] = True
                    covered += int(length[word])
            selected[r] = eligible & chosen[np.maximum(w, 0)]

        labels = np.where(selected, input_ids, IGNORE)
        u = rng.random(input_ids.shape)
        to_mask = selected & (u < cfg.mask_token_frac)
        to_random = selected & ~to_mask & (u < cfg.mask_token_frac + cfg.random_token_frac)
        input_ids = input_ids.copy()
        input_ids[to_mask] = self.pairs.specials.mask
        input_ids[to_random] = rng.choice(self._replacements, size=int(to_random.sum()))
        return input_ids, labels


def eval_source(pairs: ShardPairs, cfg: MLMConfig, batch_size: int, seed: int = 0) -> BertPretrainSource:
    """Validation batches: the same examples and masks on every evaluation (batch i is always the same)."""
    return BertPretrainSource(pairs, cfg, batch_size, seed)


# --------------------------------------------------------------------------- objective


class MaskedLM:
    """BERT's losses: cross-entropy summed over masked tokens, and over pairs for NSP/SOP.

    The NSP/SOP term is called "nsp" either way: it is the same head answering "is B in place".
    Takes the MLM config or just its sentence_task.
    """

    def __init__(self, sentence_task: MLMConfig | Literal["nsp", "sop", "none"] = "nsp") -> None:
        sentence_task = getattr(sentence_task, "sentence_task", sentence_task)
        if sentence_task not in ("nsp", "sop", "none"):
            raise ConfigError(f"sentence_task must be one of ['nsp', 'sop', 'none'] (got {sentence_task!r})")
        self.terms: tuple[str, ...] = ("mlm",) if sentence_task == "none" else ("mlm", "nsp")

    def counts(self, batch: Batch) -> dict[str, int]:
        out = {"mlm": int((batch["labels"] != IGNORE).sum())}
        if "nsp" in self.terms:
            out["nsp"] = int(batch["input_ids"].size(0))
        return out

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        selected = labels != IGNORE  # (B, T)
        mlm_logits, nsp_logits = model(
            batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"), mlm_positions=selected
        )  # (N, V), (B, 2)
        out = {"mlm": F.cross_entropy(mlm_logits.float(), labels[selected], reduction="sum")}
        if "nsp" in self.terms:
            out["nsp"] = F.cross_entropy(nsp_logits.float(), batch["next_sentence_label"], reduction="sum")
        return out
