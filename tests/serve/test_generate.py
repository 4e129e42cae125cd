from __future__ import annotations

import pydoc_data.topics

import pytest
import torch

from lmforge.errors import ConfigError, InputError, UserError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.serve.generate import generate, generate_batch, generate_tokens, load_for_generation, stream
from lmforge.serve.sampling import SamplingParams, apply_repetition_penalty
from lmforge.tokenize.bpe import TokenizerConfig, eos_id, load_tokenizer, train_tokenizer
from lmforge.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 300


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    texts = list(pydoc_data.topics.topics.values())[:10] + ["你好，世界。今天我们学习语言模型。"] * 10
    return train_tokenizer(texts, TokenizerConfig(vocab_size=VOCAB), tmp_path_factory.mktemp("tok"))


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = {"vocab_size": VOCAB, "block_size": 48, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides}
    return GPT(GPTConfig(**cfg)).eval()


def greedy_without_cache(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The reference: re-run the whole context every step, as nanoGPT does."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


GREEDY = SamplingParams(max_new_tokens=20, temperature=0.0)


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_greedy_with_the_slot_cache_equals_recomputing_everything(pos):
    model = make_model(pos=pos)
    assert generate_tokens(model, [5, 17, 42], GREEDY, eos_id=None) == greedy_without_cache(model, [5, 17, 42], 20)


def test_batched_prompts_of_different_lengths_match_one_at_a_time():
    """Six prompts through two slots: requests join and leave the running batch at different steps."""
    model = make_model()
    prompts = [[1], [2, 3, 4, 5, 6, 7, 8], [9, 10], [11] * 12, [13, 14, 15], [250, 251, 252, 253]]
    params = SamplingParams(max_new_tokens=15, temperature=0.0)
    for slots in (2, 8):
        got = generate_batch(model, None, prompts, params, slots=slots)
        for prompt, completions in zip(prompts, got, strict=True):
            assert completions[0].token_ids == greedy_without_cache(model, prompt, 15)
            assert completions[0].finish_reason == "length"


def test_top_k_one_and_a_tiny_top_p_are_greedy():
    model = make_model()
    greedy = generate_tokens(model, [1, 2, 3], SamplingParams(max_new_tokens=10, temperature=0.0), None)
    for params in (SamplingParams(max_new_tokens=10, temperature=1.0, top_k=1),
                   SamplingParams(max_new_tokens=10, temperature=1.0, top_p=1e-6)):
        assert generate_tokens(model, [1, 2, 3], params, eos_id=None) == greedy


def test_a_seed_repeats_a_sample_whatever_shares_the_batch():
    model = make_model()
    params = SamplingParams(max_new_tokens=25, temperature=1.5, seed=7)
    alone = generate_tokens(model, [7, 8], params, eos_id=None)
    assert generate_tokens(model, [7, 8], params, eos_id=None) == alone
    crowd = generate_batch(model, None, [[1, 2, 3], [7, 8], [40] * 9], params, slots=3)
    assert crowd[1][0].token_ids == alone
    other = generate_tokens(model, [7, 8], SamplingParams(max_new_tokens=25, temperature=1.5, seed=8), None)
    assert other != alone


def test_n_samples_share_a_prompt_but_differ():
    model = make_model()
    (samples,) = generate_batch(model, None, [[3, 4, 5]], SamplingParams(max_new_tokens=12, temperature=1.2,
                                                                           n=4, seed=1), slots=2)
    assert len(samples) == 4
    assert len({tuple(s.token_ids) for s in samples}) == 4
    assert all(len(s.token_ids) == 12 for s in samples)


def test_top_k_draws_only_from_the_k_most_likely():
    model = make_model()
    with torch.no_grad():
        logits, _ = model(torch.tensor([[9, 9, 9]]))
    top3 = set(torch.topk(logits[0, -1], 3).indices.tolist())
    drawn = {generate_tokens(model, [9, 9, 9], SamplingParams(max_new_tokens=1, temperature=5.0, top_k=3, seed=s),
                             None)[0] for s in range(60)}
    assert drawn <= top3 and len(drawn) == 3


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    ids = torch.randint(0, 50, (3, 7))
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter(1, ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.full((3, 1), 1.3))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    assert torch.equal(ours, theirs)


def test_generation_stops_at_the_end_token_and_handles_edges():
    model = make_model()
    greedy = generate_tokens(model, [4, 5], SamplingParams(max_new_tokens=8, temperature=0.0), None)
    stop = greedy[3]
    first = greedy.index(stop)
    assert generate_tokens(model, [4, 5], SamplingParams(max_new_tokens=8, temperature=0.0), stop) == greedy[:first]
    assert generate_tokens(model, [4, 5], SamplingParams(max_new_tokens=0), eos_id=None) == []
    # An empty prompt starts from the end-of-text token, like every training document.
    ref = greedy_without_cache(model, [0], 5)
    expected = ref[: ref.index(0)] if 0 in ref else ref
    assert generate_tokens(model, [], SamplingParams(max_new_tokens=5, temperature=0.0), eos_id=0) == expected
    with pytest.raises(UserError, match="empty prompt"):
        generate_tokens(model, [], SamplingParams(max_new_tokens=5), eos_id=None)


def test_a_prompt_longer_than_the_context_keeps_its_end():
    model = make_model(block_size=16)
    prompt = list(range(1, 31))
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    assert generate_tokens(model, prompt, params, None) == greedy_without_cache(model, prompt[-10:], 6)


def test_generation_leaves_model_mode_unchanged():
    model = make_model().train()
    generate_tokens(model, [1], SamplingParams(max_new_tokens=2), eos_id=None)
    assert model.training


def test_text_generation_stop_strings_and_streaming(tok_dir, tmp_path):
    model = make_model()
    ckpt = save_checkpoint(model, model.config, tmp_path / "ckpt")
    loaded, tok = load_for_generation(ckpt, tok_dir)
    params = SamplingParams(max_new_tokens=30, temperature=0.0, ignore_eos=True)
    prompts = ["def f(x):", "你好"]
    texts = generate(loaded, tok, prompts, params)
    for prompt, text in zip(prompts, texts, strict=True):
        expected = greedy_without_cache(model, tok.encode(prompt, add_special_tokens=False).ids, 30)
        assert text == tok.decode(expected, skip_special_tokens=True)
        assert "".join(stream(loaded, tok, prompt, params)) == text
    # Cut at a stop string taken from the middle of the greedy text; the stop itself is not returned.
    text = texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    (c,) = generate_batch(loaded, tok, [prompts[0]], SamplingParams(**{**params.__dict__, "stop": [stop]}))[0:1]
    assert c[0].text == text[: text.index(stop)] and c[0].finish_reason == "stop"
    streamed = "".join(stream(loaded, tok, prompts[0], SamplingParams(**{**params.__dict__, "stop": [stop]})))
    assert streamed == c[0].text
    assert eos_id(tok) == 0


def test_streamed_pieces_never_split_a_character():
    from lmforge.serve.detok import IncrementalText

    class ByteTok:  # one token per UTF-8 byte: the worst case for Chinese
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    text = "你好，世界 END 再见"
    inc = IncrementalText(ByteTok(), stop=["END"])
    pieces = []
    for b in text.encode():
        delta, stopped = inc.add(b)
        pieces.append(delta)
        if stopped:
            break
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "你好，世界 "


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
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"n": 0}, "n"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_sampling_params_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**kwargs)
