"""Faster matmuls, a fused output-layer loss, and cheaper dropout masks for training on CPUs.

Why this file exists: PyTorch sends float32 `nn.Linear` on CPU to MKL, and MKL picks its
AVX2 code path on AMD processors even when they have AVX-512. oneDNN, which ships inside the
same PyTorch wheel, uses AVX-512 there. How much that buys depends on the CPU: about 2x MKL's
GFLOP/s for our layer shapes on the CPU these kernels were first tuned on, 1.05-1.1x on a Zen 4
EPYC (whose AVX-512 units are 256 bits wide). The arithmetic is the same IEEE float32
multiply-add (only the summation order differs), so losses match to float32 rounding.

The output layer plus cross-entropy is the largest single cost of a small model: the (N, V)
logits are written, read by log-softmax, written again, and read again by the backward pass.
`linear_cross_entropy` walks the rows in chunks instead, and computes each chunk's gradient
right away (softmax minus one-hot) while the chunk is still in cache, as Liger-Kernel does on
GPUs. The FLOPs are the same as the unfused version; the memory traffic is much lower. Under
bfloat16 autocast on a CPU with native bfloat16 (AVX-512 BF16 or AMX, where bf16 matmuls run at
twice the float32 rate: the trainer's `precision: auto` picks bf16 there) the same kernel takes
bfloat16 operands, as autocast would, and keeps the softmax in float32.

These are used only where they help and are exact: float32 CPU tensors (or bf16 autocast with
native bf16), plain tensors (not DTensor or other subclasses), x86-64 with oneDNN. Everything
else goes through `F.linear` / `F.cross_entropy`. Both are `torch.library` custom ops, so
`torch.compile` treats them as opaque calls instead of trying to trace oneDNN.

`dropout` and `attention` (below) draw dropout masks four elements per random draw.

Shape letters: N rows (batch x time), K input features, M output features, V vocabulary.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F

from lmforge import sysinfo

_X86 = platform.machine().lower() in ("x86_64", "amd64")
ENABLED = _X86 and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# bfloat16 dot products in hardware (AVX-512 BF16, AMX): bf16 matmuls at twice the float32 rate.
# Elsewhere oneDNN emulates bfloat16, slower than float32, so bf16 is only chosen where this holds.
NATIVE_BF16 = ENABLED and sysinfo.native_bf16()
# oneDNN's bf16 inner product and weight packing at all, emulated or not: AVX-512 BW/VL/DQ or AVX-NE-CONVERT.
# An AVX2-only CPU (Zen 3, Haswell to Alder Lake) has neither: there a packed bf16 weight fails to build.
BF16_KERNELS = ENABLED and (NATIVE_BF16 or {"avx512bw", "avx512vl", "avx512dq"} <= sysinfo.cpu_flags()
                            or "avx_ne_convert" in sysinfo.cpu_flags())


def use_onednn(*tensors: torch.Tensor | None) -> bool:
    """True when every tensor is a plain float32 CPU tensor and autocast is off."""
    if not ENABLED or torch.is_autocast_enabled("cpu"):
        return False
    return _plain_cpu(tensors, (torch.float32,))


def _plain_cpu(tensors, dtypes) -> bool:
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype not in dtypes:
            return False
        if type(t) not in (torch.Tensor, torch.nn.Parameter):  # DTensor, fake or meta-like subclasses
            return False
    return True


def autocast_bf16(*tensors: torch.Tensor | None) -> bool:
    """True under CPU bfloat16 autocast on a CPU with native bfloat16, for plain CPU tensors."""
    return (NATIVE_BF16 and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and _plain_cpu(tensors, (torch.float32, torch.bfloat16)))


def _mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias) by oneDNN; accepts strided (e.g. transposed) views without copying."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _weight_grad(x2: torch.Tensor, gy2: torch.Tensor) -> torch.Tensor:
    """gy2.T @ x2, (M, K), in whichever operand order oneDNN runs faster (the wide side as 'weight')."""
    if gy2.size(1) >= x2.size(1):
        return _mm(x2.t(), gy2.t()).t().contiguous()  # (K, M) -> (M, K)
    return _mm(gy2.t(), x2.t())  # (M, K)


# --------------------------------------------------------------------------- linear


@torch.library.custom_op("lmforge::linear", mutates_args=())
def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _mm(x, weight, bias)  # (..., K) -> (..., M)


@_linear.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.size(0)))


@torch.library.custom_op("lmforge::linear_weight_grad", mutates_args=())
def _linear_weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    return _weight_grad(x.reshape(-1, x.size(-1)), grad_out.reshape(-1, grad_out.size(-1)))


@_linear_weight_grad.register_fake
def _(x, grad_out):
    return x.new_empty((grad_out.size(-1), x.size(-1)))


def _linear_setup(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    grad_x = _linear(grad_out, weight.t(), None) if need_x else None  # (..., M) @ (M, K)
    grad_w = _linear_weight_grad(x, grad_out) if need_w else None
    grad_b = grad_out.reshape(-1, grad_out.size(-1)).sum(0) if ctx.has_bias and need_b else None
    return grad_x, grad_w, grad_b


_linear.register_autograd(_linear_backward, setup_context=_linear_setup)


# oneDNN costs ~15-30 us a call here before it multiplies anything: matmuls of fewer multiply-adds
# than this (a few tokens while decoding, small models) are done sooner by MKL (measured on 2 cores).
ONEDNN_MIN_MACS = 1 << 20


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through oneDNN where that is exact and faster (see the module docstring)."""
    small = x.numel() // max(1, x.size(-1)) * weight.numel() < ONEDNN_MIN_MACS
    if not small and use_onednn(x, weight, bias):
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # Inference (decoding, evaluation): no autograd to record, so skip the custom op's
            # dispatch, which costs more than the matmul itself for one token at a time.
            return _mm(x, weight, bias)
        return _linear(x, weight, bias)
    return F.linear(x, weight, bias)


# --------------------------------------------------------------------------- fused output layer + loss


def _chunk_rows(vocab: int) -> int:
    """Rows per chunk: about 4M logits (16 MB), the measured sweet spot at V = 8192 on 2 cores."""
    return max(64, min(1024, (1 << 22) // vocab))


@torch.library.custom_op("lmforge::linear_cross_entropy_fwd", mutates_args=())
def _lce_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    mean: bool,
    with_grad: bool,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss (summed, or averaged over non-ignored targets) and, if asked, its gradients
    with respect to x and weight, one chunk of rows at a time."""
    n = x.size(0)
    scale = 1.0
    if mean:  # like F.cross_entropy: nan when every target is ignored
        count = int((targets != ignore_index).sum())
        scale = 1.0 / count if count else float("nan")
    loss = x.new_zeros(())
    grad_x = torch.empty_like(x) if with_grad else x.new_empty(0)
    # Accumulated transposed, (K, V): that operand order runs fastest and the output needs no copy.
    grad_wt = x.new_zeros((x.size(1), weight.size(0))) if with_grad else x.new_empty(0)
    step = _chunk_rows(weight.size(0))
    # With bf16 the matmuls take bfloat16 operands (as autocast would) and the softmax stays float32.
    wm = weight.to(torch.bfloat16) if bf16 else weight  # (V, K)
    for start in range(0, n, step):
        xc, yc = x[start : start + step], targets[start : start + step]  # (c, K), (c,)
        rows = torch.arange(len(yc))
        valid = yc != ignore_index
        safe = torch.where(valid, yc, 0)
        if bf16:
            xc = xc.to(torch.bfloat16)
            logits = _mm(xc, wm).float()  # (c, V)
        else:
            logits = _mm(xc, wm)  # (c, V)
        picked = logits[rows, safe]  # (c,) the target's logit
        # log-sum-exp by hand, in place, so exp runs once and serves the gradient as well
        top = logits.amax(dim=-1)  # (c,)
        e = logits.sub_(top[:, None]).exp_()  # (c, V), reuses the logits' memory
        total = e.sum(dim=-1)  # (c,)
        loss += torch.where(valid, top + total.log() - picked, 0.0).sum()
        if with_grad:
            weight_row = valid * scale  # ignored rows contribute nothing
            probs = e.mul_((weight_row / total)[:, None])  # softmax, scaled
            probs[rows, safe] -= weight_row  # minus the (scaled) one-hot of the target
            if bf16:
                probs = probs.to(torch.bfloat16)
            grad_x[start : start + step] = _mm(probs, wm.t())  # (c, V) @ (V, K)
            grad_wt += _mm(xc.t(), probs.t())  # (K, c) @ (c, V)
    grad_w = grad_wt.t().contiguous() if with_grad else weight.new_empty(0)  # (V, K)
    return loss * scale, grad_x, grad_w


@_lce_forward.register_fake
def _(x, weight, targets, ignore_index, mean, with_grad, bf16=False):
    grad_x = torch.empty_like(x) if with_grad else x.new_empty(0)
    grad_w = torch.empty_like(weight) if with_grad else weight.new_empty(0)
    return x.new_empty(()), grad_x, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    """The gradients are computed in the forward pass; backward only scales them by grad_output."""

    @staticmethod
    def forward(ctx, x, weight, targets, ignore_index, mean, with_grad, bf16):
        loss, grad_x, grad_w = _lce_forward(x, weight, targets, ignore_index, mean, with_grad, bf16)
        ctx.save_for_backward(grad_x, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """`F.cross_entropy(x @ weight.T, targets)` without keeping the (N, V) logits.

    x (N, K), weight (V, K), targets (N,); `reduction` is "mean" (over non-ignored targets) or "sum".
    """
    bf16 = autocast_bf16(x, weight)
    if not bf16 and not use_onednn(x, weight):
        logits = F.linear(x, weight).float()  # (N, V)
        return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    # Inside Function.forward grad mode is off, so decide here whether gradients are wanted.
    with_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    mean = reduction == "mean"
    return _LinearCrossEntropy.apply(x.contiguous(), weight, targets, ignore_index, mean, with_grad, bf16)


class Linear(torch.nn.Linear):
    """nn.Linear whose float32 CPU matmuls run on oneDNN (2x MKL on AMD CPUs); same parameters and math.

    For decoding, `pack_for_inference` may give it a copy of its weight in oneDNN's blocked layout:
    a token's matmuls are then 1.5-2x faster (the weight is not re-laid out on every call), with
    bit-identical bf16 results. The copy is used only without autograd and only while the weight
    is unchanged since packing (its version counter), so training never sees a stale copy.
    """

    packed: Packed | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.packed, self.weight, self.bias)


Packed = tuple[int, torch.Tensor]  # (the weight's version counter when packed, the packed copy)


def pack(weight: torch.Tensor) -> Packed:
    with torch.no_grad():
        return weight._version, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)


def packed_linear(x: torch.Tensor, packed: Packed | None, weight: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """`linear(x, weight, bias)`, through the packed copy when it is usable and still current."""
    if packed is not None and not torch.is_grad_enabled() and x.device.type == "cpu" \
            and packed[0] == weight._version and x.dtype == packed[1].dtype:
        return torch.ops.mkldnn._linear_pointwise(x, packed[1], bias, "none", [], "")
    return linear(x, weight, bias)


def can_pack(weight: torch.Tensor) -> bool:
    return (ENABLED and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and weight.device.type == "cpu"
            and (weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and BF16_KERNELS)))


def pack_for_inference(model: torch.nn.Module, budget_bytes: int) -> int:
    """Give the model's CPU Linear layers packed weight copies, largest first, within `budget_bytes`.

    Returns the bytes used. A tied output layer gets its own copy like any other; layers that do
    not fit the budget keep the plain path, so a model that fills memory still decodes.
    """
    layers = [m for m in model.modules() if isinstance(m, Linear) and can_pack(m.weight)]
    used = 0
    for layer in sorted(layers, key=lambda m: m.weight.numel(), reverse=True):
        size = layer.weight.numel() * layer.weight.element_size()
        stale = layer.packed is None or layer.packed[0] != layer.weight._version
        if stale and used + size <= budget_bytes:
            layer.packed = pack(layer.weight)
            used += size
    return used


# --------------------------------------------------------------------------- dropout and attention

# Dropout masks cost more than the matmuls around them on a CPU: `bernoulli_` draws one random
# number per element (a fifth of a BERT fine-tuning step on 2 cores). Here each 63-bit draw of torch's
# generator gives four 16-bit lanes compared with the rate: a quarter of the draws, no float math,
# and the same generator (seeded, saved in checkpoints). The rate is rounded to a multiple of 1/32768
# (0.1 -> 0.1000061) and the kept values are scaled by the rounded rate, so the expectation is exact.
_HALF = 32768


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, and the same for the gradient: one fused kernel each way."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the mask drawn as described above for CPU tensors."""
    if not training or p == 0.0:
        return x
    h = round(p * _HALF)  # the rate is h / 32768
    if x.device.type != "cpu" or not x.is_floating_point() or not 0 < h < _HALF:
        return F.dropout(x, p, training)
    n = x.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # uniform over [0, 2**63)
    # Little-endian lanes: 0-2 are uniform over [-32768, 32767]; lane 3 (the top, sign bit 0) over
    # [0, 32767], which doubled (wrapping) is uniform over the even values of [-32768, 32767]. Either
    # way a lane is below 2h - 32768 with probability h / 32768.
    lanes = draws.view(torch.int16).view(-1, 4)  # (n / 4, 4)
    lanes[:, 3].mul_(2)
    keep = (lanes.view(-1)[:n] >= 2 * h - _HALF).view(x.shape)
    return _MaskedScale.apply(x, keep, _HALF / (_HALF - h))


class Dropout(torch.nn.Dropout):
    """nn.Dropout drawing its mask with `dropout` (same module, no parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """`F.scaled_dot_product_attention`; with dropout on a CPU, the same math with `dropout`'s mask.

    PyTorch's CPU attention has no fused kernel with dropout: it falls back to exactly these steps
    (scores, softmax, dropout, weighted sum) with `bernoulli_` for the mask. q (B, H, T, D), k and v
    (B, H, S, D), mask broadcastable to (B, H, T, S), True where a query may see a key.
    """
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
    scores = q @ k.transpose(-2, -1) * q.size(-1) ** -0.5  # (B, H, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = dropout(torch.softmax(scores, dim=-1), dropout_p)  # (B, H, T, S)
    return probs.to(v.dtype) @ v  # (B, H, T, D)
