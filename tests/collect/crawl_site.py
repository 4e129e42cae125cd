"""A generated web site served on 127.0.0.1 for the crawler tests, recording every request.

Not a test module: test files load it with `sys.path` (pytest runs with --import-mode=importlib,
so tests cannot import each other). The server speaks HTTP/1.0, so every request is its own
connection and the log's start times and in-flight counts are exactly the crawler's requests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EN = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Language models learn the statistics of text from very large corpora.",
    "A polite crawler waits between requests and obeys the robots exclusion protocol.",
    "Redirect loops and huge pages must never stall a well written crawler.",
    "Every page in this site is generated, so tests know exactly what to expect.",
]
ZH = [
    "今天天气很好，我们去公园散步吧。",
    "语言模型从大量的文本中学习语言的规律。",
    "礼貌的爬虫会在两次请求之间等待，并遵守机器人协议。",
    "重定向循环和超大页面不应该让爬虫停下来。",
    "这个网站的每一页都是生成的，所以测试知道应该看到什么。",
]
GBK_TEXT = "中文编码测试：你好，世界！这是一个用国标扩展编码保存的页面，包含简体汉字。"
HUGE_BYTES = 32 * 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@dataclass
class Response:
    body: bytes | Callable[[], Iterator[bytes]] = b""
    status: int = 200
    content_type: str | None = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    sleep: float = 0.0
    content_length: bool = True


Route = Response | Callable[[int], Response]  # a callable gets how many times the path was requested before


@dataclass
class Hit:
    path: str
    start: float
    end: float = 0.0
    user_agent: str = ""
    sent: int = 0


def html(title: str, paragraphs: list[str], links: list[str] = (), head: str = "") -> bytes:
    anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title>{head}</head>"
            f"<body><h1>{title}</h1>{body}<ul>{anchors}</ul></body></html>").encode()


class Site:
    """Routes plus a thread-safe log of every request the server answered."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.lock = threading.Lock()
        self.hits: list[Hit] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(h.path for h in self.hits)

    def snapshot(self) -> list[Hit]:
        with self.lock:
            return list(self.hits)


class _Handler(BaseHTTPRequestHandler):
    server_version = "crawl-site/1.0"

    def log_message(self, format, *args):  # noqa: A002 - quiet: the Site keeps the log
        pass

    def do_GET(self) -> None:
        site: Site = self.server.site  # type: ignore[attr-defined]
        hit = Hit(self.path, time.monotonic(), user_agent=self.headers.get("User-Agent", ""))
        with site.lock:
            previous = sum(1 for h in site.hits if h.path == self.path)
            site.hits.append(hit)
            site.in_flight += 1
            site.max_in_flight = max(site.max_in_flight, site.in_flight)
        try:
            route = site.routes.get(self.path)
            if route is None:
                resp = Response(b"not found", 404, "text/plain")
            else:
                resp = route(previous) if callable(route) else route
            self._send(resp, hit)
        finally:
            with site.lock:
                site.in_flight -= 1
                hit.end = time.monotonic()

    def _send(self, resp: Response, hit: Hit) -> None:
        if resp.sleep:
            time.sleep(resp.sleep)
        self.send_response(resp.status)
        if resp.content_type:
            self.send_header("Content-Type", resp.content_type)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        chunks = resp.body() if callable(resp.body) else iter([resp.body])
        if not callable(resp.body) and resp.content_length:
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
                hit.sent += len(chunk)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the crawler hung up (size cap, or it was killed)


class SiteServer:
    """A ThreadingHTTPServer on 127.0.0.1 with a free port; use as a context manager."""

    def __init__(self, routes: dict[str, Route] | Callable[[str], dict[str, Route]]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # killed clients are expected
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.site = Site(routes(self.base) if callable(routes) else routes)
        self.httpd.site = self.site  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> SiteServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- the sites

N_PAGES = 30
SLOW = 0.3


def page_text(i: int) -> tuple[str, str]:
    return f"Page {i}. {EN[i % len(EN)]}", f"第{i}页。{ZH[i % len(ZH)]}"


def _huge() -> Iterator[bytes]:
    chunk = b"<p>" + b"x" * (64 * 1024 - 7) + b"</p>\n"
    for _ in range(HUGE_BYTES // len(chunk)):
        yield chunk


def _flaky(previous: int) -> Response:
    if previous == 0:
        return Response(b"try again", 503, "text/plain")
    return Response(html("Flaky", ["Served on the second attempt."]))


def demo_site(external: str, robots: str = "User-agent: *\nDisallow: /private/\n") -> Callable[[str], dict]:
    """The full test site; `external` is the base URL of another server that must never be contacted."""

    def build(base: str) -> dict[str, Route]:
        pages = [f"/page/{i}" for i in range(N_PAGES)]
        index_links = pages + [
            "/private/secret.html", "/loop/a", "/redirect/start", "/redirect/final", "/huge", "/huge-cl",
            "/files/data.bin", "/files/image.png", "/gbk/header", "/gbk/meta", "/slow/0", "/slow/1", "/slow/2",
            "/links", "/dup?b=2&a=1", "/missing", "/flaky", "/error500", "/deep/1", "/alt/3", "/alt/hidden",
            "/text.txt", "/redirect/out", "/redirect/private", "/chain/0",
        ]
        routes: dict[str, Route] = {
            "/robots.txt": Response(robots.encode(), content_type="text/plain"),
            "/": Response(html("Index 首页", [EN[0], ZH[0]], index_links)),
            "/private/secret.html": Response(html("Secret", ["must never be fetched"])),
            "/private/other.html": Response(html("Secret 2", ["must never be fetched"])),
            "/loop/a": Response(status=302, headers={"Location": "/loop/b"}),
            "/loop/b": Response(status=302, headers={"Location": f"{base}/loop/a"}),
            "/redirect/start": Response(status=301, headers={"Location": "/redirect/middle"}),
            "/redirect/middle": Response(status=302, headers={"Location": "final"}),
            "/redirect/final": Response(html("Final", ["You reached the end of the redirect chain."])),
            "/redirect/out": Response(status=302, headers={"Location": f"{external}/landing"}),
            "/redirect/private": Response(status=307, headers={"Location": "/private/hop.html"}),
            "/private/hop.html": Response(html("Secret 3", ["must never be fetched"])),
            "/huge": Response(_huge),
            "/huge-cl": Response(b"y" * 300_000),
            "/files/data.bin": Response(bytes(range(256)) * 64, content_type="application/octet-stream"),
            "/files/image.png": Response(PNG, content_type="image/png"),
            "/gbk/header": Response(f"<html><body><p>{GBK_TEXT}</p></body></html>".encode("gbk"),
                                    content_type="text/html; charset=GBK"),
            "/gbk/meta": Response(f'<html><head><meta charset="gbk"></head><body><p>{GBK_TEXT}</p></body></html>'
                                  .encode("gbk"), content_type="text/html"),
            "/links": Response(html("Links", ["Links of every kind."], [
                "mailto:someone@example.com", "javascript:void(0)", "ftp://127.0.0.1/file.txt",
                f"{external}/page", "/dup?a=1&b=2#frag", f"//127.0.0.1:{base.rsplit(':', 1)[1]}/page/1",
                "../page/2", "/private/other.html", "tel:+861234567"])),
            "/dup?a=1&b=2": Response(html("Dup", ["One page, linked in two forms."])),
            "/flaky": _flaky,
            "/error500": Response(b"broken", 500, "text/plain"),
            "/alt/3": Response(html("Alt 3", ["Same as page 3."], head='<link rel="canonical" href="/page/3">')),
            "/alt/hidden": Response(html("Alt hidden", ["Its canonical is never linked."],
                                         head='<link rel="canonical" href="/hidden">')),
            "/hidden": Response(html("Hidden", ["must never be fetched: only named as a canonical"])),
            "/text.txt": Response(f"{EN[1]}\n{ZH[1]}\n".encode(), content_type="text/plain; charset=utf-8"),
        }
        for i in range(N_PAGES):
            en, zh = page_text(i)
            routes[f"/page/{i}"] = Response(html(f"Page {i}", [en, zh], ["/", f"/page/{(i + 1) % N_PAGES}",
                                                                       f"/page/{(i * 7) % N_PAGES}"]))
        for i in range(3):
            routes[f"/slow/{i}"] = Response(html(f"Slow {i}", [f"Slow page {i}.", ZH[i]]), sleep=SLOW)
        for k in range(8):  # /chain/0 -> /chain/1 -> ... -> /chain/7, one redirect too many for max_redirects=5
            routes[f"/chain/{k}"] = Response(status=302, headers={"Location": f"/chain/{k + 1}"})
        routes["/chain/8"] = Response(html("Chain end", ["Too far to reach."]))
        for d in range(1, 8):
            routes[f"/deep/{d}"] = Response(html(f"Deep {d}", [f"Depth {d}."], [f"/deep/{d + 1}"]))
        return routes

    return build


def flat_site(n: int, sleep: float) -> Callable[[str], dict]:
    """An index linking `n` slow pages that also link to each other (for the kill test)."""

    def build(base: str) -> dict[str, Route]:
        routes: dict[str, Route] = {
            "/robots.txt": Response(b"User-agent: *\nDisallow: /nowhere/\n", content_type="text/plain"),
            "/": Response(html("Index", [EN[0]], [f"/p/{i}" for i in range(n)])),
        }
        for i in range(n):
            en, zh = page_text(i)
            routes[f"/p/{i}"] = Response(html(f"P {i}", [en, zh], [f"/p/{(i + 1) % n}", "/"]), sleep=sleep)
        return routes

    return build
