"""Hostile servers against the `api` source: an encoded decompression bomb and byte-dripping responses.

Each attack runs `iter_api` in a child process under a hard address-space limit and deadline; the
server is a raw HTTP/1.0 handler on 127.0.0.1 in this process, so it can send anything, as slowly
as it likes.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from hostile_limits import run_python

from lmforge.collect.api import ApiConfig

GB = 1 << 30
MB = 1 << 20
PEAK_MB = 300
DEADLINE = 1.5
SLACK = 3.0  # the child's start-up (imports) and a busy machine


def gzip_bomb(size: int, prefix: bytes) -> bytes:
    """One gzip member holding prefix + `size` zero bytes (~1 MB per GB), built in well under a second."""
    block = bytes(16 * MB)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    unit = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)  # refers to nothing before it: repeatable
    n = size // len(block)
    crc = zlib.crc32(prefix)
    for _ in range(n):
        crc = zlib.crc32(block, crc)
    trailer = struct.pack("<II", crc, (len(prefix) + n * len(block)) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + unit * n + comp.flush() + trailer


BOMB = gzip_bomb(GB, b'{"data": [{"id": "bomb", "text": "')


def good_page(page: int) -> bytes:
    return json.dumps({"data": [{"id": f"p{page}-{i}", "text": f"page {page} item {i}"} for i in range(3)]}).encode()


class _Handler(BaseHTTPRequestHandler):
    """Routes are functions writing the whole response, status line included, straight to the socket."""

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        page = int(parse_qs(parts.query).get("page", ["1"])[0])
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.hits[parts.path] += 1  # type: ignore[attr-defined]
        route = self.server.routes.get(parts.path)  # type: ignore[attr-defined]
        try:
            if route is None:
                self.wfile.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                route(self.wfile, page)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


def send(out, body: bytes, status: str = "200 OK", **headers: str) -> None:
    head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
    out.write(f"HTTP/1.0 {status}\r\n".encode()
              + b"".join(f"{k.replace('_', '-')}: {v}\r\n".encode() for k, v in head.items()) + b"\r\n" + body)


def drip(out, data: bytes, seconds: int = 60) -> None:
    """`data`, then one byte a second: every socket read succeeds well within any per-read timeout."""
    out.write(data)
    for _ in range(seconds):
        out.flush()
        time.sleep(1)
        out.write(b" ")


ROUTES: dict[str, Callable] = {
    # good first page, then a gzip bomb as page 2
    "/later": lambda out, page: send(out, good_page(1)) if page == 1 else send(out, BOMB, Content_Encoding="gzip"),
    "/first": lambda out, page: send(out, BOMB, Content_Encoding="gzip"),
    # the bomb as the body of a redirect: nobody should read it
    "/hop": lambda out, page: send(out, BOMB, "302 Found", Content_Encoding="gzip", Location="/ok"),
    "/ok": lambda out, page: send(out, good_page(page) if page == 1 else b'{"data": []}'),
    "/drip-body": lambda out, page: drip(out, b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"),
    "/drip-headers": lambda out, page: drip(out, b"HTTP/1.0 200 OK\r\nX-Slow: "),
}


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, client_address: None
    httpd.routes, httpd.hits, httpd.lock = ROUTES, Counter(), threading.Lock()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def collect_in_child(runs: dict[str, dict], timeout: float) -> tuple[dict, float, float]:
    """Run iter_api once per config in a child: {name: records or the error} plus its peak RSS MB and seconds."""
    code = (
        "import json\n"
        "from pathlib import Path\n"
        "from lmforge.collect.api import ApiConfig, iter_api\n"
        "from lmforge.errors import UserError\n"
        "out = {}\n"
        f"for name, cfg in json.loads({json.dumps(json.dumps(runs))}).items():\n"
        "    try:\n"
        "        recs = iter_api(ApiConfig(**cfg), Path('.'), Path('.'))\n"
        "        out[name] = [[r.meta.get('api_id'), r.meta.get('drop_reason'), r.meta.get('bytes_read')]\n"
        "                     for r in recs]\n"
        "    except UserError as exc:\n"
        "        out[name] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps(out))\n"
    )
    measured = run_python(code, timeout=timeout, address_space_mb=6000)
    print(f"peak {measured.peak_rss_mb:.0f} MB, {measured.seconds:.1f} s, rc {measured.returncode}")
    assert not measured.timed_out, f"the child was still running after {timeout} s"
    assert measured.returncode == 0, measured.stderr[-2000:]
    return json.loads(measured.stdout.strip().splitlines()[-1]), measured.peak_rss_mb, measured.seconds


def test_a_gzip_bomb_page_stops_at_max_bytes_in_bounded_memory(server):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    common = {"rate_limit": None, "retries": 1, "backoff": 0.01, "timeout": 20}  # max_bytes: the default
    out, peak, _ = collect_in_child({
        "later": {"url": base + "/later", "pagination": "page", **common},
        "first": {"url": base + "/first", **common},
        "hop": {"url": base + "/hop", **common},
    }, timeout=60)
    # a later page: the items before it are kept, the page is quarantined and collection stops
    records = out["later"]
    assert [r[:2] for r in records] == [["p1-0", None], ["p1-1", None], ["p1-2", None], [None, "api_too_large"]]
    cap = ApiConfig.model_fields["max_bytes"].default
    assert cap < records[-1][2] <= cap + MB  # decoding stopped just past the cap, not one huge read later
    # the first page: nothing to keep, the source is unreadable; a size will not change, so no retry
    assert out["first"].startswith("InputError: ") and f"max_bytes={cap}" in out["first"]
    assert server.hits["/first"] == 1
    # a redirect's body is never read
    assert [r[:2] for r in out["hop"]] == [["p1-0", None], ["p1-1", None], ["p1-2", None]]
    assert peak <= PEAK_MB


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_dripping_server_cannot_hold_a_request_past_the_deadline(server, where):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    path = f"/drip-{where}"
    config = {"url": base + path, "rate_limit": None, "retries": 1, "backoff": 0.1, "timeout": DEADLINE}
    out, _, seconds = collect_in_child({"drip": config}, timeout=30)
    assert out["drip"].startswith("InputError: ") and "failed after 2 attempts" in out["drip"]
    assert "timeout" in out["drip"]
    assert server.hits[path] == 2
    assert seconds <= 2 * DEADLINE + 0.1 + SLACK  # each attempt cut at its deadline


def test_timeout_and_max_bytes_are_documented():
    timeout = ApiConfig.model_fields["timeout"].description or ""
    assert "total" in timeout and "request" in timeout
    assert "decoded" in (ApiConfig.model_fields["max_bytes"].description or "")
