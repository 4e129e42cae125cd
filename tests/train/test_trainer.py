"""The training loop: token-normalized accumulation, exact resume after SIGKILL, DDP/FSDP on gloo, logging."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.models.gpt import GPT, GPTConfig
from lmforge.tokenize.encode import write_token_file
from lmforge.train import state
from lmforge.train.checkpoint import load_checkpoint
from lmforge.train.config import PretrainConfig
from lmforge.train.objectives import IGNORE, CausalLM, TokenWindows
from lmforge.train.optim import lr_at
from lmforge.train.trainer import Trainer

SCRIPT = Path(__file__).with_name("train_script.py")
BASE = {"seq_len": 32, "batch_size": 4, "warmup_steps": 2, "eval_every": 4, "eval_batches": 2,
        "log_every": 1, "tensorboard": False, "model": {"n_layer": 2, "n_embd": 64, "n_head": 4}}


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory, request):
    """Real text (Python's documentation and Chinese) encoded with a small trained tokenizer."""
    import pydoc_data.topics

    from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer
    from lmforge.tokenize.encode import encode_documents

    texts = list(pydoc_data.topics.topics.values())[:120] + ["长江是中国最长的河流，流经十一个省份。"] * 30
    tmp = tmp_path_factory.mktemp("tokens")
    tok = load_tokenizer(train_tokenizer(texts, TokenizerConfig(vocab_size=400), tmp / "tok"))
    path = tmp / "all.tok"
    write_token_file(path, encode_documents(tok, texts, eos_id(tok)))
    return path


def run_script(tokens_file: Path, out: Path, cfg: dict, procs: int = 1, wait: bool = True, sleep: float = 0):
    env = {**os.environ, "LMFORGE_TEST_STEP_SLEEP": str(sleep), "OMP_NUM_THREADS": "1"}
    args = [str(SCRIPT), str(tokens_file), str(out), json.dumps(cfg)]
    if procs > 1:
        with socket.socket() as sock:  # a free port: a fixed one may still be held by the previous run
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
               "--master-port", port, *args]
    else:
        cmd = [sys.executable, *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_log(out: Path) -> list[tuple[int, float, float]]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if "loss" in r]


# ------------------------------------------------------------------ gradient accumulation


class FixedRows:
    """Micro-batch i = rows [i*b, (i+1)*b) of one big batch, with a different number of real labels in each."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor, rows: int) -> None:
        self.ids, self.labels, self.rows = ids, labels, rows

    def micro_batch(self, index: int):
        sl = slice(index * self.rows, (index + 1) * self.rows)
        return {"input_ids": self.ids[sl], "labels": self.labels[sl]}


LAYOUTS = {
    "dense": {},
    "gqa": {"n_head": 4, "n_kv_head": 1, "head_size": 16, "qkv_bias": True},
    "moe": {"n_kv_head": 1, "n_expert": 4, "n_expert_active": 2, "moe_hidden": 24, "moe_dense_layers": [1]},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grad_accumulation_equals_the_large_batch_gradient(layout, tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (8, 16))
    labels = torch.roll(ids, -1, dims=1)
    for row, keep in enumerate([16, 3, 16, 9, 1, 16, 12, 5]):  # padded rows: uneven token counts
        labels[row, keep:] = IGNORE
    config = GPTConfig(**{"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32,
                          **LAYOUTS[layout]})
    grads = {}
    for accum, rows in ((1, 8), (4, 2), (8, 1)):
        torch.manual_seed(1)
        cfg = PretrainConfig(seq_len=16, batch_size=rows, grad_accum=accum, steps=1, tensorboard=False,
                             precision="fp32")  # the reference below is float32
        trainer = Trainer(GPT(config), CausalLM(), FixedRows(ids, labels, rows), cfg, tmp_path / str(accum))
        trainer.setup()
        losses, tokens = trainer.backward(0)
        grads[accum] = [p.grad.clone() for p in trainer.model.parameters()]
        assert tokens == 8 * 16
    # reference: one forward over the whole batch, mean over every real label
    torch.manual_seed(1)
    model = GPT(config)
    logits, _ = model(ids)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    loss.backward()
    assert losses["lm"] == pytest.approx(loss.item(), rel=1e-6)
    for accum in (1, 4, 8):
        for g, p in zip(grads[accum], model.parameters(), strict=True):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
    # averaging per-micro-batch means (what a naive loop does) would give another loss: the split is uneven
    with torch.no_grad():
        naive = np.mean([torch.nn.functional.cross_entropy(logits[i], labels[i], ignore_index=IGNORE).item()
                         for i in range(8)])
    assert abs(naive - loss.item()) > 1e-3


# ------------------------------------------------------------------ exact resume


RESUMED = {  # the second is grouped-query and a mixture of experts, with its load-balancing loss
    "dense": {},
    "gqa-moe": {"n_kv_head": 2, "n_expert": 4, "n_expert_active": 2, "moe_hidden": 32, "moe_aux_loss": 0.01},
}


@pytest.mark.parametrize("layout", RESUMED)
def test_resume_after_sigkill_continues_the_loss_curve_bitwise(layout, tokens_file, tmp_path):
    cfg = {**BASE, "steps": 16, "save_every": 4, "model": {**BASE["model"], "dropout": 0.1, **RESUMED[layout]}}
    run_script(tokens_file, tmp_path / "straight", cfg)

    out = tmp_path / "killed"
    proc = run_script(tokens_file, out, cfg, wait=False, sleep=0.15)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        latest = out / "checkpoints" / state.LATEST
        if latest.exists() and json.loads(latest.read_text())["step"] >= 8:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((out / "checkpoints" / state.LATEST).read_text())["step"]
    assert 8 <= killed_at < 16 and not (out / "checkpoint").exists()

    result = run_script(tokens_file, out, cfg)
    assert result == {"steps": 16, "resumed_from": killed_at}
    assert train_log(out) == train_log(tmp_path / "straight")  # losses and grad norms, bit for bit
    # weights too: the final checkpoints are identical
    a, b = (load_checkpoint(p / "checkpoint").state_dict() for p in (out, tmp_path / "straight"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["latest.json", "step-0000008", "step-0000012"]  # keep_checkpoints=2, no temp dirs


def test_checkpoint_holds_no_pickle_and_names_missing_rank(tokens_file, tmp_path):
    run_script(tokens_file, tmp_path, {**BASE, "steps": 6, "save_every": 3})
    ckpt = state.latest(tmp_path / "checkpoints")
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "rng-rank0.json", "trainer_state.json"]
    trainer_state = json.loads((ckpt / "trainer_state.json").read_text())
    assert trainer_state["step"] == 3 and len(trainer_state["val_losses"]) == 1
    from lmforge.errors import InputError

    with pytest.raises(InputError, match="rank 1"):
        state.read_state(ckpt, rank=1)


# ------------------------------------------------------------------ data parallel


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_training_matches_one_process(tokens_file, tmp_path, strategy):
    single = {**BASE, "steps": 8, "grad_accum": 2, "precision": "fp32"}  # exact equality is a float32 claim
    run_script(tokens_file, tmp_path / "one", single)
    run_script(tokens_file, tmp_path / "two", {**single, "grad_accum": 1, "distributed": strategy}, procs=2)
    one, two = train_log(tmp_path / "one"), train_log(tmp_path / "two")
    assert [s for s, _, _ in one] == [s for s, _, _ in two] == list(range(1, 9))
    np.testing.assert_allclose([x[1:] for x in two], [x[1:] for x in one], rtol=1e-5)
    assert (tmp_path / "two" / "checkpoint" / "model.safetensors").is_file()


# ------------------------------------------------------------------ schedules, early stopping, logging


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules_warm_up_and_end_where_they_should(schedule):
    cfg = PretrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule=schedule, decay_frac=0.2)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    end = {"cosine": 1e-4, "wsd": 1e-4, "constant": 1e-3}[schedule]
    assert lrs[-1] == pytest.approx(end)
    if schedule == "wsd":
        assert lrs[10:79] == [pytest.approx(1e-3)] * 69 and lrs[90] < 1e-3


def test_early_stopping_stops_after_patience(tmp_path, monkeypatch):
    tokens = np.tile(np.arange(64, dtype=np.uint16), 50)
    cfg = PretrainConfig(**{**BASE, "steps": 50, "eval_every": 2, "early_stopping": 2})
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16))
    trainer = Trainer(model, CausalLM(), TokenWindows(tokens, 32, 4, 0), cfg, tmp_path,
                      val_source=TokenWindows(tokens, 32, 4, 1))
    vals = iter([5.0, 4.0, 3.0, 3.5, 3.2, 1.0, 1.0])
    monkeypatch.setattr(trainer, "evaluate", lambda: {"lm": (v := next(vals)), "loss": v})
    result = trainer.fit()
    # evaluations at steps 0, 2, 4, 6 (worse), 8 (worse again: patience 2 reached)
    assert result.stopped_early and result.steps == 8
    assert [s for s, _ in result.val_losses] == [0, 2, 4, 6, 8]


def test_log_has_throughput_mfu_and_tensorboard(tmp_path):
    tokens = np.tile(np.arange(64, dtype=np.uint16), 50)
    cfg = PretrainConfig(**{**BASE, "steps": 3, "tensorboard": True, "peak_tflops": 1.0})
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16))
    Trainer(model, CausalLM(), TokenWindows(tokens, 32, 4, 0), cfg, tmp_path).fit()
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    step = rows[-1]
    flops = model.flops_per_token(32)
    assert step["mfu"] == pytest.approx(flops * step["tokens_per_s"] / 1e12, rel=1e-9)
    assert step["tokens"] == 3 * 4 * 32 and math.isfinite(step["grad_norm"])
    pytest.importorskip("tensorboard")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_muon_trains(tmp_path):
    tokens = np.tile(np.arange(64, dtype=np.uint16), 50)
    cfg = PretrainConfig(**{**BASE, "steps": 30, "optimizer": "muon", "lr": 3e-3, "eval_every": 0})
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32))
    trainer = Trainer(model, CausalLM(), TokenWindows(tokens, 32, 4, 0), cfg, tmp_path)
    result = trainer.fit()
    muon, adam = trainer.optimizers
    assert isinstance(muon, torch.optim.Muon) and all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    assert all(p is not model.transformer.wte.weight for g in muon.param_groups for p in g["params"])
    assert result.train_losses[-1][1] < 0.75 * result.train_losses[0][1]
