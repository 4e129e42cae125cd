"""Export a model to a Hugging Face directory or a GGUF file (llama.cpp, Ollama), offline.

What can be exported: an lmforge checkpoint (GPT or BERT), a model fine-tuned for instructions by
`lmforge finetune` (its LoRA adapters already merged), or a Hugging Face directory of a family
lmforge imports (to convert it to GGUF). Decoders go to their family's HF class (models.families)
or to GGUF through the same HF-named weights (models.gguf).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.errors import InputError

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")


def load_exportable(path: str | Path) -> tuple[Any, Path | None]:
    """(model, tokenizer directory found beside it) for any model `export` accepts."""
    from lmforge.models.source import SourceKind, load_causal_lm, resolve_source

    source = resolve_source(path)
    if source.kind is SourceKind.CHECKPOINT:
        from lmforge.models.checkpoint_io import load_checkpoint

        return load_checkpoint(source.path), source.tokenizer
    return load_causal_lm(source, device="cpu", dtype="auto"), source.tokenizer


def _tokenizer_dir(given: str | Path | None, found: Path | None) -> Path | None:
    if given is not None:
        if not (Path(given) / "tokenizer.json").is_file():
            raise InputError(f"--tokenizer {given} holds no tokenizer.json")
        return Path(given)
    return found if found is not None and (found / "tokenizer.json").is_file() else None


def export_hf(checkpoint: str | Path, tokenizer_dir: str | Path | None, out_dir: str | Path) -> tuple[Path, str]:
    """Write `out_dir` so `AutoModel*.from_pretrained(out_dir)` loads it; returns (path, HF class name)."""
    model, found = load_exportable(checkpoint)
    tok = _tokenizer_dir(tokenizer_dir, found)
    if model.model_type == "lmforge-bert":
        from lmforge.models.hf_bert import export_bert_hf

        path = Path(export_bert_hf(model, tok, out_dir))
    else:
        from lmforge.models.hf import export_gpt_hf

        path = Path(export_gpt_hf(model, tok, out_dir))
    architectures = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or ["?"]
    return path, architectures[0]


def export_gguf(checkpoint: str | Path, tokenizer_dir: str | Path | None, out_file: str | Path,
                dtype: str = "f16") -> tuple[Path, str]:
    """Write one GGUF file llama.cpp runs: weights in `dtype` (f32, f16, bf16, q8_0) and the tokenizer."""
    from lmforge.errors import ConfigError
    from lmforge.models.gguf import write_gguf
    from lmforge.models.hf import hf_checkpoint

    if dtype not in GGUF_TYPES:
        raise ConfigError(f"--gguf-type must be one of {list(GGUF_TYPES)} (got {dtype!r})")
    model, found = load_exportable(checkpoint)
    if model.model_type == "lmforge-bert":
        raise InputError(f"{checkpoint} is a BERT encoder; GGUF export is for decoders (llama.cpp generates text)")
    tok = _tokenizer_dir(tokenizer_dir, found)
    if tok is None:
        raise InputError(f"no tokenizer.json beside {checkpoint}: give --tokenizer (llama.cpp needs the vocabulary)")
    hf_config, tensors = hf_checkpoint(model)
    path = write_gguf(hf_config, tensors, tok, Path(out_file), dtype)
    return path, hf_config["architectures"][0]
