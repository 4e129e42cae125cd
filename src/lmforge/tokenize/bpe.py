"""Train, save and load tokenizers for mixed Chinese/English text: byte-level BPE, Unigram, WordPiece.

Byte-level BPE (the default) starts from the 256 byte symbols, so every string (Chinese, emoji,
stray control bytes) is encodable with no unknown token and decodes back exactly. Unigram keeps
real characters in its vocabulary and falls back to `<0xNN>` byte pieces for anything unseen, so
it round-trips too. WordPiece is for BERT-style encoders: it splits every Han character on its
own (as BERT-Chinese does), drops whitespace and maps unseen characters to `[UNK]`.

Chinese has no spaces, so nothing here assumes whitespace separates words: runs of letters (Han
characters included) are one pre-token and the model learns pieces inside them; every digit is
its own piece. With `jieba: true` the training text is cut at jieba's word boundaries first, so
no learned piece straddles two words; encoding needs no jieba, and the saved files stay plain
`tokenizers` JSON that `transformers.AutoTokenizer` loads.

`tokenizers` is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from lmforge.config import StrictModel
from lmforge.errors import InputError, require
from lmforge.lang import HAN_RE, cut
from lmforge.records import atomic_path
from lmforge.storage import local_path

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Written into tokenizer_config.json for transformers; the largest context of our presets.
MODEL_MAX_LENGTH = 1024
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "lmforge_tokenizer.json",
)
# ChatML: the tokens are single special ids, so a role switch can never be forged by plain text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# transformers' role for each special token lmforge recognises (both spellings).
ROLES = {
    "pad": ("<|pad|>", "[PAD]"),
    "unk": ("<|unk|>", "[UNK]"),
    "cls": ("<|cls|>", "[CLS]"),
    "sep": ("<|sep|>", "[SEP]"),
    "mask": ("<|mask|>", "[MASK]"),
}
DEFAULT_SPECIALS = {
    "byte_bpe": [EOS_TOKEN, PAD_TOKEN],
    "unigram": [EOS_TOKEN, PAD_TOKEN, UNK_TOKEN],
    "wordpiece": [EOS_TOKEN, "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}
BYTE_PIECES = 256  # Unigram's <0x00>..<0xFF> fallback pieces, byte-level BPE's alphabet
# The least room each kind needs besides its special tokens: the byte alphabet, Unigram's byte
# pieces plus some characters to learn from, WordPiece's most common characters.
_FLOOR = {"byte_bpe": BYTE_PIECES, "unigram": BYTE_PIECES + 100, "wordpiece": 100}
# GPT-2's split, minus its digit runs (digits are isolated before it): a Han run is one pre-token.
_WORDISH = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def byte_level_chars() -> list[str]:
    """GPT-2's byte-level alphabet, indexed by byte: printable bytes stand for themselves, the rest
    move above 255, so every byte-level token is spelled in visible characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = (b for b in range(256) if b not in keep)
    chars = {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(moved)}
    return [chars[b] for b in range(256)]


class TokenizerConfig(StrictModel):
    """How to learn the vocabulary; saved next to the tokenizer so a run can be reproduced."""

    kind: Literal["byte_bpe", "unigram", "wordpiece"] = "byte_bpe"
    vocab_size: int = Field(default=4096, le=1 << 20, description="target vocabulary, special tokens included")
    min_frequency: int = Field(default=2, ge=1)
    special_tokens: list[str] | None = Field(
        default=None, description="None: the kind's defaults; an unknown-token and chat tokens are added as needed"
    )
    chat_template: bool = Field(default=True, description="add <|im_start|>/<|im_end|> and a ChatML template")
    jieba: bool = Field(default=False, description="cut training text at jieba word boundaries (byte_bpe, unigram)")
    max_training_chars: int | None = Field(default=None, gt=0)

    def resolved_special_tokens(self) -> list[str]:
        """The special tokens in id order: given or default, then a missing unk (Unigram, WordPiece), then chat."""
        tokens = list(self.special_tokens if self.special_tokens is not None else DEFAULT_SPECIALS[self.kind])
        if self.kind != "byte_bpe" and not any(t in ROLES["unk"] for t in tokens):
            tokens.append("[UNK]" if self.kind == "wordpiece" else UNK_TOKEN)
        if self.chat_template:
            tokens += [t for t in (IM_START, IM_END) if t not in tokens]
        return tokens

    def vocab_floor(self) -> int:
        return _FLOOR[self.kind] + len(self.resolved_special_tokens())

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        given = self.special_tokens
        if given is not None:
            if EOS_TOKEN not in given:
                raise ValueError(f"special_tokens must contain {EOS_TOKEN!r}: it separates documents")
            if len(set(given)) != len(given):
                raise ValueError(f"special_tokens has duplicates (got {given!r})")
        # Byte symbols (or byte pieces) and the special tokens always take ids; anything smaller could
        # not hold them and the trainer would silently exceed vocab_size.
        floor = self.vocab_floor()
        if self.vocab_size < floor:
            raise ValueError(
                f"vocab_size must be at least {_FLOOR[self.kind]} + {len(self.resolved_special_tokens())} special tokens "
                f"= {floor} (got {self.vocab_size})" + ("" if self.kind == "byte_bpe" else f" for {self.kind}")
            )
        if self.jieba and self.kind == "wordpiece":
            raise ValueError("jieba applies to byte_bpe and unigram; wordpiece already splits every Han character")
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


def jieba_pieces(texts: Iterable[str]) -> Iterator[str]:
    """Cut each text at jieba's boundaries inside Chinese; other text stays whole.

    The trainer treats each yielded string as its own sequence, so merges never cross a cut.
    English keeps its leading-space words (" the") because non-Chinese segments are re-joined.
    """
    for text in texts:
        if not HAN_RE.search(text):
            yield text
            continue
        pending = ""
        for seg in cut(text, hmm=True):
            if HAN_RE.search(seg):
                if pending:
                    yield pending
                    pending = ""
                yield seg
            else:
                pending += seg
        if pending:
            yield pending


def _common_chars_only(texts: Iterable[str], keep: int) -> Iterator[str]:
    """Cut the texts at characters outside the `keep` most frequent ones (Unigram's character coverage).

    The Unigram trainer insists that every character it sees fits in the vocabulary, and Chinese
    has far more characters than a small vocabulary holds. Rare ones are left to byte fallback,
    as SentencePiece does; this needs two passes, so the (capped) training text is held in memory.
    """
    from collections import Counter

    held = list(texts)
    counts: Counter[str] = Counter()
    for text in held:
        counts.update(text)
    if len(counts) <= keep:
        yield from held
        return
    rare = {ch for ch, _ in counts.most_common()[keep:]}
    logger.info("unigram: %d of %d characters left to byte fallback", len(rare), len(counts))
    cut = re.compile("[" + "".join(re.escape(ch) for ch in sorted(rare)) + "]+")
    for text in held:
        yield from (piece for piece in cut.split(text) if piece)


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _digits_then(last: Any) -> Any:
    from tokenizers import Regex, pre_tokenizers

    # One piece per digit: numbers then tokenize uniformly instead of by corpus frequency.
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{Nd}"), behavior="isolated"), last])


def _new_tokenizer(config: TokenizerConfig | None = None) -> tuple[Tokenizer, Any]:
    """An untrained tokenizer of the configured kind and the trainer that fills it."""
    config = config or TokenizerConfig()
    tk = require("tokenizers", "train")
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = config.resolved_special_tokens()
    if config.kind == "byte_bpe":
        tok = tk.Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
        # No normalizer: the text was cleaned upstream, and byte-exact round trips are the contract.
        tok.pre_tokenizer = _digits_then(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    elif config.kind == "unigram":
        tok = tk.Tokenizer(models.Unigram())
        tok.pre_tokenizer = _digits_then(pre_tokenizers.Split(Regex(_WORDISH), behavior="isolated"))
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        unk = next(t for t in specials if t in ROLES["unk"])
        # The byte pieces are added after training, so the learned part leaves room for them.
        trainer = trainers.UnigramTrainer(
            vocab_size=config.vocab_size - BYTE_PIECES, special_tokens=specials, unk_token=unk,
            show_progress=False,
        )
    else:
        unk = next(t for t in specials if t in ROLES["unk"])
        tok = tk.Tokenizer(models.WordPiece(unk_token=unk, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True)]
        )
        tok.decoder = decoders.WordPiece(prefix="##")
        # Half the vocabulary may go to single characters; rarer ones become [UNK] as in BERT.
        trainer = trainers.WordPieceTrainer(
            vocab_size=config.vocab_size, min_frequency=config.min_frequency, special_tokens=specials,
            limit_alphabet=max(100, (config.vocab_size - len(specials)) // 2), show_progress=False,
        )
    return tok, trainer


def _finish(tok: Tokenizer, config: TokenizerConfig) -> Tokenizer:
    """What the trainers cannot do themselves: Unigram byte fallback and BERT's [CLS] ... [SEP]."""
    tk = require("tokenizers", "train")
    from tokenizers import decoders, processors

    specials = config.resolved_special_tokens()
    if config.kind == "unigram":
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        have = {piece for piece, _ in vocab}
        lowest = min(score for _, score in vocab)
        # Least likely pieces: used only for characters no learned piece covers. A literal "<0x41>"
        # in text never matches one, because the digit split cuts it apart first.
        vocab += [[f"<0x{b:02X}>", lowest - 1.0] for b in range(256) if f"<0x{b:02X}>" not in have]
        spec["model"]["byte_fallback"] = True
        tok = tk.Tokenizer.from_str(json.dumps(spec))
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    elif config.kind == "wordpiece":
        cls = next((t for t in specials if t in ROLES["cls"]), None)
        sep = next((t for t in specials if t in ROLES["sep"]), None)
        if cls and sep:
            tok.post_processor = processors.TemplateProcessing(
                single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
                special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
            )
    return tok


def _hf_files(config: TokenizerConfig) -> tuple[dict, dict]:
    """The two small JSON files that let transformers' AutoTokenizer load the directory."""
    specials = config.resolved_special_tokens()
    role = {name: next((t for t in specials if t in names), None) for name, names in ROLES.items()}
    special_map: dict[str, Any] = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN}
    special_map["unk_token"] = role["unk"] or EOS_TOKEN
    special_map["pad_token"] = role["pad"] or EOS_TOKEN
    for name in ("cls", "sep", "mask"):
        if role[name]:
            special_map[f"{name}_token"] = role[name]
    if config.kind == "wordpiece" and role["cls"]:
        special_map["bos_token"] = role["cls"]
    extra = [t for t in specials if t not in special_map.values()]
    if extra:
        special_map["additional_special_tokens"] = extra
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MODEL_MAX_LENGTH,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **special_map,
    }
    if config.chat_template:
        tok_config["chat_template"] = CHAT_TEMPLATE
    return tok_config, special_map


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig, out_dir: str | Path) -> Path:
    """Learn the vocabulary from `texts` and save a directory both lmforge and transformers can load."""
    require("tokenizers", "train")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok, trainer = _new_tokenizer(config)
    stream = _capped(texts, config.max_training_chars)
    if config.jieba:
        stream = jieba_pieces(stream)
    if config.kind == "unigram":
        # Half of what the trainer fills may be single characters; the rest is learned pieces.
        learned = config.vocab_size - BYTE_PIECES - len(config.resolved_special_tokens())
        stream = _common_chars_only(stream, learned // 2)
    tok.train_from_iterator(stream, trainer=trainer)
    tok = _finish(tok, config)
    logger.info("trained %s: %d tokens (asked for %d)", config.kind, tok.get_vocab_size(), config.vocab_size)

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
    """Load from a tokenizer directory or directly from a tokenizer.json file, local or a URL of either
    (`s3://bucket/tok/`, staged into the user cache first)."""
    tk = require("tokenizers", "train")
    p = local_path(path, "tokenizer")
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


def copy_tokenizer_files(tokenizer_dir: str | Path, out: str | Path, model_max_length: int) -> None:
    """Copy a tokenizer beside exported weights, capped at the model's context: longer inputs would
    index past the position table (or the trained context), so truncation must stop there."""
    tokenizer_dir, out = Path(tokenizer_dir), Path(out)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise InputError(f"no tokenizer at {tokenizer_dir}: tokenizer.json is missing")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    cfg_file = out / "tokenizer_config.json"
    if cfg_file.is_file():
        tok_cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        tok_cfg["model_max_length"] = model_max_length
        cfg_file.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False), encoding="utf-8")
