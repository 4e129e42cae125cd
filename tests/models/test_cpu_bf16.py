"""bfloat16 on CPUs: the fused output layer + loss under autocast, and the trainer's choice of precision.

oneDNN's bf16 kernels run on any x86 CPU with AVX-512 BW/VL/DQ or AVX-NE-CONVERT (emulating bfloat16
dot products where the hardware lacks them, only slower), so these tests force the "native bf16" switch
on and check the arithmetic on all of those; an AVX2-only CPU (Zen 3) cannot run them at all.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import cpu_kernels
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.train.config import PretrainConfig
from lmforge.train.objectives import CausalLM, TokenWindows
from lmforge.train.trainer import Trainer

pytestmark = [
    pytest.mark.skipif(not cpu_kernels.ENABLED, reason="needs oneDNN on x86-64"),
    pytest.mark.usefixtures("one_torch_thread"),
]
VOCAB = 300


needs_bf16_kernels = pytest.mark.skipif(not cpu_kernels.BF16_KERNELS,
                                        reason="oneDNN's bf16 kernels need AVX-512 BW/VL/DQ or AVX-NE-CONVERT")


@pytest.fixture
def native_bf16(monkeypatch):
    if not cpu_kernels.BF16_KERNELS:
        pytest.skip("oneDNN's bf16 kernels need AVX-512 BW/VL/DQ or AVX-NE-CONVERT")
    monkeypatch.setattr(cpu_kernels, "NATIVE_BF16", True)


def _loss_and_grads(model, idx, targets, fused: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if fused:
            _, loss = model(idx, targets, ignore_index=-1, return_logits=False)
        else:
            logits, _ = model(idx)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
def test_fused_loss_under_bf16_autocast_equals_the_autocast_logits_path(native_bf16, monkeypatch, tied):
    calls = []
    fused_apply = cpu_kernels._LinearCrossEntropy.apply
    monkeypatch.setattr(cpu_kernels._LinearCrossEntropy, "apply", lambda *a: calls.append(a[-1]) or fused_apply(*a))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=64, tie_embeddings=tied))
    idx, targets = torch.randint(0, VOCAB, (4, 32)), torch.randint(0, VOCAB, (4, 32))
    targets[:, :5] = -1
    loss, grads = _loss_and_grads(model, idx, targets, fused=False)
    fused, fused_grads = _loss_and_grads(model, idx, targets, fused=True)
    assert fused.dtype == torch.float32
    assert calls == [True]  # the fused kernel ran, in its bf16 mode
    # both round the matmuls' operands and outputs to bfloat16 (8-bit mantissa), in different places
    assert fused.item() == pytest.approx(loss.item(), rel=2e-3)
    for name, g in grads.items():
        assert fused_grads[name].dtype == torch.float32
        cos = F.cosine_similarity(g.flatten(), fused_grads[name].flatten(), dim=0)
        assert cos > 0.999, (name, cos)
    # and it really ran in bfloat16: float32 gives a measurably different loss
    _, exact = model(idx, targets, ignore_index=-1, return_logits=False)
    assert fused.item() != exact.item()


def test_fused_bf16_loss_is_not_used_without_native_bf16(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "NATIVE_BF16", False)
    x, w = torch.randn(8, 16), torch.randn(40, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_kernels.autocast_bf16(x, w)
    monkeypatch.setattr(cpu_kernels, "NATIVE_BF16", True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_kernels.autocast_bf16(x, w)
    assert not cpu_kernels.autocast_bf16(x, w)  # no autocast, no bf16


def _train(tmp_path, tokens, precision: str, name: str) -> tuple[list[float], Trainer]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=64))
    cfg = PretrainConfig(seq_len=32, batch_size=8, steps=60, lr=3e-3, warmup_steps=5, eval_every=0,
                         tensorboard=False, precision=precision)
    losses: list[float] = []
    trainer = Trainer(model, CausalLM(), TokenWindows(tokens, 32, 8, seed=0), cfg, tmp_path / name,
                      on_step=lambda step, loss: losses.append(loss))
    trainer.fit()
    return losses, trainer


@needs_bf16_kernels
def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16_and_trains_as_well(tmp_path, monkeypatch):
    # a learnable stream: a repeating pattern with noise
    gen = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, VOCAB, (37,), generator=gen)
    tokens = pattern.repeat(200)
    noise = torch.rand(len(tokens), generator=gen) < 0.1
    tokens[noise] = torch.randint(0, VOCAB, (int(noise.sum()),), generator=gen)
    tokens = tokens.numpy()

    monkeypatch.setattr(cpu_kernels, "NATIVE_BF16", False)
    fp32, trainer = _train(tmp_path, tokens, "auto", "fp32")
    assert trainer.rt.amp is False
    monkeypatch.setattr(cpu_kernels, "NATIVE_BF16", True)
    bf16, trainer = _train(tmp_path, tokens, "auto", "bf16")
    assert trainer.rt.amp is True and trainer.rt.amp_dtype == torch.bfloat16
    assert fp32 != bf16  # really another precision
    first, last = sum(fp32[:5]) / 5, sum(fp32[-10:]) / 10
    assert last < 0.5 * first  # it learned
    assert sum(bf16[-10:]) / 10 == pytest.approx(last, rel=0.05)  # and bf16 learned as much
