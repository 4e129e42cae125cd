"""Back-translation: source -> pivot language -> source, through translation models on disk, filtered by chrF.

A model directory is one of:
- a `transformers` encoder-decoder (MarianMT, mBART, T5, ...): `AutoModelForSeq2SeqLM`;
- a `transformers` causal LM: the text is put into `prompt` ("Translate to English: {text}"), or
  into the tokenizer's chat template when it has one and `chat` is on; the continuation is the
  translation;
- an lmforge model fine-tuned for translation with `lmforge finetune` (an instruction task of
  source/translation pairs): its chat template and greedy decoding, as fine-tuning scored it (one
  translation per text: sampling several pivots needs a transformers model).

Texts go through the models `batch_size` at a time (padded; left-padded for causal models). The
round trip is kept when its chrF against the source (sacrebleu, character 6-grams, 0-100) is in
[min_chrf, max_chrf]: above the band it is a near-copy that adds nothing, below it the meaning
probably drifted. Each copy records its pivot text and chrF in `meta.augment`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from lmforge.augment.eda import Augmented
from lmforge.augment.stages import AugmentCommon, AugmentStage, Item
from lmforge.config import StrictModel
from lmforge.errors import ConfigError, InputError, require

log = logging.getLogger(__name__)


class TranslatorConfig(StrictModel):
    """How to generate with one translation model."""

    prompt: str = Field("{text}", description="causal models: the prompt, with {text} where the source goes")
    chat: bool = Field(True, description="causal models: wrap the prompt in the tokenizer's chat template if it has one")
    max_new_tokens: int = Field(128, gt=0)
    max_input_tokens: int = Field(256, gt=0, description="longer sources are truncated")
    num_beams: int = Field(1, gt=0, description="beam search width (ignored when sampling)")
    device: str = Field("cpu", description="cpu, cuda, cuda:N")


class BackTranslateConfig(AugmentCommon):
    """Models for both directions, batching, sampling and the chrF band."""

    forward: str = Field(description="model directory translating the source into the pivot language")
    backward: str = Field(description="model directory translating the pivot back into the source language")
    forward_options: TranslatorConfig = Field(default_factory=TranslatorConfig)
    backward_options: TranslatorConfig = Field(default_factory=TranslatorConfig)
    batch_size: int = Field(16, gt=0, description="texts per generate call")
    num_aug: int = Field(1, ge=1, le=16, description="pivots sampled per text (more than 1 needs sample: true)")
    sample: bool = Field(False, description="sample the pivot (top-k) instead of greedy/beam decoding")
    top_k: int = Field(50, gt=0)
    temperature: float = Field(1.0, gt=0)
    min_chrf: float = Field(20.0, ge=0, le=100, description="drop round trips less similar to the source")
    max_chrf: float = Field(90.0, ge=0, le=100, description="drop round trips more similar (near copies)")

    @model_validator(mode="after")
    def _check(self) -> BackTranslateConfig:
        if self.num_aug > 1 and not self.sample:
            raise ValueError(f"num_aug: {self.num_aug} pivots per text need sample: true (greedy decoding gives one)")
        if self.min_chrf > self.max_chrf:
            raise ValueError(f"min_chrf ({self.min_chrf}) is above max_chrf ({self.max_chrf})")
        return self


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """chrF (0-100) of one sentence against one reference, sacrebleu's defaults (char 6-grams, beta 2)."""
    return float(_chrf_scorer().sentence_score(hypothesis, [reference]).score)


@functools.lru_cache(maxsize=1)
def _chrf_scorer():
    return require("sacrebleu", "augment").CHRF()


class Translator:
    """One translation model on disk, generating for a list of texts in batches."""

    def __init__(self, path: str | Path, options: TranslatorConfig | None = None) -> None:
        self.path = Path(path)
        self.options = options or TranslatorConfig()
        from lmforge.models.heads import HEAD_FILE

        if not (self.path / "config.json").is_file() and not (self.path / HEAD_FILE).is_file():
            raise ConfigError(f"translation model {self.path}: no config.json or {HEAD_FILE} (give a transformers "
                              "model directory or an lmforge model fine-tuned for translation)")
        self.kind, self.model, self.tokenizer = _load(self.path, self.options.device)
        self.generate_calls = 0

    def translate(self, texts: list[str], batch_size: int, num_return: int = 1, sample: bool = False,
                  top_k: int = 50, temperature: float = 1.0) -> list[list[str]]:
        """`num_return` translations of each text, in order."""
        out: list[list[str]] = []
        for i in range(0, len(texts), batch_size):
            batch = texts[i : i + batch_size]
            self.generate_calls += 1
            if self.kind == "lmforge":
                from lmforge.serve.generate import generate_responses

                if (num_return > 1 or sample) and i == 0:
                    log.warning("%s: lmforge translation models decode greedily: one translation per text", self.path)

                answers = generate_responses(self.model, [self._prompt(t) for t in batch], self.tokenizer,
                                             self.options.max_new_tokens)
                out += [[a] for a in answers]
            else:
                flat = self._generate(batch, num_return, sample, top_k, temperature)
                out += [flat[j * num_return : (j + 1) * num_return] for j in range(len(batch))]
        return out

    def _prompt(self, text: str) -> str:
        return self.options.prompt.replace("{text}", text)

    def _generate(self, batch: list[str], num_return: int, sample: bool, top_k: int, temperature: float) -> list[str]:
        import torch

        tok, opt = self.tokenizer, self.options
        if self.kind == "causal":
            prompts = [self._prompt(t) for t in batch]
            if opt.chat and tok.chat_template:
                prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in prompts]
            enc = tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=opt.max_input_tokens,
                      add_special_tokens=not (opt.chat and tok.chat_template))
        else:
            enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=opt.max_input_tokens)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": opt.max_new_tokens, "num_return_sequences": num_return,
                                  "pad_token_id": tok.pad_token_id}
        if sample:
            kwargs.update(do_sample=True, top_k=top_k, temperature=temperature)
        else:
            kwargs.update(do_sample=False, num_beams=max(opt.num_beams, num_return))
        with torch.no_grad():
            ids = self.model.generate(**enc, **kwargs)
        if self.kind == "causal":
            ids = ids[:, enc["input_ids"].shape[1]:]  # the prompt is left-padded to one length
        return [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]


def _load(path: Path, device: str) -> tuple[str, Any, Any]:
    """(kind, model in eval mode, tokenizer): lmforge fine-tuned, seq2seq or causal transformers model."""
    from transformers import AutoConfig, AutoTokenizer

    from lmforge.models.heads import HEAD_FILE

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the tokenizer of translation model {path}: {exc}") from None
    if (path / HEAD_FILE).is_file():
        from lmforge.models.heads import load_task_model

        model, info = load_task_model(path)
        if info.get("kind") != "instruction":
            raise ConfigError(f"{path} is an lmforge {info.get('kind')} model; translation needs one fine-tuned "
                              "on an instruction task (source -> translation pairs)")
        return "lmforge", model, tokenizer
    import transformers

    from lmforge.models.sizes import check_hf_dir

    check_hf_dir(path)
    try:
        config = AutoConfig.from_pretrained(str(path))
        kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        auto = transformers.AutoModelForSeq2SeqLM if kind == "seq2seq" else transformers.AutoModelForCausalLM
        model = auto.from_pretrained(str(path)).to(device).eval()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load translation model {path}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if kind == "causal":
        tokenizer.padding_side = "left"
    return kind, model, tokenizer


@functools.lru_cache(maxsize=4)
def translator(path: str, options_json: str) -> Translator:
    """One loaded model per process and settings, shared by every shard that process runs."""
    return Translator(path, TranslatorConfig.model_validate_json(options_json))


class BackTranslator:
    """Round trips through two translators, keeping those inside the chrF band."""

    def __init__(self, config: BackTranslateConfig) -> None:
        self.config = config
        self.forward = translator(config.forward, config.forward_options.model_dump_json())
        self.backward = translator(config.backward, config.backward_options.model_dump_json())
        self.filtered: dict[str, int] = {}

    def round_trips(self, texts: list[str], seed: int | None = None) -> list[list[Augmented]]:
        """The kept round trips of each text; `seed` makes sampled pivots reproducible."""
        cfg = self.config
        if cfg.sample and seed is not None:
            import torch

            torch.manual_seed(seed)
        pivots = self.forward.translate(texts, cfg.batch_size, cfg.num_aug, cfg.sample, cfg.top_k, cfg.temperature)
        flat = [p for group in pivots for p in group]
        back = iter([b[0] for b in self.backward.translate(flat, cfg.batch_size)] if flat else [])
        out: list[list[Augmented]] = []
        for source, group in zip(texts, pivots, strict=True):
            kept: list[Augmented] = []
            seen = {source.strip()}
            for pivot in group:
                text = next(back).strip()
                score = sentence_chrf(text, source) if text else 0.0
                reason = self._reject(text, score, seen)
                if reason:
                    self.filtered[reason] = self.filtered.get(reason, 0) + 1
                    continue
                seen.add(text)
                kept.append(Augmented(text, "back_translation", 1, details={"pivot": pivot, "chrf": round(score, 2)}))
            out.append(kept)
        return out

    def _reject(self, text: str, score: float, seen: set[str]) -> str | None:
        if not text:
            return "bt_empty"
        if text in seen:
            return "bt_duplicate"
        if score > self.config.max_chrf:
            return "bt_too_close"
        if score < self.config.min_chrf:
            return "bt_too_far"
        return None


class BackTranslateStage(AugmentStage):
    """Back-translation through two models on disk, round trips filtered by a chrF band."""

    name = "back_translate"
    Config = BackTranslateConfig
    supports_ner = False  # a translation rewrites the sentence: entity offsets cannot follow it

    def augment_items(self, items: list[Item]) -> list[list[Augmented]]:
        bt = BackTranslator(self.config)
        results = bt.round_trips([it.text for it in items], seed=items[0].rng.getrandbits(31))
        for reason, n in bt.filtered.items():
            self.count(reason, n)
        return results
