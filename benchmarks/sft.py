"""Multi-turn chat SFT with packing: lmforge's `finetune` (task: conversation) against TRL's `SFTTrainer`, same conversations.

Data: --conversations conversations of 2-3 user/assistant turns (and, every other one, a system
turn) assembled from the built-in `instructions` task (Chinese sentiment and entity prompts,
English docstring prompts, --per-task of each kind). A byte-level BPE (--vocab) with lmforge's
ChatML template is trained on the texts. Both sides learn the same tokens: every assistant turn's
content and its <|im_end|>, nothing else (checked conversation by conversation: "same ids").

Model: one random-weight `Qwen2ForCausalLM` (--hidden, --layers, --heads / --kv-heads, MLP
--intermediate, tied embeddings, dropout 0) saved once with `save_pretrained`; both sides start
from that directory (lmforge imports it into its own GPT). Nothing is downloaded.

Packing: both sides pack the conversations into rows of at most --seq-len tokens, each
conversation attending only to itself with its own positions. lmforge packs best-fit decreasing
and keeps rows (document ids and positions drive its attention); TRL packs with its "bfd"
strategy and, as it does for bfd, trains padding-free (the batch's rows flattened into one
sequence with position_ids, which transformers turns into a block-diagonal mask). The two
packings need not put the same conversations together, so every step here is one full pass over
the data: lmforge's batch is exactly its number of packed rows (one epoch per step, nothing wraps
into the next), TRL's batch holds all its rows. Each step then sees every conversation once on
both sides, and the step's loss (the mean over all assistant tokens) is comparable step by step.

Both sides: --steps optimizer steps, AdamW (betas 0.9/0.999, eps 1e-8, fused kernel), constant
learning rate --lr, no warmup, no weight decay, gradient clipping at 1.0, --threads threads each,
in float32 and (on CPUs with native bfloat16) also bf16 autocast.

- lmforge: `lmforge.finetune.run.finetune` with `task: conversation`, `chat: {packing: true}`,
  validation only before and after training (4 conversations), one loss line per step.
- TRL: `SFTTrainer` + `SFTConfig(packing=True, packing_strategy="bfd", assistant_only_loss=True)`, no
  evaluation, no checkpoints, given {"messages": [...]} rows and the same ChatML template with
  {% generation %} around each assistant turn's content and <|im_end|> (the markers
  assistant_only_loss needs; lmforge's own template has none).

Each side runs in a fresh process. tokens/s = conversation tokens per step (padding excluded, the
same count on both sides) x steps / seconds of the optimizer steps: lmforge's trainer times each
step (batch building, forward, backward, clipping, update; not setup, validation or saving); for
TRL a callback sums the time from the start of the epoch, and then from each step's end, to the
next step's end. Loss ratio = lmforge / TRL mean assistant-token loss over the last 10 steps.

"cpu s/step" is the process CPU time (all its threads) per step from the end of step 1 to the
end of the last, read at the same two points; on a machine other work shares it moves far less than
wall time, so `cpu_speedup` (TRL's CPU seconds per step / lmforge's) backs the wall-clock speedup.

Last line: `sft_speedup X loss_ratio X cpu_speedup X` (float32; sft_speedup from wall-clock tokens/s),
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

log = logging.getLogger("sft_bench")
VAL_CONVERSATIONS = 4
SYSTEMS = ("你是一个乐于助人的助手。", "You are a helpful assistant.")
# lmforge's ChatML rendering, with the assistant's learned part marked for TRL's assistant_only_loss.
MARKED_CHATML = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def make_conversations(args) -> list:
    """2-3 instruction pairs chained into one conversation each, every other one after a system turn."""
    from lmforge.tasks.builtin import load_task
    from lmforge.tasks.examples import ConversationExample, Turn

    data = load_task("instructions", seed=args.seed, max_per_task=args.per_task)
    rows = data.train + data.val + data.test
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    out, at = [], 0
    while len(out) < args.conversations and at + 3 <= len(rows):
        turns = [Turn("system", SYSTEMS[len(out) % 4 // 2])] if len(out) % 2 else []
        n = rng.choice((2, 3))
        for row in rows[at : at + n]:
            turns += [Turn("user", row.prompt), Turn("assistant", row.response)]
        at += n
        out.append(ConversationExample(messages=tuple(turns)))
    return out


def prepare(work: Path, args) -> tuple[list, Path, Path, int, int]:
    """Conversations, tokenizer, model directory, lmforge's packed row count and the tokens per pass."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from lmforge.finetune.chat_data import encode_conversations, pack
    from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer
    from lmforge.tokenize.chat import chat_encoder_for

    convs = make_conversations(args)
    texts = [t.content for c in convs for t in c.messages]
    tok_dir = train_tokenizer(texts, TokenizerConfig(kind="byte_bpe", vocab_size=args.vocab), work / "tokenizer")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(args.seed)
    cfg = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      intermediate_size=args.intermediate, max_position_embeddings=max(1024, args.seq_len),
                      tie_word_embeddings=True, attention_dropout=0.0, pad_token_id=tok.token_to_id("<|pad|>"))
    Qwen2ForCausalLM(cfg).save_pretrained(work / "qwen2-init")
    with open(work / "conversations.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"messages": [t.to_dict() for t in c.messages]}, ensure_ascii=False) + "\n"
                      for c in convs)
    pad = AutoTokenizer.from_pretrained(str(tok_dir)).pad_token_id
    encoded, stats = encode_conversations(convs, chat_encoder_for(tok_dir), args.seq_len, pad)
    if stats.kept != len(convs) or stats.truncated:
        raise SystemExit(f"lmforge kept {stats.kept} of {len(convs)} conversations ({stats.truncated} cut): "
                         "raise --seq-len so both sides train on the same tokens")
    rows = len(pack([len(x) for x in encoded.ids], args.seq_len, args.seed))
    return convs, tok_dir, work / "qwen2-init", rows, stats.tokens


def run_lmforge(convs: list, tok_dir: Path, model_dir: Path, rows: int, work: Path, args, precision: str) -> dict:
    import torch

    from lmforge.finetune.config import FinetuneConfig
    from lmforge.finetune.run import finetune
    from lmforge.tasks.examples import TaskData

    quiet()
    torch.set_num_threads(args.threads)
    cfg = FinetuneConfig.model_validate({
        "task": "conversation", "data": {"path": str(work / "conversations.jsonl")},
        "model": {"from": str(model_dir), "tokenizer": str(tok_dir)}, "head": {"dropout": 0.0},
        "chat": {"packing": True},
        "epochs": None, "steps": args.steps, "batch_size": rows, "seq_len": args.seq_len,
        "lr": args.lr, "min_lr": 0.0, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "betas": [0.9, 0.999], "grad_clip": 1.0, "eval_every": 0, "early_stopping": 0, "log_every": 1,
        "save_every": 0, "tensorboard": False, "precision": precision, "device": "cpu", "seed": args.seed,
    })
    data = TaskData("conversation", list(convs), list(convs[:VAL_CONVERSATIONS]), [], [])
    out = work / f"lmforge-{precision}"
    cpu: list[float] = []  # process CPU time at the end of each step (both threads)
    result = finetune(cfg, out, data=data, on_step=lambda step, loss: cpu.append(time.process_time()))
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x and "val" not in x]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {"steps": result.steps, "seconds": result.steps * rows / result.examples_per_second, "losses": losses,
            "cpu_per_step": per_step(cpu),
            "rows": rows, "same_ids": "ref", "learned": report["encoding"]["learned_tokens"]}


def _same_ids(convs: list, tok, tok_dir: Path, seq_len: int) -> str:
    """How many conversations TRL's tokenization (ids and assistant mask) gives exactly lmforge's ids and labels."""
    from lmforge.finetune.chat_data import encode_conversations
    from lmforge.tokenize.chat import chat_encoder_for
    from lmforge.train.objectives import IGNORE

    ours, _ = encode_conversations(convs, chat_encoder_for(tok_dir), seq_len, tok.pad_token_id)
    same = 0
    for c, ids, labels in zip(convs, ours.ids, ours.labels, strict=True):
        theirs = tok.apply_chat_template([t.to_dict() for t in c.messages], tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=True)
        same += theirs["input_ids"] == ids.tolist() and theirs["assistant_masks"] == (labels != IGNORE).astype(int).tolist()
    return f"{same}/{len(convs)}"


def run_trl(convs: list, tok_dir: Path, model_dir: Path, rows: int, work: Path, args, precision: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    quiet()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.eos_token = "<|im_end|>"  # ChatML's end of turn, as in Qwen's chat tokenizers
    tok.chat_template = MARKED_CHATML
    same = _same_ids(convs, tok, tok_dir, args.seq_len)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")

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

    targs = SFTConfig(
        output_dir=str(work / f"trl-{precision}"), per_device_train_batch_size=len(convs), max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, optim="adamw_torch_fused",
        packing=True, packing_strategy="bfd", assistant_only_loss=True, max_length=args.seq_len,
        bf16=precision == "bf16", use_cpu=True, seed=args.seed, logging_steps=1, eval_strategy="no",
        save_strategy="no", report_to=[], dataloader_num_workers=0, disable_tqdm=True)
    clock = StepClock()
    dataset = Dataset.from_list([{"messages": [t.to_dict() for t in c.messages]} for c in convs])
    trainer = SFTTrainer(model=model, args=targs, processing_class=tok, train_dataset=dataset, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    packed = trainer.train_dataset
    learned = sum(t != -100 for row in packed["labels"] for t in row)
    trainer.train()
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    return {"steps": trainer.state.global_step, "seconds": clock.seconds, "losses": losses,
            "cpu_per_step": per_step(clock.cpu), "rows": len(packed),
            "same_ids": same, "learned": learned}


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


def print_results(results: dict, tokens: int, args) -> None:
    print(f"{'side':<16}{'rows':>6}{'learned':>9}{'steps':>6}{'train s':>9}{'tokens/s':>10}{'cpu s/step':>11}{'first loss':>12}"
          f"{'last-10 loss':>14}{'same ids':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['rows']:>6}{r['learned']:>9}{r['steps']:>6}{r['seconds']:>9.1f}"
              f"{tokens * r['steps'] / r['seconds']:>10.0f}{r['cpu_per_step']:>11.2f}{r['losses'][0]:>12.5f}{tail_mean(r['losses']):>14.5f}"
              f"{r['same_ids']:>10}")
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
    ap.add_argument("--per-task", type=int, default=60, help="instructions of each kind to build conversations from")
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps, each one full pass over the data")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
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
    with tempfile.TemporaryDirectory(prefix="lmforge-sftbench-") as tmp:
        work = Path(tmp)
        convs, tok_dir, model_dir, rows, tokens = prepare(work, args)
        log.info("%d conversations, %d tokens, %d packed rows; Qwen2 %d layers x %d from the same random weights",
                 len(convs), tokens, rows, args.layers, args.hidden)
        for precision in args.precisions:
            for side, fn in (("lmforge", run_lmforge), ("trl", run_trl)):
                t0 = time.perf_counter()
                results[f"{side} {precision}"] = isolated(fn, convs, tok_dir, model_dir, rows, work, args, precision)
                log.info("%s %s done in %.0f s", side, precision, time.perf_counter() - t0)

    import trl

    print(f"\nCPU: {sysinfo.cpu_summary()}; {args.threads} threads each side, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}; "
          f"1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"chat SFT with packing, {len(convs)} conversations ({tokens} tokens) per step, seq_len {args.seq_len}, "
          f"{args.steps} steps, lr {args.lr} constant, Qwen2 {args.layers} layers x {args.hidden}, heads "
          f"{args.heads}/{args.kv_heads}, vocab {args.vocab}; tokens/s over the optimizer steps only\n")
    print_results(results, tokens, args)
    summary = []
    for precision in args.precisions:
        ours, theirs = results[f"lmforge {precision}"], results[f"trl {precision}"]
        speedup = (ours["steps"] / ours["seconds"]) / (theirs["steps"] / theirs["seconds"])
        suffix = "" if precision == "fp32" else f"_{precision}"
        summary.append(f"sft_speedup{suffix} {speedup:.2f} loss_ratio{suffix} "
                       f"{tail_mean(ours['losses']) / tail_mean(theirs['losses']):.4f} "
                       f"cpu_speedup{suffix} {theirs['cpu_per_step'] / ours['cpu_per_step']:.2f}")
    print("\n" + " ".join(summary))


if __name__ == "__main__":
    main()
