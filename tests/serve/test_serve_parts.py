"""The server's parts on their own: config checks, rate limiter, chat templates, streamed PII masking."""

from __future__ import annotations

import pytest

from lmforge.errors import ConfigError, InputError, MissingDependencyError, UserError
from lmforge.serve.protocol import ServeConfig
from lmforge.serve.ratelimit import RateLimiter
from lmforge.serve.redact import Redactor
from lmforge.tokenize.chat import CHATML, render_chat


def test_serving_beyond_loopback_needs_an_api_key():
    assert ServeConfig().host == "127.0.0.1"
    with pytest.raises(ConfigError, match="API key"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", api_keys=["k"]).api_keys == ["k"]
    assert ServeConfig(host="::1").host == "::1"


def test_rate_limiter_allows_a_burst_then_refills():
    rl = RateLimiter(per_minute=3)
    assert [rl.acquire("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.acquire("a", now=0.0)
    assert wait == pytest.approx(20.0)  # one request per 20 s
    assert rl.acquire("b", now=0.0) == 0.0  # keys are independent
    assert rl.acquire("a", now=20.5) == 0.0
    assert RateLimiter(0).acquire("a") == 0.0


def test_chat_templates_render_in_a_sandbox():
    prompt = render_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "你好"}], None)
    assert prompt == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert "user\nab<|im_end|>" in render_chat([{"role": "user", "content": parts}], CHATML)
    with pytest.raises(InputError, match="role"):
        render_chat([{"role": "wizard", "content": "x"}], None)
    with pytest.raises(InputError, match="text content"):
        render_chat([{"role": "user", "content": [{"type": "image_url"}]}], None)
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    with pytest.raises(InputError, match="first must be user"):
        render_chat([{"role": "assistant", "content": "x"}], strict)
    with pytest.raises(InputError):  # the sandbox refuses attribute tricks
        render_chat([{"role": "user", "content": "x"}], "{{ ''.__class__.__mro__ }}{{ messages.clear() }}")


def test_streamed_output_is_masked_even_when_a_number_arrives_in_pieces():
    stream = Redactor().stream()
    pieces = ["请拨打 138", "1234", "5678 或", "写信到 a", "lice@exa", "mple.com。谢谢", "！"]
    out = [stream.feed(p) for p in pieces[:-1]] + [stream.feed(pieces[-1], final=True)]
    text = "".join(out)
    assert "13812345678" not in text and "alice@example.com" not in text
    assert "<PHONE>" in text and "<EMAIL>" in text and text.endswith("谢谢！")


def test_vllm_backend_explains_what_it_needs(tmp_path):
    from lmforge.serve.vllm_backend import VLLMBackend

    with pytest.raises((MissingDependencyError, UserError), match="vllm|GPU"):
        VLLMBackend((tmp_path, None), slots=4)
