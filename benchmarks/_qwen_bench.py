"""What benchmarks/sft.py and benchmarks/preference.py share: lmforge against TRL on one tiny random Qwen2.

Both build their examples from the built-in `instructions` task, train a byte-level BPE on the
texts, save one random-weight `Qwen2ForCausalLM` both sides start from, run each side in a fresh
process with the same optimizer knobs, time the optimizer steps (wall and CPU) and print the
loss curves side by side. Each script keeps its own data, trainer options, table and last line.

Not a package module: the scripts import it as `from _qwen_bench import ...` (they run as
`python benchmarks/NAME.py`, which puts this folder on sys.path); the leading underscore keeps it
out of the list of benchmarks that the tests start.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

# Set before tokenizers or transformers are imported: no fork warnings, no hub look-ups.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("qwen_bench")
NOISY = ("lmforge", "transformers", "datasets", "trl")
VAL_EXAMPLES = 4  # lmforge validates only before and after training, on this many examples


def add_model_options(ap) -> None:
    """The model, thread, precision and seed options both benchmarks take, with the same defaults."""
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="auto: fp32, plus bf16 on CPUs with native bfloat16")
    ap.add_argument("--seed", type=int, default=0)


def setup(args) -> None:
    """Log our progress but not the libraries', and set args.precisions from --precision and the CPU."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import datasets
    import transformers

    from lmforge.models import cpu_kernels

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    if args.precision == "auto":
        args.precisions = ["fp32", "bf16"] if cpu_kernels.NATIVE_BF16 else ["fp32"]
    else:
        args.precisions = [args.precision]


def quiet() -> None:
    """A spawned side starts with default logging: keep its progress bars and warnings out of the table."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def instruction_rows(args) -> tuple[list, random.Random]:
    """All `instructions` examples shuffled by --seed, and the generator that goes on drawing the data."""
    from lmforge.tasks.builtin import load_task

    data = load_task("instructions", seed=args.seed, max_per_task=args.per_task)
    rows = data.train + data.val + data.test
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    return rows, rng


def write_jsonl(path: Path, records) -> None:
    """The examples as lmforge's data file: one JSON object a line, Chinese kept readable."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def random_qwen2(texts: list[str], work: Path, args) -> tuple[Path, Path]:
    """A byte-level BPE trained on the texts and a seeded random Qwen2 saved once, for both sides to load."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer

    tok_dir = train_tokenizer(texts, TokenizerConfig(kind="byte_bpe", vocab_size=args.vocab), work / "tokenizer")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(args.seed)
    cfg = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      intermediate_size=args.intermediate, max_position_embeddings=max(1024, args.seq_len),
                      tie_word_embeddings=True, attention_dropout=0.0, pad_token_id=tok.token_to_id("<|pad|>"))
    Qwen2ForCausalLM(cfg).save_pretrained(work / "qwen2-init")
    return tok_dir, work / "qwen2-init"


def finetune_config(args, precision: str, tok_dir: Path, model_dir: Path, **task_keys):
    """lmforge's FinetuneConfig with the knobs TRL gets too; task_keys add the task, data and batch size."""
    from lmforge.finetune.config import FinetuneConfig

    return FinetuneConfig.model_validate({
        "model": {"from": str(model_dir), "tokenizer": str(tok_dir)}, "head": {"dropout": 0.0},
        "epochs": None, "steps": args.steps, "seq_len": args.seq_len,
        "lr": args.lr, "min_lr": 0.0, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "betas": [0.9, 0.999], "grad_clip": 1.0, "eval_every": 0, "early_stopping": 0, "log_every": 1,
        "save_every": 0, "tensorboard": False, "precision": precision, "device": "cpu", "seed": args.seed,
        **task_keys,
    })


def run_finetune(cfg, examples: list, out: Path, threads: int) -> dict:
    """lmforge's side in its fresh process: its steps, seconds of the optimizer steps, losses and CPU s/step."""
    import torch

    from lmforge.finetune.run import finetune
    from lmforge.tasks.examples import TaskData

    quiet()
    torch.set_num_threads(threads)
    data = TaskData(cfg.task, list(examples), list(examples[:VAL_EXAMPLES]), [], [])
    cpu: list[float] = []  # process CPU time at the end of each step (both threads)
    result = finetune(cfg, out, data=data, on_step=lambda step, loss: cpu.append(time.process_time()))
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x and "val" not in x]
    return {"steps": result.steps, "seconds": result.steps * cfg.batch_size / result.examples_per_second,
            "losses": losses, "cpu_per_step": per_step(cpu)}


def trl_start(tok_dir: Path, model_dir: Path, args):
    """TRL's side in its fresh process: quiet, --threads, the tokenizer with ChatML's EOS, the float32 model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.eos_token = "<|im_end|>"  # ChatML's end of turn, as in Qwen's chat tokenizers
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    return tok, model


def trl_options(work: Path, args, precision: str, batch: int) -> dict:
    """TRL's training arguments that match lmforge's knobs: constant lr, fused AdamW, clipping, no eval or saves."""
    return dict(
        output_dir=str(work / f"trl-{precision}"), per_device_train_batch_size=batch, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, optim="adamw_torch_fused",
        max_length=args.seq_len, bf16=precision == "bf16", use_cpu=True, seed=args.seed, logging_steps=1,
        eval_strategy="no", save_strategy="no", report_to=[], dataloader_num_workers=0, disable_tqdm=True)


def step_clock():
    """A TrainerCallback timing the optimizer steps alone (wall seconds summed, CPU clock at each step's end)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds, self.last, self.cpu = 0.0, None, []

        def on_epoch_begin(self, args, state, control, **kw):
            if self.last is None:  # later epochs begin between two steps: that time belongs to the next step
                self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.seconds += now - self.last
            self.last = now
            self.cpu.append(time.process_time())

    return StepClock()


def train_trl(trainer, clock) -> dict:
    """TRL's side: train silently; the same steps, seconds, losses and CPU s/step lmforge's side reports."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.train()
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    return {"steps": trainer.state.global_step, "seconds": clock.seconds, "losses": losses,
            "cpu_per_step": per_step(clock.cpu)}


def per_step(marks: list[float]) -> float:
    """CPU seconds per step from the CPU clock at each step's end, the first (warm-up) step left out.

    Unlike wall time it hardly moves when other processes share the cores, so it backs the speedup
    on a busy machine."""
    return (marks[-1] - marks[0]) / max(len(marks) - 1, 1)


def isolated(fn, *args):
    """fn(*args) in a fresh process: no side inherits the other's warm kernels, allocator or threads."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_sides(run_lmforge, run_trl, inputs: tuple, args) -> dict:
    """Each side at each precision, one fresh process each, as {"lmforge fp32": result, "trl fp32": ...}."""
    results = {}
    for precision in args.precisions:
        for side, fn in (("lmforge", run_lmforge), ("trl", run_trl)):
            t0 = time.perf_counter()
            results[f"{side} {precision}"] = isolated(fn, *inputs, args, precision)
            log.info("%s %s done in %.0f s", side, precision, time.perf_counter() - t0)
    return results


def tail_mean(losses: list[float], n: int = 10) -> float:
    """The mean of the last n losses: steadier than the last one for the loss ratio."""
    tail = losses[-n:]
    return sum(tail) / len(tail)


def print_machine(args, load: float) -> None:
    """The CPU, threads, library versions and load: what the timings depend on."""
    import torch
    import transformers
    import trl

    from lmforge import sysinfo

    print(f"\nCPU: {sysinfo.cpu_summary()}; {args.threads} threads each side, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}; "
          f"1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")


def print_loss_curves(results: dict, args) -> None:
    """Both sides' losses step by step (about 10 rows), and their largest relative gap."""
    for precision in args.precisions:
        ours, theirs = results.get(f"lmforge {precision}"), results.get(f"trl {precision}")
        if not (ours and theirs):
            continue
        gaps = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours["losses"], theirs["losses"], strict=False)]
        print(f"\nloss per step, {precision} (lmforge / TRL; largest relative gap {max(gaps):.2e}):")
        every = max(1, len(ours["losses"]) // 10)
        for k in range(0, len(ours["losses"]), every):
            print(f"  step {k + 1:>4}  {ours['losses'][k]:.5f}  {theirs['losses'][k]:.5f}")


def print_summary(results: dict, args, speedup_key: str) -> None:
    """The last line: `<speedup_key> X loss_ratio X cpu_speedup X` per precision, `_bf16` suffixed."""
    summary = []
    for precision in args.precisions:
        ours, theirs = results[f"lmforge {precision}"], results[f"trl {precision}"]
        speedup = (ours["steps"] / ours["seconds"]) / (theirs["steps"] / theirs["seconds"])
        suffix = "" if precision == "fp32" else f"_{precision}"
        summary.append(f"{speedup_key}{suffix} {speedup:.2f} loss_ratio{suffix} "
                       f"{tail_mean(ours['losses']) / tail_mean(theirs['losses']):.4f} "
                       f"cpu_speedup{suffix} {theirs['cpu_per_step'] / ours['cpu_per_step']:.2f}")
    print("\n" + " ".join(summary))
