"""Train, save and load a byte-level BPE tokenizer for mixed Chinese/English text.

Byte-level BPE starts from the 256 byte symbols, so every string (Chinese, emoji, stray
control bytes) is encodable with no unknown token and decodes back exactly. Chinese has no
spaces, so nothing here assumes whitespace separates words: the GPT-2 style regex groups runs
of letters (Han characters included) and merges are learned inside those runs.

`tokenizers` is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from lmforge.config import StrictModel
from lmforge.errors import InputError, require
from lmforge.records import atomic_path

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Written into tokenizer_config.json for transformers; the largest context of our presets.
MODEL_MAX_LENGTH = 1024
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "lmforge_tokenizer.json",
)


class TokenizerConfig(StrictModel):
    """How to learn the vocabulary; saved next to the tokenizer so a run can be reproduced."""

    kind: Literal["byte_bpe"] = "byte_bpe"
    vocab_size: int = 4096
    min_frequency: int = Field(default=2, ge=1)
    special_tokens: list[str] = Field(default_factory=lambda: [EOS_TOKEN, PAD_TOKEN])
    max_training_chars: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        # The 256 byte symbols and the special tokens are always in the vocabulary; anything
        # smaller could not hold them and the trainer would silently exceed vocab_size.
        floor = 256 + len(self.special_tokens)
        if self.vocab_size < floor:
            raise ValueError(
                f"vocab_size must be at least 256 + {len(self.special_tokens)} special tokens = {floor} "
                f"(got {self.vocab_size})"
            )
        if EOS_TOKEN not in self.special_tokens:
            raise ValueError(f"special_tokens must contain {EOS_TOKEN!r}: it separates documents")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens has duplicates (got {self.special_tokens!r})")
        return self


def _capped(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    """Yield texts until the character budget is spent; the last one is cut to fit."""
    used = 0
    for text in texts:
        if max_chars is not None and used + len(text) > max_chars:
            rest = max_chars - used
            if rest > 0:
                yield text[:rest]
            logger.info("tokenizer training capped at %d characters", max_chars)
            return
        used += len(text)
        yield text


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _new_tokenizer() -> Tokenizer:
    tk = require("tokenizers", "train")
    from tokenizers import Regex, decoders, models, pre_tokenizers, processors

    tok = tk.Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    # No normalizer: the text was cleaned upstream, and byte-exact round trips are the contract.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # One piece per digit: numbers then tokenize uniformly instead of by corpus frequency.
            pre_tokenizers.Split(Regex(r"\p{Nd}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _hf_files(config: TokenizerConfig) -> tuple[dict, dict]:
    """The two small JSON files that let transformers' AutoTokenizer load the directory."""
    pad = PAD_TOKEN if PAD_TOKEN in config.special_tokens else EOS_TOKEN
    special_map = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad}
    extra = [t for t in config.special_tokens if t not in (EOS_TOKEN, pad)]
    if extra:
        special_map["additional_special_tokens"] = extra
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MODEL_MAX_LENGTH,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **special_map,
    }
    return tok_config, special_map


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig, out_dir: str | Path) -> Path:
    """Learn the vocabulary from `texts` and save a directory both lmforge and transformers can load."""
    require("tokenizers", "train")
    from tokenizers import pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(config.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_capped(texts, config.max_training_chars), trainer=trainer)
    logger.info("trained byte-level BPE: %d tokens (asked for %d)", tok.get_vocab_size(), config.vocab_size)

    tok_config, special_map = _hf_files(config)
    _atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=True))
    _atomic_write_text(out / "tokenizer_config.json", json.dumps(tok_config, indent=2, ensure_ascii=False))
    _atomic_write_text(out / "special_tokens_map.json", json.dumps(special_map, indent=2, ensure_ascii=False))
    _atomic_write_text(
        out / "lmforge_tokenizer.json",
        json.dumps(config.model_dump(mode="json"), indent=2, ensure_ascii=False),
    )
    return out


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load from a tokenizer directory or directly from a tokenizer.json file."""
    tk = require("tokenizers", "train")
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise InputError(f"no tokenizer found at {file}: train one first or fix the path")
    try:
        return tk.Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise InputError(f"cannot read tokenizer {file}: {exc}") from None


def eos_id(tok: Tokenizer) -> int:
    """The id appended after every document and used to stop generation."""
    idx = tok.token_to_id(EOS_TOKEN)
    if idx is None:
        raise InputError(f"this tokenizer has no {EOS_TOKEN!r} token; retrain it with lmforge")
    return idx
