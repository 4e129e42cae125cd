"""Issue 19, item 13: the labelling app under DNS rebinding, cross-site requests, huge bodies and open redirects.

A page on another site can make the browser of the person labelling send requests to
http://127.0.0.1:8765 (cross-site POSTs), or point its own name at 127.0.0.1 and read the app as
if it were its own (DNS rebinding: the browser then sends `Host: evil.example`). The app must
answer only to its own names and origin, and bound what one request can make it store.
"""

from __future__ import annotations

import json
from urllib.parse import urljoin, urlsplit

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from lmforge.label.app import create_app  # noqa: E402
from lmforge.label.session import Item, Session  # noqa: E402
from lmforge.label.store import AnswerStore  # noqa: E402

BASE = "http://127.0.0.1:8765"  # the app's own origin: `lmforge label serve` binds 127.0.0.1:8765 by default
EVIL = "http://evil.example"


@pytest.fixture
def session(tmp_path):
    items = [Item(f"r{i}", text) for i, text in enumerate(["房间很干净", "服务太差了", "还行吧", "不会再来"])]
    return Session(items, ["neg", "pos"], AnswerStore(tmp_path / "answers.jsonl"), strategy="order", annotator="t")


@pytest.fixture
def client(session):
    return TestClient(create_app(session), base_url=BASE)


def log_lines(session) -> list[dict]:
    path = session.store.path
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def assert_json_error(res, status: int) -> str:
    assert res.status_code == status, (res.status_code, res.text[:200])
    assert res.headers["content-type"].startswith("application/json")
    detail = res.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example:8765",
                                  "localhost.evil.example", "[::2]:8765", "evil@127.0.0.1:8765", ""])
def test_a_foreign_host_header_is_refused(client, session, host):
    """DNS rebinding: evil.example resolves to 127.0.0.1, so the browser sends `Host: evil.example`."""
    session.answer("r0", label="pos", comment="secret note")
    for path in ("/api/state", "/item/r0", "/healthz"):
        res = client.get(path, headers={"host": host})
        detail = assert_json_error(res, 400)
        assert "host" in detail.lower() and "secret note" not in res.text
    assert_json_error(client.post("/api/undo", headers={"host": host}), 400)
    assert len(session.store.current()) == 1


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765", "[::1]:8765"])
def test_the_apps_own_names_are_served(client, host):
    assert client.get("/api/state", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("headers", [
    {"origin": EVIL},
    {"origin": "null"},  # a sandboxed iframe or a file:// page
    {"origin": "http://127.0.0.1:9999"},  # another local app: same site, other origin
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
    {"referer": EVIL + "/page.html"},  # Origin stripped, Referer left
], ids=["origin", "null-origin", "other-port", "fetch-cross-site", "fetch-same-site", "referer"])
def test_cross_origin_state_changes_are_refused(client, session, headers):
    session.answer("r0", label="pos")
    before = log_lines(session)
    assert_json_error(client.post("/api/undo", headers=headers), 403)
    assert_json_error(client.post("/api/answer", headers=headers, json={"item": "r1", "label": "neg"}), 403)
    assert_json_error(client.post("/api/skip", headers=headers, json={"item": "r1"}), 403)
    # a classic form post (text/plain, no preflight) is refused the same way
    assert_json_error(client.post("/api/answer", headers={**headers, "content-type": "text/plain"},
                                  content=b'{"item": "r1", "label": "neg"}'), 403)
    assert log_lines(session) == before and list(session.store.current()) == ["r0"]


def test_same_origin_and_non_browser_requests_still_work(client, session):
    own = {"origin": BASE, "sec-fetch-site": "same-origin", "referer": BASE + "/item/r0"}
    assert client.post("/api/answer", headers=own, json={"item": "r0", "label": "pos"}).json()["saved"]
    local = {"host": "localhost:8765", "origin": "http://localhost:8765"}
    assert client.post("/api/answer", headers=local, json={"item": "r1", "label": "neg"}).json()["saved"]
    assert client.post("/api/undo", headers={"sec-fetch-site": "none"}).json()["undone"] == "r1"
    assert client.post("/api/undo").json()["undone"] == "r0"  # curl, scripts: no Origin, no Sec-Fetch-Site
    assert client.get("/item/r0", headers={"sec-fetch-site": "cross-site"}).status_code == 200  # a link is fine
    page = client.get("/item/r0")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]  # no clickjacking of the keyboard


def test_a_huge_body_is_refused_before_it_is_stored(client, session):
    big = "x" * (5 << 20)  # a 5 MB comment
    assert_json_error(client.post("/api/answer", json={"item": "r0", "label": "pos", "comment": big}), 413)

    def chunks():  # no Content-Length: the cap must count what arrives
        yield b'{"item": "r0", "label": "pos", "comment": "'
        for _ in range(80):
            yield b"x" * 65536
        yield b'"}'

    res = client.post("/api/answer", content=chunks(), headers={"content-type": "application/json"})
    assert_json_error(res, 413)
    assert log_lines(session) == []


def test_a_long_comment_is_refused_with_a_reason(client, session):
    res = client.post("/api/answer", json={"item": "r0", "label": "pos", "comment": "长" * 50_000})
    assert "comment" in assert_json_error(res, 400)
    assert log_lines(session) == []
    assert client.post("/api/answer", json={"item": "r0", "label": "pos", "comment": "长" * 500}).json()["saved"]


HOSTILE_PATHS = ["//evil.example/", "///evil.example/", "/%2F%2Fevil.example/", "/%2F/evil.example",
                 "/%5Cevil.example", "/%5C%5Cevil.example/x", "/%09/evil.example", "/http://evil.example",
                 "/item/r0?next=http://evil.example", "/?next=//evil.example", "/%0d%0aLocation:%20http://evil.example"]


def _stays_home(location: str) -> bool:
    """Whether a browser stays on this origin: to WHATWG URL parsing `\\` is `/`, tabs and newlines are dropped,
    and a path that starts with two slashes (`//`, `///`, `/\\`) names another host."""
    cleaned = "".join(c for c in location if c not in "\r\n\t").replace("\\", "/")
    if cleaned != location.replace("\\", "/") or not cleaned.startswith("/") or cleaned.startswith("//"):
        return False
    return urlsplit(urljoin(BASE + "/item/r0", cleaned)).netloc == "127.0.0.1:8765"


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_the_key_redirect_never_leaves_the_app(session, path):
    client = TestClient(create_app(session, access_key="s3cret"), base_url=BASE)
    sep = "&" if "?" in path else "?"
    res = client.get(BASE + path + sep + "key=s3cret", follow_redirects=False)
    assert res.status_code == 303
    location = res.headers["location"]
    assert _stays_home(location), location
    assert "s3cret" not in location


def test_the_key_redirect_keeps_the_rest_of_the_query(session):
    client = TestClient(create_app(session, access_key="s3cret"), base_url=BASE)
    res = client.get("/item/r0?a=1&key=s3cret&b=%E5%A5%BD", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/item/r0?a=1&b=%E5%A5%BD"
    assert client.get("/item/r0").status_code == 200


def test_an_explicit_host_is_the_only_name_served(session):
    from lmforge.label.app import LabelServerConfig

    app = create_app(session, access_key="k", config=LabelServerConfig(host="10.1.2.3", port=9000))
    client = TestClient(app, base_url="http://10.1.2.3:9000", headers={"authorization": "Bearer k"})
    assert client.get("/api/state").status_code == 200
    assert_json_error(client.get("/api/state", headers={"host": "evil.example:9000"}), 400)
    assert_json_error(client.post("/api/undo", headers={"origin": "http://127.0.0.1:9000"}), 403)
    assert client.post("/api/undo", headers={"origin": "http://10.1.2.3:9000"}).status_code == 200
