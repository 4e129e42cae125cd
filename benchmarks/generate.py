"""Generation throughput: lmforge's engine against transformers' generate() on the same model.

Model (defaults): a GPT of 4 layers, 256 channels, 4 heads, SwiGLU, RMSNorm, rope, tied
embeddings, vocabulary 8192, context 512, float32, random weights from --seed: the `small`
preset's shape, the size of model lmforge trains on a CPU (benchmarks/train_cpu.py uses it too).
Larger models are memory-bound at batch 1 on a CPU (every token reads all weights), where any two
fp32 implementations converge; try --layers 6 --width 512 to see that. It is exported
with lmforge's own exporter to `LlamaForCausalLM` (the logits-parity-tested mapping) and loaded
back with `from_pretrained`, so both sides run the very same weights.

Prompts: documents of the built-in corpora (Chinese and English), encoded with a byte-level BPE
trained on them, cut to between 16 and 64 tokens, so a batch holds prompts of different lengths.
Each side generates --new-tokens tokens greedily for every prompt, never stopping early (the end
token is ignored on both sides):
- lmforge: `generate_batch` (slot KV cache, continuous batching; ragged prompts, no padding);
- transformers: `model.generate(do_sample=False, use_cache=True)`, left-padded batches with an
  attention mask, attn_implementation="sdpa".
Batch 1 runs the prompts one at a time; batch 8 runs them 8 at a time. Each measurement is the
best of --runs after one untimed warm-up; tokens/s counts generated tokens only. The table also
shows how many prompts got identical token ids on both sides (greedy parity).

Last line: `speedup_b1 <x> speedup_b8 <x>` (lmforge tokens/s over transformers tokens/s).
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

log = logging.getLogger("generate_bench")


def build(args, work: Path):
    import torch
    import transformers

    from lmforge.collect.builtin import CORPORA, corpus_records
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.hf import export_gpt_hf
    from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer

    texts = [r.text for name in CORPORA for r in corpus_records(name, limit=400)]
    tok_dir = train_tokenizer(texts, TokenizerConfig(vocab_size=args.vocab), work / "tok")
    tok = load_tokenizer(tok_dir)
    prompts = []
    for i, text in enumerate(texts[:: max(1, len(texts) // (4 * args.prompts))]):
        ids = tok.encode(text, add_special_tokens=False).ids[: 16 + (i * 13) % 49]
        if len(ids) >= 16:
            prompts.append(ids)
        if len(prompts) == args.prompts:
            break
    torch.manual_seed(args.seed)
    cfg = GPTConfig(vocab_size=args.vocab, block_size=512, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.width, pos="rope", norm="rmsnorm", mlp="swiglu")
    model = GPT(cfg).eval()
    hf_dir = export_gpt_hf(model, tok_dir, work / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
    hf.generation_config.eos_token_id = None  # never stop early: both sides generate every token
    return model, hf, prompts, tok


def run_lmforge(model, prompts, batch: int, new: int) -> list[list[int]]:
    from lmforge.serve.generate import generate_batch
    from lmforge.serve.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    out = []
    for i in range(0, len(prompts), batch):
        out += [c[0].token_ids for c in generate_batch(model, None, prompts[i : i + batch], params, slots=batch)]
    return out


def run_hf(hf, prompts, batch: int, new: int, pad: int) -> list[list[int]]:
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        group = prompts[i : i + batch]
        width = max(len(p) for p in group)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in group])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        with torch.no_grad():
            gen = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, use_cache=True, pad_token_id=pad)
        out += gen[:, width:].tolist()
    return out


def timed(fn, runs: int):
    fn()  # warm-up: allocator, oneDNN primitives, lazy imports
    best, result = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import torch

    from lmforge.tokenize.bpe import PAD_TOKEN

    with tempfile.TemporaryDirectory() as d:
        model, hf, prompts, tok = build(args, Path(d))
        pad = tok.token_to_id(PAD_TOKEN)
        rows, speed = [], {}
        for batch in (1, 8):
            t_l, ours = timed(lambda b=batch: run_lmforge(model, prompts, b, args.new_tokens), args.runs)
            t_h, theirs = timed(lambda b=batch: run_hf(hf, prompts, b, args.new_tokens, pad), args.runs)
            tokens = len(prompts) * args.new_tokens
            same = sum(a == b for a, b in zip(ours, theirs, strict=True))
            speed[batch] = (tokens / t_l) / (tokens / t_h)
            rows.append((batch, tokens / t_l, tokens / t_h, speed[batch], f"{same}/{len(prompts)}"))

    params = sum(p.numel() for p in model.parameters())
    print(f"\nGeneration on CPU ({torch.get_num_threads()} threads): {args.layers} layers x {args.width}, "
          f"vocab {args.vocab}, {params / 1e6:.1f}M parameters, {len(prompts)} prompts of 16-64 tokens, "
          f"{args.new_tokens} new tokens each, greedy, best of {args.runs}\n")
    print(f"{'batch':>5}  {'lmforge tok/s':>14}  {'transformers tok/s':>18}  {'speedup':>7}  {'same ids':>8}")
    for batch, ours, theirs, sp, same in rows:
        print(f"{batch:>5}  {ours:>14.1f}  {theirs:>18.1f}  {sp:>6.2f}x  {same:>8}")
    print(f"\nspeedup_b1 {speed[1]:.2f} speedup_b8 {speed[8]:.2f}")


if __name__ == "__main__":
    main()
