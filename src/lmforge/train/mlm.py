"""Data and objective for BERT pretraining: masked language modelling plus NSP or SOP.

`build_examples` turns documents into sentence-pair examples once, as BERT's
create_pretraining_data does: sentences are packed into segments A and B, B is the true
continuation or (NSP) a span of another document, or (SOP) A and B are swapped. Masking is not
baked in: `BertPretrainSource` masks each micro-batch afresh from (seed, index), so every epoch
sees new masks (RoBERTa's dynamic masking) and any batch can be rebuilt without the others.

Whole-word masking picks words, not pieces: a Chinese word such as 人民 is two WordPiece tokens
(every Han character is its own token) and masking only one of them leaves an easy guess.
Word boundaries come from jieba for Chinese-heavy documents and from WordPiece's `##`
continuation marker elsewhere.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.clean.text import is_chinese_like
from lmforge.errors import ConfigError, InputError, require
from lmforge.tokenize.bpe import ROLES
from lmforge.train.config import MLMConfig
from lmforge.train.objectives import IGNORE, Batch

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# A sentence ends after a run of terminal punctuation (closing quotes included), after a '.'
# that whitespace follows (so 3.14 and os.path stay whole), or at a line break.
_SENTENCE_END = re.compile(r"(?:[。！？!?…]+[”’」』\"')）]*|\.+[”’\"')）]*(?=\s|$)|\n)\s*")
_MASK_TAG, _ORDER_TAG = 1, 2  # distinct seed tags; numpy treats [s, i] and [s, i, 0] as one seed
_ARRAYS = ("input_ids", "token_type_ids", "word_ids", "offsets", "next_sentence_label")


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


# --------------------------------------------------------------------------- documents


def split_sentences(text: str) -> list[str]:
    """Sentences of Chinese or English text; unlike a filter's count, no character is ever dropped."""
    out, pos = [], 0
    for m in _SENTENCE_END.finditer(text):
        piece = text[pos : m.end()].strip()
        if piece:
            out.append(piece)
        pos = m.end()
    if text[pos:].strip():
        out.append(text[pos:].strip())
    return out


@functools.lru_cache(maxsize=1)
def _jieba():
    jieba = require("jieba", "clean")
    jieba.setLogLevel(logging.WARNING)
    return jieba


def _jieba_word_of_char(sentence: str) -> np.ndarray:
    """For each character, the index of the jieba word it belongs to."""
    word_of = np.zeros(len(sentence), dtype=np.int64)
    for k, (_, start, end) in enumerate(_jieba().tokenize(sentence)):
        word_of[start:end] = k
    return word_of


Segment = tuple[np.ndarray, np.ndarray]  # token ids (int32), word-start flags (bool)


def _tokenize_document(text: str, tokenizer: Tokenizer, whole_word: str) -> list[Segment]:
    """One segment per sentence, each token flagged when it starts a new word."""
    sents = split_sentences(text)
    if not sents:
        return []
    chinese = whole_word != "off" and is_chinese_like(text)
    word_level = whole_word == "on" or chinese
    segments = []
    for sent, enc in zip(sents, tokenizer.encode_batch(sents, add_special_tokens=False), strict=True):
        if not enc.ids:
            continue
        starts = np.ones(len(enc.ids), dtype=bool)
        if word_level:
            starts &= ~np.array([t.startswith("##") for t in enc.tokens])
            if chinese:
                first_char = np.minimum([s for s, _ in enc.offsets], len(sent) - 1)  # (tokens,)
                word = _jieba_word_of_char(sent)[first_char]
                starts[1:] &= word[1:] != word[:-1]
        starts[0] = True
        segments.append((np.asarray(enc.ids, dtype=np.int32), starts))
    return segments


def _concat(segments: list[Segment]) -> Segment:
    return np.concatenate([s[0] for s in segments]), np.concatenate([s[1] for s in segments])


def _split_in_two(segment: Segment, rng: random.Random) -> list[Segment] | None:
    """Cut one sentence at a random word boundary, or None when it is a single word."""
    ids, starts = segment
    cuts = np.flatnonzero(starts[1:]) + 1
    if not len(cuts):
        return None
    c = int(cuts[rng.randrange(len(cuts))])
    return [(ids[:c], starts[:c]), (ids[c:], starts[c:])]


def _truncate_pair(a: Segment, b: Segment | None, max_tokens: int, rng: random.Random) -> tuple[Segment, Segment | None]:
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


# --------------------------------------------------------------------------- examples


@dataclass
class Examples:
    """Every example's `[CLS] A [SEP] B [SEP]` back to back in flat arrays: compact and picklable.

    `word_ids` numbers the words inside each example from 0 (-1 on special tokens); masking picks
    whole word ids, so a word's pieces are masked together.
    """

    input_ids: np.ndarray  # (total tokens,) int32
    token_type_ids: np.ndarray  # (total tokens,) int8: 0 for [CLS] A [SEP], 1 for B [SEP]
    word_ids: np.ndarray  # (total tokens,) int32
    offsets: np.ndarray  # (n + 1,) int64: example i is [offsets[i], offsets[i + 1])
    next_sentence_label: np.ndarray  # (n,) int8: 0 B follows A, 1 B is random (NSP) or swapped (SOP)
    vocab_size: int
    specials: SpecialIds

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def save(self, path: str | Path) -> Path:
        """An .npz file (no pickle), so large corpora are tokenized and paired once."""
        sp, arrays = self.specials, {name: getattr(self, name) for name in _ARRAYS}
        meta = np.array([self.vocab_size, sp.cls, sp.sep, sp.mask, sp.pad], dtype=np.int64)
        np.savez(path, **arrays, meta=meta, all_specials=np.array(sp.all, dtype=np.int64))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Examples:
        try:
            with np.load(path, allow_pickle=False) as z:
                vocab, cls_id, sep, mask, pad = (int(v) for v in z["meta"])
                specials = SpecialIds(cls_id, sep, mask, pad, tuple(int(v) for v in z["all_specials"]))
                return cls(*(z[name] for name in _ARRAYS), vocab_size=vocab, specials=specials)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"cannot read MLM examples {path}: {exc}") from None


class _Builder:
    """BERT's create_instances_from_document, collecting into flat lists."""

    def __init__(self, docs: list[list[Segment]], cfg: MLMConfig, specials: SpecialIds, rng: random.Random):
        self.docs, self.cfg, self.sp, self.rng = docs, cfg, specials, rng
        self.pair = cfg.sentence_task != "none"
        self.max_tokens = cfg.max_seq_len - (3 if self.pair else 2)
        self.ids: list[np.ndarray] = []
        self.types: list[np.ndarray] = []
        self.words: list[np.ndarray] = []
        self.labels: list[int] = []
        self._special_ids = np.array(specials.all, dtype=np.int32)

    def document(self, d: int) -> None:
        doc, rng = self.docs[d], self.rng
        # Mostly full-length examples; a few short ones so the model also sees short inputs.
        target = self.max_tokens
        if rng.random() < self.cfg.short_seq_prob:
            target = rng.randint(2, self.max_tokens)
        chunk: list[Segment] = []
        length, i = 0, 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i][0])
            if i == len(doc) - 1 or length >= target:
                i -= self._emit(chunk, d, target)  # segments given back are reused by the next chunk
                chunk, length = [], 0
            i += 1

    def _emit(self, chunk: list[Segment], d: int, target: int) -> int:
        """Add one example made from `chunk`; return how many of its segments went unused."""
        rng, task = self.rng, self.cfg.sentence_task
        if not self.pair:
            a, _ = _truncate_pair(_concat(chunk), None, self.max_tokens, rng)
            self._add(a, None, 0)
            return 0
        # The original makes every one-sentence chunk a random pair, which skews labels towards
        # "random" on corpora of short documents; cutting that sentence in two keeps them 50/50.
        segs = chunk if len(chunk) >= 2 else _split_in_two(chunk[0], rng)
        if task == "nsp" and (segs is None or rng.random() < 0.5):
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = _concat(chunk[:a_end])
            b = self._random_span(d, target - len(a[0]))
            a, b = _truncate_pair(a, b, self.max_tokens, rng)
            self._add(a, b, 1)
            return len(chunk) - a_end
        if segs is None:  # SOP on a single word: no order to predict
            return 0
        a_end = rng.randint(1, len(segs) - 1)
        a, b = _concat(segs[:a_end]), _concat(segs[a_end:])
        swapped = task == "sop" and rng.random() < 0.5
        if swapped:
            a, b = b, a
        a, b = _truncate_pair(a, b, self.max_tokens, rng)
        self._add(a, b, int(swapped))
        return 0

    def _random_span(self, d: int, target: int) -> Segment:
        rng = self.rng
        for _ in range(10):  # a different document, as in BERT (a long corpus almost never repeats)
            r = rng.randrange(len(self.docs))
            if r != d:
                break
        doc = self.docs[r]
        out = []
        for j in range(rng.randrange(len(doc)), len(doc)):
            out.append(doc[j])
            if sum(len(s[0]) for s in out) >= target:
                break
        return _concat(out)

    def _add(self, a: Segment, b: Segment | None, label: int) -> None:
        sp = self.sp
        parts_ids = [[sp.cls], a[0], [sp.sep]]
        parts_starts = [[False], a[1], [False]]
        n_b = 0
        if b is not None:
            parts_ids += [b[0], [sp.sep]]
            parts_starts += [b[1], [False]]
            n_b = len(b[0]) + 1
        ids = np.concatenate(parts_ids).astype(np.int32)
        starts = np.concatenate(parts_starts).astype(bool)
        # [UNK] inside the text is special too: predicting it teaches nothing. The token after any
        # special starts a word of its own, even when truncation cut that word in half.
        special = np.isin(ids, self._special_ids)
        starts[special] = False
        starts[1:] |= special[:-1] & ~special[1:]
        words = (np.cumsum(starts) - 1).astype(np.int32)
        words[special] = -1
        types = np.zeros(len(ids), dtype=np.int8)
        types[len(ids) - n_b :] = 1
        self.ids.append(ids)
        self.types.append(types)
        self.words.append(words)
        self.labels.append(label)


def build_examples(texts: Iterable[str], tokenizer: Tokenizer, cfg: MLMConfig, seed: int) -> Examples:
    """Tokenize documents and pair their sentences into examples; the same inputs give the same arrays."""
    specials = special_ids(tokenizer)
    docs = [d for d in (_tokenize_document(t, tokenizer, cfg.whole_word) for t in texts if t) if d]
    if not docs:
        raise InputError("no text to build MLM examples from: every document was empty")
    if cfg.sentence_task == "nsp" and len(docs) < 2:
        raise InputError(
            f"sentence_task 'nsp' needs at least 2 documents to draw random pairs (got {len(docs)}); "
            "use sentence_task 'sop' or 'none'"
        )
    builder = _Builder(docs, cfg, specials, random.Random(seed))
    for d in range(len(docs)):
        builder.document(d)
    if not builder.ids:
        raise InputError("no MLM examples could be built: every document is a single word")
    lengths = np.array([len(x) for x in builder.ids], dtype=np.int64)
    examples = Examples(
        input_ids=np.concatenate(builder.ids),
        token_type_ids=np.concatenate(builder.types),
        word_ids=np.concatenate(builder.words),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        next_sentence_label=np.array(builder.labels, dtype=np.int8),
        vocab_size=tokenizer.get_vocab_size(),
        specials=specials,
    )
    logger.info(
        "built %d MLM examples from %d documents: %.1f tokens on average, %.0f%% labelled random/swapped",
        len(examples), len(docs), lengths.mean(), 100 * examples.next_sentence_label.mean(),
    )
    return examples


# --------------------------------------------------------------------------- batches


class BertPretrainSource:
    """Padded, freshly masked micro-batches by index: a pure function of (seed, index).

    With `shuffle`, micro-batch i holds global positions i*B ... i*B+B-1 of an endless sequence of
    epochs, each a permutation seeded by (seed, epoch): every example once per epoch, and data
    parallel ranks reading different indices never share a position. Without it (evaluation),
    batch i is examples i*B ... in order, the last one possibly shorter, wrapping after the end.
    """

    def __init__(self, examples: Examples, cfg: MLMConfig, batch_size: int, seed: int, *, shuffle: bool = True):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer (got {batch_size!r})")
        if len(examples) == 0:
            raise InputError("no MLM examples to draw batches from")
        self.examples, self.cfg, self.batch_size, self.seed, self.shuffle = examples, cfg, batch_size, seed, shuffle
        self.num_batches = -(-len(examples) // batch_size)
        specials = np.array(examples.specials.all, dtype=np.int64)
        # Random replacements are ordinary tokens: a random [SEP] or [CLS] would teach nothing.
        self._replacements = np.setdiff1d(np.arange(examples.vocab_size, dtype=np.int64), specials)
        self._permutations: dict[int, np.ndarray] = {}  # the last epochs' orders; a cache, not state

    def __len__(self) -> int:
        return len(self.examples)

    def _order(self, epoch: int) -> np.ndarray:
        perm = self._permutations.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch, _ORDER_TAG]).permutation(len(self.examples))
            if len(self._permutations) >= 2:
                self._permutations.clear()
            self._permutations[epoch] = perm
        return perm

    def rows(self, index: int) -> np.ndarray:
        """The example indices of micro-batch `index`."""
        n, bs = len(self.examples), self.batch_size
        if not self.shuffle:
            start = (index % self.num_batches) * bs
            return np.arange(start, min(start + bs, n))
        positions = np.arange(index * bs, (index + 1) * bs)
        out = np.empty(bs, dtype=np.int64)
        for epoch in np.unique(positions // n):
            here = positions // n == epoch
            out[here] = self._order(int(epoch))[positions[here] % n]
        return out

    def micro_batch(self, index: int) -> Batch:
        ex, rows = self.examples, self.rows(index)
        starts, ends = ex.offsets[rows], ex.offsets[rows + 1]
        B, T = len(rows), int((ends - starts).max())
        input_ids = np.full((B, T), ex.specials.pad, dtype=np.int64)
        token_type = np.zeros((B, T), dtype=np.int64)
        words = np.full((B, T), -1, dtype=np.int64)
        attention = np.zeros((B, T), dtype=np.int64)
        for r, (s, e) in enumerate(zip(starts, ends, strict=True)):
            input_ids[r, : e - s] = ex.input_ids[s:e]
            token_type[r, : e - s] = ex.token_type_ids[s:e]
            words[r, : e - s] = ex.word_ids[s:e]
            attention[r, : e - s] = 1
        input_ids, labels = self._mask(input_ids, words, np.random.default_rng([self.seed, index, _MASK_TAG]))
        batch = {
            "input_ids": input_ids,
            "token_type_ids": token_type,
            "attention_mask": attention,
            "labels": labels,
        }
        if self.cfg.sentence_task != "none":
            batch["next_sentence_label"] = ex.next_sentence_label[rows].astype(np.int64)
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
        input_ids[to_mask] = self.examples.specials.mask
        input_ids[to_random] = rng.choice(self._replacements, size=int(to_random.sum()))
        return input_ids, labels


def eval_source(examples: Examples, cfg: MLMConfig, batch_size: int, seed: int = 0) -> BertPretrainSource:
    """Validation batches: examples in order and fixed masks, so every evaluation scores the same thing.

    `num_batches` of them cover every example once.
    """
    return BertPretrainSource(examples, cfg, batch_size, seed, shuffle=False)


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
