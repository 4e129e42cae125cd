"""logprobs, top_logprobs, echo and logit_bias as OpenAI defines them, checked against the model itself.

Every log-probability the server reports must equal log_softmax of the raw logits of a plain forward pass
of the same weights, computed here offline, whatever the sampling settings (temperature, top_k, bias) were.
Fields OpenAI defines and the server does not implement get a 400 naming the field, never a silent 200.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import torch
from serve_fixtures import KEY, serve_model_dir, start_server  # noqa: F401

from lmforge.serve.loading import load_generator
from lmforge.tokenize.bpe import byte_level_chars

MODEL = "peaked"
TOL = 1e-4


@pytest.fixture(scope="module")
def peaked_dir(serve_model_dir, tmp_path_factory):  # noqa: F811
    """The tiny model with its output layer scaled up: log-probabilities far apart, one token likely."""
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.train.checkpoint import save_checkpoint

    run = tmp_path_factory.mktemp("lp") / MODEL
    shutil.copytree(serve_model_dir / "tokenizer", run / "tokenizer")
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=400, block_size=256, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    save_checkpoint(model, model.config, run / "pretrain" / "checkpoint")
    return run


@pytest.fixture(scope="module")
def server(peaked_dir):
    running = start_server(peaked_dir, api_keys=[KEY])
    with httpx.Client(base_url=running.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        running.client = client
        yield running
    running.stop()


@pytest.fixture(scope="module")
def ref(peaked_dir):
    """The same weights loaded apart from the server, and the tools to score token ids with them."""
    loaded = load_generator(peaked_dir, device="cpu")
    tok = loaded.tokenizer
    byte_of = {c: b for b, c in enumerate(byte_level_chars())}
    added = {i: t.content for i, t in tok.get_added_tokens_decoder().items()}

    def token_bytes(i: int) -> bytes:
        return added[i].encode() if i in added else bytes(byte_of[c] for c in tok.id_to_token(i))

    def spell(i: int) -> str:
        raw = token_bytes(i)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    class Ref:
        pass

    r = Ref()
    r.loaded, r.tok, r.token_bytes, r.spell = loaded, tok, token_bytes, spell
    r.id_of = {spell(i): i for i in range(tok.get_vocab_size())}
    assert len(r.id_of) == tok.get_vocab_size()  # every token has its own spelling

    @torch.no_grad()
    def logprobs(ids: list[int]) -> torch.Tensor:
        """(T, V): row t is the distribution of token t+1 given ids[: t+1]."""
        logits, _ = loaded.model(torch.tensor([ids]))
        return torch.log_softmax(logits[0].double(), dim=-1)

    r.logprobs = logprobs
    r.encode = lambda text: tok.encode(text, add_special_tokens=False).ids
    return r


def _post(server, path: str, body: dict) -> dict:
    r = server.client.post(path, json={"model": MODEL, **body})
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _check_against_model(ref, context: list[int], tokens: list[str], token_logprobs: list[float],
                         tops: list[dict[str, float]] | None, k: int) -> list[int]:
    """Token by token: its log-probability and the top k alternatives equal the model's; returns the ids."""
    ids = [ref.id_of[t] for t in tokens]
    lp = ref.logprobs(context + ids)
    for i, (token, value) in enumerate(zip(ids, token_logprobs, strict=True)):
        row = lp[len(context) + i - 1]
        assert value == pytest.approx(float(row[token]), abs=TOL)
        if tops is not None:
            best = torch.topk(row, k)
            expected = {ref.spell(int(t)): float(v) for v, t in zip(best.values, best.indices, strict=True)}
            expected.setdefault(ref.spell(token), float(row[token]))
            assert tops[i].keys() == expected.keys()
            for key, v in expected.items():
                assert tops[i][key] == pytest.approx(v, abs=TOL)
    return ids


def test_completion_logprobs_are_the_models(server, ref):
    prompt = "The quick brown fox"
    body = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                             "ignore_eos": True, "logprobs": 3})
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 12 == body["usage"]["completion_tokens"]
    ids = _check_against_model(ref, ref.encode(prompt), lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], 3)
    assert max(lp["token_logprobs"]) > -1  # a peaked model: the check above compares far-apart numbers
    # text_offset: where each token starts in the choice's text
    text = body["choices"][0]["text"]
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    full = b"".join(ref.token_bytes(i) for i in ids).decode(errors="replace")
    assert text == full
    for i, offset in enumerate(lp["text_offset"]):
        assert offset == len(b"".join(ref.token_bytes(t) for t in ids[:i]).decode(errors="ignore"))


def test_sampling_settings_and_bias_do_not_change_the_reported_logprobs(server, ref):
    prompt = "def f(x):"
    favoured = ref.encode(" return")[0]
    body = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 10, "temperature": 1.7, "top_k": 5,
                                             "seed": 7, "ignore_eos": True, "logprobs": 0,
                                             "logit_bias": {str(favoured): 5}})
    lp = body["choices"][0]["logprobs"]
    _check_against_model(ref, ref.encode(prompt), lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], 0)
    assert all(len(top) == 1 for top in lp["top_logprobs"])  # logprobs 0: the chosen token only


@pytest.mark.parametrize("as_ids", [False, True])
def test_echo_gives_the_prompts_logprobs_for_evaluation_harnesses(server, ref, as_ids):
    text = "你好，世界。The function returns"
    ids = ref.encode(text)
    body = _post(server, "/v1/completions", {"prompt": ids if as_ids else text, "max_tokens": 0, "echo": True,
                                             "logprobs": 2, "temperature": 0})
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == ref.tok.decode(ids)
    assert [ref.id_of[t] for t in lp["tokens"]] == ids
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    _check_against_model(ref, ids[:1], lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:], 2)
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}


def test_lm_evaluation_harness_reads_the_loglikelihood(server, ref):
    """local-completions' own request and parser: the sum of the continuation's logprobs, and is_greedy."""
    harness = pytest.importorskip("lm_eval.models.openai_completions")
    context, continuation = ref.encode("The capital of"), ref.encode(" France is")
    api = harness.LocalCompletionsAPI.__new__(harness.LocalCompletionsAPI)  # no tokenizer or network set-up
    api.model = MODEL
    payload = api._create_payload([context + continuation], generate=False)
    assert payload["echo"] and payload["logprobs"] == 1  # what the harness asks for
    body = server.client.post("/v1/completions", json=payload).json()
    ((total, greedy),) = harness.LocalCompletionsAPI.parse_logprobs(body, ctxlens=[len(context)])
    lp = ref.logprobs(context + continuation)
    expected = [float(lp[len(context) + i - 1, t]) for i, t in enumerate(continuation)]
    assert total == pytest.approx(sum(expected), abs=TOL * len(expected))
    assert greedy == all(int(lp[len(context) + i - 1].argmax()) == t for i, t in enumerate(continuation))


def test_chat_logprobs_with_top_alternatives(server, ref):
    from lmforge.tokenize.chat import ChatEncoder

    messages = [{"role": "user", "content": "你好"}]
    body = _post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0,
                                                  "ignore_eos": True, "logprobs": True, "top_logprobs": 2})
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 8
    prompt = ChatEncoder(ref.tok, ref.loaded.chat_template).encode(messages)
    tops = [{alt["token"]: alt["logprob"] for alt in e["top_logprobs"]} for e in content]
    for e, top in zip(content, tops, strict=True):
        assert len(e["top_logprobs"]) == 2 and e["bytes"] == list(ref.token_bytes(ref.id_of[e["token"]]))
        top.setdefault(e["token"], e["logprob"])
    _check_against_model(ref, prompt, [e["token"] for e in content], [e["logprob"] for e in content], tops, 2)
    assert bytes(b for e in content for b in e["bytes"]).decode(errors="replace") == \
        body["choices"][0]["message"]["content"]

    stream = server.client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
        "logprobs": True, "top_logprobs": 2, "stream": True})
    chunks = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
    streamed = [e for c in chunks for ch in c["choices"] if ch["logprobs"] for e in ch["logprobs"]["content"]]
    assert streamed == content


def test_streamed_completion_logprobs_equal_the_whole_answer(server):
    req = {"model": MODEL, "prompt": "import os", "max_tokens": 10, "temperature": 0, "ignore_eos": True,
           "logprobs": 2, "echo": True}
    whole = _post(server, "/v1/completions", req)["choices"][0]["logprobs"]
    stream = server.client.post("/v1/completions", json={**req, "stream": True})
    parts = [json.loads(line[6:])["choices"][0]["logprobs"] for line in stream.text.splitlines()
             if line.startswith("data: {")]
    merged = {key: [v for p in parts if p for v in p[key]] for key in whole}
    assert merged == whole


def test_logit_bias_steers_sampling(server, ref):
    prompt = "The "
    greedy = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                               "ignore_eos": True, "logprobs": 0})["choices"][0]["logprobs"]
    first = ref.id_of[greedy["tokens"][0]]
    target = next(i for i in range(4, 400) if i != first)
    forced = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 1.0, "seed": 1,
                                               "ignore_eos": True, "logprobs": 0,
                                               "logit_bias": {str(target): 100}})["choices"][0]["logprobs"]
    assert [ref.id_of[t] for t in forced["tokens"]] == [target] * 4
    banned = _post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0, "ignore_eos": True,
                                               "logprobs": 0, "logit_bias": {str(first): -100}})
    assert ref.id_of[banned["choices"][0]["logprobs"]["tokens"][0]] != first


@pytest.mark.parametrize("bias", [{"abc": 1}, {"-1": 1}, {"400": 1}, {"1e2": 1}, {"5": 101}, {"5": -100.5}, {"": 1}])
def test_bad_logit_bias_is_a_400_naming_it(server, bias):
    r = server.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1,
                                                    "logit_bias": bias})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text


UNSUPPORTED = [
    ("/v1/completions", "suffix", "and then"), ("/v1/completions", "best_of", 3),
    ("/v1/completions", "frequency_penalty", 0.5), ("/v1/completions", "presence_penalty", -1),
    ("/v1/chat/completions", "tools", [{"type": "function", "function": {"name": "f"}}]),
    ("/v1/chat/completions", "tool_choice", "required"), ("/v1/chat/completions", "functions", [{"name": "f"}]),
    ("/v1/chat/completions", "function_call", "auto"),
    ("/v1/chat/completions", "response_format", {"type": "json_object"}),
    ("/v1/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
    ("/v1/chat/completions", "modalities", ["text", "audio"]),
    ("/v1/chat/completions", "prediction", {"type": "content", "content": "x"}),
    ("/v1/chat/completions", "reasoning_effort", "high"), ("/v1/chat/completions", "web_search_options", {}),
    ("/v1/chat/completions", "store", True), ("/v1/chat/completions", "frequency_penalty", 1),
]
NEUTRAL = [("/v1/completions", {"suffix": None, "best_of": 1, "frequency_penalty": 0, "presence_penalty": 0}),
           ("/v1/chat/completions", {"tools": [], "tool_choice": "none", "response_format": {"type": "text"},
                                     "modalities": ["text"], "store": False, "parallel_tool_calls": True,
                                     "frequency_penalty": 0.0})]


def _minimal(endpoint: str) -> dict:
    body = {"model": MODEL, "max_tokens": 1}
    return body | ({"prompt": "x"} if endpoint == "/v1/completions" else {"messages": [{"role": "user",
                                                                                        "content": "x"}]})


@pytest.mark.parametrize(("endpoint", "name", "value"), UNSUPPORTED)
def test_fields_that_are_not_implemented_are_refused_by_name(server, endpoint, name, value):
    r = server.client.post(endpoint, json={**_minimal(endpoint), name: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == name and name in error["message"] and error["code"] == "unsupported_parameter"


@pytest.mark.parametrize(("endpoint", "fields"), NEUTRAL)
def test_their_neutral_values_are_accepted(server, endpoint, fields):
    assert server.client.post(endpoint, json={**_minimal(endpoint), **fields}).status_code == 200


@pytest.mark.parametrize(("endpoint", "fields"), [
    ("/v1/completions", {"logprobs": 6}), ("/v1/completions", {"logprobs": -1}),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}),
    ("/v1/chat/completions", {"top_logprobs": 2})])
def test_logprobs_limits(server, endpoint, fields):
    r = server.client.post(endpoint, json={**_minimal(endpoint), **fields})
    assert r.status_code == 422 and r.json()["error"]["param"] in fields, r.text
