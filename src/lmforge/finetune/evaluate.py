"""`lmforge evaluate`: score a saved model on labelled data (task metrics) or on text (perplexity, bits/byte)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import InputError, UserError
from lmforge.finetune.data import Example

log = logging.getLogger(__name__)

def _examples(data: str, kind: str) -> list[Example]:
    if data.startswith("builtin:"):
        from lmforge.finetune.builtin_tasks import load_task

        return load_task(data.split(":", 1)[1]).test
    from lmforge.finetune.loaders import load_examples

    return load_examples(data, kind=kind)


def evaluate_task(model_dir: str | Path, data: str, tokenizer: str | Path | None = None,
                  batch_size: int = 32, max_len: int = 512) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from lmforge.finetune import tasks
    from lmforge.finetune.heads import load_saved_model

    model_dir = Path(model_dir)
    model, kind, labels = load_saved_model(model_dir)
    if kind == "instruction":
        raise UserError(f"{model_dir} is a causal LM; task metrics need a classification or token classification "
                        "model (use --metrics perplexity for language models)")
    tok = AutoTokenizer.from_pretrained(str(tokenizer or model_dir))
    examples = _examples(data, kind)
    if kind == "classification":
        unknown = sorted({e.label for e in examples} - set(labels), key=str)
        if unknown:
            raise UserError(f"the data has labels {unknown[:5]} the model does not know (its labels: {labels})")
        enc = tasks.encode_classification(examples, tok, labels, max_len)
    else:
        enc = tasks.encode_ner(examples, tok, labels, max_len)
    gold, pred, loss = tasks.predict(model, tasks.ExampleSource(enc, batch_size, 0, shuffle=False), torch.device("cpu"))
    if kind == "classification":
        from lmforge.evaluate import classification_report

        report = classification_report([labels[g] for g in gold], [labels[p] for p in pred], labels=labels)
    else:
        from lmforge.evaluate import ner_report

        report = ner_report([[labels[t] for t in r] for r in gold], [[labels[t] for t in r] for r in pred])
    return {"task": kind, "examples": len(examples), "loss": loss, **report}


def evaluate_lm(model_path: str | Path, data: str, tokenizer: str | Path | None, max_docs: int = 2000) -> dict[str, Any]:
    """Perplexity (from total NLL) and bits per UTF-8 byte of a causal LM on documents."""
    from lmforge.evaluate import lm_scores
    from lmforge.finetune.heads import is_hf_dir
    from lmforge.tokenize.shards import iter_source_texts

    path = Path(model_path)
    if is_hf_dir(path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lmforge.models.sizes import check_hf_dir

        check_hf_dir(path)
        model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        tok = AutoTokenizer.from_pretrained(str(tokenizer or path))
    else:
        from lmforge.tokenize.bpe import load_tokenizer
        from lmforge.train.checkpoint import load_checkpoint

        model = load_checkpoint(path)
        if tokenizer is None:
            raise UserError("--tokenizer is needed with an lmforge checkpoint (e.g. RUN/tokenizer)")
        tok = load_tokenizer(tokenizer)
    texts = []
    for _, text in iter_source_texts([data]):
        texts.append(text)
        if len(texts) >= max_docs:
            break
    if not texts:
        raise InputError(f"{data} holds no text to score")
    scores = lm_scores(model, texts=texts, tokenizer=tok)
    scores.pop("sequences", None)
    return {"documents": len(texts), **scores}
