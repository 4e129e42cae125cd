"""A small bilingual web site the demo serves on loopback and then crawls, so the crawler runs for real.

Its pages are built from built-in documents the demo's other inputs do not use, with the things a
real site has: navigation and footer boilerplate, links between pages, one page published twice
(for deduplication to catch), a robots.txt that forbids /private/, a page there that must never be
fetched, and an image the crawler skips by content type.
"""

from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice

NAV = '<nav><a href="/">首页 Home</a> | <a href="/about.html">关于 About</a></nav>'
FOOTER = "<footer>© 2026 lmforge demo site · 版权所有 · Contact: webmaster@example.com</footer>"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


def _page(title: str, paragraphs: list[str], links: list[str]) -> bytes:
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (f'<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
            f"<body>{NAV}<main><h1>{html.escape(title)}</h1>{body}</main><ul>{anchors}</ul>{FOOTER}</body>"
            "</html>").encode()


def site_pages(pages: int = 24, skip: int = 900) -> dict[str, tuple[str, bytes]]:
    """path -> (content type, body). Documents `skip`.. of the reviews and Python docstrings corpora."""
    from lmforge.collect.builtin import corpus_records

    zh = [r.text for r in islice(corpus_records("reviews"), skip, skip + pages * 2)]
    en = [r.text for r in islice(corpus_records("python_docstrings"), skip, skip + pages * 2)]
    paths = [f"/posts/{i:02d}.html" for i in range(pages)]
    routes: dict[str, tuple[str, bytes]] = {}
    for i, path in enumerate(paths):
        links = [paths[(i + 1) % pages], paths[(i + 7) % pages]]
        routes[path] = ("text/html; charset=utf-8",
                        _page(f"文章 {i} / Post {i}", [zh[2 * i], en[2 * i], zh[2 * i + 1], en[2 * i + 1]], links))
    routes["/posts/copy-of-03.html"] = routes[paths[3]]  # the same article under a second address
    routes["/"] = ("text/html; charset=utf-8", _page("lmforge 演示站点 demo site", [
        "这是 lmforge 演示用的小网站，页面来自内置语料。", "A small site served by the lmforge demo on loopback."],
        paths[:6] + ["/posts/copy-of-03.html", "/private/drafts.html", "/logo.png"]))
    routes["/about.html"] = ("text/html; charset=utf-8", _page("关于 About", [
        "本站只在本机回环地址上运行，演示结束即关闭。", "This site only runs on the loopback address."], ["/"]))
    routes["/private/drafts.html"] = ("text/html; charset=utf-8", _page("草稿 Drafts", [
        "这一页被 robots.txt 禁止抓取，爬虫不应该看到它。"], ["/"]))
    routes["/robots.txt"] = ("text/plain; charset=utf-8", b"User-agent: *\nDisallow: /private/\n")
    routes["/logo.png"] = ("image/png", PNG)
    return routes


class DemoSite:
    """The site on 127.0.0.1 in a background thread; a context manager, stopped on exit."""

    def __init__(self, port: int = 0, pages: int = 24) -> None:
        routes = site_pages(pages)
        self.requests: list[str] = []
        log = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                log.append(self.path)
                found = routes.get(self.path.split("?")[0])
                if found is None:
                    self.send_error(404)
                    return
                content_type, body = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # quiet: the demo prints its own progress
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-site", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> DemoSite:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
