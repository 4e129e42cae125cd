"""The trainer's components on a tiny real model: early stopping, the best checkpoint, resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.models.checkpoint_io import load_checkpoint
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.train.config import PretrainConfig
from lmforge.train.evaluation import Evaluator, Selection, ValidationMetrics, ValidationPolicy
from lmforge.train.objectives import CausalLM, EvalWindows, TokenWindows
from lmforge.train.runtime import Runtime
from lmforge.train.trainer import Trainer

BASE = {"seq_len": 32, "batch_size": 4, "warmup_steps": 2, "eval_batches": 2, "log_every": 1, "tensorboard": False,
        "lr": 3e-3, "precision": "fp32", "device": "cpu"}


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    """A noisy repeating pattern: learnable, so validation loss falls and then levels off."""
    rng = np.random.default_rng(0)
    stream = np.tile(rng.integers(0, 64, 23), 80)
    noise = rng.random(len(stream)) < 0.15
    stream[noise] = rng.integers(0, 64, int(noise.sum()))
    return stream.astype(np.uint16)


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16))


def _trainer(tokens, out, cfg: dict, **kwargs) -> Trainer:
    cut = len(tokens) // 5
    return Trainer(_model(), CausalLM(), TokenWindows(tokens[cut:], 32, 4, 0), PretrainConfig(**{**BASE, **cfg}), out,
                   val_source=EvalWindows(tokens[:cut], 32, 4, 1), **kwargs)


class Scripted:
    """Validation metrics that replay fixed values: the loss the trainer sees at each evaluation."""

    includes_loss = True

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def __call__(self, model) -> dict[str, float]:
        value = next(self.values)
        return {"loss": value, "lm": value}


def test_early_stopping_stops_at_the_patience_step_and_keeps_the_best(tokens, tmp_path):
    metrics = Scripted([5.0, 4.0, 3.0, 3.5, 3.2, 1.0])
    assert isinstance(metrics, ValidationMetrics)
    trainer = _trainer(tokens, tmp_path, {"steps": 40, "eval_every": 2, "early_stopping": 2},
                       policy=ValidationPolicy(metrics=metrics, keep_best=True))
    result = trainer.fit()
    # evaluations at 0, 2, 4 (best, 3.0), 6 (worse), 8 (worse again: patience 2 reached)
    assert result.stopped_early and result.steps == 8
    assert [(s, v["loss"]) for s, v in result.val_losses] == [(0, 5.0), (2, 4.0), (4, 3.0), (6, 3.5), (8, 3.2)]
    best = json.loads((tmp_path / "best" / "config.json").read_text())["extra"]
    assert best["step"] == 4 and best["val"]["loss"] == 3.0
    final = json.loads((tmp_path / "checkpoint" / "config.json").read_text())["extra"]
    assert final["steps"] == 8 and final["val"]["loss"] == 3.2
    assert not (tmp_path / "checkpoints").exists()  # save_every 0: no resumable state


def test_best_checkpoint_holds_the_best_validation(tokens, tmp_path):
    trainer = _trainer(tokens, tmp_path, {"steps": 30, "eval_every": 3, "lr": 2e-2},
                       policy=ValidationPolicy(keep_best=True))
    result = trainer.fit()
    losses = {s: v["loss"] for s, v in result.val_losses}
    best_step = min(losses, key=losses.get)
    assert len(set(losses.values())) == len(losses)  # the run moves: the choice is a real one
    extra = json.loads((tmp_path / "best" / "config.json").read_text())["extra"]
    assert extra.get("step", extra.get("steps")) == best_step and extra["val"]["loss"] == losses[best_step]
    # the saved weights give that loss again
    best = load_checkpoint(tmp_path / "best")
    cut = len(tokens) // 5
    again = Evaluator(CausalLM(), EvalWindows(tokens[:cut], 32, 4, 1), ValidationPolicy(), 2, 0) \
        .measure(best, Runtime(torch.device("cpu"), trainer.dist))
    assert again["loss"] == pytest.approx(losses[best_step], rel=1e-5)
    assert min(losses.values()) < losses[0]


def test_resume_after_a_crash_continues_the_same_loss_curve(tokens, tmp_path):
    cfg = {"steps": 9, "eval_every": 2, "save_every": 3, "early_stopping": 5}
    whole = _trainer(tokens, tmp_path / "whole", cfg).fit()

    def crash(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tokens, tmp_path / "cut", cfg, on_step=crash).fit()
    resumed = _trainer(tokens, tmp_path / "cut", cfg).fit()
    assert resumed.resumed_from == 3
    assert resumed.train_losses == [(s, loss) for s, loss in whole.train_losses if s > 3]  # bit for bit
    assert resumed.val_losses == whole.val_losses  # the history before the crash came back from the checkpoint
    log_steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log_steps == [json.loads(x)["step"] for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]


def test_evaluator_tracks_best_and_patience_and_restores_them():
    ev = Evaluator(CausalLM(), None, ValidationPolicy(select=Selection("accuracy", "max")), eval_batches=1, patience=2)
    ev.first({"loss": 1.0, "accuracy": 0.5})
    assert ev.record(2, {"loss": 0.9, "accuracy": 0.6}) and ev.best == 0.6
    assert not ev.record(4, {"loss": 0.8, "accuracy": 0.6}) and not ev.stopped  # equal is not better
    again = Evaluator(CausalLM(), None, ev.policy, 1, 2, resumed=json.loads(json.dumps(ev.state())))
    assert (again.best, again.bad_evals, again.history) == (0.6, 1, ev.history)
    assert not again.record(6, {"loss": 0.7, "accuracy": 0.55}) and again.stopped
    assert again.final(8, {"loss": 0.7, "accuracy": 0.7}) and again.last == {"loss": 0.7, "accuracy": 0.7}
    assert ev.measure(torch.nn.Linear(1, 1), Runtime(torch.device("cpu"), None)) == {}  # no validation data
