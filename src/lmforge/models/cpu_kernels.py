"""Faster float32 matmuls and a fused output-layer loss for training on CPUs.

Why this file exists: PyTorch sends float32 `nn.Linear` on CPU to MKL, and MKL picks its
AVX2 code path on AMD processors even when they have AVX-512. oneDNN, which ships inside the
same PyTorch wheel, uses AVX-512 there; on a 2-core AMD EPYC (Zen) it runs our layer shapes
at about 2x the GFLOP/s of MKL for the forward and input-gradient matmuls. The arithmetic is
the same IEEE float32 multiply-add (only the summation order differs), so losses match to
float32 rounding.

The output layer plus cross-entropy is the largest single cost of a small model: the (N, V)
logits are written, read by log-softmax, written again, and read again by the backward pass.
`linear_cross_entropy` walks the rows in chunks instead, and computes each chunk's gradient
right away (softmax minus one-hot) while the chunk is still in cache, as Liger-Kernel does on
GPUs. The FLOPs are the same as the unfused version; the memory traffic is much lower.

Both are used only where they help and are exact: float32 CPU tensors, no autocast, plain
tensors (not DTensor or other subclasses), x86-64 with oneDNN. Everything else goes through
`F.linear` / `F.cross_entropy`. Both are `torch.library` custom ops, so `torch.compile`
treats them as opaque calls instead of trying to trace oneDNN.

Shape letters: N rows (batch x time), K input features, M output features, V vocabulary.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F

_X86 = platform.machine().lower() in ("x86_64", "amd64")
ENABLED = _X86 and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_onednn(*tensors: torch.Tensor | None) -> bool:
    """True when every tensor is a plain float32 CPU tensor and autocast is off."""
    if not ENABLED or torch.is_autocast_enabled("cpu"):
        return False
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype != torch.float32:
            return False
        if type(t) not in (torch.Tensor, torch.nn.Parameter):  # DTensor, fake or meta-like subclasses
            return False
    return True


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
    for start in range(0, n, step):
        xc, yc = x[start : start + step], targets[start : start + step]  # (c, K), (c,)
        rows = torch.arange(len(yc))
        valid = yc != ignore_index
        safe = torch.where(valid, yc, 0)
        logits = _mm(xc, weight)  # (c, V)
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
            grad_x[start : start + step] = _mm(probs, weight.t())  # (c, V) @ (V, K)
            grad_wt += _mm(xc.t(), probs.t())  # (K, c) @ (c, V)
    grad_w = grad_wt.t().contiguous() if with_grad else weight.new_empty(0)  # (V, K)
    return loss * scale, grad_x, grad_w


@_lce_forward.register_fake
def _(x, weight, targets, ignore_index, mean, with_grad):
    grad_x = torch.empty_like(x) if with_grad else x.new_empty(0)
    grad_w = torch.empty_like(weight) if with_grad else weight.new_empty(0)
    return x.new_empty(()), grad_x, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    """The gradients are computed in the forward pass; backward only scales them by grad_output."""

    @staticmethod
    def forward(ctx, x, weight, targets, ignore_index, mean, with_grad):
        loss, grad_x, grad_w = _lce_forward(x, weight, targets, ignore_index, mean, with_grad)
        ctx.save_for_backward(grad_x, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None, None


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
    if not use_onednn(x, weight):
        logits = F.linear(x, weight).float()  # (N, V)
        return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    # Inside Function.forward grad mode is off, so decide here whether gradients are wanted.
    with_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    mean = reduction == "mean"
    return _LinearCrossEntropy.apply(x.contiguous(), weight, targets, ignore_index, mean, with_grad)


class Linear(torch.nn.Linear):
    """nn.Linear whose float32 CPU matmuls run on oneDNN (2x MKL on AMD CPUs); same parameters and math."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
