"""Score a saved model: on labelled data (task metrics) or on text (perplexity, bits/byte), for
`lmforge evaluate`, and on a fine-tuning run's test split (`evaluate_saved`), where instruction
models are also scored by their greedy answers."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import InputError, UserError
from lmforge.finetune.config import FinetuneConfig
from lmforge.finetune.specs import TaskSpec, spec_for
from lmforge.models.source import ModelSource, SourceKind
from lmforge.tasks.examples import Example, TaskData

log = logging.getLogger(__name__)


def _examples(data: str, kind: str) -> list[Example]:
    if data.startswith("builtin:"):
        from lmforge.tasks.builtin import load_task

        return load_task(data.split(":", 1)[1]).test
    from lmforge.tasks.loaders import load_examples

    return load_examples(data, kind=kind)


def _predict(model: torch.nn.Module, spec: TaskSpec, examples: list[Example], tokenizer, labels: list[str],
             max_len: int, batch_size: int) -> tuple[list, list, float]:
    """(gold, predicted, mean loss) of a classification or tagging model over `examples`, in order;
    a tagger's words past `max_len` are scored as predicted O (`TaskSpec.whole`)."""
    from lmforge.finetune import tasks

    enc = spec.encode(examples, tokenizer, labels, max_len)
    gold, pred, loss = tasks.predict(model, tasks.ExampleSource(enc, batch_size, 0, shuffle=False),
                                     torch.device("cpu"), labels)
    return (*spec.whole(examples, gold, pred, labels), loss)


def evaluate_task(model_dir: str | Path, data: str, tokenizer: str | Path | None = None,
                  batch_size: int = 32, max_len: int = 512) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from lmforge.models.source import load_saved_model

    model_dir = Path(model_dir)
    model, kind, labels = load_saved_model(model_dir)
    spec = spec_for(kind)
    if spec.generative:
        raise UserError(f"{model_dir} is a causal LM; task metrics need a classification or token classification "
                        "model (use --metrics perplexity for language models)")
    tok = AutoTokenizer.from_pretrained(str(tokenizer or model_dir))
    examples = _examples(data, kind)
    if kind == "classification":
        unknown = sorted({e.label for e in examples} - set(labels), key=str)
        if unknown:
            raise UserError(f"the data has labels {unknown[:5]} the model does not know (its labels: {labels})")
    gold, pred, loss = _predict(model, spec, examples, tok, labels, max_len, batch_size)
    return {"task": kind, "examples": len(examples), "loss": loss, **spec.report(gold, pred, labels)}


def _causal_lm(source: ModelSource, tokenizer: str | Path | None) -> tuple[torch.nn.Module, Any]:
    """(model returning logits, tokenizer) for perplexity: an HF causal LM, an lmforge GPT checkpoint,
    or an instruction-tuned lmforge model."""
    if source.kind is SourceKind.CHECKPOINT:
        from lmforge.models.checkpoint_io import load_checkpoint
        from lmforge.tokenize.bpe import load_tokenizer

        model = load_checkpoint(source.path)
        return model, load_tokenizer(source.require_tokenizer("--tokenizer is needed with an lmforge checkpoint "
                                                              "(e.g. RUN/tokenizer)"))
    from transformers import AutoTokenizer

    if source.kind is SourceKind.TASK:
        from lmforge.models.heads import load_task_model

        model, info = load_task_model(source.path)
        if info.get("kind") != "instruction":
            raise UserError(f"{source.path} is a fine-tuned {info.get('kind')} model; perplexity needs a language "
                            "model (use --metrics auto for task metrics)")
        model = model.backbone  # the GPT itself: it knows its context length
    else:
        from transformers import AutoModelForCausalLM

        from lmforge.models.sizes import check_hf_dir

        check_hf_dir(source.path)
        model = AutoModelForCausalLM.from_pretrained(str(source.path)).eval()
    return model, AutoTokenizer.from_pretrained(str(tokenizer or source.path))


def evaluate_lm(model_path: str | Path, data: str, tokenizer: str | Path | None, max_docs: int = 2000) -> dict[str, Any]:
    """Perplexity (from total NLL) and bits per UTF-8 byte of a causal LM on documents."""
    from lmforge.evaluate import lm_scores
    from lmforge.models.source import resolve_source
    from lmforge.tokenize.shards import iter_source_texts

    model, tok = _causal_lm(resolve_source(model_path, tokenizer), tokenizer)
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


def evaluate_saved(model_dir: Path, data: TaskData, cfg: FinetuneConfig, tokenizer,
                   predictions: Path | None = None, pairs=None) -> dict[str, float]:
    """Test metrics of a model `finetune` saved (lmforge head or HF directory).

    With `predictions`, each test example's gold and predicted labels (or its generated answer)
    are also written there as JSON lines: the run report draws its confusion matrix from them.
    `pairs` are the test preference pairs with their reference log-probabilities.
    """
    from lmforge.models.source import load_saved_model

    spec = spec_for(cfg.task)
    model, _, _ = load_saved_model(model_dir, "instruction" if spec.generative else cfg.task)
    if cfg.task in ("conversation", "preference"):
        return _score_chat(model, data, cfg, tokenizer, pairs)
    if spec.generative:
        return _score_generative(model, data, cfg, tokenizer, predictions)
    gold, pred, _ = _predict(model, spec, data.test, tokenizer, data.labels, cfg.seq_len, cfg.batch_size)
    _write_predictions(predictions, spec.prediction_rows(data.test, gold, pred, data.labels))
    return spec.score(gold, pred, data.labels)


def _score_generative(model: torch.nn.Module, data: TaskData, cfg: FinetuneConfig, tokenizer,
                      predictions: Path | None) -> dict[str, float]:
    """Perplexity of the test responses (from their total NLL) and scores of greedy answers."""
    from lmforge.finetune import tasks

    source = tasks.ExampleSource(tasks.encode_instructions(data.test, tokenizer, cfg.seq_len), cfg.batch_size,
                                 cfg.seed, shuffle=False)
    objective, nll, tokens = tasks.ResponseLM(), 0.0, 0
    with torch.no_grad():
        for i in range(source.num_batches):
            batch = source.micro_batch(i)
            nll += float(objective.sums(model, batch)["lm"])
            tokens += objective.counts(batch)["lm"]
    loss = nll / max(tokens, 1)
    answers: list[dict[str, str]] = []
    scores = generation_metrics(model, data.test, tokenizer, cfg, answers)
    _write_predictions(predictions, answers)
    return {"loss": loss, "perplexity": math.exp(loss), **scores}


def _score_chat(model: torch.nn.Module, data: TaskData, cfg: FinetuneConfig, tokenizer, pairs) -> dict[str, float]:
    """Conversations: the assistant tokens' loss and perplexity. Pairs: the preference loss, rewards and accuracy."""
    from lmforge.finetune.chat_data import ChatLM, ChatSource, encode_conversations
    from lmforge.finetune.specs import chat_encoder
    from lmforge.finetune.tasks import pad_id_of
    from lmforge.models.protocols import is_hf_model

    if cfg.task == "preference":
        from lmforge.finetune.preference import PreferenceObjective

        objective, source = PreferenceObjective(cfg.preference, not is_hf_model(model)), pairs
    else:
        encoded, _ = encode_conversations(data.test, chat_encoder(tokenizer), cfg.seq_len, pad_id_of(tokenizer))
        objective, source = ChatLM(fused=not is_hf_model(model)), ChatSource(encoded, cfg.batch_size, 0, shuffle=False)
    if source is None:
        return {}
    names = (*objective.terms, *getattr(objective, "metrics", ()))
    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)
    with torch.no_grad():
        for i in range(source.num_batches):
            batch = source.micro_batch(i)
            parts, n = objective.sums(model, batch), objective.counts(batch)
            for k in names:
                sums[k] += float(parts[k])
                counts[k] += n[k]
    out = {k: sums[k] / max(counts[k], 1) for k in names}
    out["loss"] = sum(out[t] for t in objective.terms)
    if cfg.task == "conversation":
        out["perplexity"] = math.exp(min(out["loss"], 50.0))
    return out


def generation_metrics(model: torch.nn.Module, examples: list, tokenizer, cfg: FinetuneConfig,
                       keep: list[dict[str, str]] | None = None) -> dict[str, float]:
    """ROUGE, BLEU and exact match of greedy answers to the first `cfg.generate_examples` test prompts
    (appended to `keep`, when given, as prompt/reference/answer)."""
    from lmforge.evaluate import bleu, exact_match, rouge
    from lmforge.serve.generate import generate_responses

    rows = examples[: cfg.generate_examples]
    if not rows:
        return {}
    answers = generate_responses(model, [e.prompt for e in rows], tokenizer, cfg.generate_max_tokens)
    refs = [e.response for e in rows]
    if keep is not None:
        keep.extend({"prompt": e.prompt, "reference": e.response, "answer": a} for e, a in zip(rows, answers, strict=True))
    out = {f"gen_{k}": v for k, v in rouge(answers, refs).items()}
    out["gen_bleu"] = bleu(answers, refs)["bleu"]
    out["gen_exact_match"] = exact_match(answers, refs)
    return out


def _write_predictions(path: Path | None, rows: list[dict[str, Any]]) -> None:
    if path is None:
        return
    from lmforge.records import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def evaluate_model(model: str | Path, data: str, metrics: str = "auto", tokenizer: str | Path | None = None,
                   max_docs: int = 2000, out: str | Path | None = None) -> dict[str, Any]:
    """What `lmforge evaluate` does: task metrics ("auto") or perplexity; report.json and report.md in `out`."""
    from lmforge.errors import ConfigError
    from lmforge.evaluate.report import write_report

    if metrics == "perplexity":
        result = evaluate_lm(model, data, tokenizer, max_docs)
    elif metrics == "auto":
        result = evaluate_task(model, data, tokenizer)
    else:
        raise ConfigError(f"--metrics must be auto or perplexity (got {metrics!r})")
    if out is not None:
        write_report(Path(out) / "report", result, title=f"{model} on {data}")
    return result
