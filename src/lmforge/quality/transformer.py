"""Score documents with a transformer classifier on disk: an HF sequence-classification or regression
directory (the FineWeb-Edu classifier's BERT layout) or a classifier `lmforge finetune` saved.

What the score is (`score: auto`):
- a regression head (one output, FineWeb-Edu's 0-5 educational value): the output itself;
- classes named by numbers ("0" ... "5", ratings): the expected class, sum(p_i * number_i), which
  ranks documents more finely than the arg-max;
- other classes: the probability of the class named by `positive` ("good", "pos").

Documents are read up to `max_tokens` tokens, special tokens included (FineWeb-Edu's classifier was
trained on 512); the rest of a longer document is not seen. The stage says so in the log once and
counts such documents as `truncated` in stats.json. A document with no text is not scored
(`quality_unscored`).

The model loads on the first batch a process scores, once per process: the stage object itself
travels to worker processes and the reduce step, which never need the weights. Weights load from
safetensors only, from local files only; a directory holding pickled weights alone is refused.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from lmforge.errors import ConfigError, InputError
from lmforge.quality.scoring import KeepConfig, ScoreStage, existing_path
from lmforge.records import Record

log = logging.getLogger(__name__)

HEAD_FILE = "finetune.json"  # an lmforge fine-tuned model (models.heads)
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
CHARS_PER_TOKEN_BOUND = 12  # a document is cut to max_tokens * this many characters before tokenizing
MARGIN = 16  # tokens past the cut a prefix must yield before its first max_tokens are trusted


def model_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be loaded as a classifier (without loading it); None when it can."""
    if not path.is_dir():
        return f"{path} is not a directory"
    if (path / HEAD_FILE).is_file():
        return None if (path / "model.safetensors").is_file() else f"{path} has {HEAD_FILE} but no model.safetensors"
    if not (path / "config.json").is_file():
        return f"{path} has no config.json: not a Hugging Face model directory nor an lmforge fine-tuned classifier"
    if not any(path.glob("*.safetensors")):
        pickled = [name for name in PICKLE_WEIGHTS if (path / name).is_file()]
        if pickled:
            return (f"{path} holds pickled weights only ({pickled[0]}); lmforge loads safetensors only, as pickle "
                    "can run code: convert it (save_pretrained(..., safe_serialization=True)) or use a "
                    "safetensors release")
        return f"{path} has no *.safetensors weights"
    return None


class TransformerQualityConfig(KeepConfig):
    key: str = Field(default="transformer", min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                     description="the score is written to meta.quality.<key>")
    model: str = Field(description="classifier directory: Hugging Face (config.json + *.safetensors) or an "
                                   "lmforge fine-tuned classifier (finetune.json)")
    tokenizer: str | None = Field(default=None, description="tokenizer directory (default: the model's)")
    max_tokens: int = Field(default=512, ge=4, le=1 << 16,
                            description="tokens read per document, special tokens included; the rest is cut")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: CUDA when present")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: float32 on a CPU, bfloat16 on a GPU")
    score: Literal["auto", "regression", "expected", "probability"] = Field(
        default="auto", description="regression: the single output; expected: sum of p * class number; "
        "probability: P(positive); auto picks by the model's head and labels")
    positive: str | None = Field(default=None, description="the label whose probability is the score")
    model_batch_size: int = Field(default=32, ge=1, le=4096,
                                  description="documents per forward pass; the batch_size documents read at "
                                              "once are sorted by length first, so a pass pads little")

    @field_validator("model", "tokenizer")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return existing_path(value)

    @model_validator(mode="after")
    def _loadable(self) -> TransformerQualityConfig:
        problem = model_dir_problem(Path(self.model))
        if problem:
            raise ValueError(problem)
        labels = labels_on_disk(Path(self.model))
        if labels is not None:
            score_rule(self.score, self.positive, labels)
        elif self.score == "probability" and not self.positive:
            raise ValueError("score: probability needs positive: the label whose probability is the score")
        return self


@dataclass
class Classifier:
    """A loaded model with what scoring needs to know about it."""

    model: Any
    tokenizer: Any
    labels: list[str]
    device: Any
    eos_last: bool  # a causal classifier reads its last position: every text ends with EOS, as in fine-tuning
    pad_id: int
    prefix: list[int]  # the special tokens the tokenizer puts before a text ([CLS], BOS) and after it ([SEP])
    suffix: list[int]
    context: int | None  # the longest input the model (or its tokenizer) takes


def context_length(model: Any, tok: Any) -> int | None:
    """The model's positions (HF max_position_embeddings, lmforge max_position or block_size), and the
    tokenizer's model_max_length when smaller (RoBERTa declares 514 positions but reads 512 tokens)."""
    config = getattr(getattr(model, "backbone", model), "config", None)
    found = [v for name in ("max_position_embeddings", "max_position", "block_size", "n_positions")
             if isinstance(v := getattr(config, name, None), int) and v > 0]
    limit = getattr(tok, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1 << 30:
        found.append(limit)
    return min(found) if found else None


def _torch_dtype(name: str, device) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


@functools.lru_cache(maxsize=2)
def load_classifier(model_dir: str, tokenizer_dir: str | None, device: str, dtype: str) -> Classifier:
    """The classifier behind a directory, once per process (see the module docstring)."""
    import torch  # noqa: F401 - the models below need it
    from transformers import AutoTokenizer

    from lmforge.models.checkpoint_io import resolve_device

    path = Path(model_dir)
    target = resolve_device(device)
    if (path / HEAD_FILE).is_file():
        from lmforge.models.heads import load_task_model

        model, info = load_task_model(path)
        if info.get("kind") != "classification":
            raise InputError(f"{path} is a fine-tuned {info.get('kind')} model; transformer_quality needs a classifier")
        labels = [str(x) for x in info["labels"]]
    else:
        from transformers import AutoModelForSequenceClassification

        from lmforge.models.sizes import check_hf_dir

        check_hf_dir(path)
        model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True,
                                                                   use_safetensors=True)
        labels = [str(model.config.id2label.get(i, i)) for i in range(model.config.num_labels)]
    model = model.to(device=target, dtype=_torch_dtype(dtype, target)).eval()
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else path
    if not any((tok_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise InputError(f"no tokenizer in {tok_dir}; give transformer_quality.tokenizer: a tokenizer directory")
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    eos_last = tok.cls_token_id is None and tok.eos_token_id is not None
    config_pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    pad = config_pad if isinstance(config_pad, int) else tok.pad_token_id
    return Classifier(model, tok, labels, target, eos_last, int(pad or 0), *special_frame(tok),
                      context_length(model, tok))


def special_frame(tok) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the tokens of a text when the tokenizer adds its special tokens.

    Found by encoding a probe with and without them, so any template ([CLS] x [SEP], BOS x,
    <s> x </s>, none) is honoured without knowing the tokenizer class.
    """
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if plain and full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []


def score_rule(score: str, positive: str | None, labels: list[str]) -> str:
    """regression, expected or probability: what `score` means for a model with these labels (ValueError if none)."""
    numeric = all(_number(x) is not None for x in labels)
    rule = score
    if rule == "auto":
        rule = "regression" if len(labels) == 1 else "probability" if positive else "expected" if numeric else ""
    if rule == "regression" and len(labels) != 1:
        raise ValueError(f"score: regression needs a head with one output; this one has {len(labels)} labels "
                         f"{labels[:10]}")
    if rule == "expected" and not numeric:
        raise ValueError(f"score: expected needs labels that are numbers; they are {labels[:10]}")
    if rule == "probability" and positive not in labels:
        raise ValueError(f"positive: {positive!r} is not one of the model's labels {labels[:10]}")
    if not rule:
        raise ValueError(f"the model's labels {labels[:10]} are not numbers; set positive: the label whose "
                         "probability is the score")
    return rule


def labels_on_disk(path: Path) -> list[str] | None:
    """The labels a classifier directory declares (finetune.json, or config.json's id2label), unloaded."""
    file = path / (HEAD_FILE if (path / HEAD_FILE).is_file() else "config.json")
    try:
        if file.stat().st_size > 1 << 20:
            return None
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict):
        return None
    if isinstance(info.get("labels"), list):
        return [str(x) for x in info["labels"]]
    id2label = info.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            return [str(id2label[k]) for k in sorted(id2label, key=int)]
        except ValueError:
            return None
    return None


def _number(label: str) -> float | None:
    try:
        value = float(label)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def encode(clf: Classifier, texts: list[str], max_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each text, cut to `max_tokens` with the model's special tokens; and which were cut.

    A text is cut to max_tokens * CHARS_PER_TOKEN_BOUND characters before tokenizing, so a 10 MB
    page costs what its first few thousand characters do; when that prefix yields too few tokens to
    be sure of the first max_tokens (a long run of whitespace), the whole text is tokenized.
    """
    tok = clf.tokenizer
    room = max_tokens - (1 if clf.eos_last else 0) - len(clf.prefix) - len(clf.suffix)
    if room < 1:
        raise ConfigError(f"transformer_quality.max_tokens: {max_tokens} leaves no room beside the special tokens")
    limit = max_tokens * CHARS_PER_TOKEN_BOUND
    heads = [t[:limit] for t in texts]
    ids = tok(heads, add_special_tokens=False)["input_ids"]
    redo = [i for i, t in enumerate(texts) if len(t) > limit and len(ids[i]) < room + MARGIN]
    if redo:
        for i, again in zip(redo, tok([texts[i] for i in redo], add_special_tokens=False)["input_ids"], strict=True):
            ids[i] = again
    out, cut = [], []
    for row in ids:
        body = clf.prefix + list(row[:room]) + clf.suffix
        if clf.eos_last and body[-1:] != [tok.eos_token_id]:
            body.append(tok.eos_token_id)
        out.append(body)
        cut.append(len(row) > room)
    return out, cut


def forward_scores(clf: Classifier, ids: list[list[int]], rule: str, positive: str | None) -> np.ndarray:
    """Scores of equal-or-similar-length rows, one forward pass: right padding, an attention mask."""
    import torch

    from lmforge.finetune.tasks import logits_of

    width = max(len(row) for row in ids)
    batch = torch.full((len(ids), width), clf.pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, row in enumerate(ids):
        batch[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    with torch.no_grad():
        logits = logits_of(clf.model(input_ids=batch.to(clf.device), attention_mask=mask.to(clf.device)))
    logits = logits.float().cpu()  # (B, n_labels)
    if rule == "regression":
        return logits[:, 0].numpy().astype(np.float64)
    probs = torch.softmax(logits, dim=-1).numpy().astype(np.float64)  # (B, n_labels)
    if rule == "expected":
        return probs @ np.array([_number(x) for x in clf.labels], dtype=np.float64)
    return probs[:, clf.labels.index(positive)]


class TransformerQuality(ScoreStage):
    """A transformer classifier's score per document (see the module docstring)."""

    name = "transformer_quality"
    Config = TransformerQualityConfig
    score_label = "classifier score"

    def __init__(self, config=None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._rule: str | None = None
        self._max_tokens = self.config.max_tokens

    def _classifier(self) -> Classifier:
        cfg = self.config
        clf = load_classifier(cfg.model, cfg.tokenizer, cfg.device, cfg.dtype)
        if self._rule is None:
            try:
                self._rule = score_rule(cfg.score, cfg.positive, clf.labels)
            except ValueError as exc:
                raise ConfigError(f"{self.name} (model {cfg.model}): {exc}") from None
            self._max_tokens = min(cfg.max_tokens, clf.context or cfg.max_tokens)
            log.info("%s: %s on %s, score %s; documents are read up to %d tokens (special tokens included%s), "
                     "longer ones are cut and counted as 'truncated'", self.name, cfg.model, clf.device, self._rule,
                     self._max_tokens, "; the model reads no more" if self._max_tokens < cfg.max_tokens else "")
        return clf

    def score_batch(self, records: list[Record]) -> np.ndarray:
        scores = np.full(len(records), np.nan)
        todo = [i for i, r in enumerate(records) if r.text.strip()]
        if not todo:
            return scores
        clf = self._classifier()
        ids, cut = encode(clf, [records[i].text for i in todo], self._max_tokens)
        self.count("truncated", sum(cut))
        order = sorted(range(len(todo)), key=lambda j: len(ids[j]))  # similar lengths share a pass: little padding
        step = self.config.model_batch_size
        for first in range(0, len(order), step):
            part = order[first : first + step]
            values = forward_scores(clf, [ids[j] for j in part], self._rule, self.config.positive)
            scores[[todo[j] for j in part]] = values
        return scores
