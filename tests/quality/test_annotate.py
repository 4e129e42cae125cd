"""`annotate` against lmforge's own server on loopback, and against a tiny scripted HTTP server for the
behaviours a real model cannot be made to show on cue (500s, 429s, a slow provider, a Chinese answer).

The tiny random model answers nonsense, so the loopback tests push its one answer token with
`logit_bias` (through `extra_body`): "3" gives a parseable score, "9" one outside the 0-5 scale.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lmforge.errors import ConfigError, UserError
from lmforge.quality.annotate import AnnotateConfig, annotate, sample_records
from lmforge.quality.rubrics import TemplateChooser, load_template, parse_score
from lmforge.records import Record, read_parquet, write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serving import make_tiny_run, start_server  # noqa: E402

SECRET = "sk-annotate-secret-7f3a9c"
SHORT = "Rate this text from 0 to 5.\n{text}\nScore:"


def docs(n: int) -> list[Record]:
    """Half English, half Chinese, each different."""
    out = []
    for i in range(n):
        text = (f"Photosynthesis lesson {i}: plants turn light, water and carbon dioxide into sugar." if i % 2 else
                f"第{i}课：光合作用是植物利用光能，把水和二氧化碳变成糖的过程。")
        out.append(Record(id=f"doc-{i}", text=text, source="test"))
    return out


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


# --------------------------------------------------------------------------- parsing and templates


@pytest.mark.parametrize(("answer", "score", "problem"), [
    ("The page explains a concept clearly.\nScore: 3", 3, None),
    ("Some reasons, score 2 would be too low.\nScore: **4**", 4, None),
    ("Rating: 5/5", 5, None),
    ("It is fine.\n4", 4, None),                          # a bare final number
    ("4 sources are cited.\nScore: 2", 2, None),          # the labelled score comes last
    ("理由：讲解清楚，有例题。\n分数：４", 4, None),          # full-width digit and colon
    ("评分：3 分", 3, None),
    ("总分为三分", 3, None),
    ("分数：2\n", 2, None),
    ("Score: 7", None, "out_of_range"),
    ("33", None, "out_of_range"),
    ("Score: 3.5", None, "not_integer"),
    ("I cannot rate this.", None, "no_score"),
    ("underscore: 3", None, "no_score"),
    ("", None, "no_score"),
])
def test_parse_score_in_english_and_chinese(answer, score, problem):
    parsed = parse_score(answer)
    assert (parsed.score, parsed.problem) == (score, problem)


def test_templates_builtin_auto_and_custom(tmp_path):
    en, zh = load_template("edu_en"), load_template("edu_zh")
    assert "{text}" in en.text and "Score: N" in en.text and "分数：N" in zh.text
    choose = TemplateChooser("auto")
    assert [choose(r).name for r in docs(2)] == ["edu_zh", "edu_en"]
    custom = tmp_path / "mine.txt"
    custom.write_text("Grade {text} {not a format field}", encoding="utf-8")
    assert load_template(str(custom)).render("X") == "Grade X {not a format field}"
    (tmp_path / "bad.txt").write_text("no placeholder", encoding="utf-8")
    with pytest.raises(ConfigError, match="no {text} placeholder"):
        load_template(str(tmp_path / "bad.txt"))
    with pytest.raises(ConfigError, match="neither a built-in rubric"):
        load_template("edu_fr")


def test_config_refuses_owned_fields_and_bad_urls():
    with pytest.raises(ValueError, match="model cannot be set here"):
        AnnotateConfig(url="http://x/v1", model="m", extra_body={"model": "other"})
    with pytest.raises(ValueError, match="http:// or https:// URL"):
        AnnotateConfig(url="127.0.0.1:8000", model="m")
    assert AnnotateConfig(url="http://x/v1/", model="m").endpoint_url() == "http://x/v1/chat/completions"


def test_sample_is_seeded_order_free_and_nested():
    records = docs(50)
    small = [r.id for r in sample_records(records, 10, seed=1)]
    assert small == [r.id for r in sample_records(reversed(records), 10, seed=1)]
    assert set(small) < {r.id for r in sample_records(records, 20, seed=1)}
    assert small != [r.id for r in sample_records(records, 10, seed=2)]


# --------------------------------------------------------------------------- lmforge's server on loopback


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny real model behind `lmforge serve`'s app, with an API key; yields (running, model name, token ids)."""
    from tokenizers import Tokenizer

    run = make_tiny_run(tmp_path_factory.mktemp("annotate") / "tiny")
    tok = Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json"))
    running = start_server(run, api_keys=[SECRET])
    yield running, "tiny", {d: tok.token_to_id(d) for d in "39"}
    running.stop()


def server_count(running, endpoint: str) -> int:
    import httpx

    text = httpx.get(f"{running.base}/metrics").text
    return int(sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(f'lmforge_requests_total{{endpoint="{endpoint}"')))


def loopback_config(served, tmp_path, **kw) -> AnnotateConfig:
    running, model, ids = served
    template = tmp_path / "short.txt"
    template.write_text(SHORT, encoding="utf-8")
    digit = kw.pop("digit", "3")
    base = {"url": f"{running.base}/v1", "model": model, "endpoint": "completions", "template": str(template),
            "max_tokens": 1, "extra_body": {"logit_bias": {str(ids[digit]): 100}}, "concurrency": 4, "sample": 10}
    return AnnotateConfig(**{**base, **kw})


def test_rates_through_lmforge_server_and_a_rerun_sends_nothing(served, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LMFORGE_ANNOTATE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "docs.jsonl"
    write_jsonl(data, docs(14))
    cfg, out = loopback_config(served, tmp_path), tmp_path / "out"
    before = server_count(served[0], "/v1/completions")
    first = annotate(cfg, data, out)
    assert server_count(served[0], "/v1/completions") - before == 10
    s = first.stats
    assert (s["sampled"], s["requests"], s["cached"], s["parsed"], s["unparsable"], s["complete"]) == \
        (10, 10, 0, 10, 0, True)
    assert s["scores"] == {"0": 0, "1": 0, "2": 0, "3": 10, "4": 0, "5": 0}
    rated = list(read_parquet(out / "shard-00000.parquet"))
    assert {r.meta["annotation"]["score"] for r in rated} == {3} and len(rated) == 10
    assert rated[0].meta["annotation"]["answer"] == "3" and rated[0].meta["annotation"]["model"] == "tiny"
    assert (out / "shard-00000.done").is_file() and not (out / "quarantine-00000.parquet").exists()

    second = annotate(cfg, data, out)
    assert server_count(served[0], "/v1/completions") - before == 10  # not one more request
    assert (second.stats["requests"], second.stats["cached"], second.stats["parsed"]) == (0, 10, 10)
    assert SECRET.encode() not in all_bytes(out) and SECRET not in caplog.text


def test_unparsable_answers_are_quarantined_with_the_answer(served, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_ANNOTATE_KEY", SECRET)
    cfg = loopback_config(served, tmp_path, digit="9", endpoint="chat", sample=4)
    before = server_count(served[0], "/v1/chat/completions")
    result = annotate(cfg, docs(6), tmp_path / "out")
    assert server_count(served[0], "/v1/chat/completions") - before == 4
    assert (result.stats["parsed"], result.stats["unparsable"]) == (0, 4)
    assert result.stats["unparsable_by_problem"] == {"out_of_range": 4}
    bad = list(read_parquet(tmp_path / "out" / "quarantine-00000.parquet"))
    assert {r.meta["drop_reason"] for r in bad} == {"annotate_unparsable"}
    assert all(r.meta["annotation"]["answer"] == "9" and r.meta["annotation"]["score"] is None for r in bad)
    assert annotate(cfg, docs(6), tmp_path / "out").stats["requests"] == 0  # unparsable answers are cached too


def test_a_wrong_key_is_an_http_error_neither_retried_nor_cached(served, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-wrong-key-000")
    cfg = loopback_config(served, tmp_path, api_key_env="MY_KEY", sample=3, retries=3, backoff=0)
    result = annotate(cfg, docs(5), tmp_path / "out")
    assert (result.stats["requests"], result.stats["http_errors"], result.stats["parsed"]) == (3, 3, 0)
    bad = list(read_parquet(tmp_path / "out" / "quarantine-00000.parquet"))
    assert {r.meta["drop_reason"] for r in bad} == {"annotate_http_error"}
    assert {r.meta["annotation"]["status"] for r in bad} == {401}
    monkeypatch.setenv("MY_KEY", SECRET)
    again = annotate(cfg, docs(5), tmp_path / "out")  # the failures were not cached: asked again, now answered
    assert (again.stats["requests"], again.stats["parsed"], again.stats["http_errors"]) == (3, 3, 0)


def test_budget_stops_cleanly_and_the_cli_resumes_without_repeating(served, tmp_path, monkeypatch, capsys):
    from lmforge.cli.main import main

    monkeypatch.setenv("LMFORGE_ANNOTATE_KEY", SECRET)
    data, out = tmp_path / "docs.jsonl", tmp_path / "out"
    write_jsonl(data, docs(12))
    running, model, ids = served
    (tmp_path / "short.txt").write_text(SHORT, encoding="utf-8")
    argv = ["quality", "annotate", str(data), "--url", f"{running.base}/v1", "--model", model, "--out", str(out),
            "--sample", "10", "--template", str(tmp_path / "short.txt"), "--endpoint", "completions",
            "--max-tokens", "1", "--concurrency", "2", "--extra-body", json.dumps({"logit_bias": {ids["3"]: 100}})]
    before = server_count(running, "/v1/completions")
    assert main(argv + ["--max-requests", "4"]) == 1
    assert server_count(running, "/v1/completions") - before == 4
    stats = json.loads((out / "annotate.json").read_text())
    assert (stats["parsed"], stats["remaining"], stats["complete"]) == (4, 6, False)
    assert main(argv) == 0
    assert server_count(running, "/v1/completions") - before == 10  # the 6 missing, none of the 4 again
    stats = json.loads((out / "annotate.json").read_text())
    assert (stats["requests"], stats["cached"], stats["parsed"], stats["complete"]) == (6, 4, 10, True)
    shown = capsys.readouterr()
    assert "10 rated" in shown.err and "stopped by the budget with 6 documents not rated" in shown.err
    assert SECRET not in shown.out + shown.err


# --------------------------------------------------------------------------- a scripted server


class Scripted:
    """An OpenAI-shaped chat endpoint on loopback that plays `script` (status codes) before answering 200."""

    def __init__(self, script=(), answer=None) -> None:
        self.script, self.seen = list(script), []
        self.answer = answer or (lambda prompt: "理由：清楚。\n分数：２" if "分数" in prompt else "Clear.\nScore: 4")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.seen.append((time.monotonic(), self.path, self.headers.get("Authorization"), body))
                status = owner.script.pop(0) if owner.script else 200
                payload = {"choices": [{"message": {"content": owner.answer(body["messages"][0]["content"])}}]} \
                    if status == 200 else {"error": {"message": f"scripted {status}"}}
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_retries_500_and_429_with_backoff_then_answers(tmp_path):
    with Scripted([500, 429]) as api:
        cfg = AnnotateConfig(url=api.url, model="m", sample=1, retries=3, backoff=0.2)
        result = annotate(cfg, docs(2)[1:], tmp_path / "out")
    assert (result.stats["requests"], result.stats["retries"], result.stats["parsed"]) == (3, 2, 1)
    times = [t for t, *_ in api.seen]
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4  # 0.2 s, then doubled


def test_retries_give_up_and_4xx_is_final(tmp_path):
    with Scripted([500, 500, 500]) as api:
        result = annotate(AnnotateConfig(url=api.url, model="m", sample=1, retries=2, backoff=0), docs(1),
                          tmp_path / "a")
    assert (result.stats["requests"], result.stats["http_errors"]) == (3, 1)
    bad = next(read_parquet(tmp_path / "a" / "quarantine-00000.parquet")).meta["annotation"]
    assert (bad["status"], bad["attempts"]) == (500, 3) and "scripted 500" in bad["error"]
    with Scripted([400]) as api:
        result = annotate(AnnotateConfig(url=api.url, model="m", sample=1, retries=2, backoff=0), docs(1),
                          tmp_path / "b")
    assert (result.stats["requests"], result.stats["http_errors"]) == (1, 1)


def test_rate_limit_spaces_requests(tmp_path):
    with Scripted() as api:
        cfg = AnnotateConfig(url=api.url, model="m", sample=6, concurrency=6, requests_per_second=10)
        t0 = time.monotonic()
        annotate(cfg, docs(6), tmp_path / "out")
        wall = time.monotonic() - t0
    times = sorted(t for t, *_ in api.seen)
    assert len(times) == 6 and times[-1] - times[0] >= 0.45  # 5 gaps of 0.1 s
    assert wall < 5


def test_auto_rubrics_truncation_key_header_and_chinese_answers(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LMFORGE_ANNOTATE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    records = docs(4) + [Record(id="long", text="a" * 5000)]
    with Scripted() as api:
        cfg = AnnotateConfig(url=api.url, model="m", sample=None, max_chars=300, extra_body={"top_p": 0.5})
        result = annotate(cfg, records, tmp_path / "out")
    assert result.stats["templates"] == {"edu_zh": 2, "edu_en": 3}
    assert result.stats["scores"]["2"] == 2 and result.stats["scores"]["4"] == 3  # 分数：２ and Score: 4
    bodies = [body for *_, body in api.seen]
    assert {h for _, _, h, _ in api.seen} == {f"Bearer {SECRET}"}
    assert all(b["top_p"] == 0.5 and b["model"] == "m" and b["temperature"] == 0 for b in bodies)
    long_prompt = next(b["messages"][0]["content"] for b in bodies if "aaaa" in b["messages"][0]["content"])
    assert "a" * 300 in long_prompt and "a" * 301 not in long_prompt
    assert SECRET.encode() not in all_bytes(tmp_path / "out") and SECRET not in caplog.text


def test_recipe_step_writes_run_annotate_and_a_spent_budget_stops_the_run(tmp_path):
    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import parse_recipe

    write_jsonl(tmp_path / "docs.jsonl", docs(8))
    body = {"input": {"files": ["docs.jsonl"]}, "report": {"enabled": False},
            "annotate": {"model": "m", "sample": 5, "max_requests": 2}}
    with Scripted() as api:
        body["annotate"]["url"] = api.url
        for left in (3, 1):  # each attempt spends its budget of 2 requests, then stops the run
            with pytest.raises(UserError, match=f"{left} of 5 documents not rated"):
                run_recipe(parse_recipe(body), tmp_path / "run", base_dir=tmp_path)
            assert not (tmp_path / "run" / "steps" / "annotate.done").exists()
        result = run_recipe(parse_recipe(body), tmp_path / "run", base_dir=tmp_path)
    assert len(api.seen) == 5  # each document asked once over the three attempts
    assert (result.steps["annotate"]["parsed"], result.steps["annotate"]["cached"]) == (5, 4)
    assert len(list(read_parquet(tmp_path / "run" / "annotate" / "shard-00000.parquet"))) == 5


def test_a_duplicate_document_is_asked_once(tmp_path):
    records = docs(3) + [Record(id="doc-0", text=docs(1)[0].text)]
    with Scripted() as api:
        result = annotate(AnnotateConfig(url=api.url, model="m", sample=None), records, tmp_path / "out")
    assert len(api.seen) == 3 and result.stats["parsed"] == 4


def test_cache_shards_are_merged_and_reloaded(tmp_path):
    from lmforge.quality.answers import COMPACT_AT, AnswerCache

    cache = AnswerCache(tmp_path, flush_every=1)
    for i in range(COMPACT_AT + 8):
        cache.add(f"k{i}", f"Score: {i % 6}", f"doc-{i}", "m", "edu_en")
    assert len(cache.shards()) == COMPACT_AT + 8
    cache.compact()
    assert len(cache.shards()) == 1
    again = AnswerCache(tmp_path)
    assert len(again) == COMPACT_AT + 8 and again.get("k7") == "Score: 1"
