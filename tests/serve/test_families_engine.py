"""lmforge's engine and server on imported open-weight families: the same greedy tokens as `transformers`.

The engine batches requests of different lengths in one slot cache (each row at its own length),
stores only the key/value heads of a grouped-query model, masks keys outside a sliding window,
and routes MoE tokens per step; none of that may change a single token.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmforge.models.hf import import_gpt_hf
from lmforge.serve.cache import SlotCache
from lmforge.serve.generate import generate_batch
from lmforge.serve.sampling import SamplingParams

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
sys.path.insert(0, str(Path(__file__).parent))
from hf_families import PROMPTS, hf_model  # noqa: E402


@pytest.mark.parametrize("case", ["qwen2-window", "mistral-linear", "qwen3-moe", "llama-bias-mqa"])
def test_batched_engine_decodes_like_transformers(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path)
    model = import_gpt_hf(tmp_path)
    params = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    results = generate_batch(model, None, PROMPTS, params, stop_ids=[], slots=4)
    for prompt, [completion] in zip(PROMPTS, results, strict=True):
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=16, min_new_tokens=16, do_sample=False)
        assert completion.token_ids == theirs[0, len(prompt):].tolist()


def test_slot_cache_holds_only_the_key_value_heads(tmp_path):
    hf_model("llama-bias-mqa").save_pretrained(tmp_path)  # 4 query heads, 1 key/value head
    model = import_gpt_hf(tmp_path)
    cache = SlotCache(model, slots=3, max_len=32)
    assert cache.k.shape == (2, 3, 1, 32, 16)


def llama3_dir(root: Path) -> Path:
    """A Llama 3 style directory: random weights, a byte-level BPE with Llama 3's special tokens and chat
    template in tokenizer_config.json, eos ids in generation_config.json."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["You are a helpful assistant.", "What is 2+2? 用中文回答。", "The answer is four."] * 30
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=0, eos_token_id=[1, 4])
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root)
    tok.save(str(root / "tokenizer.json"))
    template = (Path(__file__).parent / "fixtures" / "llama3_1_instruct.jinja").read_text(encoding="utf-8")
    (root / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": template, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "tokenizer_class": "PreTrainedTokenizerFast"}), encoding="utf-8")
    return root


def test_openai_server_chats_with_an_imported_llama3_using_its_own_template(tmp_path):
    import httpx
    import serving

    model_dir = llama3_dir(tmp_path / "llama3")
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is 2+2? <|eot_id|>"}]
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = hf_tok.apply_chat_template([messages[0], {"role": "user", "content": "What is 2+2? "}],
                                      add_generation_prompt=True, tokenize=False)
    expected = hf_tok(text, add_special_tokens=False).input_ids
    running = serving.start_server(model_dir, api_keys=[serving.KEY])
    try:
        body = {"model": "llama3", "messages": messages, "max_tokens": 6, "temperature": 0}
        reply = httpx.post(f"{running.base}/v1/chat/completions", json=body, timeout=60,
                           headers={"Authorization": f"Bearer {serving.KEY}"})
    finally:
        running.stop()
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    # the template's own <|begin_of_text|> and headers are control tokens; the user's "<|eot_id|>" is text,
    # so the prompt is longer than the same chat without it by that text's pieces, never by one control token
    assert usage["prompt_tokens"] > len(expected) + 1
    assert expected[0] == 0 and usage["completion_tokens"] <= 6


def test_max_model_len_caps_the_kv_cache_and_the_prompts_it_takes(tmp_path):
    import httpx
    import serving

    running = serving.start_server(llama3_dir(tmp_path / "llama3"), max_model_len=24)
    try:
        engine = running.service.backend.engine
        assert engine.max_len == 24 and engine.cache.k.shape[3] == 24  # not the model's 256 positions
        body = {"model": "llama3", "prompt": list(range(10, 40)), "max_tokens": 2}
        too_long = httpx.post(f"{running.base}/v1/completions", json=body, timeout=60)
        fits = httpx.post(f"{running.base}/v1/completions", json={**body, "prompt": list(range(10, 20))}, timeout=60)
    finally:
        running.stop()
    assert too_long.status_code == 400 and "24" in too_long.json()["error"]["message"]
    assert fits.status_code == 200 and fits.json()["usage"]["prompt_tokens"] == 10
