"""Fine-tune one model on one labelled task, pick the best validation checkpoint, score it on the test split.

`finetune(cfg, out)` leaves in `out/`:
  task/             the exact train/val/test examples used (JSONL + task.json)
  log.jsonl         training loss and validation loss + task metric at every evaluation
  best/             the model at its best validation metric (LoRA adapters merged), with tokenizer
  report.json/.md   validation and test metrics of the best model
`search(cfg, out)` runs the grid in `cfg.search`, one `finetune` per point, and writes a table.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import InputError, UserError
from lmforge.finetune.config import FinetuneConfig
from lmforge.finetune.data import TaskData, make_task
from lmforge.finetune.loaders import load_examples

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    out_dir: Path
    best_dir: Path
    val: dict[str, float]
    test: dict[str, float]
    steps: int
    seconds: float
    examples_per_second: float  # training examples over the time of the optimizer steps
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def load_task_data(cfg: FinetuneConfig) -> TaskData:
    d = cfg.data
    if d.builtin is not None:
        from lmforge.finetune.builtin_tasks import load_task

        data = load_task(d.builtin, **{"seed": cfg.seed, **d.options})
    else:
        loader = d.loader.model_copy(update={"kind": cfg.task})
        data = make_task(cfg.task, load_examples(d.path, loader), val_frac=d.val_frac, test_frac=d.test_frac,
                         seed=cfg.seed)
    if d.train_limit is not None and d.train_limit < len(data.train):
        from lmforge.finetune.data import split

        keep = d.train_limit / len(data.train)
        by = "label" if data.kind == "classification" else None
        data.train, _, _ = split(data.train, val_frac=1 - keep, test_frac=0.0, seed=cfg.seed, stratify_by=by)
        data.train = data.train[: d.train_limit]
    if data.kind != cfg.task:
        raise UserError(f"finetune.task is {cfg.task!r} but the data is a {data.kind!r} task")
    if not data.train or not data.val:
        raise UserError(f"the task has {len(data.train)} training and {len(data.val)} validation examples; need both")
    return data


def tokenizer_dir(cfg: FinetuneConfig) -> Path:
    """The tokenizer given, or the one beside the model (an HF dir, or an lmforge run's tokenizer/)."""
    if cfg.model.tokenizer:
        return Path(cfg.model.tokenizer)
    if cfg.model.source:
        src = Path(cfg.model.source)
        for candidate in (src, src.parent.parent / "tokenizer", src.parent / "tokenizer"):
            if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.txt").is_file():
                return candidate
    raise UserError("finetune.model.tokenizer: no tokenizer found beside the model; give its directory")


def _scratch_backbone(cfg: FinetuneConfig, vocab_size: int, pad_id: int) -> torch.nn.Module:
    from lmforge.train.config import PretrainConfig
    from lmforge.train.pretrain import build_model

    pcfg = PretrainConfig(arch=cfg.model.arch, preset=cfg.model.preset, model=cfg.model.overrides,
                          seq_len=cfg.seq_len, seed=cfg.seed)
    return build_model(pcfg, vocab_size, pad_id=pad_id if cfg.model.arch == "bert" else None)


def _apply_lora(model: torch.nn.Module, cfg: FinetuneConfig, is_hf: bool) -> torch.nn.Module:
    from lmforge.errors import require

    require("peft", "train")
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora.target_modules
    if targets is None:
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        targets = sorted(names & {"c_attn", "c_proj", "c_fc", "qkv", "proj", "fc1", "fc2", "query", "key",
                                  "value", "dense", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                  "up_proj", "down_proj", "c_qkv", "attn_out", "ffn_in", "ffn_out"})
        if not targets:
            raise UserError("finetune.lora.target_modules: found no known projection names; list them")
    # The task head is new, so it trains in full (an lm_head is not a task head: it stays tied and frozen).
    heads = [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("head", "classifier", "score")
             and isinstance(m, torch.nn.Linear)]
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, modules_to_save=heads or None)
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%d on %s: %.2fM trainable parameters", cfg.lora.r, targets, trainable / 1e6)
    return model


def finetune(cfg: FinetuneConfig, out_dir: str | Path, on_step: Callable[[int, float], None] | None = None,
             data: TaskData | None = None) -> FinetuneResult:
    from transformers import AutoTokenizer

    from lmforge.evaluate.report import write_report
    from lmforge.finetune import tasks
    from lmforge.finetune.heads import build_task_model, save_task_model
    from lmforge.train.trainer import Trainer

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data or load_task_data(cfg)
    data.save(out / "task")
    tok_path = tokenizer_dir(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the tokenizer at {tok_path}: {exc}") from None

    encode = {"classification": lambda rows: tasks.encode_classification(rows, tokenizer, data.labels, cfg.seq_len),
              "ner": lambda rows: tasks.encode_ner(rows, tokenizer, data.labels, cfg.seq_len),
              "instruction": lambda rows: tasks.encode_instructions(rows, tokenizer, cfg.seq_len)}[cfg.task]
    train, val = encode(data.train), encode(data.val)
    torch.manual_seed(cfg.seed)
    scratch = None if cfg.model.source else _scratch_backbone(cfg, len(tokenizer), tasks.pad_id_of(tokenizer))
    model, is_hf = build_task_model(cfg.task, cfg.model.source, data.labels, cfg.model.dropout, scratch,
                                    fresh=cfg.model.init == "scratch", pool=cfg.model.pool)
    if cfg.lora is not None:
        model = _apply_lora(model, cfg, is_hf)

    steps = cfg.steps if cfg.epochs is None else max(1, math.ceil(
        cfg.epochs * len(train) / (cfg.batch_size * cfg.grad_accum)))
    val_source = tasks.ExampleSource(val, cfg.batch_size, cfg.seed, shuffle=False)
    eval_every = cfg.eval_every if cfg.eval_every is not None else max(1, steps // 5)
    tcfg = cfg.model_copy(update={"steps": steps, "eval_batches": val_source.num_batches, "eval_every": eval_every,
                                  "warmup_steps": min(cfg.warmup_steps, steps // 2)})
    objective = {"classification": lambda: tasks.Classification(data.class_weights() if cfg.class_weights else None),
                 "ner": tasks.TokenClassification, "instruction": tasks.ResponseLM}[cfg.task]()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    info = {"kind": cfg.task, "labels": data.labels, "config": cfg.model_dump(mode="json", by_alias=True)}

    def saver(m: torch.nn.Module, path: Path, extra: dict[str, Any]) -> None:
        save_task_model(m, is_hf, path, {**info, **{k: v for k, v in extra.items() if k != "config"}}, tokenizer)

    trainer = Trainer(model, objective, tasks.ExampleSource(train, cfg.batch_size, cfg.seed), tcfg, out,
                      val_source=val_source, on_step=on_step,
                      evaluator=tasks.make_evaluator(cfg.task, val_source, data.labels, device),
                      select=cfg.selection(), keep_best=True, saver=saver)
    result = trainer.fit()
    best_val = _best(result.val_losses, cfg.selection())
    test = evaluate_saved(out / "best", data, cfg, tokenizer, predictions=out / "test_predictions.jsonl") \
        if data.test else {}
    seconds = time.perf_counter() - t0
    examples = result.steps * cfg.batch_size * cfg.grad_accum
    report = {"task": cfg.task, "data": data.meta, "sizes": {k: len(v) for k, v in data.splits().items()},
              "steps": result.steps, "stopped_early": result.stopped_early, "val": best_val, "test": test,
              "seconds": round(seconds, 2),
              "train_examples_per_second": round(result.steps * cfg.batch_size * cfg.grad_accum
                                                 / max(result.train_seconds, 1e-9), 1)}
    write_report(out / "report", report, title=f"fine-tuning: {cfg.task}")
    return FinetuneResult(out, out / "best", best_val, test, result.steps, seconds,
                          examples / max(result.train_seconds, 1e-9), result.val_losses)


def _best(history: list[tuple[int, dict[str, float]]], selection: tuple[str, str]) -> dict[str, float]:
    key, mode = selection
    pick = max if mode == "max" else min
    return dict(pick(history, key=lambda item: item[1][key])[1]) if history else {}


def evaluate_saved(model_dir: Path, data: TaskData, cfg: FinetuneConfig, tokenizer,
                   predictions: Path | None = None) -> dict[str, float]:
    """Test metrics of a saved fine-tuned model (lmforge heads or an HF directory).

    With `predictions`, each test example's gold and predicted labels (or its generated answer)
    are also written there as JSON lines: the run report draws its confusion matrix from them.
    """
    from lmforge.finetune import tasks
    from lmforge.finetune.heads import load_saved_model

    model, _, _ = load_saved_model(model_dir, cfg.task)
    if cfg.task == "instruction":  # perplexity of the responses, from their total NLL
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
    enc = (tasks.encode_classification if cfg.task == "classification" else tasks.encode_ner)(
        data.test, tokenizer, data.labels, cfg.seq_len)
    gold, pred, _ = tasks.predict(model, tasks.ExampleSource(enc, cfg.batch_size, cfg.seed, shuffle=False),
                               torch.device("cpu"))
    names = data.labels
    if cfg.task == "classification":
        rows = [{"text": e.text, "gold": names[g], "pred": names[p]} for e, g, p in zip(data.test, gold, pred, strict=True)]
    else:  # tags of the first piece of each word, for the words that fit in seq_len
        rows = [{"tokens": e.tokens[: len(g)], "gold": [names[t] for t in g], "pred": [names[t] for t in p]}
                for e, g, p in zip(data.test, gold, pred, strict=True)]
    _write_predictions(predictions, rows)
    metrics = tasks.classification_metrics if cfg.task == "classification" else tasks.ner_metrics
    return metrics(gold, pred, data.labels)


def _write_predictions(path: Path | None, rows: list[dict[str, Any]]) -> None:
    if path is None:
        return
    from lmforge.records import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def compare_scratch(cfg: FinetuneConfig, out_dir: str | Path,
                    on_step: Callable[[int, float], None] | None = None) -> dict[str, FinetuneResult]:
    """Fine-tune the pretrained model and the same architecture from scratch on the same data; compare."""
    from lmforge.evaluate.report import compare_table

    if not cfg.model.source:
        raise UserError("finetune.compare_scratch needs model.from: the pretrained model to compare against")
    out = Path(out_dir)
    data = load_task_data(cfg)
    results = {}
    for name, init in (("pretrained", "pretrained"), ("scratch", "scratch")):
        run_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"init": init})})
        results[name] = finetune(run_cfg, out / name, on_step=on_step, data=data)
    table = compare_table({f"{name} (test)": r.test for name, r in results.items()})
    (out / "comparison.md").write_text(f"# pretrained then fine-tuned vs from scratch\n\n{table}\n", encoding="utf-8")
    from lmforge.records import write_json_atomic

    write_json_atomic(out / "comparison.json", {name: {"val": r.val, "test": r.test, "steps": r.steps}
                                                for name, r in results.items()})
    return results


def generate_responses(model: torch.nn.Module, prompts: list[str], tokenizer, max_new_tokens: int) -> list[str]:
    """Greedy answers to chat prompts, stopping at the end-of-turn token (lmforge GPT or HF causal LM)."""
    from lmforge.serve.generate import generate_tokens
    from lmforge.serve.sampling import SamplingParams

    stop = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else \
        tokenizer.eos_token_id
    gen = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    answers = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if hasattr(model, "backbone"):  # an lmforge GPT
            ids = ids[-(model.backbone.config.block_size - max_new_tokens):]
            new = generate_tokens(model.backbone, ids, gen, stop)
        else:
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=stop, pad_token_id=stop)
            new = [t for t in out[0, len(ids):].tolist() if t != stop]
        answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers


def generation_metrics(model: torch.nn.Module, examples: list, tokenizer, cfg: FinetuneConfig,
                       keep: list[dict[str, str]] | None = None) -> dict[str, float]:
    """ROUGE, BLEU and exact match of greedy answers to the first `cfg.generate_examples` test prompts
    (appended to `keep`, when given, as prompt/reference/answer)."""
    from lmforge.evaluate import bleu, exact_match, rouge

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


def search(cfg: FinetuneConfig, out_dir: str | Path) -> list[dict[str, Any]]:
    """Grid search over `cfg.search`; each point fine-tunes into out/<i>; the table ranks by validation."""
    if not cfg.search:
        raise UserError("finetune.search is empty; give e.g. {lr: [1e-4, 3e-4], batch_size: [16, 32]}")
    unknown = sorted(set(cfg.search) - set(FinetuneConfig.model_fields))
    if unknown:
        raise UserError(f"finetune.search: {unknown} are not config fields")
    out = Path(out_dir)
    data = load_task_data(cfg)
    key, mode = cfg.selection()
    rows = []
    names = list(cfg.search)
    for i, values in enumerate(itertools.product(*(cfg.search[n] for n in names))):
        point = dict(zip(names, values, strict=True))
        run_cfg = FinetuneConfig.model_validate({**cfg.model_dump(by_alias=True), **point, "search": None})
        result = finetune(run_cfg, out / f"{i:03d}", data=data)
        rows.append({**point, f"val_{key}": result.val.get(key), **{f"test_{k}": v for k, v in result.test.items()},
                     "steps": result.steps, "dir": f"{i:03d}"})
    rows.sort(key=lambda r: r[f"val_{key}"], reverse=mode == "max")
    from lmforge.evaluate.report import to_markdown
    from lmforge.records import atomic_path, write_json_atomic

    write_json_atomic(out / "search.json", {"selected_by": f"val {key} ({mode})", "runs": rows})
    with atomic_path(out / "search.md") as tmp:
        tmp.write_text(to_markdown(rows, title=f"hyperparameter search, best val {key} first") + "\n", encoding="utf-8")
    (out / "best.json").write_text(json.dumps(rows[0], indent=2), encoding="utf-8")
    return rows
