"""The HTTP JSON API collector against a real local FastAPI app served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import collections
import gzip
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from lmforge.collect.api import ApiConfig, iter_api, parse_selector, public_url, select
from lmforge.collect.bounded import accept_encoding
from lmforge.config import validate
from lmforge.errors import ConfigError, InputError
from lmforge.records import make_id

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

ZH = ["人民日报讯，新年伊始，各地群众欢度元旦。", "这本书的内容很好，值得推荐。", "酒店的位置不错，但是隔音太差。"]
EN = ["A function definition is an executable statement.", "Names refer to objects.", "Exceptions break the flow."]
ITEMS = [
    {"id": i, "text": f"{(ZH if i % 2 else EN)[i % 3]} #{i}", "lang": "zh" if i % 2 else "en",
     "author": {"name": f"作者{i}"}, "link": f"https://example.org/doc/{i}"}
    for i in range(250)
]
TOKEN = "s3cr3t-tok3n-xyz"


class State:
    """What the server saw: request times per path, and per-key call counts for failure endpoints."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.calls: collections.Counter[str] = collections.Counter()
        self.headers: list[dict[str, str]] = []


STATE = State()


def _build_app():
    app = fastapi.FastAPI()
    JSONResponse, Response = fastapi.responses.JSONResponse, fastapi.responses.Response  # noqa: N806

    @app.middleware("http")
    async def record(request, call_next):
        STATE.times[request.url.path].append(time.monotonic())
        STATE.headers.append(dict(request.headers))
        return await call_next(request)

    def arg(request: fastapi.Request, name: str, default: int) -> int:
        return int(request.query_params.get(name, default))

    @app.get("/page")
    async def by_page(request: fastapi.Request):
        page, limit = arg(request, "page", 1), arg(request, "limit", 100)
        return {"data": ITEMS[(page - 1) * limit: page * limit], "page": page}

    @app.post("/search")
    async def search(request: fastapi.Request):
        body = await request.json()
        assert body["q"] == "书"
        page, limit = body["page"], body["limit"]
        return {"data": ITEMS[(page - 1) * limit: page * limit]}

    @app.get("/offset")
    async def by_offset(request: fastapi.Request):
        offset, limit = arg(request, "offset", 0), min(arg(request, "limit", 100), 40)  # caps page size at 40
        return {"results": {"items": ITEMS[offset: offset + limit]}}

    @app.get("/cursor")
    async def by_cursor(request: fastapi.Request):
        start = int(request.query_params.get("cursor", "c0")[1:])
        limit = arg(request, "limit", 100)
        more = start + limit < len(ITEMS)
        return {"data": ITEMS[start: start + limit], "meta": {"next cursor": f"c{start + limit}" if more else None}}

    @app.get("/link")
    async def by_link(request: fastapi.Request):
        page = arg(request, "p", 1)
        headers = {"Link": f'</link?p={page + 1}>; rel="next"'} if page * 60 < len(ITEMS) else {}
        return JSONResponse({"data": ITEMS[(page - 1) * 60: page * 60]}, headers=headers)

    @app.get("/secure")
    async def secure(request: fastapi.Request):
        given = request.headers.get("authorization", "")
        if given != f"Bearer {TOKEN}":
            return JSONResponse({"detail": f"bad credentials {given!r}"}, status_code=401)
        return {"data": ITEMS[:3]}

    @app.get("/flaky")
    async def flaky(request: fastapi.Request):
        STATE.calls["flaky"] += 1
        if STATE.calls["flaky"] <= 2:
            return JSONResponse({"error": "boom"}, status_code=500)
        return {"data": ITEMS[:5]}

    @app.get("/throttled")
    async def throttled(request: fastapi.Request):
        STATE.calls["throttled"] += 1
        if STATE.calls["throttled"] == 1:
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "0.1"})
        return {"data": ITEMS[:5]}

    @app.get("/slow")
    async def slow(request: fastapi.Request):
        STATE.calls["slow"] += 1
        if STATE.calls["slow"] == 1:
            await asyncio.sleep(1.0)
        return {"data": ITEMS[:2]}

    @app.get("/broken")
    async def broken(request: fastapi.Request):
        return Response("upstream down", status_code=503)

    @app.get("/mixed")
    async def mixed(request: fastapi.Request):
        return {"data": [
            {"id": "a", "title": "标题", "body": "正文 body"},
            {"id": "b", "title": "only a title"},
            {"id": "c", "title": 42},
            {"title": None},
            "a bare string",
            {"id": {"nested": 1}, "body": "id is an object"},
        ]}

    @app.get("/badjson")
    async def bad_json(request: fastapi.Request):
        if arg(request, "page", 1) == 1:
            return {"data": ITEMS[:10]}
        return Response(f"<html>proxy error, your header was {request.headers.get('authorization')}</html>",
                        media_type="text/html")

    @app.get("/repeat")
    async def repeat(request: fastapi.Request):
        return {"data": ITEMS[:7]}  # ignores the page parameter

    @app.get("/gzip")
    async def gzipped(request: fastapi.Request):
        body = json.dumps({"data": ITEMS[:20]}, ensure_ascii=False).encode()
        return Response(gzip.compress(body), media_type="application/json", headers={"Content-Encoding": "gzip"})

    @app.get("/big")
    async def big(request: fastapi.Request):
        STATE.calls["big"] += 1
        if arg(request, "page", 1) == 1:
            return {"data": ITEMS[:10]}
        body = json.dumps({"data": ITEMS * 4}).encode()  # about 60 kB, sent without a Content-Length
        return fastapi.responses.StreamingResponse(iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                                                   media_type="application/json")

    @app.get("/badgzip")
    async def bad_gzip(request: fastapi.Request):
        STATE.calls["badgzip"] += 1
        if arg(request, "page", 1) == 1:
            return {"data": ITEMS[:10]}
        return Response(b"\x1f\x8b\x08\x00 not really gzip", media_type="application/json",
                        headers={"Content-Encoding": "gzip"})

    @app.get("/moved")
    async def moved(request: fastapi.Request):
        return fastapi.responses.RedirectResponse(f"/page?{request.url.query}", status_code=302)

    @app.get("/loop")
    async def loop(request: fastapi.Request):
        return fastapi.responses.RedirectResponse("/loop", status_code=307)

    return app


@pytest.fixture(scope="module")
def base_url():
    server = uvicorn.Server(uvicorn.Config(_build_app(), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(autouse=True)
def fresh_state():
    global STATE
    STATE = State()


def collect(tmp_path: Path, **kwargs) -> list:
    kwargs.setdefault("rate_limit", None)
    kwargs.setdefault("backoff", 0.01)
    return list(iter_api(ApiConfig(**kwargs), tmp_path, tmp_path / "work"))


# --------------------------------------------------------------------------- selectors


def test_selector_evaluator():
    doc = {"data": [{"id": 1, "tags": ["x", "y"]}, {"id": 2, "tags": []}], "meta": {"next cursor": "abc", "n": None},
           "it's": {"ok": True}}
    assert select(doc, "$") == [doc]
    assert select(doc, "$.data[*].id") == [1, 2]
    assert select(doc, "$.data[0].tags[-1]") == ["y"]
    assert select(doc, "$.data[*].tags[0]") == ["x"]  # the empty list contributes nothing
    assert select(doc, '$.meta["next cursor"]') == ["abc"]
    assert select(doc, "$.meta['n']") == [None]  # present but null is a match
    assert select(doc, "$['it\\'s'].ok") == [True]
    assert select(doc, "$.meta.*") == ["abc", None] == select(doc, "$.meta[*]")
    assert select(doc, "$.missing.deeper") == [] == select(doc, "$.data[5]") == select(doc, "$.data.id")
    assert select([[1, 2], [3]], "$[*][*]") == [1, 2, 3]
    for bad in ("data.id", "$..id", "$.data[", "$[1:2]", "$.a[?(@.x)]", '$["unterminated]'):
        with pytest.raises(ValueError, match="selector"):
            parse_selector(bad)


def test_config_errors_name_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    with pytest.raises(ConfigError, match="url: must be an http"):
        validate(ApiConfig, {"url": "ftp://example.org/x"})
    with pytest.raises(ConfigError, match=r"items: selector 'data\[\*\]' must start with '\$'"):
        validate(ApiConfig, {"url": "http://127.0.0.1/x", "items": "data[*]"})
    with pytest.raises(ConfigError, match=r"text_field: selector"):
        validate(ApiConfig, {"url": "http://127.0.0.1/x", "text_field": ["$.a", "$..b"]})
    with pytest.raises(ConfigError, match="pagination: must be one of"):
        validate(ApiConfig, {"url": "http://127.0.0.1/x", "pagination": "pages"})
    with pytest.raises(ConfigError, match="rate_limit"):
        validate(ApiConfig, {"url": "http://127.0.0.1/x", "rate_limit": 0})
    with pytest.raises(ConfigError, match="meta_fields"):
        validate(ApiConfig, {"url": "http://127.0.0.1/x", "meta_fields": {"a": "nope"}})
    with pytest.raises(ConfigError, match="retry: unknown key"):
        validate(ApiConfig, {"url": "http://127.0.0.1/x", "retry": 3})
    monkeypatch.delenv("LMFORGE_TEST_API_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="auth_env: environment variable LMFORGE_TEST_API_TOKEN is not set"):
        collect(tmp_path, url="http://127.0.0.1:1/x", auth_env="LMFORGE_TEST_API_TOKEN")


def test_public_url_hides_credentials():
    assert public_url("https://user:pw@api.example.org:8443/v1/items?api_key=k&q=书&Token=t") == \
        "https://api.example.org:8443/v1/items?api_key=***&q=%E4%B9%A6&Token=***"


# --------------------------------------------------------------------------- pagination


@pytest.mark.parametrize("style, path, extra", [
    ("page", "/page", {"limit": 100}),
    ("offset", "/offset", {"items": "$.results.items"}),  # the list itself, and a 40-item server cap
    ("cursor", "/cursor", {"next_cursor": '$.meta["next cursor"]', "limit": 70}),
    ("link", "/link", {}),
])
def test_every_item_once_in_order(tmp_path: Path, base_url: str, style: str, path: str, extra: dict):
    records = collect(tmp_path, url=base_url + path, pagination=style, lang_field="$.lang", url_field="$.link",
                      meta_fields={"author": "$.author.name"}, **extra)
    assert [r.text for r in records] == [item["text"] for item in ITEMS]
    first = records[1]
    assert first.lang == "zh" and first.url == "https://example.org/doc/1" and first.meta["api"] == {"author": "作者1"}
    assert first.source == f"api:{base_url}{path}" and first.id == make_id(f"api:{base_url}{path}", "1")
    prov = records[-1].provenance
    assert prov["http_status"] == 200 and prov["content_type"] == "application/json"
    assert prov["endpoint"] == base_url + path and prov["page"] > 1 and prov["fetched_at"].endswith("+00:00")
    assert not any("drop_reason" in r.meta for r in records)
    again = collect(tmp_path, url=base_url + path, pagination=style, **extra)
    assert [r.id for r in again] == [r.id for r in records]


def test_post_pagination_sends_params_as_json(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/search", method="POST", params={"q": "书"}, pagination="page",
                      limit=30)
    assert [r.meta["api_id"] for r in records] == list(range(250))


def test_max_items_and_max_pages(tmp_path: Path, base_url: str):
    assert len(collect(tmp_path, url=base_url + "/page", pagination="page", limit=20, max_items=45)) == 45
    assert len(STATE.times["/page"]) == 3  # no request beyond the page holding item 45
    records = collect(tmp_path, url=base_url + "/page", pagination="page", limit=20, max_pages=2)
    assert [r.meta["api_id"] for r in records] == list(range(40))


def test_a_server_ignoring_the_page_parameter_does_not_loop(tmp_path: Path, base_url: str,
                                                            caplog: pytest.LogCaptureFixture):
    records = collect(tmp_path, url=base_url + "/repeat", pagination="page")
    assert len(records) == 7 and len(STATE.times["/repeat"]) == 2
    assert "repeats the previous page" in caplog.text


def test_rate_limit_spaces_requests(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/page", pagination="page", limit=50, rate_limit=20)
    assert len(records) == 250
    times = STATE.times["/page"]
    assert len(times) == 6  # five full pages and the empty one that ends it
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 1 / 20, gaps


# --------------------------------------------------------------------------- auth and failures


def test_auth_from_env_never_leaks(tmp_path: Path, base_url: str, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InputError, match=r"GET .*/secure returned HTTP 401"):
        collect(tmp_path, url=base_url + "/secure")
    monkeypatch.setenv("LMFORGE_TEST_API_TOKEN", TOKEN)
    records = collect(tmp_path, url=base_url + "/secure", auth_env="LMFORGE_TEST_API_TOKEN")
    assert len(records) == 3 and STATE.headers[-1]["authorization"] == f"Bearer {TOKEN}"
    monkeypatch.setenv("LMFORGE_TEST_API_TOKEN", f"Bearer {TOKEN}")  # the whole value works too
    assert len(collect(tmp_path, url=base_url + "/secure", auth_env="LMFORGE_TEST_API_TOKEN")) == 3
    assert TOKEN not in json.dumps([r.to_dict() for r in records], ensure_ascii=False)

    monkeypatch.setenv("LMFORGE_TEST_API_TOKEN", "wrong-" + TOKEN)  # the server echoes it in its 401 body
    with pytest.raises(InputError) as info:
        collect(tmp_path, url=base_url + "/secure", auth_env="LMFORGE_TEST_API_TOKEN")
    assert "401" in str(info.value) and TOKEN not in str(info.value) and "***" in str(info.value)

    monkeypatch.setenv("LMFORGE_TEST_API_TOKEN", TOKEN)  # echoed in a non-JSON page, which is quarantined
    bad = collect(tmp_path, url=base_url + "/badjson", pagination="page", auth_env="LMFORGE_TEST_API_TOKEN",
                  retries=0)
    assert bad[-1].meta["drop_reason"] == "api_bad_json" and TOKEN not in bad[-1].text
    assert TOKEN not in caplog.text


def test_retries_on_500_then_succeeds(tmp_path: Path, base_url: str, caplog: pytest.LogCaptureFixture):
    records = collect(tmp_path, url=base_url + "/flaky", retries=3)
    assert len(records) == 5 and STATE.calls["flaky"] == 3
    assert sum("retry" in m for m in caplog.messages) == 2


def test_429_honours_retry_after(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/throttled", backoff=5.0)  # Retry-After wins over backoff
    times = STATE.times["/throttled"]
    assert len(records) == 5 and len(times) == 2
    assert 0.1 <= times[1] - times[0] < 2.0


def test_timeout_is_retried(tmp_path: Path, base_url: str):
    assert len(collect(tmp_path, url=base_url + "/slow", timeout=0.3, retries=2)) == 2
    assert STATE.calls["slow"] == 2


def test_unreachable_or_failing_server_raises(tmp_path: Path, base_url: str):
    with pytest.raises(InputError, match=r"GET .*/broken failed after 3 attempts: HTTP 503"):
        collect(tmp_path, url=base_url + "/broken", retries=2)
    assert len(STATE.times["/broken"]) == 3
    with pytest.raises(InputError, match=r"GET http://127.0.0.1:1/x failed after 2 attempts: ConnectError"):
        collect(tmp_path, url="http://127.0.0.1:1/x", retries=1)
    with pytest.raises(InputError, match=r"/nowhere returned HTTP 404"):
        collect(tmp_path, url=base_url + "/nowhere", retries=3)
    assert len(STATE.times["/nowhere"]) == 1  # a 404 is not retried


def test_non_json_pages(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/badjson", pagination="page", retries=1)
    assert [r.meta.get("drop_reason") for r in records] == [None] * 10 + ["api_bad_json"]
    assert records[-1].text.startswith("<html>") and records[-1].provenance["page"] == 2
    assert records[-1].url == base_url + "/badjson?page=2&limit=100"
    assert len(STATE.times["/badjson"]) == 3  # page 1, page 2 and its retry; then it stops
    with pytest.raises(InputError, match=r"/badjson failed after 2 attempts: HTTP 200 body is not JSON"):
        collect(tmp_path, url=base_url + "/badjson", params={"page": 2}, retries=1)


def test_items_without_text_are_quarantined(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/mixed", text_field=["$.title", "$.body"])
    texts = [r.text for r in records]
    reasons = [r.meta.get("drop_reason") for r in records]
    assert texts[:2] == ["标题\n\n正文 body", "only a title"]
    assert reasons == [None, None, "api_no_text", "api_no_text", "api_no_text", None]
    assert records[2].text == '{"id": "c", "title": 42}' and records[2].meta["drop_stage"] == "input"
    assert records[5].text == "id is an object"  # an id that is not a scalar: the id comes from the text
    assert len({r.id for r in records}) == 6
    assert [r.id for r in collect(tmp_path, url=base_url + "/mixed", text_field=["$.title", "$.body"])] == \
        [r.id for r in records]


# --------------------------------------------------------------------------- bodies and redirects


def test_encoded_bodies_are_decoded_and_only_cappable_codings_asked_for(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/gzip")
    assert [r.text for r in records] == [item["text"] for item in ITEMS[:20]]
    assert records[0].provenance["encoding"] == "utf-8"
    assert STATE.headers[-1]["accept-encoding"] == accept_encoding()
    collect(tmp_path, url=base_url + "/gzip", headers={"accept-encoding": "identity"})  # replaced, not doubled
    assert STATE.headers[-1]["accept-encoding"] == "identity"


def test_a_page_over_max_bytes(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/big", pagination="page", max_bytes=20_000, retries=2)
    assert [r.meta.get("drop_reason") for r in records] == [None] * 10 + ["api_too_large"]
    bad = records[-1]
    assert bad.meta["bytes_read"] == 20_001  # one byte past the cap, then reading stopped
    assert "max_bytes=20000" in bad.meta["error"] and bad.url == base_url + "/big?page=2&limit=100"
    assert bad.text.startswith('{"data": [') and len(bad.text) == 10_000
    assert STATE.calls["big"] == 2  # the same page would be as large again: not retried
    with pytest.raises(InputError, match=r"GET .*/page: the response is larger than max_bytes=1000 bytes once "
                                         r"decoded \(it declares Content-Length: \d+\); raise max_bytes"):
        collect(tmp_path, url=base_url + "/page", max_bytes=1000)


def test_a_body_not_in_its_content_encoding(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/badgzip", pagination="page", retries=1)
    assert [r.meta.get("drop_reason") for r in records] == [None] * 10 + ["api_bad_encoding"]
    assert STATE.calls["badgzip"] == 3  # page 1, page 2 and its retry
    with pytest.raises(InputError, match=r"/badgzip failed after 2 attempts: HTTP 200 body: error"):
        collect(tmp_path, url=base_url + "/badgzip", params={"page": 2}, retries=1)


def test_redirects_are_followed_and_bounded(tmp_path: Path, base_url: str):
    records = collect(tmp_path, url=base_url + "/moved", pagination="page", limit=100)
    assert [r.text for r in records] == [item["text"] for item in ITEMS]
    assert records[0].provenance["http_status"] == 200
    with pytest.raises(InputError, match=r"GET .*/loop: more than 20 redirects"):
        collect(tmp_path, url=base_url + "/loop")


def test_works_where_an_event_loop_is_running(tmp_path: Path, base_url: str):
    async def inside():
        return collect(tmp_path, url=base_url + "/page", pagination="page", limit=100)

    assert len(asyncio.run(inside())) == 250
