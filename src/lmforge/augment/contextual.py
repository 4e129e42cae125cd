"""Contextual substitution: mask some words, let a masked language model propose replacements, sample one.

The model is an lmforge BERT checkpoint (`lmforge pretrain` with `arch: bert`; its tokenizer is
found beside it, as RUN/tokenizer for RUN/pretrain/checkpoint) or any `transformers` masked LM
directory on disk (`AutoModelForMaskedLM`).

The units that can be masked are Chinese characters (a BERT-style model predicts Chinese one
character at a time) and whole English words, never protected ones (entities, numbers,
negations: see `lmforge.augment.text`) and never punctuation. Of a sentence's `l` words (Chinese
words counted per character), n = max(1, round(fraction * l)) are masked at once, capped by how
many are eligible; each masked unit is replaced by a token sampled from the model's top_k for
that position (temperature-scaled), restricted to tokens of the same kind (a Han character for a
Han character, an ASCII word for an English word; no special tokens, no word pieces) and
different from the original. Each copy masks a fresh random set.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from lmforge.augment.eda import Augmented, match_case
from lmforge.augment.stages import AugmentCommon, AugmentStage, Item
from lmforge.augment.text import ProtectConfig, Segmenter, Unit, render
from lmforge.config import StrictModel
from lmforge.errors import ConfigError, InputError
from lmforge.lang import has_han

log = logging.getLogger(__name__)


class ContextualOptions(StrictModel):
    model: str = Field(description="lmforge BERT checkpoint or transformers masked-LM directory")
    tokenizer: str | None = Field(None, description="[default: beside the lmforge checkpoint, or the HF directory]")
    fraction: float = Field(0.15, gt=0, le=1, description="share of words masked and replaced")
    top_k: int = Field(10, gt=0, description="replacements sampled from the model's k best")
    temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(32, gt=0, description="sentences per forward pass")
    max_len: int = Field(256, gt=8, description="model tokens per sentence; masks beyond are left as they were")
    device: str = "cpu"
    jieba_hmm: bool = True
    protect: ProtectConfig = Field(default_factory=ProtectConfig)


class ContextualConfig(AugmentCommon, ContextualOptions):
    """Masked-LM substitution plus the options every augmentation stage shares."""

    num_aug: int = Field(2, ge=1, le=64, description="augmented copies tried per record")


class MaskedLM:
    """A masked LM and its tokenizer, with the vocabulary sorted into Han characters and English words."""

    def __init__(self, path: str | Path, tokenizer: str | Path | None = None, device: str = "cpu") -> None:
        import json

        import numpy as np
        from transformers import AutoTokenizer

        from lmforge.augment.lexicon import find_tokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"masked LM {path}: no config.json (give an lmforge BERT checkpoint or an HF model dir)")
        model_type = str(json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", ""))
        self.lmforge = model_type == "lmforge-bert"
        if model_type.startswith("lmforge-") and not self.lmforge:
            raise ConfigError(f"{path} is an {model_type} checkpoint; contextual substitution needs a masked LM (BERT)")
        tok_dir = Path(tokenizer) if tokenizer else (find_tokenizer(path) if self.lmforge else path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
            if self.lmforge:
                from lmforge.train.checkpoint import load_checkpoint

                self.model = load_checkpoint(path, device=device)
            else:
                from transformers import AutoModelForMaskedLM

                from lmforge.models.sizes import check_hf_dir

                check_hf_dir(path)
                self.model = AutoModelForMaskedLM.from_pretrained(str(path)).to(device).eval()
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load masked LM {path}: {exc}") from None
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"the tokenizer at {tok_dir} has no mask token; a masked LM's tokenizer is needed")
        self.device = device
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        han, latin = [], []
        for i, piece in enumerate(pieces):
            text = "" if i in special or piece is None or piece.startswith("##") else \
                tok.convert_tokens_to_string([piece]).strip()
            han.append(bool(text) and all(has_han(c) for c in text))
            latin.append(bool(text) and text.isascii() and text.isalpha())
        self.strings = [tok.convert_tokens_to_string([p]).strip() if p else "" for p in pieces]
        self.han_ok, self.latin_ok = np.array(han), np.array(latin)

    def mask_logits(self, texts: list[str], max_len: int, batch_size: int) -> list[Any]:
        """Per text, the logits (n_masks, V) at its mask tokens, as a NumPy array."""
        import torch

        out = []
        tok = self.tokenizer
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=max_len)
            ids, attn = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            where = ids == tok.mask_token_id
            with torch.no_grad():
                if self.lmforge:
                    logits, _ = self.model(ids, attention_mask=attn, mlm_positions=where)
                else:
                    logits = self.model(input_ids=ids, attention_mask=attn).logits[where]
            logits = logits.float().cpu().numpy()
            counts = where.sum(dim=1).tolist()
            start = 0
            for n in counts:
                out.append(logits[start : start + n])
                start += n
        return out


@functools.lru_cache(maxsize=2)
def masked_lm(path: str, tokenizer: str | None, device: str) -> MaskedLM:
    """One loaded model per process and settings, shared by every shard that process runs."""
    return MaskedLM(path, tokenizer, device)


class ContextualSubstituter:
    """Chooses units to mask, asks the model, samples replacements and renders the new texts."""

    def __init__(self, options: ContextualOptions) -> None:
        self.options = options
        self.segmenter = Segmenter(options.protect, hmm=options.jieba_hmm)
        self.mlm = masked_lm(options.model, options.tokenizer, options.device)

    def augment(self, items: list[Item], num_aug: int) -> list[list[Augmented]]:
        import numpy as np

        opt, mask = self.options, self.mlm.tokenizer.mask_token
        plans = []  # (item index, lead, units, chosen unit indices)
        for n, it in enumerate(items):
            lead, units = self.units(it)
            n_words = sum(1 for u in units if u.word)
            eligible = [i for i, u in enumerate(units) if _maskable(u)]
            k = min(len(eligible), max(1, round(opt.fraction * n_words)))
            for _ in range(num_aug if eligible else 0):
                plans.append((n, lead, units, sorted(it.rng.sample(eligible, k))))
        texts = [render(lead, _masked(units, chosen, mask), items[n].lang)[0] for n, lead, units, chosen in plans]
        logits = self.mlm.mask_logits(texts, opt.max_len, opt.batch_size) if texts else []
        out: list[list[Augmented]] = [[] for _ in items]
        seen = [{it.text, it.text.rstrip()} for it in items]
        for (n, lead, units, chosen), rows in zip(plans, logits, strict=True):
            gen = np.random.default_rng(items[n].rng.getrandbits(63))
            new = list(units)
            changed = 0
            for i, row in zip(chosen, rows, strict=False):  # masks cut off by max_len keep their word
                word = self._sample(row, units[i].text, gen)
                if word is not None:
                    new[i] = Unit(match_case(word, units[i].text), ws=units[i].ws, word=True)
                    changed += 1
            text, spans = render(lead, new, items[n].lang)
            if changed and text not in seen[n]:
                seen[n].add(text)
                out[n].append(Augmented(text, "contextual_substitution", changed, spans, {"masked": len(chosen)}))
        return out

    def units(self, item: Item) -> tuple[str, list[Unit]]:
        """Segmenter units with unprotected Chinese words split into characters (what the model predicts)."""
        lead, units = self.segmenter.units(item.text, item.lang, item.spans or ())
        out: list[Unit] = []
        for u in units:
            if u.word and not u.protected and len(u.text) > 1 and has_han(u.text):
                out += [Unit(c, word=True) for c in u.text[:-1]] + [Unit(u.text[-1], ws=u.ws, word=True)]
            else:
                out.append(u)
        return lead, out

    def _sample(self, row, original: str, gen) -> str | None:
        import numpy as np

        allowed = self.mlm.han_ok if has_han(original) else self.mlm.latin_ok
        size = min(len(allowed), row.shape[0])  # a model may pad its vocabulary beyond the tokenizer's
        scores = np.where(allowed[:size], row[:size], -np.inf)
        order = np.argsort(-scores, kind="stable")
        picks = [j for j in order[: self.options.top_k + 1] if np.isfinite(scores[j])
                 and self.mlm.strings[j].lower() != original.lower()][: self.options.top_k]
        if not picks:
            return None
        z = scores[picks] / self.options.temperature
        p = np.exp(z - z.max())
        return self.mlm.strings[picks[int(gen.choice(len(picks), p=p / p.sum()))]]


def _maskable(u: Unit) -> bool:
    if not u.word or u.protected:
        return False
    return (len(u.text) == 1 and has_han(u.text)) or (u.text.isascii() and u.text.isalpha())


def _masked(units: list[Unit], chosen: list[int], mask: str) -> list[Unit]:
    picked = set(chosen)
    return [Unit(mask, ws=u.ws, word=True) if i in picked else u for i, u in enumerate(units)]


class ContextualStage(AugmentStage):
    """Masked-LM substitution with an lmforge BERT or any transformers masked LM on disk."""

    name = "contextual_substitute"
    Config = ContextualConfig

    _substituter: ContextualSubstituter | None = None

    def augment_items(self, items: list[Item]) -> list[list[Augmented]]:
        if self._substituter is None:  # the model loads on the first batch, in the worker that runs it
            self._substituter = ContextualSubstituter(self.config)
        return self._substituter.augment(items, self.config.num_aug)
