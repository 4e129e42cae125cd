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
import tempfile
from pathlib import Path

from _qwen_bench import (  # benchmarks/_qwen_bench.py, beside this file
    add_model_options,
    finetune_config,
    instruction_rows,
    print_loss_curves,
    print_machine,
    print_summary,
    random_qwen2,
    run_finetune,
    run_sides,
    setup,
    step_clock,
    tail_mean,
    train_trl,
    trl_options,
    trl_start,
    write_jsonl,
)

log = logging.getLogger("sft_bench")
SYSTEMS = ("你是一个乐于助人的助手。", "You are a helpful assistant.")
# lmforge's ChatML rendering, with the assistant's learned part marked for TRL's assistant_only_loss.
MARKED_CHATML = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def make_conversations(args) -> list:
    """2-3 instruction pairs chained into one conversation each, every other one after a system turn."""
    from lmforge.tasks.examples import ConversationExample, Turn

    rows, rng = instruction_rows(args)
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
    from transformers import AutoTokenizer

    from lmforge.finetune.chat_data import encode_conversations, pack
    from lmforge.tokenize.chat import chat_encoder_for

    convs = make_conversations(args)
    tok_dir, model_dir = random_qwen2([t.content for c in convs for t in c.messages], work, args)
    write_jsonl(work / "conversations.jsonl", ({"messages": [t.to_dict() for t in c.messages]} for c in convs))
    pad = AutoTokenizer.from_pretrained(str(tok_dir)).pad_token_id
    encoded, stats = encode_conversations(convs, chat_encoder_for(tok_dir), args.seq_len, pad)
    if stats.kept != len(convs) or stats.truncated:
        raise SystemExit(f"lmforge kept {stats.kept} of {len(convs)} conversations ({stats.truncated} cut): "
                         "raise --seq-len so both sides train on the same tokens")
    rows = len(pack([len(x) for x in encoded.ids], args.seq_len, args.seed))
    return convs, tok_dir, model_dir, rows, stats.tokens


def run_lmforge(convs: list, tok_dir: Path, model_dir: Path, rows: int, work: Path, args, precision: str) -> dict:
    """lmforge's conversation finetune, packed, one full pass (all its rows) per step."""
    cfg = finetune_config(args, precision, tok_dir, model_dir, task="conversation",
                          data={"path": str(work / "conversations.jsonl")}, chat={"packing": True}, batch_size=rows)
    out = work / f"lmforge-{precision}"
    result = run_finetune(cfg, convs, out, args.threads)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {**result, "rows": rows, "same_ids": "ref", "learned": report["encoding"]["learned_tokens"]}


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
    """TRL's SFTTrainer, bfd-packed and padding-free, all conversations in each step's batch."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok, model = trl_start(tok_dir, model_dir, args)
    tok.chat_template = MARKED_CHATML
    same = _same_ids(convs, tok, tok_dir, args.seq_len)
    targs = SFTConfig(**trl_options(work, args, precision, len(convs)), packing=True, packing_strategy="bfd",
                      assistant_only_loss=True)
    clock = step_clock()
    dataset = Dataset.from_list([{"messages": [t.to_dict() for t in c.messages]} for c in convs])
    trainer = SFTTrainer(model=model, args=targs, processing_class=tok, train_dataset=dataset, callbacks=[clock])
    packed = trainer.train_dataset
    learned = sum(t != -100 for row in packed["labels"] for t in row)
    return {**train_trl(trainer, clock), "rows": len(packed), "same_ids": same, "learned": learned}


def print_results(results: dict, tokens: int, args) -> None:
    """One row per side and precision (tokens/s over the optimizer steps), then the loss curves."""
    print(f"{'side':<16}{'rows':>6}{'learned':>9}{'steps':>6}{'train s':>9}{'tokens/s':>10}{'cpu s/step':>11}{'first loss':>12}"
          f"{'last-10 loss':>14}{'same ids':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['rows']:>6}{r['learned']:>9}{r['steps']:>6}{r['seconds']:>9.1f}"
              f"{tokens * r['steps'] / r['seconds']:>10.0f}{r['cpu_per_step']:>11.2f}{r['losses'][0]:>12.5f}{tail_mean(r['losses']):>14.5f}"
              f"{r['same_ids']:>10}")
    print_loss_curves(results, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-task", type=int, default=60, help="instructions of each kind to build conversations from")
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps, each one full pass over the data")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    add_model_options(ap)
    args = ap.parse_args()
    setup(args)
    load = os.getloadavg()[0]  # other work on the machine slows both sides unevenly: say how busy it was
    with tempfile.TemporaryDirectory(prefix="lmforge-sftbench-") as tmp:
        work = Path(tmp)
        convs, tok_dir, model_dir, rows, tokens = prepare(work, args)
        log.info("%d conversations, %d tokens, %d packed rows; Qwen2 %d layers x %d from the same random weights",
                 len(convs), tokens, rows, args.layers, args.hidden)
        results = run_sides(run_lmforge, run_trl, (convs, tok_dir, model_dir, rows, work), args)

    print_machine(args, load)
    print(f"chat SFT with packing, {len(convs)} conversations ({tokens} tokens) per step, seq_len {args.seq_len}, "
          f"{args.steps} steps, lr {args.lr} constant, Qwen2 {args.layers} layers x {args.hidden}, heads "
          f"{args.heads}/{args.kv_heads}, vocab {args.vocab}; tokens/s over the optimizer steps only\n")
    print_results(results, tokens, args)
    print_summary(results, args, "sft_speedup")


if __name__ == "__main__":
    main()
