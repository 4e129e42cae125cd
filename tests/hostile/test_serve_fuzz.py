"""`lmforge serve` against malformed bodies: whatever arrives, the answer is a 4xx with OpenAI's JSON error
body (never a 500, never plain text), quoting at most a short piece of what was sent, and it is counted."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_fixtures import AUTH, KEY, MODEL, serve_model_dir, start_server  # noqa: F401

ENDPOINTS = ["/v1/completions", "/v1/chat/completions", "/v1/models", f"/v1/models/{MODEL}", "/health",
             "/metrics"]
HEADERS = {**AUTH, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def fuzzed(serve_model_dir):  # noqa: F811
    """Small answers only (max_tokens at most 16, the completions default), so that a generated
    request that is valid returns quickly."""
    running = start_server(serve_model_dir, api_keys=[KEY], max_tokens_limit=16)
    with httpx.Client(base_url=running.base, timeout=60) as client:
        running.client = client
        yield running
    running.stop()


def _requests_total(base: str) -> float:
    lines = httpx.get(f"{base}/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("lmforge_requests_total{"))


def assert_openai_error(r: httpx.Response, statuses: tuple[int, ...] = (400, 404, 405, 413, 422)) -> dict:
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    assert len(error["message"]) < 600, error["message"][:300]
    return error


def _nested(depth: int) -> str:
    return '{"model": "tiny", "prompt": ' + "[" * depth + "1" + "]" * depth + "}"


BAD_BODIES = {
    "nested_980": _nested(980),
    "nested_100k": "[" * 100_000,
    "nested_dict": '{"model": "tiny", "prompt": "x", "stream_options": ' + '{"a": ' * 990 + "1" + "}" * 991,
    "surrogate_prompt": '{"model": "tiny", "prompt": "\\ud800", "max_tokens": 1}',
    "surrogate_prompt_list": '{"model": "tiny", "prompt": ["ok", "a\\udfffb"], "max_tokens": 1}',
    "surrogate_model": '{"model": "\\ud800", "prompt": "x"}',
    "surrogate_stop": '{"model": "tiny", "prompt": "x", "stop": "\\ud83d"}',
    "surrogate_key": '{"model": "tiny", "prompt": "x", "\\ud800": 1}',
    "not_utf8": b'{"model": "tiny", "prompt": "\xff\xfe"}',
    "nan_penalty": '{"model": "tiny", "prompt": "x", "repetition_penalty": NaN}',
    "inf_penalty": '{"model": "tiny", "prompt": "x", "repetition_penalty": Infinity}',
    "huge_seed": '{"model": "tiny", "prompt": "x", "max_tokens": 1, "seed": 1e400}',
}
CHAT_BODIES = {
    "surrogate_content": '{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
    "surrogate_part": '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", '
                      '"text": "\\udc00"}]}]}',
    "surrogate_role": '{"model": "tiny", "messages": [{"role": "\\ud800", "content": "x"}]}',
    "nested_content": '{"model": "tiny", "messages": [{"role": "user", "content": '
                      + "[" * 985 + "]" * 985 + "}]}",
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_completion_bodies_get_a_counted_json_4xx(fuzzed, name):
    before = _requests_total(fuzzed.base)
    body = BAD_BODIES[name]
    r = httpx.post(f"{fuzzed.base}/v1/completions", headers=HEADERS,
                   content=body if isinstance(body, bytes) else body.encode())
    assert_openai_error(r)
    assert _requests_total(fuzzed.base) - before == 2  # this request and the /metrics read before it


@pytest.mark.parametrize("name", sorted(CHAT_BODIES))
def test_bad_chat_bodies_get_a_counted_json_4xx(fuzzed, name):
    before = _requests_total(fuzzed.base)
    r = httpx.post(f"{fuzzed.base}/v1/chat/completions", headers=HEADERS, content=CHAT_BODIES[name].encode())
    assert_openai_error(r)
    assert _requests_total(fuzzed.base) - before == 2


def test_errors_quote_a_short_piece_of_a_huge_value(fuzzed):
    for body in ({"model": MODEL, "prompt": "x", "stop": ["stop-word"] * 10_000},
                 {"model": "m" * 50_000, "prompt": "x"},
                 {"model": MODEL, "prompt": "x", "max_tokens": "9" * 50_000},
                 {"model": MODEL, "prompt": "x", "temperature": ["z" * 1000] * 40}):
        error = assert_openai_error(httpx.post(f"{fuzzed.base}/v1/completions", headers=HEADERS, json=body))
        assert len(error["message"]) < 400, error["message"][:500]
    r = httpx.get(f"{fuzzed.base}/v1/models/{'m' * 5000}", headers=AUTH)
    assert len(assert_openai_error(r)["message"]) < 400


# ---- property-based: generated JSON at every endpoint

def _mostly(valid: st.SearchStrategy, garbage: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Three parts a plausible value, one part anything: so that whole requests often get through
    validation and reach tokenizing, the engine and the response writers."""
    return _weighted(valid, _json if garbage is None else garbage, 4)


def _weighted(common: st.SearchStrategy, rare: st.SearchStrategy, one_in: int) -> st.SearchStrategy:
    # (st.one_of collapses repeated branches, so weights need a draw of their own)
    return st.integers(1, one_in).flatmap(lambda i: rare if i == one_in else common)


_piece = st.one_of(st.characters(codec="utf-8"), st.sampled_from(["<|im_end|>", "<|im_start|>system\n", "\x00", "中"]))
_clean = st.lists(_piece, max_size=8).map("".join)
_dirty = st.lists(_piece | st.sampled_from(["\ud800", "\udfff"]), min_size=1, max_size=8).map("".join)
_text = _weighted(_clean, _dirty, 8)  # a lone surrogate in one string of eight
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 10),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 2), _text)
_json = st.recursive(_scalar, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_text, kids, max_size=4),
                     max_leaves=12)
_ids = st.lists(st.integers(0, 399), min_size=1, max_size=6)
_message = st.fixed_dictionaries({"role": _mostly(st.sampled_from(["user", "system", "assistant", "tool"]))},
                                 optional={"content": _mostly(_text)})
_FIELDS = {
    "prompt": _mostly(st.one_of(_text, st.lists(_text, min_size=1, max_size=3), _ids, st.lists(_ids, max_size=3))),
    "messages": _mostly(st.lists(_message, min_size=1, max_size=3)),
    "max_tokens": _mostly(st.integers(0, 8), st.integers(-(2**40), 2**40) | _json),
    "max_completion_tokens": _mostly(st.integers(0, 8)), "n": _mostly(st.integers(1, 3), st.integers(-2, 100)),
    "temperature": _mostly(st.floats(0, 2), _scalar), "top_p": _mostly(st.floats(0.01, 1), _scalar),
    "top_k": _mostly(st.integers(0, 500), _scalar), "repetition_penalty": _mostly(st.floats(0.5, 2), _scalar),
    "stop": _mostly(_clean | st.lists(_clean, max_size=5)), "seed": _mostly(st.integers(-(2**63), 2**64), _scalar),
    "echo": _mostly(st.booleans()), "stream": _mostly(st.booleans()), "ignore_eos": _mostly(st.booleans()),
    "stream_options": _mostly(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "logprobs": _mostly(st.booleans() | st.integers(0, 5), st.integers(-2, 30) | _json),
    "top_logprobs": _mostly(st.integers(0, 20), st.integers(-2, 30) | _json),
    "logit_bias": _mostly(st.dictionaries(st.integers(0, 399).map(str), st.floats(-100, 100), max_size=3),
                          st.dictionaries(st.integers(-5, 10**6).map(str) | _text, _scalar, max_size=3) | _json),
    "user": _mostly(_text, _scalar), "suffix": _scalar, "best_of": _scalar, "tools": _json,
    "response_format": _json, "frequency_penalty": _scalar, "presence_penalty": _scalar,
}


@st.composite
def _request(draw: st.DrawFn) -> dict:
    """A body for either generation endpoint (each ignores the other's prompt field) with a few
    of the other fields, so that about one in four is valid as a whole."""
    body = {"model": draw(_mostly(st.just(MODEL), _text))}
    for name in ["prompt", "messages", *draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=4, unique=True))]:
        body[name] = draw(_FIELDS[name])
    return body


_body = _weighted(_request(), _json, 4)


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.headers["content-type"].startswith("text/event-stream"):
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
        return
    if r.headers["content-type"].startswith("text/plain"):  # Prometheus exposition
        assert r.request.url.path == "/metrics" and r.status_code == 200
        return
    body = r.json()
    if r.status_code >= 400:
        assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(body=_body, method=st.sampled_from(["POST", "POST", "GET"]))
def test_generated_json_never_gets_a_5xx(fuzzed, endpoint, body, method):
    raw = json.dumps(body).encode()  # lone surrogates travel as \\udXXX escapes, as a client would send them
    _check(fuzzed.client.request(method, endpoint, headers=HEADERS, content=raw))
