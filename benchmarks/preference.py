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

log = logging.getLogger("preference_bench")


def make_pairs(args) -> list:
    """(prompt, chosen, rejected) examples: each instruction's own answer against another one's of its kind."""
    from lmforge.tasks.examples import PreferenceExample

    rows, rng = instruction_rows(args)
    pairs = []
    for i, row in enumerate(rows):
        others = [r for r in rows[i + 1 :] + rows[:i] if r.meta["task"] == row.meta["task"] and r.response != row.response]
        if others:
            pairs.append(PreferenceExample(prompt=row.prompt, chosen=row.response, rejected=rng.choice(others).response))
        if len(pairs) == args.pairs:
            break
    return pairs


def prepare(work: Path, args) -> tuple[list, Path, Path]:
    """The pairs (also written as lmforge's data file), the tokenizer and the model directory."""
    pairs = make_pairs(args)
    tok_dir, model_dir = random_qwen2([t for p in pairs for t in (p.prompt, p.chosen, p.rejected)], work, args)
    write_jsonl(work / "pairs.jsonl", (p.to_dict() for p in pairs))
    return pairs, tok_dir, model_dir


def step_order(n: int, args) -> list[int]:
    """The pair indices of every training step, in lmforge's order (its seeded per-epoch permutations)."""
    from lmforge.finetune.tasks import ExampleSource

    source = ExampleSource(list(range(n)), args.batch, args.seed, shuffle=True)  # type: ignore[arg-type]
    return [r for step in range(args.steps) for r in source.rows(step)]


def run_lmforge(pairs: list, tok_dir: Path, model_dir: Path, work: Path, args, precision: str) -> dict:
    """lmforge's sigmoid DPO finetune, --batch pairs a step in its own seeded order."""
    cfg = finetune_config(args, precision, tok_dir, model_dir, task="preference",
                          data={"path": str(work / "pairs.jsonl")}, preference={"loss": "dpo", "beta": args.beta},
                          batch_size=args.batch)
    return {**run_finetune(cfg, pairs, work / f"lmforge-{precision}", args.threads), "same_ids": "ref"}


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
    """TRL's DPOTrainer with precomputed reference log-probs, fed lmforge's step order sequentially."""
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl import DPOConfig, DPOTrainer

    tok, model = trl_start(tok_dir, model_dir, args)
    order = step_order(len(pairs), args)

    class InOrder(DPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    targs = DPOConfig(**trl_options(work, args, precision, args.batch), beta=args.beta, loss_type=["sigmoid"],
                      precompute_ref_log_probs=True, precompute_ref_batch_size=args.batch)
    clock = step_clock()
    trainer = InOrder(model=model, args=targs, processing_class=tok,
                      train_dataset=Dataset.from_list(_trl_rows(pairs, tok, order)), callbacks=[clock])
    same = _same_ids(trainer, pairs, order, tok_dir, args.seq_len)
    return {**train_trl(trainer, clock), "same_ids": same}


def print_results(results: dict, args) -> None:
    """One row per side and precision (steps/s over the optimizer steps), then the loss curves."""
    print(f"{'side':<16}{'steps':>6}{'train s':>9}{'steps/s':>9}{'cpu s/step':>11}{'first loss':>12}{'last-10 loss':>14}{'same ids':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['steps']:>6}{r['seconds']:>9.1f}{r['steps'] / r['seconds']:>9.3f}"
              f"{r['cpu_per_step']:>11.2f}{r['losses'][0]:>12.5f}{tail_mean(r['losses']):>14.5f}{r['same_ids']:>10}")
    print_loss_curves(results, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-task", type=int, default=60, help="instructions of each kind to build pairs from")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    add_model_options(ap)
    args = ap.parse_args()
    setup(args)
    load = os.getloadavg()[0]  # other work on the machine slows both sides unevenly: say how busy it was
    with tempfile.TemporaryDirectory(prefix="lmforge-prefbench-") as tmp:
        work = Path(tmp)
        pairs, tok_dir, model_dir = prepare(work, args)
        log.info("%d preference pairs; Qwen2 %d layers x %d from the same random weights", len(pairs), args.layers,
                 args.hidden)
        results = run_sides(run_lmforge, run_trl, (pairs, tok_dir, model_dir, work), args)

    print_machine(args, load)
    print(f"DPO (sigmoid, beta {args.beta}, summed log-probs), {len(pairs)} pairs, batch {args.batch}, {args.steps} "
          f"steps, lr {args.lr} constant, Qwen2 {args.layers} layers x {args.hidden}, heads {args.heads}/{args.kv_heads}, "
          f"vocab {args.vocab}; steps/s over the optimizer steps only\n")
    print_results(results, args)
    print_summary(results, args, "dpo_speedup")


if __name__ == "__main__":
    main()
