"""Perplexity under a small reference language model, CCNet style: text like the reference corpus
(Wikipedia, a curated set) scores low, boilerplate and noise score high.

The reference model is an lmforge GPT (a run directory or checkpoint, with its tokenizer; any causal
LM `lmforge evaluate` loads), or a KenLM `.arpa`/`.bin` file when the optional `kenlm` package is
installed. Units: with a neural model, perplexity per token of the reference tokenizer, exp of the
mean negative log-likelihood in nats over the document's first `max_tokens` tokens, each token
predicted after the tokenizer's BOS or `<|endoftext|>` (the separator the model saw between
documents), as `lmforge evaluate` counts it (`evaluate.lm.lm_scores`). With KenLM, perplexity per
word (whitespace-separated, or the pieces of `tokenizer` when given) with an end-of-line token per
line, as CCNet counts it.

The score is -ln(perplexity), so higher is better and the shared cutoffs work unchanged;
`meta.quality.<key>` holds the perplexity itself and `meta.quality.<bucket_key>` its bucket: head,
middle or tail, by the language's own perplexity percentiles (CCNet's 30/60) computed over the
whole corpus in reduce, or by fixed per-language perplexities from the config.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from lmforge.quality.scoring import KeepConfig, PerLanguage, ScoreStage, existing_path, kth_best, per_language
from lmforge.records import Record

log = logging.getLogger(__name__)

BUCKETS = ("head", "middle", "tail")
LN10 = math.log(10)


class PerplexityConfig(KeepConfig):
    key: str = Field(default="perplexity", min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                     description="meta.quality.<key> holds the perplexity")
    bucket_key: str = Field(default="bucket", min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                            description="meta.quality.<bucket_key> holds head, middle or tail")
    model: str | None = Field(default=None, description="reference LM: an lmforge run directory or checkpoint "
                                                        "(or any causal LM directory lmforge evaluate loads)")
    tokenizer: str | None = Field(default=None, description="its tokenizer (default: found beside the model); "
                                                            "with kenlm, the pieces the KenLM model was trained on")
    kenlm: str | None = Field(default=None, description="a KenLM .arpa or .bin file instead of a model")
    max_tokens: int = Field(default=1024, ge=1, le=1 << 20,
                            description="tokens of each document scored, the first ones (neural model)")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    model_batch_size: int = Field(default=8, ge=1, le=4096, description="windows per forward pass")
    percentiles: tuple[float, float] = Field(
        default=(30.0, 60.0), description="head: the best (lowest-perplexity) 30% of a language, middle: to 60%")
    bucket_perplexity: dict[str, tuple[float, float]] | None = Field(
        default=None, description='fixed bucket edges per language instead: {zh: [150, 400], "*": [...]}, '
        "head up to the first perplexity, middle up to the second")
    keep: list[Literal["head", "middle", "tail"]] | None = Field(
        default=None, description="keep these buckets only ([head], [head, middle]); none: keep all")
    max_perplexity: PerLanguage | None = Field(
        default=None, description="keep documents whose perplexity is at most this (one number or per language)")

    @field_validator("model", "tokenizer", "kenlm")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return existing_path(value)

    @model_validator(mode="after")
    def _consistent(self) -> PerplexityConfig:
        if (self.model is None) == (self.kenlm is None):
            raise ValueError("give model (an lmforge run or checkpoint) or kenlm (a .arpa/.bin file), one of them")
        if self.kenlm is not None and importlib.util.find_spec("kenlm") is None:
            raise ValueError("kenlm needs the kenlm package, which lmforge does not install: pip install kenlm")
        if self.threshold is not None:
            raise ValueError("threshold is in -ln(perplexity) here; give max_perplexity instead")
        rules = [name for name in ("top_fraction", "max_perplexity", "keep") if getattr(self, name) is not None]
        if len(rules) > 1:
            raise ValueError(f"give one of top_fraction, max_perplexity, keep (got {', '.join(rules)})")
        if not 0 < self.percentiles[0] < self.percentiles[1] < 100:
            raise ValueError(f"percentiles must be two increasing numbers in (0, 100); got {list(self.percentiles)}")
        for lang, (a, b) in (self.bucket_perplexity or {}).items():
            if not 0 < a < b:
                raise ValueError(f"bucket_perplexity.{lang} must be two increasing positive perplexities; got {[a, b]}")
        if self.keep is not None and sorted(set(self.keep), key=BUCKETS.index) not in (
                ["head"], ["head", "middle"], list(BUCKETS)):
            raise ValueError(f"keep must be [head], [head, middle] or all three; got {self.keep}")
        values = self.max_perplexity.values() if isinstance(self.max_perplexity, dict) else [self.max_perplexity]
        if any(v is not None and v <= 0 for v in values):
            raise ValueError(f"max_perplexity must be positive; got {self.max_perplexity}")
        return self


def neg_log(perplexity: float) -> float:
    return -math.log(perplexity)


@functools.lru_cache(maxsize=2)
def load_reference(model: str, tokenizer: str | None, device: str) -> tuple[Any, Any]:
    """(scorer, encoder) of a neural reference LM, once per process."""
    from lmforge.evaluate.loglik import Encoder, Scorer, load_lm

    lm, tok = load_lm(model, tokenizer, device)
    return Scorer(lm), Encoder(tok)


@functools.lru_cache(maxsize=2)
def load_kenlm(path: str, tokenizer: str | None) -> tuple[Any, Any]:
    """(kenlm.Model, tokenizers.Tokenizer or None), once per process."""
    import kenlm

    tok = None
    if tokenizer:
        from lmforge.tokenize.bpe import load_tokenizer

        tok = load_tokenizer(tokenizer)
    return kenlm.Model(path), tok


def document_nll(scorer: Any, encoder: Any, texts: list[str], max_tokens: int,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(summed NLL in nats, predicted tokens) per text under a neural LM.

    Each text is its first `max_tokens` tokens after the encoder's prefix, cut into windows of the
    model's context that share one token (`lm_scores` cuts them the same way), so every token but
    the first of the sequence is predicted once. All windows of a batch of texts are scored
    together, longest first (`Scorer.continuations` batches them by length).
    """
    scorer.batch_size = batch_size
    requests, owner = [], []
    for i, text in enumerate(texts):
        seq = encoder.prefix + encoder.encode(text)[:max_tokens]
        step = scorer.max_len or max(len(seq) - 1, 1)
        for start in range(0, len(seq) - 1, step):
            window = seq[start : start + step + 1]
            requests.append((window[:1], window[1:]))
            owner.append(i)
    nll, tokens = np.zeros(len(texts)), np.zeros(len(texts), dtype=np.int64)
    for i, logp in zip(owner, scorer.continuations(requests), strict=True):
        nll[i] -= sum(logp)
        tokens[i] += len(logp)
    return nll, tokens


def kenlm_log10(model: Any, tok: Any, text: str) -> tuple[float, int]:
    """(log10 probability, words + one end-of-line per line) of a text under KenLM, line by line."""
    total, words = 0.0, 0
    for line in text.splitlines():
        pieces = tok.encode(line).tokens if tok is not None else line.split()
        if not pieces:
            continue
        total += model.score(" ".join(pieces), bos=True, eos=True)
        words += len(pieces) + 1
    return total, words


class PerplexityFilter(ScoreStage):
    """Perplexity under a reference LM, its CCNet bucket, and an optional cut (see the module docstring)."""

    name = "perplexity_filter"
    Config = PerplexityConfig
    score_label = "-ln perplexity (higher: closer to the reference text)"
    value_kind = "perplexity"

    def score_batch(self, records: list[Record]) -> np.ndarray:
        cfg = self.config
        if cfg.kenlm is not None:
            model, tok = load_kenlm(cfg.kenlm, cfg.tokenizer)
            counted = [kenlm_log10(model, tok, r.text) for r in records]
            return np.array([total * LN10 / words if words else math.nan for total, words in counted])
        scorer, encoder = load_reference(cfg.model, cfg.tokenizer, cfg.device)
        nll, tokens = document_nll(scorer, encoder, [r.text for r in records], cfg.max_tokens,
                                   cfg.model_batch_size)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tokens > 0, -nll / np.maximum(tokens, 1), math.nan)

    def value(self, score: float) -> float:
        """The perplexity a score stands for."""
        return math.exp(-score) if score > -700 else math.inf

    def lang_values(self, lang: str, scores: np.ndarray) -> dict[str, float]:
        cfg = self.config
        fixed = per_language(cfg.bucket_perplexity, lang) if cfg.bucket_perplexity else None
        if fixed is not None:
            head, middle = neg_log(fixed[0]), neg_log(fixed[1])
        else:
            head, middle = (kth_best(scores, p / 100) for p in cfg.percentiles)
        if cfg.keep is not None:
            cutoff = -math.inf if "tail" in cfg.keep else middle if "middle" in cfg.keep else head
        elif cfg.max_perplexity is not None:
            limit = per_language(cfg.max_perplexity, lang)
            cutoff = -math.inf if limit is None else neg_log(limit)
        else:
            cutoff = super().lang_values(lang, scores)["cutoff"]
        return {"cutoff": cutoff, "head_min": head, "middle_min": middle}

    def extra(self, score: float, lang: str, values: dict[str, float]) -> dict[str, Any]:
        bucket = "head" if score >= values["head_min"] else "middle" if score >= values["middle_min"] else "tail"
        return {self.config.bucket_key: bucket}
