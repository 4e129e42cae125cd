"""Preference tuning (DPO): lmforge's `finetune` (task: preference) against TRL's `DPOTrainer`, same model, same batches.

Data: preference pairs built from the built-in `instructions` task (Chinese sentiment and entity
prompts, English docstring prompts; --per-task of each kind): the prompt, its own response as the
chosen answer, and the response of another example of the same kind as the rejected one (pairs
whose two answers are equal are skipped); --pairs of them. A byte-level BPE (--vocab) with lmforge's
ChatML template is trained on the texts; every sequence is the ChatML rendering of one user turn
and the answer up to and including <|im_end|>.

Model: one random-weight `Qwen2ForCausalLM` (--hidden, --layers, --heads / --kv-heads, MLP
--intermediate, tied embeddings, dropout 0) saved once with `save_pretrained`; both sides start
from that directory (lmforge imports it into its own GPT). Nothing is downloaded.

Both sides: sigmoid DPO, beta --beta, log-probabilities summed over the answer's tokens (no length
normalisation), reference = the starting model with its log-probabilities computed once before
training; --steps optimizer steps of --batch pairs, AdamW (betas 0.9/0.999, eps 1e-8, fused
kernel), constant learning rate --lr, no warmup, no weight decay, gradient clipping at 1.0,
--threads threads each, in float32 and (on CPUs with native bfloat16) also bf16 autocast.

- lmforge: `lmforge.finetune.run.finetune` with `task: preference`, `preference: {loss: dpo}`,
  validation only before and after training (4 pairs), one loss line per step in log.jsonl.
- TRL: `DPOTrainer` + `DPOConfig(precompute_ref_log_probs=True)`, no evaluation, no checkpoints,
  given the pairs as ChatML-rendered prompt text and `answer<|im_end|>` completions (its EOS set to
  <|im_end|>), so its token ids are lmforge's, checked pair by pair ("same ids" in the table). Its
  sampler is replaced by a sequential one over the pairs already laid out in lmforge's seeded
  per-step order, so step k of both sides sees the same pairs.

Each side runs in a fresh process. steps/s counts the optimizer steps only: lmforge's trainer
times each step (batch building, forward, backward, clipping, update; not the reference pass,
validation or saving); for TRL a callback sums the time from the start of the epoch, and then from
each step's end, to the next step's end (its reference pass runs in the constructor, before it).
The loss curves are compared step by step; loss ratio = lmforge / TRL mean loss of the last 10 steps.

"cpu s/step" is the process CPU time (all its threads) per step from the end of step 1 to the
end of the last, read at the same two points; on a machine other work shares it moves far less than
wall time, so `cpu_speedup` (TRL's CPU seconds per step / lmforge's) backs the wall-clock speedup.

Last line: `dpo_speedup X loss_ratio X cpu_speedup X` (float32; dpo_speedup from wall-clock steps/s),
then the same keys with `_bf16` where bf16 ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("preference_bench")
VAL_PAIRS = 4


def make_pairs(args) -> list:
    """(prompt, chosen, rejected) examples: each instruction's own answer against another one's of its kind."""
    from lmforge.tasks.builtin import load_task
    from lmforge.tasks.examples import PreferenceExample

    data = load_task("instructions", seed=args.seed, max_per_task=args.per_task)
    rows = data.train + data.val + data.test
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    pairs = []
    for i, row in enumerate(rows):
        others = [r for r in rows[i + 1 :] + rows[:i] if r.meta["task"] == row.meta["task"] and r.response != row.response]
        if others:
            pairs.append(PreferenceExample(prompt=row.prompt, chosen=row.response, rejected=rng.choice(others).response))
        if len(pairs) == args.pairs:
            break
    return pairs


def prepare(work: Path, args) -> tuple[list, Path, Path]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer

    pairs = make_pairs(args)
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    tok_dir = train_tokenizer(texts, TokenizerConfig(kind="byte_bpe", vocab_size=args.vocab), work / "tokenizer")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(args.seed)
    cfg = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      intermediate_size=args.intermediate, max_position_embeddings=max(1024, args.seq_len),
                      tie_word_embeddings=True, attention_dropout=0.0, pad_token_id=tok.token_to_id("<|pad|>"))
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(work / "qwen2-init")
    with open(work / "pairs.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs)
    return pairs, tok_dir, work / "qwen2-init"


def step_order(n: int, args) -> list[int]:
    """The pair indices of every training step, in lmforge's order (its seeded per-epoch permutations)."""
    from lmforge.finetune.tasks import ExampleSource

    source = ExampleSource(list(range(n)), args.batch, args.seed, shuffle=True)  # type: ignore[arg-type]
    return [r for step in range(args.steps) for r in source.rows(step)]


def run_lmforge(pairs: list, tok_dir: Path, model_dir: Path, work: Path, args, precision: str) -> dict:
    import torch

    from lmforge.finetune.config import FinetuneConfig
    from lmforge.finetune.run import finetune
    from lmforge.tasks.examples import TaskData

    quiet()
    torch.set_num_threads(args.threads)
    cfg = FinetuneConfig.model_validate({
        "task": "preference", "data": {"path": str(work / "pairs.jsonl")},
        "model": {"from": str(model_dir), "tokenizer": str(tok_dir)}, "head": {"dropout": 0.0},
        "preference": {"loss": "dpo", "beta": args.beta},
        "epochs": None, "steps": args.steps, "batch_size": args.batch, "seq_len": args.seq_len,
        "lr": args.lr, "min_lr": 0.0, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "betas": [0.9, 0.999], "grad_clip": 1.0, "eval_every": 0, "early_stopping": 0, "log_every": 1,
        "save_every": 0, "tensorboard": False, "precision": precision, "device": "cpu", "seed": args.seed,
    })
    data = TaskData("preference", list(pairs), list(pairs[:VAL_PAIRS]), [], [])
    out = work / f"lmforge-{precision}"
    cpu: list[float] = []  # process CPU time at the end of each step (both threads)
    result = finetune(cfg, out, data=data, on_step=lambda step, loss: cpu.append(time.process_time()))
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x and "val" not in x]
    train_seconds = result.steps * args.batch / result.examples_per_second
    return {"steps": result.steps, "seconds": train_seconds, "losses": losses,
            "cpu_per_step": per_step(cpu), "same_ids": "ref"}


def _trl_rows(pairs: list, tok, order: list[int]) -> list[dict]:
    """TRL's standard (text) preference rows: the ChatML prompt and each answer closed by <|im_end|>."""
    rows = []
    for i in order:
        p = pairs[i]
        prompt = tok.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                         add_generation_prompt=True)
        rows.append({"prompt": prompt, "chosen": p.chosen + "<|im_end|>", "rejected": p.rejected + "<|im_end|>"})
    return rows


def _same_ids(trainer, pairs: list, order: list[int], tok_dir: Path, seq_len: int) -> str:
    """How many of TRL's tokenized pairs equal lmforge's encoding (prompt, chosen and rejected ids)."""
    from lmforge.finetune.chat_data import encode_pairs
    from lmforge.tokenize.chat import chat_encoder_for

    ours, _ = encode_pairs(pairs, chat_encoder_for(tok_dir), seq_len, 0)
    same = 0
    for row, i in zip(trainer.train_dataset, order, strict=True):
        start = ours.prompt_len[i]
        same += (row["prompt_ids"] == ours.chosen[i][:start].tolist()
                 and row["chosen_ids"] == ours.chosen[i][start:].tolist()
                 and row["rejected_ids"] == ours.rejected[i][start:].tolist())
    return f"{same}/{len(order)}"


def run_trl(pairs: list, tok_dir: Path, model_dir: Path, work: Path, args, precision: str) -> dict:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    quiet()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.eos_token = "<|im_end|>"  # ChatML's end of turn, as in Qwen's chat tokenizers
    order = step_order(len(pairs), args)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")

    class InOrder(DPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

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

    targs = DPOConfig(
        output_dir=str(work / f"trl-{precision}"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, optim="adamw_torch_fused",
        beta=args.beta, loss_type=["sigmoid"], max_length=args.seq_len, precompute_ref_log_probs=True,
        precompute_ref_batch_size=args.batch, bf16=precision == "bf16", use_cpu=True, seed=args.seed,
        logging_steps=1, eval_strategy="no", save_strategy="no", report_to=[], dataloader_num_workers=0,
        disable_tqdm=True)
    clock = StepClock()
    trainer = InOrder(model=model, args=targs, processing_class=tok,
                      train_dataset=Dataset.from_list(_trl_rows(pairs, tok, order)), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    same = _same_ids(trainer, pairs, order, tok_dir, args.seq_len)
    trainer.train()
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    return {"steps": trainer.state.global_step, "seconds": clock.seconds, "losses": losses,
            "cpu_per_step": per_step(clock.cpu), "same_ids": same}


def per_step(marks: list[float]) -> float:
    """CPU seconds per step from the CPU clock at each step's end, the first (warm-up) step left out.

    Unlike wall time it hardly moves when other processes share the cores, so it backs the speedup
    on a busy machine."""
    return (marks[-1] - marks[0]) / max(len(marks) - 1, 1)


def quiet() -> None:
    """A spawned side starts with default logging: keep its progress bars and warnings out of the table."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for noisy in ("lmforge", "transformers", "datasets", "trl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def isolated(fn, *args):
    """fn(*args) in a fresh process: no side inherits the other's warm kernels, allocator or threads."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def tail_mean(losses: list[float], n: int = 10) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail)


def print_results(results: dict, args) -> None:
    print(f"{'side':<16}{'steps':>6}{'train s':>9}{'steps/s':>9}{'cpu s/step':>11}{'first loss':>12}{'last-10 loss':>14}{'same ids':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['steps']:>6}{r['seconds']:>9.1f}{r['steps'] / r['seconds']:>9.3f}"
              f"{r['cpu_per_step']:>11.2f}{r['losses'][0]:>12.5f}{tail_mean(r['losses']):>14.5f}{r['same_ids']:>10}")
    for precision in args.precisions:
        ours, theirs = results.get(f"lmforge {precision}"), results.get(f"trl {precision}")
        if not (ours and theirs):
            continue
        gaps = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours["losses"], theirs["losses"], strict=False)]
        print(f"\nloss per step, {precision} (lmforge / TRL; largest relative gap {max(gaps):.2e}):")
        every = max(1, len(ours["losses"]) // 10)
        for k in range(0, len(ours["losses"]), every):
            print(f"  step {k + 1:>4}  {ours['losses'][k]:.5f}  {theirs['losses'][k]:.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-task", type=int, default=60, help="instructions of each kind to build pairs from")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.1)
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
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lmforge", "transformers", "datasets", "trl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import datasets
    import torch
    import transformers

    from lmforge import sysinfo
    from lmforge.models import cpu_kernels

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    if args.precision == "auto":
        args.precisions = ["fp32", "bf16"] if cpu_kernels.NATIVE_BF16 else ["fp32"]
    else:
        args.precisions = [args.precision]
    load = os.getloadavg()[0]  # other work on the machine slows both sides unevenly: say how busy it was
    results = {}
    with tempfile.TemporaryDirectory(prefix="lmforge-prefbench-") as tmp:
        work = Path(tmp)
        pairs, tok_dir, model_dir = prepare(work, args)
        log.info("%d preference pairs; Qwen2 %d layers x %d from the same random weights", len(pairs), args.layers,
                 args.hidden)
        for precision in args.precisions:
            for side, fn in (("lmforge", run_lmforge), ("trl", run_trl)):
                t0 = time.perf_counter()
                results[f"{side} {precision}"] = isolated(fn, pairs, tok_dir, model_dir, work, args, precision)
                log.info("%s %s done in %.0f s", side, precision, time.perf_counter() - t0)

    import trl

    print(f"\nCPU: {sysinfo.cpu_summary()}; {args.threads} threads each side, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}; "
          f"1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"DPO (sigmoid, beta {args.beta}, summed log-probs), {len(pairs)} pairs, batch {args.batch}, {args.steps} "
          f"steps, lr {args.lr} constant, Qwen2 {args.layers} layers x {args.hidden}, heads {args.heads}/{args.kv_heads}, "
          f"vocab {args.vocab}; steps/s over the optimizer steps only\n")
    print_results(results, args)
    summary = []
    for precision in args.precisions:
        ours, theirs = results[f"lmforge {precision}"], results[f"trl {precision}"]
        speedup = (ours["steps"] / ours["seconds"]) / (theirs["steps"] / theirs["seconds"])
        suffix = "" if precision == "fp32" else f"_{precision}"
        summary.append(f"dpo_speedup{suffix} {speedup:.2f} loss_ratio{suffix} "
                       f"{tail_mean(ours['losses']) / tail_mean(theirs['losses']):.4f} "
                       f"cpu_speedup{suffix} {theirs['cpu_per_step'] / ours['cpu_per_step']:.2f}")
    print("\n" + " ".join(summary))


if __name__ == "__main__":
    main()
