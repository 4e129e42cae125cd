"""EDA (Wei & Zou, 2019): synonym replacement, random insertion, random swap, random deletion.

Each augmented sentence comes from one operation. With `l` words in a sentence, synonym
replacement changes n = max(1, int(alpha_sr * l)) words, insertion adds n = max(1, int(alpha_ri * l))
synonyms of words already there, swap exchanges n = max(1, int(alpha_rs * l)) pairs, and deletion
drops each word with probability p_rd (never every word). Words are jieba words for Chinese and
regex words for English; punctuation is never touched, and neither is a protected unit (see
`lmforge.augment.text`). Stop words are not replaced and not used as insertion sources, as in the
paper. Fewer changes happen only when a sentence has fewer candidates than n (few words with
synonyms, or fewer than two swappable words).

Randomness comes from the `random.Random` the caller passes, so a record seeded by its id gets the
same augmentations in any process, shard or order.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from lmforge.augment.lexicon import Synonyms
from lmforge.augment.text import ProtectConfig, Segmenter, Unit, render
from lmforge.config import StrictModel

OPS = ("sr", "ri", "rs", "rd")
OP_NAMES = {"sr": "synonym_replacement", "ri": "random_insertion", "rs": "random_swap", "rd": "random_deletion"}


class EmbeddingSource(StrictModel):
    model: str = Field(description="lmforge checkpoint or HF model directory whose input embedding gives neighbours")
    tokenizer: str | None = Field(None, description="[default: beside the checkpoint]")
    k: int = Field(5, gt=0, description="neighbours considered per word")


class EdaConfig(StrictModel):
    """Rates as in the EDA paper (0.1 each is its recommended setting for most data sizes)."""

    alpha_sr: float = Field(0.1, ge=0, le=1, description="synonym replacement: share of words replaced")
    alpha_ri: float = Field(0.1, ge=0, le=1, description="random insertion: synonyms inserted per word")
    alpha_rs: float = Field(0.1, ge=0, le=1, description="random swap: pairs swapped per word")
    p_rd: float = Field(0.1, ge=0, le=1, description="random deletion: probability of deleting each word")
    en_synonyms: Literal["wordnet", "embedding"] = "wordnet"
    zh_synonyms: Literal["cilin", "embedding"] = "cilin"
    embedding: EmbeddingSource | None = Field(None, description="needed when a language's synonyms are 'embedding'")
    wordnet_senses: int = Field(2, gt=0, description="WordNet senses per part of speech offered as synonyms")
    jieba_hmm: bool = Field(True, description="let jieba find words outside its dictionary (names) with its HMM")
    protect: ProtectConfig = Field(default_factory=ProtectConfig)

    @model_validator(mode="after")
    def _check(self) -> EdaConfig:
        if not any((self.alpha_sr, self.alpha_ri, self.alpha_rs, self.p_rd)):
            raise ValueError("every rate (alpha_sr, alpha_ri, alpha_rs, p_rd) is 0: no operation is left to apply")
        if "embedding" in (self.en_synonyms, self.zh_synonyms) and self.embedding is None:
            raise ValueError("synonyms from 'embedding' need embedding: {model: CHECKPOINT}")
        return self


@dataclass(slots=True)
class Augmented:
    """One augmented text: its entity spans (moved with their words), the operation and how much changed."""

    text: str
    op: str
    changes: int
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    details: dict = field(default_factory=dict)


class Eda:
    """Applies EDA to one text at a time; synonym sources load on first use (once per process)."""

    def __init__(self, config: EdaConfig | None = None) -> None:
        self.config = config or EdaConfig()
        self.segmenter = Segmenter(self.config.protect, hmm=self.config.jieba_hmm)
        rates = {"sr": self.config.alpha_sr, "ri": self.config.alpha_ri, "rs": self.config.alpha_rs,
                 "rd": self.config.p_rd}
        self.ops = [op for op in OPS if rates[op] > 0]
        self._rates = rates

    @functools.cached_property
    def _stop(self) -> frozenset[str]:
        from lmforge.clean.normalize import default_stopwords

        return default_stopwords()

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one Eda per stage, two languages
    def synonyms(self, lang: str) -> Synonyms:
        from lmforge.augment import lexicon

        cfg = self.config
        source = cfg.zh_synonyms if lang == "zh" else cfg.en_synonyms
        if source == "embedding":
            assert cfg.embedding is not None
            return lexicon.embedding_neighbours(cfg.embedding.model, cfg.embedding.tokenizer, cfg.embedding.k)
        return lexicon.cilin() if source == "cilin" else lexicon.wordnet(cfg.wordnet_senses)

    def augment(self, text: str, lang: str, rng: random.Random, num_aug: int,
                spans: list[tuple[int, int, str]] | tuple = ()) -> list[Augmented]:
        """Up to `num_aug` distinct texts, each from one operation; the operations take turns."""
        lead, units = self.segmenter.units(text, lang, spans)
        sent = _Sentence(units, lang)
        seen = {text, text.rstrip()}
        out: list[Augmented] = []
        start = rng.randrange(len(self.ops))
        for k in range(num_aug):
            op = self.ops[(start + k) % len(self.ops)]
            new, changes = getattr(self, f"_{op}")(sent, rng)
            if not changes:
                continue
            new_text, new_spans = render(lead, new, lang, labelled=bool(spans))
            if new_text and new_text not in seen:
                seen.add(new_text)
                out.append(Augmented(new_text, OP_NAMES[op], changes, new_spans))
        return out

    # ------------------------------------------------------------------ the four operations

    def _n(self, op: str, sent: _Sentence) -> int:
        return max(1, int(self._rates[op] * sent.n_words))

    def _sources(self, sent: _Sentence) -> list[tuple[int, list[str]]]:
        """(index, synonyms) of the replaceable words that have synonyms; looked up once per sentence."""
        if sent.sources is None:
            lookup, stop, units = self.synonyms(sent.lang), self._stop, sent.units
            fold = str.lower if sent.lang == "en" else str  # Chinese has no case
            sent.sources = [(i, syns) for i in sent.free if fold(units[i].text) not in stop
                            and (syns := lookup(units[i].text))]
        return sent.sources

    def _sr(self, sent: _Sentence, rng: random.Random) -> tuple[list[Unit], int]:
        sources = self._sources(sent)
        picks = rng.sample(sources, min(self._n("sr", sent), len(sources)))
        new = list(sent.units)
        for i, syns in picks:
            old = new[i]
            new[i] = Unit(match_case(rng.choice(syns), old.text), old.ws, True)
        return new, len(picks)

    def _ri(self, sent: _Sentence, rng: random.Random) -> tuple[list[Unit], int]:
        sources = self._sources(sent)
        if not sources:
            return sent.units, 0
        new = list(sent.units)
        n = self._n("ri", sent)
        ws = " " if sent.lang == "en" else ""
        for _ in range(n):
            _, syns = rng.choice(sources)
            # before a word, or at the end after a word; never right after a protected unit ("20|岁", "没|看过")
            places = [j for j, u in enumerate(new) if u.word and not (j and new[j - 1].protected)]
            places += [len(new)] if new and new[-1].word and not new[-1].protected else []
            if not places:
                return sent.units, 0
            new.insert(rng.choice(places), Unit(rng.choice(syns), ws, True))
        return new, n

    def _rs(self, sent: _Sentence, rng: random.Random) -> tuple[list[Unit], int]:
        movable = sent.free
        if len(movable) < 2:
            return sent.units, 0
        new = list(sent.units)
        n = self._n("rs", sent)
        for _ in range(n):
            a, b = rng.sample(movable, 2)
            new[a], new[b] = Unit(new[b].text, new[a].ws, True), Unit(new[a].text, new[b].ws, True)
        return new, n

    def _rd(self, sent: _Sentence, rng: random.Random) -> tuple[list[Unit], int]:
        p, rand = self._rates["rd"], rng.random
        gone = {i for i in sent.free if rand() < p}
        if gone and len(gone) == sent.n_words:  # every word would go: keep one
            gone.discard(rng.choice(sorted(gone)))
        return [u for i, u in enumerate(sent.units) if i not in gone], len(gone)


class _Sentence:
    """What the operations share about one sentence, computed once for all its copies."""

    __slots__ = ("units", "lang", "n_words", "free", "sources")

    def __init__(self, units: list[Unit], lang: str) -> None:
        self.units, self.lang = units, lang
        self.n_words = sum(1 for u in units if u.word)
        self.free = [i for i, u in enumerate(units) if u.word and not u.protected]  # may move, go or change
        self.sources: list[tuple[int, list[str]]] | None = None


def match_case(word: str, like: str) -> str:
    """A replacement capitalised like the word it replaces (sentence-initial "Quick" -> "Fast")."""
    if like[:1].isupper() and word[:1].islower():
        return word[0].upper() + word[1:]
    return word
