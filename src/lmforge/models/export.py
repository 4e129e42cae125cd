"""Export any lmforge checkpoint to the matching Hugging Face class (GPT or BERT), offline."""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import InputError


def export_hf(checkpoint: str | Path, tokenizer_dir: str | Path | None, out_dir: str | Path) -> tuple[Path, str]:
    """Write `out_dir` so `AutoModel*.from_pretrained(out_dir)` loads it; returns (path, HF class name)."""
    import json

    from lmforge.models.checkpoint_io import load_checkpoint

    model = load_checkpoint(checkpoint)
    if tokenizer_dir is not None and not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise InputError(f"--tokenizer {tokenizer_dir} holds no tokenizer.json")
    if model.model_type == "lmforge-bert":
        from lmforge.models.hf_bert import export_bert_hf

        path = Path(export_bert_hf(model, tokenizer_dir, out_dir))
    else:
        from lmforge.models.hf import export_gpt_hf

        path = Path(export_gpt_hf(model, tokenizer_dir, out_dir))
    architectures = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or ["?"]
    return path, architectures[0]
