from __future__ import annotations

import pydoc_data.topics

import pytest
import torch

from lmforge.errors import ConfigError, InputError, UserError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.serve.generate import GenerationConfig, generate, generate_tokens, load_for_generation
from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer
from lmforge.train.checkpoint import save_checkpoint

VOCAB = 300


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    texts = list(pydoc_data.topics.topics.values())[:10] + ["你好，世界。今天我们学习语言模型。"] * 10
    return train_tokenizer(texts, TokenizerConfig(vocab_size=VOCAB), tmp_path_factory.mktemp("tok"))


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides}
    return GPT(GPTConfig(**cfg)).eval()


def greedy_without_cache(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The reference: re-run the whole (cropped) context every step, as nanoGPT does."""
    ids = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-model.config.block_size :]]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_temperature_zero_is_greedy_even_past_the_context_window(pos):
    model = make_model(pos=pos)
    cfg = GenerationConfig(max_new_tokens=30, temperature=0.0, stop_at_eos=False)
    # 3 + 30 tokens overflows block_size=16, exercising the cache restart
    assert generate_tokens(model, [5, 17, 42], cfg, eos_id=None) == greedy_without_cache(
        model, [5, 17, 42], 30
    )


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = make_model()
    greedy = greedy_without_cache(model, [1, 2, 3], 10)
    for cfg in (
        GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=1, stop_at_eos=False),
        GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=0, top_p=1e-6, stop_at_eos=False),
    ):
        assert generate_tokens(model, [1, 2, 3], cfg, eos_id=None) == greedy


def test_sampling_is_reproducible_for_a_seed():
    model = make_model()
    cfg = GenerationConfig(max_new_tokens=25, temperature=1.5, top_k=0, stop_at_eos=False)
    a = generate_tokens(model, [7, 8], cfg, eos_id=None)
    b = generate_tokens(model, [7, 8], cfg, eos_id=None)
    c = generate_tokens(model, [7, 8], GenerationConfig(**{**cfg.__dict__, "seed": 1}), eos_id=None)
    assert a == b
    assert a != c
    assert len(a) == 25 and all(0 <= t < VOCAB for t in a)


def test_top_k_restricts_samples_to_the_k_most_likely_tokens():
    model = make_model()
    logits, _ = model(torch.tensor([[9, 9, 9]]))
    top3 = set(torch.topk(logits[0, -1], 3).indices.tolist())
    picks = {
        generate_tokens(
            model, [9, 9, 9], GenerationConfig(max_new_tokens=1, temperature=5.0, top_k=3, seed=s), None
        )[0]
        for s in range(30)
    }
    assert picks <= top3 and len(picks) > 1


def test_generation_stops_at_eos_and_omits_it():
    model = make_model()
    greedy = greedy_without_cache(model, [4, 5], 8)
    stop = greedy[3]
    first = greedy.index(stop)
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.0)
    assert generate_tokens(model, [4, 5], cfg, eos_id=stop) == greedy[:first]
    assert generate_tokens(model, [4, 5], GenerationConfig(max_new_tokens=0), eos_id=None) == []


def test_empty_prompt_starts_from_eos_or_fails_clearly():
    model = make_model()
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.0, stop_at_eos=False)
    assert generate_tokens(model, [], cfg, eos_id=0) == greedy_without_cache(model, [0], 5)
    with pytest.raises(UserError, match="empty prompt"):
        generate_tokens(model, [], cfg, eos_id=None)


def test_generation_leaves_model_mode_unchanged():
    model = make_model().train()
    generate_tokens(model, [1], GenerationConfig(max_new_tokens=2), eos_id=None)
    assert model.training


def test_generate_returns_only_the_continuation_text(tok_dir, tmp_path):
    model = make_model()
    ckpt = save_checkpoint(model, model.config, tmp_path / "ckpt")
    loaded, tok = load_for_generation(ckpt, tok_dir)
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.0, stop_at_eos=False)
    prompts = ["def f(x):", "你好"]
    texts = generate(loaded, tok, prompts, cfg)
    assert len(texts) == 2
    for prompt, text in zip(prompts, texts, strict=True):
        ids = tok.encode(prompt, add_special_tokens=False).ids
        expected = greedy_without_cache(model, ids, 12)
        assert text == tok.decode(expected, skip_special_tokens=True)
        assert not text.startswith(prompt)
    assert generate(loaded, tok, prompts, cfg) == texts
    assert eos_id(tok) == 0


def test_load_for_generation_rejects_a_mismatched_tokenizer(tok_dir, tmp_path):
    small = make_model(vocab_size=100)
    ckpt = save_checkpoint(small, small.config, tmp_path / "ckpt")
    with pytest.raises(InputError, match="tokenizer"):
        load_for_generation(ckpt, tok_dir)
    with pytest.raises(InputError, match="nope"):
        load_for_generation(tmp_path / "nope", tok_dir)
    assert load_tokenizer(tok_dir).get_vocab_size() == VOCAB


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": -5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_generation_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**kwargs)
