"""CPU pretraining throughput: lmforge's GPT against transformers' LlamaForCausalLM of the same shape.

Shape (defaults): 4 layers, 256 channels, 4 heads of 64, SwiGLU hidden 704, RMSNorm, rope,
tied embeddings, vocabulary 8192, sequences of 256 tokens, batches of 8 (2048 tokens a step),
float32. About 3.2M non-embedding parameters (5.3M with the output layer): the size people
actually train on a CPU, where the output layer and loss are a large share of the work.

Data: a byte-level BPE of --vocab ids is trained on the built-in corpora (People's Daily,
reviews, Python docs and docstrings; Chinese and English), the same documents are encoded into
one token stream with EOS after each, and --steps batches of random windows are drawn once from
a seeded generator. Both sides see exactly those batches in that order.

Same start, same optimizer: the lmforge model is built with --seed and its weights are copied
into the Llama model (lmforge.models.hf.hf_state_dict, the export mapping), so both begin from
identical weights. Both use torch.optim.AdamW's fused kernel (lmforge's trainer and the HF
Trainer's default, `adamw_torch_fused`) with the same hyperparameters, decay on hidden
matrices only (lmforge's rule), gradient clipping at 1.0 and the same warmup. AdamW and
clipping are element-wise or global, so splitting lmforge's fused q/k/v and gate/up matrices
into Llama's separate ones does not change the arithmetic: losses should agree to float32 noise.

Each side:
- lmforge: `run_lmforge`, lmforge's own Trainer (what `lmforge pretrain` runs: token-normalized
  loss, fused output layer + loss on CPU, clipping, AdamW), a step timed from one step's end to
  the next, so the trainer's own bookkeeping counts against it. It runs with its default
  `precision: auto`, which is bf16 autocast on CPUs with native bfloat16 (AVX-512 BF16 or AMX) and
  float32 elsewhere; where that is bf16, lmforge also runs in float32 ("lmforge fp32").
- transformers: a plain loop, model(input_ids=x, labels=y, shift_labels=y).loss with
  attn_implementation="sdpa" and use_cache=False (the recommended training settings), in
  float32 (transformers' default); on CPUs with native bfloat16 also under bf16 autocast
  ("transformers bf16", what `bf16=True` gives in its Trainer), for a same-precision comparison.
Both use all cores the process may run on (torch.set_num_threads). The first --warmup steps are
not timed; tokens/s is timed tokens over the summed time of the timed steps (the median step
time is shown as well, since a busy machine slows single steps). After training, each model's
mean loss on --eval-batches held-out batches (windows from the last 5% of the stream, which
training never draws from) is shown as "val loss". With --compile, lmforge runs once more
under torch.compile (inductor, C++ on CPU); its compile time (first step less a median step,
with an empty inductor cache) is reported separately.

Last line: `speedup <lmforge tokens/s / transformers tokens/s> loss_ratio <lmforge loss / transformers loss>
speedup_same_precision <x>`, each side at its default precision for the first two (losses being the mean
training loss of the last 10 steps), and lmforge over transformers at lmforge's precision for the third.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn as nn

from lmforge import sysinfo
from lmforge.models import cpu_kernels

log = logging.getLogger("train_cpu_bench")


@dataclass
class Run:
    name: str
    params: int
    step_seconds: list[float]  # timed steps only
    losses: list[float]  # every step
    val_loss: float
    first_step_seconds: float
    compiled: bool = False

    @property
    def final_loss(self) -> float:
        return float(np.mean(self.losses[-10:]))


# --------------------------------------------------------------------------- data


def token_stream(vocab: int, docs_per_corpus: int, work: str) -> np.ndarray:
    """The built-in corpora encoded by a tokenizer trained on them, EOS after every document."""
    from lmforge.collect.builtin import CORPORA, corpus_records
    from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer

    texts = [r.text for name in CORPORA for r in corpus_records(name, docs_per_corpus)]
    tok = load_tokenizer(train_tokenizer(texts, TokenizerConfig(vocab_size=vocab), work))
    eos = eos_id(tok)
    ids = [i for enc in tok.encode_batch(texts) for i in (*enc.ids, eos)]
    return np.asarray(ids, dtype=np.int64)


def make_batches(tokens: np.ndarray, steps: int, batch: int, seq: int, seed: int) -> list[tuple]:
    """`steps` batches of random windows (inputs, next-token targets), drawn once from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    stream = torch.from_numpy(tokens)
    out = []
    for _ in range(steps):
        starts = torch.randint(len(stream) - seq - 1, (batch,), generator=gen).tolist()
        rows = torch.stack([stream[s : s + seq + 1] for s in starts])  # (B, T + 1)
        out.append((rows[:, :-1].contiguous(), rows[:, 1:].contiguous()))
    return out


# --------------------------------------------------------------------------- shared optimizer


def adamw(model: nn.Module, args) -> torch.optim.AdamW:
    """lmforge's rule: decay hidden matrices only, not embeddings, the output layer or 1-D params."""
    keep = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    keep |= {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == args.vocab
    }
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in keep]
    rest = [p for p in model.parameters() if p.dim() < 2 or id(p) in keep]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)


def train_loop(name: str, model: nn.Module, loss_fn, batches, held_out, args, bf16: bool = False) -> Run:
    """The one loop both sides share: warmup lr, forward, backward, clip, step; then a held-out loss."""
    opt = adamw(model, args)
    model.train()
    seconds, losses = [], []
    for step, (x, y) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.lr_warmup)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        seconds.append(time.perf_counter() - t0)
        if step % 20 == 0:
            log.info("%s step %d loss %.4f %.3f s", name, step, losses[-1], seconds[-1])
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        val = float(np.mean([loss_fn(x, y).item() for x, y in held_out]))
    params = sum(p.numel() for p in model.parameters())
    return Run(name, params, seconds[args.warmup :], losses, val, seconds[0])


# --------------------------------------------------------------------------- the two sides


def lmforge_model(args):
    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(args.seed)
    cfg = GPTConfig(
        vocab_size=args.vocab, block_size=args.seq, n_layer=args.layers, n_head=args.heads, n_embd=args.dim
    )
    return GPT(cfg)


class PreDrawn:
    """The benchmark's batches as an lmforge batch source (batch i of the fixed list)."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def micro_batch(self, index: int) -> dict[str, torch.Tensor]:
        x, y = self.batches[index]
        return {"input_ids": x, "labels": y}


def run_lmforge(batches, held_out, args, compile: bool = False, precision: str = "auto") -> Run:
    """lmforge's side: lmforge's Trainer (the loop `lmforge pretrain` runs) on lmforge's GPT."""
    from lmforge.train.config import PretrainConfig
    from lmforge.train.objectives import CausalLM
    from lmforge.train.trainer import Trainer

    model = lmforge_model(args)
    cfg = PretrainConfig(
        seq_len=args.seq, batch_size=args.batch, steps=args.steps, lr=args.lr, min_lr=args.lr,
        schedule="constant", warmup_steps=args.lr_warmup, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0,
        precision=precision, compile=compile, eval_every=0, log_every=args.steps, tensorboard=False,
        device="cpu", seed=args.seed,
    )
    marks: list[float] = []
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        marks.append(time.perf_counter())
        losses.append(loss)
        if step % 20 == 1:
            log.info("lmforge step %d loss %.4f", step - 1, loss)

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, CausalLM(), PreDrawn(batches), cfg, out, on_step=on_step)
        start = time.perf_counter()
        trainer.fit()
    seconds = [b - a for a, b in zip([start, *marks[:-1]], marks, strict=True)]
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=trainer.rt.amp_dtype, enabled=trainer.rt.amp):
        val = float(np.mean([model(x, y, return_logits=False)[1].item() for x, y in held_out]))
    params = sum(p.numel() for p in model.parameters())
    name = ("lmforge+compile" if compile else "lmforge") + (" fp32" if precision == "fp32" else "")
    return Run(name, params, seconds[args.warmup :], losses, val, seconds[0], compiled=compile)


def run_transformers(batches, held_out, args, bf16: bool = False) -> Run:
    """transformers' side: LlamaForCausalLM of the same shape, starting from lmforge's initial weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.models.hf import hf_state_dict

    ours = lmforge_model(args)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.dim,
        intermediate_size=ours.config.mlp_hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.seq,
        rms_norm_eps=ours.config.eps,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": ours.config.rope_theta},
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    missing, unexpected = model.load_state_dict(hf_state_dict(ours), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    model.tie_weights()

    def loss_fn(x, y):
        return model(input_ids=x, labels=y, shift_labels=y).loss

    return train_loop("transformers" + (" bf16" if bf16 else ""), model, loss_fn, batches, held_out, args, bf16)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-warmup", type=int, default=10, help="steps of linear learning-rate warmup")
    parser.add_argument(
        "--eval-batches", type=int, default=8, help="held-out batches for the validation loss"
    )
    parser.add_argument("--docs", type=int, default=6000, help="documents per built-in corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--compile", action="store_true", help="also time lmforge under torch.compile")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lmforge", "transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        tokens = token_stream(args.vocab, args.docs, os.path.join(work, "tokenizer"))
        log.info("data: %d tokens from the built-in corpora in %.1f s", len(tokens), time.perf_counter() - t0)
        cut = int(len(tokens) * 0.95)  # the last 5% of the stream is held out for the validation loss
        batches = make_batches(tokens[:cut], args.steps, args.batch, args.seq, args.seed)
        held_out = make_batches(tokens[cut:], args.eval_batches, args.batch, args.seq, args.seed + 1)
        native_bf16 = cpu_kernels.NATIVE_BF16
        runs = [run_lmforge(batches, held_out, args)]
        if native_bf16:  # lmforge's default was bf16: show float32 against float32 as well
            runs.append(run_lmforge(batches, held_out, args, precision="fp32"))
        runs.append(run_transformers(batches, held_out, args))
        if native_bf16:
            runs.append(run_transformers(batches, held_out, args, bf16=True))
        if args.compile:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(work, "inductor")  # a cold compile
            runs.insert(1, run_lmforge(batches, held_out, args, compile=True))

    tokens_per_step = args.batch * args.seq
    print(
        f"CPU: {sysinfo.cpu_summary()}; {args.threads} threads, torch {torch.__version__}\n"
        f"shape: {args.layers} layers, {args.dim} dim, {args.heads} heads, vocab {args.vocab}, "
        f"seq {args.seq}, batch {args.batch}; {args.steps} steps, first {args.warmup} untimed"
    )
    print(
        f"{'model':<22}{'params':>10}{'tokens/s':>10}{'median-step tok/s':>19}{'final loss':>12}"
        f"{'val loss':>10}{'compile s':>11}"
    )
    rates, finals = {}, {}
    for run in runs:
        rate = tokens_per_step * len(run.step_seconds) / sum(run.step_seconds)
        median = tokens_per_step / statistics.median(run.step_seconds)
        rates[run.name], finals[run.name] = rate, run.final_loss
        # compile time: the first step (forward and backward graphs compiled) less an ordinary step
        shown = f"{run.first_step_seconds - statistics.median(run.step_seconds):.1f}" if run.compiled else "-"
        print(
            f"{run.name:<22}{run.params:>10}{rate:>10.0f}{median:>19.0f}{run.final_loss:>12.4f}"
            f"{run.val_loss:>10.4f}{shown:>11}"
        )
    precision = "bf16" if cpu_kernels.NATIVE_BF16 else "fp32"
    same = "transformers bf16" if precision == "bf16" else "transformers"
    print(f"lmforge's default precision here: {precision}; transformers' default: fp32")
    print(
        f"speedup {rates['lmforge'] / rates['transformers']:.3f} "
        f"loss_ratio {finals['lmforge'] / finals['transformers']:.4f} "
        f"speedup_same_precision {rates['lmforge'] / rates[same]:.3f}"
    )


if __name__ == "__main__":
    main()
