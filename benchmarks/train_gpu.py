"""GPU pretraining throughput: lmforge's GPT against a nanoGPT-style reference, GPT-2 124M, one GPU.

Both models have the GPT-2 small shape: 12 layers, 768 channels, 12 heads, learned positions,
LayerNorm, GELU MLP (4x), biases, tied embeddings, context 1024. The vocabulary is padded to
50304 rows (a multiple of 64, as nanoGPT does) for both. The reference is written out below in
about 60 lines: fused q/k/v matmul, F.scaled_dot_product_attention(is_causal=True), exact GELU;
its parameter names are nanoGPT's, which are also lmforge's, so it starts from lmforge's
initial weights exactly.

Data: by default the built-in corpora (Chinese and English) encoded with a byte-level BPE of up
to 50257 ids trained on them (--data corpora); with --data synthetic, a fixed stream of random
token ids from a seeded generator, which is enough for throughput but makes the loss
meaningless. --steps batches of --batch random windows of 1024 tokens are drawn once; both
models train on exactly those batches.

Both sides: bf16 autocast, TF32 matmuls on, torch.compile (inductor), fused AdamW (betas 0.9,
0.95, weight decay 0.1 on hidden matrices only, lmforge's rule), gradient clipping at 1.0,
linear warmup. lmforge's side calls model(x, y, return_logits=False), as lmforge's trainer
does (TODO: run `lmforge.train.trainer` itself here once it is finished); SDPA picks flash
attention for both. The first --warmup steps (compilation) are not timed; each step ends with
loss.item(), which waits for the GPU. Compile time is the first step less a median step.

MFU = flops_per_token x tokens/s / peak, with flops_per_token = 6N + 12 L C T (N counting the
tied output matmul; lmforge's `GPT.flops_per_token(1024)`, the same for both models) and the
bf16 dense peak: 989 TFLOP/s for H100 and H200 (SXM; a PCIe H100 peaks lower, so its MFU reads
low), 312 for A100; unknown GPUs show nan.

Last line: `tokens_per_s <lmforge> mfu <lmforge> speedup <lmforge / reference tokens/s>
loss_ratio <lmforge / reference mean loss of the last 10 steps>`.
Without CUDA it prints why and exits 0; --cpu-smoke runs a tiny float32 version on the CPU to
check the script itself (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger("train_gpu_bench")

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


# --------------------------------------------------------------------------- the reference (nanoGPT)


class RefBlock(nn.Module):
    def __init__(self, C: int, H: int) -> None:
        super().__init__()
        self.n_head = H
        self.ln_1 = nn.LayerNorm(C)
        self.ln_2 = nn.LayerNorm(C)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(C, 3 * C)
        self.attn.c_proj = nn.Linear(C, C)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(C, 4 * C)
        self.mlp.c_proj = nn.Linear(4 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)
        )  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    """nanoGPT's model, minus dropout and generation; parameter names match lmforge's GPT-2 layout."""

    def __init__(self, vocab: int, block: int, L: int, C: int, H: int) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, C),
                wpe=nn.Embedding(block, C),
                h=nn.ModuleList([RefBlock(C, H) for _ in range(L)]),
                ln_f=nn.LayerNorm(C),
            )
        )
        self.lm_head = nn.Linear(C, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


# --------------------------------------------------------------------------- data


def token_stream(args, work: str) -> np.ndarray:
    if args.data == "synthetic":
        return np.random.default_rng(args.seed).integers(0, 50257, size=4_000_000, dtype=np.int64)
    from lmforge.collect.builtin import CORPORA, corpus_records
    from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer

    texts = [r.text for name in CORPORA for r in corpus_records(name)]
    tok = load_tokenizer(train_tokenizer(texts, TokenizerConfig(vocab_size=50257), work))
    eos = eos_id(tok)
    return np.asarray([i for enc in tok.encode_batch(texts) for i in (*enc.ids, eos)], dtype=np.int64)


def make_batches(tokens: np.ndarray, args) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(args.seed)
    stream = torch.from_numpy(tokens)
    out = []
    for _ in range(args.steps):
        starts = torch.randint(len(stream) - args.seq - 1, (args.batch,), generator=gen).tolist()
        rows = torch.stack([stream[s : s + args.seq + 1] for s in starts])  # (B, T + 1)
        out.append((rows[:, :-1].contiguous(), rows[:, 1:].contiguous()))
    return out


# --------------------------------------------------------------------------- training


@dataclass
class Run:
    name: str
    tokens_per_step: int
    step_seconds: list[float]  # timed steps only
    losses: list[float]  # every step
    first_step_seconds: float
    peak_memory_gb: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step * len(self.step_seconds) / sum(self.step_seconds)

    @property
    def compile_seconds(self) -> float:
        return self.first_step_seconds - statistics.median(self.step_seconds)

    @property
    def final_loss(self) -> float:
        return float(np.mean(self.losses[-10:]))


def adamw(model: nn.Module, args, device: torch.device) -> torch.optim.AdamW:
    """Decay hidden matrices only (not embeddings or the tied output layer, not 1-D parameters)."""
    keep = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in keep]
    rest = [p for p in model.parameters() if p.dim() < 2 or id(p) in keep]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def train(name: str, model: nn.Module, loss_fn, batches, args, device: torch.device) -> Run:
    opt = adamw(model, args, device)
    use_bf16 = device.type == "cuda"
    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds, losses = [], []
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.lr_warmup)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # waits for the GPU, so the step time is honest
        seconds.append(time.perf_counter() - t0)
        if step % 20 == 0:
            log.info("%s step %d loss %.4f %.3f s", name, step, losses[-1], seconds[-1])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return Run(name, args.batch * args.seq, seconds[args.warmup :], losses, seconds[0], peak)


def lmforge_model(args):
    from lmforge.models.gpt import GPT, config_from_preset

    torch.manual_seed(args.seed)
    preset = "gpt2-124m" if not args.cpu_smoke else "tiny"
    overrides = (
        {} if not args.cpu_smoke else {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}
    )
    return GPT(config_from_preset(preset, args.vocab, block_size=args.seq, **overrides))


def run_lmforge(batches, args, device: torch.device) -> tuple[Run, int]:
    """lmforge's side: its GPT, trained as lmforge's trainer trains it."""
    model = lmforge_model(args).to(device)
    step_fn = torch.compile(model) if args.compile else model

    def loss_fn(x, y):
        return step_fn(x, y, return_logits=False)[1]

    return train("lmforge", model, loss_fn, batches, args, device), model.flops_per_token(args.seq)


def run_reference(batches, args, device: torch.device) -> Run:
    """The nanoGPT-style reference, starting from the same weights as lmforge's model."""
    ours = lmforge_model(args)
    cfg = ours.config
    ref = RefGPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd, cfg.n_head)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ref = ref.to(device)
    step_fn = torch.compile(ref) if args.compile else ref
    return train("nanoGPT reference", ref, step_fn, batches, args, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50304, help="model rows (padded GPT-2 vocabulary)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation) at the start")
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--lr-warmup", type=int, default=20)
    parser.add_argument("--data", choices=["corpora", "synthetic"], default="corpora")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny float32 run on the CPU to test this script"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lmforge").setLevel(logging.WARNING)

    if args.cpu_smoke:
        args.seq, args.batch, args.steps, args.warmup, args.vocab, args.compile = 64, 2, 14, 2, 512, False
        args.data = "synthetic"
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print(
            "train_gpu.py needs a CUDA GPU and none is visible; nothing to measure (use --cpu-smoke to test the script)"
        )
        sys.exit(0)
    else:
        device = torch.device("cuda")
        torch.set_float32_matmul_precision("high")  # TF32 for any float32 matmul left outside autocast

    with tempfile.TemporaryDirectory() as work:
        tokens = token_stream(args, work)
    tokens = np.minimum(tokens, args.vocab - 1)  # only the smoke run's small vocabulary clips anything
    log.info("data: %s, %d tokens", args.data, len(tokens))
    batches = make_batches(tokens, args)
    ours, flops_per_token = run_lmforge(batches, args, device)
    ref = run_reference(batches, args, device)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))
    print(
        f"device: {name}; torch {torch.__version__}; batch {args.batch} x {args.seq} tokens, {args.steps} steps "
        f"({args.warmup} untimed), {'bf16 autocast' if device.type == 'cuda' else 'float32'}, compile {args.compile}, data {args.data}"
    )
    print(f"flops per token {flops_per_token / 1e6:.1f} M; peak {peak / 1e12:.0f} TFLOP/s")
    print(f"{'model':<20}{'tokens/s':>11}{'MFU':>8}{'peak GB':>9}{'compile s':>11}{'final loss':>12}")
    for run in (ours, ref):
        mfu = flops_per_token * run.tokens_per_s / peak
        print(
            f"{run.name:<20}{run.tokens_per_s:>11.0f}{mfu:>8.3f}{run.peak_memory_gb:>9.2f}{run.compile_seconds:>11.1f}"
            f"{run.final_loss:>12.4f}"
        )
    mfu = flops_per_token * ours.tokens_per_s / peak
    speedup = ours.tokens_per_s / ref.tokens_per_s
    ratio = ours.final_loss / ref.final_loss
    print(f"tokens_per_s {ours.tokens_per_s:.0f} mfu {mfu:.4f} speedup {speedup:.3f} loss_ratio {ratio:.4f}")


if __name__ == "__main__":
    main()
