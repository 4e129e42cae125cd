"""Generation throughput: lmforge's engine against transformers' generate() (and llama.cpp) on the same weights.

--family picks the models (default `all`: every family below, one table each):

- gpt: a GPT of 4 layers, 256 channels, 4 heads, SwiGLU, RMSNorm, rope, tied embeddings, vocabulary
  8192, float32 (--layers/--width/--heads/--vocab), the `small` preset's shape, exported with
  lmforge's own exporter to `LlamaForCausalLM` and loaded back with `from_pretrained`. --prompts
  prompts (16), best of --runs (3).
- qwen2: random weights in Qwen2.5-0.5B's shape (24 layers, 896 wide, 14 query / 2 KV heads, MLP
  4864, vocabulary 151,936, tied, q/k/v biases, rope_theta 1e6; 494M parameters).
- qwen3-moe: a shrunk Qwen3-MoE (8 layers, 1024 wide, 16 query / 4 KV heads of 128, q/k norms, 64
  experts of 512, top-8 renormalised, vocabulary 151,936, tied; 1.00B parameters, ~0.3B active).

The Qwen models are built by transformers (its own normal init, std 0.02 for qwen2, 0.05 for
qwen3-moe, whose 8 layers otherwise repeat one token; biases drawn too), saved in
bfloat16 with save_pretrained, and read from that directory by every side: lmforge `import_gpt_hf`,
transformers `from_pretrained` (attn_implementation="sdpa", its default experts implementation),
and llama.cpp (llama-cpp-python) on lmforge's f16 GGUF export (`lmforge.models.gguf.export_gguf_dir`).
lmforge and transformers each run in bfloat16 and in float32 (--dtype picks one); the ratios take
each side's faster dtype at each batch size (marked *). 8 prompts of 16-64 tokens
(--family-prompts): batch 8 runs all of them at once, batch 1 the first --b1-prompts one at a time
(2: batch 1 is slow on a CPU; llama.cpp runs batch 1 only); best of --family-runs (1) after a short
untimed warm-up. Load time and peak RSS come from a fresh process per side and dtype: seconds to
load the checkpoint, VmHWM after loading minus VmRSS before it (torch and the loader imported), the
absolute peak, and the peak after generating one token (a lazily mapped checkpoint is read then).

Prompts: documents of the built-in corpora (Chinese and English), encoded with a byte-level BPE of
8192 tokens trained on them (the GGUF's vocabulary: ids above it are unused placeholders there),
cut to 16-64 tokens, so a batch holds prompts of different lengths. Every side generates
--new-tokens tokens greedily per prompt, never stopping early:
- lmforge: `generate_batch` (slot KV cache, continuous batching; ragged prompts, no padding);
- transformers: `model.generate(do_sample=False, use_cache=True)`, left-padded, attention mask;
- llama.cpp: `Llama.generate(top_k=1)` on the token ids, n_threads=--threads.
tokens/s counts generated tokens only. "same ids" counts prompts whose generated ids equal
transformers' at the same batch size, "prefix" the mean count of leading equal tokens; random
weights give near-flat logits, so bf16 rounding differences can flip a greedy pick and the rest
of the sequence with it.

Last line, lowercase key-value pairs: the default run (or --family all) prints
`speedup_b1 X speedup_b8 X moe_speedup_b1 X llamacpp_ratio_b1 X load_rss_ratio X`, where
speedup = lmforge tokens/s / transformers tokens/s (qwen2 for the unprefixed keys, qwen3-moe for
moe_), llamacpp_ratio_b1 = lmforge / llama.cpp tokens/s at batch 1 (qwen2), load_rss_ratio =
lmforge / transformers peak-RSS growth from before loading through the first generated token (qwen2,
both in bfloat16): transformers 5 maps a bf16 checkpoint lazily and reads it on first use, so the
growth while loading alone (also printed) is not comparable. lmforge's figure includes the packed
weight copies its engine makes for CPU decoding (LMFORGE_PACK_WEIGHTS=0 leaves them out).
--family gpt prints `speedup_b1 X speedup_b8 X`; --family qwen2 the same plus llamacpp_ratio_b1 and
load_rss_ratio; --family qwen3-moe the same keys prefixed with moe_.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("generate_bench")
DTYPES = ("bfloat16", "float32")
SHORT = {"bfloat16": "bf16", "float32": "fp32", "float16": "f16"}
VOCAB = 151_936


def corpus_prompts(args, work: Path):
    """The tokenizer directory and --prompts prompts of 16-64 tokens from the built-in corpora."""
    from lmforge.collect.builtin import CORPORA, corpus_records
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
    return tok_dir, tok, prompts


def build_gpt(args, tok_dir: Path, work: Path):
    import torch
    import transformers

    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.hf import export_gpt_hf

    torch.manual_seed(args.seed)
    cfg = GPTConfig(vocab_size=args.vocab, block_size=512, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.width, pos="rope", norm="rmsnorm", mlp="swiglu")
    model = GPT(cfg).eval()
    hf_dir = export_gpt_hf(model, tok_dir, work / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
    hf.generation_config.eos_token_id = None  # never stop early: both sides generate every token
    return model, hf


def hf_config(family: str):
    """The transformers config of a benchmark family (see the module docstring)."""
    import transformers

    common = dict(vocab_size=VOCAB, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
                  max_position_embeddings=32768, hidden_act="silu", bos_token_id=None, eos_token_id=None)
    if family == "qwen2":
        return transformers.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                        num_attention_heads=14, num_key_value_heads=2, use_sliding_window=False,
                                        **common)
    # Qwen3-30B-A3B's ratios (head_dim 128, q width 2x hidden, 8 of 128 experts of 768, every layer
    # sparse), shrunk to ~1B: 8 x 64 x 3 x 1024 x 512 expert weights + 155.6M embedding + 42M attention.
    return transformers.Qwen3MoeConfig(hidden_size=1024, intermediate_size=3072, moe_intermediate_size=512,
                                       num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                                       head_dim=128, num_experts=64, num_experts_per_tok=8, norm_topk_prob=True,
                                       decoder_sparse_step=1, mlp_only_layers=[], initializer_range=0.05, **common)


def make_checkpoint(family: str, out: Path, seed: int) -> Path:
    """Random weights (transformers' init; biases drawn as well) saved in bfloat16; reused when present."""
    import torch
    import transformers

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    cfg = hf_config(family)
    model = getattr(transformers, {"qwen2": "Qwen2ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}[cfg.model_type])(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, cfg.initializer_range)
    model.to(torch.bfloat16).save_pretrained(out)
    return out


def export_gguf(ckpt: Path, tok_dir: Path, out: Path) -> Path:
    from lmforge.models.gguf import export_gguf_dir

    return out if out.is_file() else export_gguf_dir(ckpt, out, "f16", tokenizer_dir=tok_dir)


# --------------------------------------------------------------------------- the sides


def load_side(side: str, path: Path, dtype: str, threads: int):
    import torch

    if side == "lmforge":
        from lmforge.models.hf import import_gpt_hf

        return import_gpt_hf(path, dtype=dtype)
    if side == "transformers":
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype),
                                                               attn_implementation="sdpa").eval()
        hf.generation_config.eos_token_id = None
        return hf
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=256, n_threads=threads, n_threads_batch=threads, n_batch=64,
                 verbose=False, logits_all=False)


def run_side(side: str, model, prompts, batch: int, new: int, pad: int) -> list[list[int]]:
    return {"lmforge": run_lmforge, "transformers": run_hf, "llama.cpp": run_llamacpp}[side](
        model, prompts, batch, new, pad)


def run_lmforge(model, prompts, batch: int, new: int, pad: int = 0) -> list[list[int]]:
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


def run_llamacpp(llm, prompts, batch: int, new: int, pad: int = 0) -> list[list[int]]:
    assert batch == 1, "llama-cpp-python's high-level API decodes one sequence"
    out = []
    for p in prompts:
        ids = []
        for tok in llm.generate(p, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            ids.append(tok)  # generate() itself never stops at the end token
            if len(ids) == new:
                break
        out.append(ids)
    return out


def timed(fn, runs: int, warm: bool = True):
    if warm:
        fn()  # warm-up: allocator, oneDNN primitives, lazy imports
    best, result = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def load_probe(spec: str) -> None:
    """(hidden --load-probe SIDE:DTYPE:PATH) load once in this fresh process; print seconds and RSS as JSON."""
    side, dtype, path = spec.split(":", 2)
    import torch  # noqa: F401  (the baseline is taken with torch and the loader imported)

    if side == "lmforge":
        import lmforge.models.hf  # noqa: F401
    elif side == "transformers":
        import transformers

        getattr(transformers, transformers.AutoConfig.from_pretrained(path).architectures[0])  # the model's module
    else:
        import llama_cpp  # noqa: F401
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    model = load_side(side, Path(path), dtype, torch.get_num_threads())
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    run_side(side, model, [list(range(100, 116))], 1, 1, 0)  # lazily mapped weights are read now
    used = _status_kb("VmHWM")
    print(json.dumps({"load_s": seconds, "peak_mb": peak / 1024, "delta_mb": (peak - before) / 1024,
                      "first_mb": used / 1024, "resident_mb": (used - before) / 1024}), flush=True)
    if side == "llama.cpp":
        model.close()


def measure_load(side: str, dtype: str, path: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, __file__, "--load-probe", f"{side}:{dtype}:{path}"], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        log.warning("load probe %s %s failed: %s", side, dtype, done.stderr[-1500:])
        return dict.fromkeys(("load_s", "peak_mb", "delta_mb", "first_mb", "resident_mb"), float("nan"))
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- one family


def bench_side(side: str, path: Path, dtypes, args, prompts, pad: int) -> dict:
    """{(dtype, batch): (tokens/s, ids)} for each dtype, loaded one at a time, at batch 1 and 8."""
    out = {}
    for dt in dtypes:
        model = load_side(side, path, dt, args.threads)
        for batch in (1, 8) if side != "llama.cpp" else (1,):
            group = prompts[: args.b1_prompts] if batch == 1 else prompts
            run_side(side, model, prompts[:batch], batch, args.warm_tokens, pad)  # warm-up
            t, ids = timed(lambda m=model, g=group, b=batch: run_side(side, m, g, b, args.new_tokens, pad),
                           args.family_runs, warm=False)
            out[dt, batch] = (len(group) * args.new_tokens / t, ids)
            print(f"  {side} {SHORT[dt]} batch {batch}: {out[dt, batch][0]:.2f} tok/s", flush=True)
        if side == "llama.cpp":
            model.close()
        del model
        gc.collect()
    return out


def best(res: dict, batch: int) -> tuple[str, float]:
    """The faster dtype of a side at a batch size, and its tokens/s."""
    return max(((dt, tps) for (dt, b), (tps, _) in res.items() if b == batch), key=lambda x: x[1])


def bench_family(family: str, args, work: Path, tok_dir: Path, prompts, pad: int) -> dict:
    prompts = prompts[: args.family_prompts]
    t0 = time.perf_counter()
    ckpt = make_checkpoint(family, work / family, args.seed)
    print(f"\n[{family}] checkpoint {ckpt} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    dtypes = DTYPES if args.dtype == "auto" else (args.dtype,)
    sides = {side: bench_side(side, ckpt, dtypes, args, prompts, pad) for side in ("lmforge", "transformers")}
    paths = dict.fromkeys(sides, ckpt)
    if not args.no_llamacpp:
        try:
            t0 = time.perf_counter()
            paths["llama.cpp"] = export_gguf(ckpt, tok_dir, work / f"{family}-f16.gguf")
            print(f"  GGUF f16 export: {time.perf_counter() - t0:.1f} s", flush=True)
            sides["llama.cpp"] = bench_side("llama.cpp", paths["llama.cpp"], ("float16",), args, prompts, pad)
        except Exception as e:  # noqa: BLE001  (report it and go on with the other sides)
            print(f"  llama.cpp side failed: {type(e).__name__}: {e}", flush=True)
    loads = {(side, dt): measure_load(side, dt, paths[side], args.threads)
             for side, res in sides.items() for dt in {dt for dt, _ in res}}
    print_family(family, args, ckpt, sides, loads, len(prompts))
    ref, ours = sides["transformers"], sides["lmforge"]
    summary = {f"speedup_b{b}": best(ours, b)[1] / best(ref, b)[1] for b in (1, 8)}
    if "llama.cpp" in sides:
        summary["llamacpp_ratio_b1"] = best(ours, 1)[1] / best(sides["llama.cpp"], 1)[1]
    dt = dtypes[0]  # bfloat16 unless --dtype float32: the checkpoint's own dtype
    # Through the first token: transformers 5 maps a bf16 checkpoint lazily, so "while loading" alone
    # would compare lmforge's resident weights with transformers' untouched mapping.
    summary["load_rss_ratio"] = loads["lmforge", dt]["resident_mb"] / loads["transformers", dt]["resident_mb"]
    return summary


def _count_params(ckpt: Path) -> int:
    from safetensors import safe_open

    with safe_open(ckpt / "model.safetensors", "pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118


def _same(ours, theirs) -> tuple[str, float]:
    """'n/N' prompts with identical ids, and the mean count of leading identical ids."""
    pairs = list(zip(ours, theirs[: len(ours)], strict=True))
    same = sum(a == b for a, b in pairs)
    prefix = sum(next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a)) for a, b in pairs)
    return f"{same}/{len(pairs)}", prefix / len(pairs)


def _reference(sides: dict, dt: str, batch: int):
    """transformers' ids at this batch in the same dtype, else in float32 (llama.cpp's f16), else its best."""
    ref = sides["transformers"]
    for want in (dt, "float32", best(ref, batch)[0]):
        if (want, batch) in ref:
            return want, ref[want, batch][1]


def print_family(family: str, args, ckpt: Path, sides: dict, loads: dict, n_prompts: int) -> None:
    import transformers

    cfg, nan = transformers.AutoConfig.from_pretrained(ckpt), float("nan")
    shape = f"{cfg.num_hidden_layers} layers x {cfg.hidden_size}, {cfg.num_attention_heads}/{cfg.num_key_value_heads} heads"
    if getattr(cfg, "num_experts", 0):
        shape += f", {cfg.num_experts} experts of {cfg.moe_intermediate_size} (top {cfg.num_experts_per_tok})"
    print(f"\n{family}: {shape}, vocab {cfg.vocab_size}, {_count_params(ckpt) / 1e6:.0f}M parameters (bf16 on disk); "
          f"{args.new_tokens} new tokens, greedy, {args.threads} threads; batch 1 = {args.b1_prompts} prompts one at a "
          f"time, batch 8 = {n_prompts} prompts of 16-64 tokens; best of {args.family_runs}; * = the side's faster dtype")
    head = (f"{'side':<13} {'dtype':>6} {'batch':>5} {'tok/s':>8} {'vs hf':>6} {'same ids':>8} {'prefix':>6} "
            f"{'load s':>6} {'load peak RSS MB (+delta)':>25} {'RSS at 1st token (+delta)':>25}")
    print(head + "\n" + "-" * len(head))
    for batch in (1, 8):
        top = best(sides["transformers"], batch)[1]
        for side, res in sides.items():
            for (dt, b), (tps, ids) in res.items():
                if b != batch:
                    continue
                want, ref_ids = _reference(sides, dt, batch)
                same, prefix = ("ref", float(len(ids[0]))) if side == "transformers" and want == dt else _same(ids, ref_ids)
                ld = loads.get((side, dt), {})
                mark = "*" if best(res, batch)[0] == dt and len(res) > 1 else " "
                rss = f"{ld.get('peak_mb', nan):.0f} (+{ld.get('delta_mb', nan):.0f})"
                first = f"{ld.get('first_mb', nan):.0f} (+{ld.get('resident_mb', nan):.0f})"
                print(f"{side:<13} {mark}{SHORT[dt]:>5} {batch:>5} {tps:>8.2f} {tps / top:>5.2f}x {same:>8} "
                      f"{prefix:>6.1f} {ld.get('load_s', nan):>6.2f} {rss:>25} {first:>25}")
    print("same ids / prefix: prompts with identical ids, mean leading identical ids, against transformers at the "
          "same batch size in the same dtype (llama.cpp's f16: against float32)")
    if "llama.cpp" in sides:
        print(f"lmforge / llama.cpp at batch 1: {best(sides['lmforge'], 1)[1] / best(sides['llama.cpp'], 1)[1]:.2f}x")


# --------------------------------------------------------------------------- the small GPT


def bench_gpt(args, work: Path, tok_dir: Path, prompts, pad: int) -> dict:
    import torch

    model, hf = build_gpt(args, tok_dir, work)
    rows, speed = [], {}
    for batch in (1, 8):
        t_l, ours = timed(lambda b=batch: run_lmforge(model, prompts, b, args.new_tokens), args.runs)
        t_h, theirs = timed(lambda b=batch: run_hf(hf, prompts, b, args.new_tokens, pad), args.runs)
        tokens = len(prompts) * args.new_tokens
        same = sum(a == b for a, b in zip(ours, theirs, strict=True))
        speed[batch] = (tokens / t_l) / (tokens / t_h)
        rows.append((batch, tokens / t_l, tokens / t_h, speed[batch], f"{same}/{len(prompts)}"))
    params = sum(p.numel() for p in model.parameters())
    print(f"\ngpt on CPU ({torch.get_num_threads()} threads): {args.layers} layers x {args.width}, "
          f"vocab {args.vocab}, {params / 1e6:.1f}M parameters, float32, {len(prompts)} prompts of 16-64 tokens, "
          f"{args.new_tokens} new tokens each, greedy, best of {args.runs}\n")
    print(f"{'batch':>5}  {'lmforge tok/s':>14}  {'transformers tok/s':>18}  {'speedup':>7}  {'same ids':>8}")
    for batch, ours, theirs, sp, same in rows:
        print(f"{batch:>5}  {ours:>14.1f}  {theirs:>18.1f}  {sp:>6.2f}x  {same:>8}", flush=True)
    return {f"speedup_b{b}": speed[b] for b in (1, 8)}


def last_line(family: str, results: dict) -> str:
    def kv(keys, res, prefix=""):
        return " ".join(f"{prefix}{k} {res[k]:.2f}" for k in keys if k in res)

    if family == "gpt":
        return kv(("speedup_b1", "speedup_b8"), results["gpt"])
    keys = ("speedup_b1", "speedup_b8", "llamacpp_ratio_b1", "load_rss_ratio")
    if family == "qwen2":
        return kv(keys, results["qwen2"])
    if family == "qwen3-moe":
        return kv(keys, results["qwen3-moe"], "moe_")
    q, m = results["qwen2"], results["qwen3-moe"]
    return (f"speedup_b1 {q['speedup_b1']:.2f} speedup_b8 {q['speedup_b8']:.2f} moe_speedup_b1 {m['speedup_b1']:.2f} "
            f"llamacpp_ratio_b1 {q.get('llamacpp_ratio_b1', float('nan')):.2f} load_rss_ratio {q['load_rss_ratio']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("gpt", "qwen2", "qwen3-moe", "all"), default="all")
    ap.add_argument("--layers", type=int, default=4, help="gpt only")
    ap.add_argument("--width", type=int, default=256, help="gpt only")
    ap.add_argument("--heads", type=int, default=4, help="gpt only")
    ap.add_argument("--vocab", type=int, default=8192, help="gpt's vocabulary and the prompts' tokenizer")
    ap.add_argument("--prompts", type=int, default=16, help="gpt's prompts")
    ap.add_argument("--runs", type=int, default=3, help="gpt: best of this many runs")
    ap.add_argument("--family-prompts", type=int, default=8, help="qwen families: prompts at batch 8")
    ap.add_argument("--b1-prompts", type=int, default=2, help="qwen families: prompts run at batch 1")
    ap.add_argument("--family-runs", type=int, default=1, help="qwen families: best of this many runs")
    ap.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                    help="qwen families: auto runs both and takes each side's faster at each batch size")
    ap.add_argument("--warm-tokens", type=int, default=4, help="new tokens of the untimed warm-up call")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp side")
    ap.add_argument("--work", type=Path, help="keep checkpoints and GGUFs here (reused when present)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_probe:
        return load_probe(args.load_probe)
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    from lmforge.tokenize.bpe import PAD_TOKEN

    torch.set_num_threads(args.threads)
    families = ("gpt", "qwen2", "qwen3-moe") if args.family == "all" else (args.family,)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        work = args.work or Path(d)
        work.mkdir(parents=True, exist_ok=True)
        tok_dir, tok, prompts = corpus_prompts(args, Path(d))
        pad = tok.token_to_id(PAD_TOKEN)
        for family in families:
            if family == "gpt":
                results[family] = bench_gpt(args, Path(d), tok_dir, prompts, pad)
            else:
                results[family] = bench_family(family, args, work, tok_dir, prompts, pad)
            gc.collect()
    print(f"\n{last_line(args.family, results)}")


if __name__ == "__main__":
    main()
