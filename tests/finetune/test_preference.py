"""Preference tuning: the four losses by their formulas, reference log-probabilities in resumable shards,
grad-accumulation equivalence, and a DPO run that learns to prefer the chosen answers."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from lmforge.finetune.chat_data import PairSource, encode_pairs
from lmforge.finetune.config import FinetuneConfig, PreferenceSettings
from lmforge.finetune.preference import PreferenceObjective, compute_reference, pair_losses, sequence_logps
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.heads import CausalLMAdapter
from lmforge.tasks.builtin import load_task
from lmforge.tasks.examples import PreferenceExample
from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer
from lmforge.tokenize.chat import chat_encoder_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs():
    rows = load_task("instructions", max_per_task=10).train
    out = []
    for i, e in enumerate(rows):
        other = rows[(i + 5) % len(rows)].response
        if other != e.response:
            out.append(PreferenceExample(prompt=e.prompt[:100], chosen=e.response[:60], rejected=other[:60]))
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, pairs):
    texts = [p.prompt + p.chosen + p.rejected for p in pairs]
    return train_tokenizer(texts, TokenizerConfig(vocab_size=500), tmp_path_factory.mktemp("pref-tok"))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "orpo"])
def test_each_loss_is_its_formula(loss):
    s = PreferenceSettings(loss=loss, beta=0.3, label_smoothing=0.1 if loss in ("dpo", "simpo") else 0.0,
                           simpo_gamma=0.4)
    pc, pr, rc, rr = -1.2, -2.5, -1.5, -2.0  # (averaged) log-probabilities
    got, r_c, r_r = (float(t) for t in pair_losses(s, *(torch.tensor([v], dtype=torch.float64)
                                                        for v in (pc, pr, rc, rr))))
    h = (pc - rc) - (pr - rr)
    want = {
        "dpo": -0.9 * math.log(_sig(0.3 * h)) - 0.1 * math.log(_sig(-0.3 * h)),
        "ipo": (h - 1 / 0.6) ** 2,
        "simpo": -0.9 * math.log(_sig(0.3 * (pc - pr) - 0.4)) - 0.1 * math.log(_sig(-(0.3 * (pc - pr) - 0.4))),
        "orpo": -pc - 0.3 * math.log(_sig((pc - pr) - (math.log(1 - math.exp(pc)) - math.log(1 - math.exp(pr))))),
    }[loss]
    assert got == pytest.approx(want, rel=1e-9)
    assert r_c - r_r == pytest.approx(0.3 * (h if loss in ("dpo", "ipo") else pc - pr), rel=1e-9)


def _model(vocab: int) -> CausalLMAdapter:
    torch.manual_seed(0)
    return CausalLMAdapter(GPT(GPTConfig(vocab_size=vocab, block_size=256, n_layer=2, n_head=2, n_embd=32)))


def test_sequence_logps_sum_only_the_answer_tokens(tok_dir, pairs):
    chat = chat_encoder_for(tok_dir)
    enc, stats = encode_pairs(pairs[:6], chat, 256, 0)
    assert stats.kept == 6
    model = _model(chat.tokenizer.get_vocab_size())
    batch = PairSource(enc, 3, 0, shuffle=False).micro_batch(0)
    got, n = sequence_logps(model, batch)
    for row in range(6):  # chosen rows, then rejected rows
        pair = row % 3
        ids = torch.from_numpy((enc.chosen if row < 3 else enc.rejected)[pair])
        start = enc.prompt_len[pair]
        logp = torch.log_softmax(model(input_ids=ids[None])[0].detach().float(), -1)
        want = sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))
        assert float(got[row].detach()) == pytest.approx(want, abs=1e-4)
        assert int(n[row]) == len(ids) - start
        answer = chat.tokenizer.decode(ids[start:].tolist(), skip_special_tokens=False)
        assert answer == (pairs[pair].chosen if row < 3 else pairs[pair].rejected) + "<|im_end|>"


@pytest.mark.parametrize("row_by_row", [True, False])
def test_row_by_row_log_probabilities_equal_the_full_logits_path_with_gradients(tok_dir, pairs, row_by_row,
                                                                                monkeypatch):
    from lmforge.models.heads import CausalLMAdapter

    monkeypatch.setattr(CausalLMAdapter, "full_logits_bytes", 0 if row_by_row else 512 << 20)
    chat = chat_encoder_for(tok_dir)
    enc, _ = encode_pairs(pairs[:4], chat, 256, 0)
    model = _model(chat.tokenizer.get_vocab_size())
    batch = PairSource(enc, 4, 0, shuffle=False).micro_batch(0)
    grads = []
    for fused in (True, False):
        model.zero_grad()
        logp, _ = sequence_logps(model, batch, fused)
        (logp * torch.linspace(0.5, 1.5, len(logp))).sum().backward()
        grads.append((logp.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-4)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_reference_shards_resume_and_are_recomputed_for_other_data(tok_dir, pairs, tmp_path, monkeypatch):
    import lmforge.finetune.preference as pref

    chat = chat_encoder_for(tok_dir)
    enc, _ = encode_pairs(pairs[:20], chat, 256, 0)
    model = _model(chat.tokenizer.get_vocab_size())
    calls = []
    real = pref._shard_logps
    monkeypatch.setattr(pref, "_shard_logps", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    def run(source: PairSource) -> None:
        compute_reference(model, {"train": source}, tmp_path / "ref", "m", torch.device("cpu"), contextlib.nullcontext,
                          shard_pairs=8)

    first = PairSource(enc, 4, 0)
    run(first)
    assert [len(r) for r in calls] == [8, 8, 4]
    (tmp_path / "ref" / "train-00001.done").unlink()  # as if killed while writing shard 1
    calls.clear()
    again = PairSource(enc, 4, 0)
    run(again)
    assert calls == [range(8, 16)]
    np.testing.assert_array_equal(first.reference, again.reference)
    other, _ = encode_pairs(pairs[1:21], chat, 256, 0)
    calls.clear()
    run(PairSource(other, 4, 0))
    assert len(calls) == 3  # other pairs: nothing reused


def _dpo_config(tok_dir, path, **extra) -> FinetuneConfig:
    return FinetuneConfig.model_validate({
        "task": "preference", "data": {"path": str(path)},
        "model": {"tokenizer": str(tok_dir), "arch": "gpt", "preset": "tiny"}, "epochs": None, "steps": 8,
        "batch_size": 8, "lr": 2e-3, "seq_len": 256, "tensorboard": False, "device": "cpu", "precision": "fp32",
        "log_every": 1, "eval_every": 100, **extra})


def test_dpo_learns_the_preference_and_accumulation_splits_steps_exactly(tok_dir, pairs, tmp_path):
    from lmforge.finetune.run import finetune

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    result = finetune(_dpo_config(tok_dir, path), tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a" / "reference").glob("*.done")) == \
        ["test-00000.done", "train-00000.done", "val-00000.done"]
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    curve = [r["loss"] for r in log if "loss" in r]
    assert curve[0] == pytest.approx(math.log(2), abs=1e-3)  # policy = reference at step 1: -log σ(0)
    metrics = [r["metrics"] for r in log if "metrics" in r]
    assert set(metrics[0]) == {"reward_chosen", "reward_rejected", "margin", "accuracy", "kl"}
    # the reference rows were batched with other padding: equal up to float32 rounding
    assert metrics[0]["margin"] == pytest.approx(0, abs=1e-6) and np.mean([m["accuracy"] for m in metrics[-3:]]) > 0.7
    assert all(m["margin"] > 0 for m in metrics[-3:]) and curve[-1] < 0.6  # it learned to prefer the chosen
    assert {"accuracy", "margin", "kl"} <= set(result.val) and {"accuracy", "margin"} <= set(result.test)
    split = finetune(_dpo_config(tok_dir, path, batch_size=4, grad_accum=2), tmp_path / "b")
    curve_b = [r["loss"] for r in (json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines())
               if "loss" in r]
    np.testing.assert_allclose(curve_b, curve, rtol=1e-5, atol=1e-6)
    assert split.test["loss"] == pytest.approx(result.test["loss"], rel=1e-4)


def test_reference_free_losses_need_no_reference_pass(tok_dir, pairs, tmp_path):
    from lmforge.finetune.run import finetune

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    result = finetune(_dpo_config(tok_dir, path, steps=4, preference={"loss": "simpo", "beta": 2.0}), tmp_path / "s")
    assert not (tmp_path / "s" / "reference").exists()
    assert "kl" not in result.val and 0 <= result.val["accuracy"] <= 1
    assert PreferenceObjective(PreferenceSettings(loss="orpo")).normalize
    assert not PreferenceObjective(PreferenceSettings(loss="dpo")).normalize


def test_a_killed_dpo_run_resumes_bit_for_bit(tok_dir, pairs, tmp_path):
    from lmforge.finetune.run import finetune

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    cfg = _dpo_config(tok_dir, path, steps=6, save_every=3, model={"tokenizer": str(tok_dir), "arch": "gpt",
                                                                  "preset": "tiny", "dropout": 0.1})

    def crash(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt  # killed after the checkpoint at step 3

    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, tmp_path / "killed", on_step=crash)
    (tmp_path / "killed" / "reference" / "val-00000.done").unlink()  # killed inside the reference pass, too
    resumed = finetune(cfg, tmp_path / "killed")
    straight = finetune(cfg, tmp_path / "straight")
    curve = lambda d: {r["step"]: r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())  # noqa: E731
                       if "loss" in r}
    assert curve(tmp_path / "killed") == curve(tmp_path / "straight")
    assert resumed.test == straight.test


def test_lora_dpo_starts_at_the_reference_and_saves_the_tuned_model(tok_dir, pairs, tmp_path):
    from lmforge.finetune.run import finetune

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    finetune(_dpo_config(tok_dir, path, steps=3, lora={"r": 4, "alpha": 8}, lr=1e-2), tmp_path / "lora")
    log = [json.loads(x) for x in (tmp_path / "lora" / "log.jsonl").read_text().splitlines()]
    curve = [r["loss"] for r in log if "loss" in r]
    assert curve[0] == pytest.approx(math.log(2), abs=1e-4)  # reference = the base with adapters off = step 1's policy
    assert curve[-1] != curve[0]
    assert json.loads((tmp_path / "lora" / "best" / "finetune.json").read_text())["trained_as"] == "preference"
