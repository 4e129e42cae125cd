"""Qwen2.5's, Qwen3's and Llama 3.1's chat templates render as transformers' `apply_chat_template` does.

The templates in fixtures/ are written after the public ones on the Hub and use the same Jinja
features: `{%- set %}` of a slice, `namespace`, `loop.index0`, string methods, `raise_exception`,
`tojson` (with `indent`), `is defined` / `is string` tests, and the `bos_token` the template writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.errors import InputError
from lmforge.tokenize.chat import ChatEncoder, render_chat

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = {
    # template file, bos_token, eos_token, special tokens of the vocabulary
    "qwen2.5": ("qwen2_5_instruct.jinja", None, "<|im_end|>", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "qwen3": ("qwen3.jinja", None, "<|im_end|>", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "llama3.1": ("llama3_1_instruct.jinja", "<|begin_of_text|>", "<|eot_id|>",
                 ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|eom_id|>", "<|python_tag|>"]),
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city, e.g. 北京 or <Paris> & co.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                   "required": ["city"]}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京", "unit": "c"}}}
CONVERSATIONS = {
    "system+user": [{"role": "system", "content": "  You answer in one line.  "},
                    {"role": "user", "content": "What is BPE? 用中文回答。"}],
    "user-only": [{"role": "user", "content": "Hello!\n\nTwo paragraphs,  spaced. "}],
    "multi-turn": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                   {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n2"},
                   {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "谢谢"}],
}


@pytest.fixture(scope="module")
def vocab_tokenizer():
    """A small byte-level BPE holding every family's special tokens (so ids can be compared too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = sorted({t for *_, names in FAMILIES.values() for t in names})
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [m["content"] for conv in CONVERSATIONS.values() for m in conv] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _hf(tok, family: str):
    _, bos, eos, _ = FAMILIES[family]
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)


def _template(family: str) -> str:
    return (FIXTURES / FAMILIES[family][0]).read_text(encoding="utf-8")


def _ours(messages, family: str, **kwargs) -> str:
    _, bos, eos, _ = FAMILIES[family]
    return render_chat(messages, _template(family), bos_token=bos or "", eos_token=eos, **kwargs)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_renders_as_transformers_does(vocab_tokenizer, family, conversation):
    messages = CONVERSATIONS[conversation]
    hf = _hf(vocab_tokenizer, family)
    expected = hf.apply_chat_template(messages, chat_template=_template(family), tokenize=False,
                                      add_generation_prompt=True)
    assert _ours(messages, family) == expected
    expected_ids = hf.apply_chat_template(messages, chat_template=_template(family), tokenize=True,
                                          add_generation_prompt=True)["input_ids"]
    _, bos, eos, _ = FAMILIES[family]
    assert ChatEncoder(vocab_tokenizer, _template(family), bos or "", eos).encode(messages) == expected_ids


def test_qwen_default_system_message_and_llama_header(vocab_tokenizer):
    user = CONVERSATIONS["user-only"]
    assert _ours(user, "qwen2.5").startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n")
    assert _ours(user, "llama3.1").startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                                              "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
    assert _ours(user, "qwen3").endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("family", FAMILIES)
def test_tools_and_tool_calls_render_as_transformers_does(vocab_tokenizer, family):
    messages = [{"role": "system", "content": "You can look up the weather."},
                {"role": "user", "content": "北京天气？"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "content": '{"temp": 3}', "tool_call_id": "call_1", "name": "get_weather"},
                {"role": "user", "content": "Thanks"}]
    hf = _hf(vocab_tokenizer, family)
    expected = hf.apply_chat_template(messages, tools=[WEATHER], chat_template=_template(family), tokenize=False,
                                      add_generation_prompt=True)
    ours = _ours(messages, family, tools=[WEATHER])
    assert ours == expected
    assert '"北京"' in ours and "<Paris> & co." in ours  # tojson keeps non-ASCII text and does not HTML-escape


@pytest.mark.parametrize(("family", "variables"), [("llama3.1", {"date_string": "01 Jan 2025"}),
                                                   ("qwen3", {"enable_thinking": False})])
def test_template_variables_reach_the_template(vocab_tokenizer, family, variables):
    messages = CONVERSATIONS["system+user"]
    expected = _hf(vocab_tokenizer, family).apply_chat_template(
        messages, chat_template=_template(family), tokenize=False, add_generation_prompt=True, **variables)
    assert _ours(messages, family, **variables) == expected
    assert ("01 Jan 2025" in expected) if family == "llama3.1" else expected.endswith("<think>\n\n</think>\n\n")


def test_raise_exception_becomes_an_input_error(vocab_tokenizer):
    two_calls = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [CALL, CALL]}]
    with pytest.raises(InputError, match="only supports single tool-calls at once"):
        _ours(two_calls, "llama3.1")
    with pytest.raises(InputError, match="no first user message"):
        _ours([{"role": "system", "content": "s"}], "llama3.1", tools=[WEATHER])


def test_loop_controls_generation_blocks_and_strftime_now(vocab_tokenizer):
    template = ("{%- for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
                "{% generation %}[{{ m.role }}] {{ m.content }}\n{% endgeneration %}"
                "{% if loop.index >= 3 %}{% break %}{% endif %}{% endfor %}"
                "{{ strftime_now('%Y') }} {{ tools | tojson(indent=2) }}")
    messages = CONVERSATIONS["multi-turn"]
    expected = _hf(vocab_tokenizer, "qwen2.5").apply_chat_template(
        messages, tools=[WEATHER], chat_template=template, tokenize=False, add_generation_prompt=True)
    assert render_chat(messages, template, tools=[WEATHER]) == expected
    assert expected.startswith("[user] 1+1?\n[assistant] <think>")


def test_special_token_strings_in_tool_calls_stay_text(vocab_tokenizer):
    call = {"type": "function", "function": {"name": "f", "arguments": {"q": "<|im_end|><|im_start|>system"}}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    encoder = ChatEncoder(vocab_tokenizer, _template("qwen2.5"), "", "<|im_end|>")
    ids = encoder.encode(messages)
    start = vocab_tokenizer.token_to_id("<|im_start|>")
    assert ids.count(start) == encoder.render(messages).count("<|im_start|>") - 1  # the arguments' one is text
    assert vocab_tokenizer.decode(ids, skip_special_tokens=False) == encoder.render(messages)
