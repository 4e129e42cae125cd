"""What a model path a user gives is, where its tokenizer is, and how to load it: one answer for
fine-tuning, serving, export and evaluation.

Accepted directories:
- a run directory (`RUN/pretrain/checkpoint` + `RUN/tokenizer`): resolved to its checkpoint;
- an lmforge checkpoint: `model.safetensors` + `config.json` whose model_type is `lmforge-*`;
- an lmforge fine-tuned task model: `model.safetensors` + `finetune.json` (see heads.py);
- a Hugging Face directory: `config.json` of any other model type.
The tokenizer is the one given, else the first of the model directory, `../tokenizer` and
`../../tokenizer` that holds `tokenizer.json` (or a WordPiece `vocab.txt`): an lmforge run keeps
it at `RUN/tokenizer`, beside `RUN/pretrain/checkpoint`; HF and fine-tuned directories hold their own.
Any of these may be a URL (`s3://bucket/run/`, `hf://org/model`, ...), and so may the tokenizer: it is
staged into the user cache with its layout (`lmforge.storage.local_copy`) and classified as that folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch.nn as nn

from lmforge.errors import InputError, UserError
from lmforge.models.heads import HEAD_FILE, HF_AUTO
from lmforge.storage import local_path

CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


class NotAModelError(InputError):
    """A path that is none of the model directories lmforge knows."""


class SourceKind(str, Enum):
    CHECKPOINT = "checkpoint"  # lmforge GPT or BERT
    TASK = "task"  # lmforge head on an lmforge backbone (finetune.json)
    HF = "hf"  # a Hugging Face directory


@dataclass(frozen=True)
class ModelSource:
    """A resolved model directory: `path` holds the weights; `tokenizer` is None when none was found."""

    path: Path
    kind: SourceKind
    tokenizer: Path | None
    meta: dict[str, Any]  # config.json (checkpoint, HF) or finetune.json (task)

    @property
    def is_hf(self) -> bool:
        return self.kind is SourceKind.HF

    def require_tokenizer(self, hint: str = "pass --tokenizer DIR") -> Path:
        if self.tokenizer is None:
            raise InputError(f"no tokenizer in {self.path} or the run above it; {hint}")
        return self.tokenizer


def find_tokenizer(model_dir: Path) -> Path | None:
    for cand in (model_dir, model_dir.parent / "tokenizer", model_dir.parent.parent / "tokenizer"):
        if any((cand / name).is_file() for name in TOKENIZER_FILES):
            return cand
    return None


def _read_json(file: Path) -> dict[str, Any]:
    from lmforge.models.hf import read_hf_json

    return read_hf_json(file)


def is_hf_dir(path: Path) -> bool:
    """A directory whose config.json describes a model that is not lmforge's own."""
    config = Path(path) / CONFIG
    if not config.is_file() or (Path(path) / HEAD_FILE).is_file():
        return False
    return not str(_read_json(config).get("model_type", "")).startswith("lmforge-")


def resolve_source(path: str | Path, tokenizer: str | Path | None = None) -> ModelSource:
    """Classify `path` (see the module docstring); `tokenizer` overrides the one found beside it."""
    p = local_path(path, "model")
    if tokenizer is not None:
        tokenizer = local_path(tokenizer, "tokenizer")
    if not p.exists():
        raise InputError(f"model path {p} does not exist")
    if (p / "pretrain" / "checkpoint").is_dir():  # a run directory
        p, tokenizer = p / "pretrain" / "checkpoint", tokenizer or p / "tokenizer"
    if (p / HEAD_FILE).is_file():
        kind, meta = SourceKind.TASK, _read_json(p / HEAD_FILE)
    elif (p / CONFIG).is_file():
        meta = _read_json(p / CONFIG)
        lmforge = str(meta.get("model_type", "")).startswith("lmforge-")
        kind = SourceKind.CHECKPOINT if lmforge else SourceKind.HF
    else:
        raise NotAModelError(
            f"{p} is not a model directory: expected an lmforge run (pretrain/checkpoint), an lmforge checkpoint "
            f"({CONFIG} + model.safetensors), a fine-tuned model ({HEAD_FILE}) or a Hugging Face directory ({CONFIG})")
    tok = Path(tokenizer) if tokenizer is not None else find_tokenizer(p)
    return ModelSource(p, kind, tok, meta)


def load_causal_lm(source: ModelSource, device: str = "auto", dtype: str = "auto") -> nn.Module:
    """lmforge's GPT behind `source`, for generation: a fine-tuned instruction model's backbone, an
    lmforge GPT checkpoint, or a Hugging Face directory of a supported family imported into it.

    dtype "auto" keeps an lmforge model's dtype and imports an HF one in float32 on a CPU (exact,
    and fast everywhere) or in the checkpoint's own dtype on a GPU.
    """
    from lmforge.models.checkpoint_io import load_checkpoint, resolve_device
    from lmforge.models.heads import load_task_model
    from lmforge.models.protocols import CausalLM, HasBackbone

    if source.kind is SourceKind.TASK:
        model, info = load_task_model(source.path)
        if not isinstance(model, HasBackbone) or not isinstance(model.backbone, CausalLM) \
                or info.get("head") != "CausalLMAdapter":
            raise InputError(f"{source.path} is a fine-tuned {info.get('kind')} model; only causal LMs generate text")
        return _to_dtype(model.backbone.to(resolve_device(device)), dtype)
    if source.kind is SourceKind.CHECKPOINT:
        model = load_checkpoint(source.path, device=device)
        if not isinstance(model, CausalLM):
            raise InputError(f"{source.path} holds a {source.meta.get('model_type')} encoder; only a GPT generates text")
        return _to_dtype(model, dtype)
    from lmforge.models.hf import import_gpt_hf

    target = resolve_device(device)
    if dtype == "auto":
        stored = source.meta.get("dtype") or source.meta.get("torch_dtype")
        dtype = stored if target.type == "cuda" and stored in ("bfloat16", "float16") else "float32"
    return import_gpt_hf(source.path, dtype=dtype).to(target)


def _to_dtype(model: nn.Module, dtype: str) -> nn.Module:
    if dtype == "auto":
        return model
    from lmforge.models.hf import torch_dtype

    return model.to(torch_dtype(dtype))


_KIND_BY_ARCH = {"ForSequenceClassification": "classification", "ForTokenClassification": "ner",
                 "ForCausalLM": "instruction"}


def load_saved_model(model_dir: str | Path, kind: str | None = None) -> tuple[nn.Module, str, list[str]]:
    """(model in eval mode, task kind, labels) of a fine-tuned model: lmforge head or HF directory.

    For an HF directory the kind comes from its architecture unless given.
    """
    from lmforge.models.heads import load_task_model

    source = resolve_source(model_dir)
    if source.kind is SourceKind.TASK:
        model, info = load_task_model(source.path)
        return model, info["kind"], info["labels"]
    p = source.path
    if source.kind is SourceKind.CHECKPOINT:
        raise UserError(f"{p} is a pretrained {source.meta.get('model_type')} checkpoint without a task head; "
                        "fine-tune it first (lmforge finetune) to score it on labelled data")
    if kind is None:
        arch = (source.meta.get("architectures") or [""])[0]
        kind = next((k for suffix, k in _KIND_BY_ARCH.items() if str(arch).endswith(suffix)), None)
        if kind is None:
            raise UserError(f"{p} is a {arch or 'model'}; task metrics need a classification, token "
                            "classification or causal LM model")
    import transformers

    from lmforge.models.sizes import check_hf_dir

    check_hf_dir(p)
    model = getattr(transformers, HF_AUTO[kind]).from_pretrained(str(p)).eval()
    labels = [] if kind == "instruction" else [model.config.id2label[i] for i in range(len(model.config.id2label))]
    return model, kind, labels

