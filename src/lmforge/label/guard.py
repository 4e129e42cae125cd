"""Who may talk to the labelling app: its own host names, its own origin, bounded bodies, the access key.

The app runs on the labeller's own machine, and any page that person has open can make their
browser send requests to http://127.0.0.1:8765. A form on evil.example can POST an undo there
(a cross-site request: the browser sends it, the page just cannot read the answer), and
evil.example can point its own name at 127.0.0.1 and then read the app as a page of its own (DNS
rebinding: the request then says `Host: evil.example`). Loopback alone stops neither, so with or
without an access key:

- the Host header must name the app: the bound host, and for a loopback bind 127.0.0.1,
  localhost and [::1]; plus `allowed_hosts` (the name a reverse proxy forwards). Only the name is
  checked, not the port: SSH tunnels and container port maps change the port, rebinding needs a
  foreign name (400);
- a request that changes state (POST, PUT, PATCH, DELETE) that a browser sent from another
  origin is refused (403): `Sec-Fetch-Site` other than same-origin or none, an `Origin` other
  than the app's own (`null` included), or, with no `Origin`, a `Referer` from elsewhere. A
  request with none of these comes from a script (curl, Python), not from a page elsewhere;
- a body over `max_body_bytes` is refused (413) before the app parses or stores any of it;
- with an access key every request needs it (401); `?key=` sets the cookie and redirects to the
  same path on this origin, never to another one.

A bind to every interface (0.0.0.0, ::) cannot know its names, so without `allowed_hosts` it
accepts any Host; such a bind always has an access key, which a rebinding page never gets. Every
refusal is a JSON body {"detail": "..."}, as the app's own errors are.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from pydantic import Field, field_validator

from lmforge.config import StrictModel

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KEY_COOKIE = "lmforge_label_key"
# A browser must not frame the app (a framed page can be driven by clicks and keys) nor load scripts from elsewhere.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
_HOST_RE = re.compile(r"^(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class LabelServerConfig(StrictModel):
    """Where `lmforge label serve` listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    allowed_hosts: list[str] = Field(default_factory=list)  # more names for the Host header (a reverse proxy's)
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)  # larger request bodies get 413

    @field_validator("host", "allowed_hosts")
    @classmethod
    def _names(cls, value: Any) -> Any:
        for name in [value] if isinstance(value, str) else value:
            bare = name.strip("[]")
            if not _HOST_RE.match(f"[{bare}]" if ":" in bare else bare):
                raise ValueError(f"{name!r} is not a host name or IP address (no scheme, path or port)")
        return value


def host_name(host: str) -> str:
    """A bind address or Host name as compared here: lower case, IPv6 without brackets."""
    return host.strip().strip("[]").lower()


def is_loopback(host: str) -> bool:
    name = host_name(host)
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_names(config: LabelServerConfig) -> frozenset[str] | None:
    """The names the Host header may carry; None when any will do (an all-interfaces bind, no names given)."""
    bound, extra = host_name(config.host), {host_name(h) for h in config.allowed_hosts}
    if bound in WILDCARDS:
        return LOOPBACK_NAMES | extra if extra else None
    if is_loopback(bound):
        return LOOPBACK_NAMES | {bound} | extra
    return frozenset({bound} | extra)


def _authority(scheme: str, netloc: str) -> tuple[str, str] | None:
    """(host, port) of `host[:port]`, compared as the browser does (no default port); None when it is not one."""
    match = _HOST_RE.match(netloc)
    if match is None:
        return None
    port = match["port"] or ""
    return host_name(match["host"]), "" if port == _DEFAULT_PORTS.get(scheme) else port


def _origin_authority(url: str) -> tuple[str, str] | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or "@" in parts.netloc:
        return None
    return _authority(parts.scheme, parts.netloc)


def home_path(path: str) -> str:
    """`path` as a URL path that can only lead back to this origin.

    Browsers read `//evil.example`, `/\\evil.example` and `/<tab>/evil.example` as another host, so
    every character but the plain path ones is percent-encoded and leading slashes are folded to one.
    """
    return "/" + quote(path, safe="/:@!$&'()*+,;=-._~").lstrip("/")


def _json(status: int, detail: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"detail": detail}, status_code=status)


class Guard:
    """ASGI middleware in front of the whole app (pages, API and static files)."""

    def __init__(self, app: Any, config: LabelServerConfig, access_key: str | None = None) -> None:
        self.app, self.config, self.key = app, config, access_key or None
        self.names = allowed_names(config)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in present)]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._check_host(scope, headers)
        if refusal is None and self.key:
            refusal = self._check_key(scope, headers)
        if refusal is None and scope["method"] in UNSAFE_METHODS:
            refusal = self._check_origin(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        body = await self._read_body(receive, headers)
        if body is None:
            return  # the client went away before sending its body
        if isinstance(body, str):
            await _json(413, body)(scope, receive, send_secured)
            return
        await self.app(scope, _replay(body, receive), send_secured)

    def _check_host(self, scope: dict, headers: dict[str, str]):
        host = headers.get("host", "")
        authority = _authority(scope.get("scheme", "http"), host)
        if authority is None:
            return self._refuse(400, f"the Host header {host[:100]!r} is not a host name")
        if self.names is not None and authority[0] not in self.names:
            return self._refuse(400, f"this labelling server does not answer to the host {host[:100]!r} (it answers "
                                     f"to {', '.join(sorted(self.names))}; add a name with --allow-host)")
        return None

    def _check_origin(self, scope: dict, headers: dict[str, str]):
        """403 when a browser says the request came from a page of another origin."""
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return self._refuse(403, f"a {site} request may not change labels (Sec-Fetch-Site: {site[:40]})")
        own = _authority(scope.get("scheme", "http"), headers.get("host", ""))
        for header in ("origin", "referer"):
            value = headers.get(header)
            if value is not None:
                if _origin_authority(value) != own:
                    return self._refuse(403, f"a request from {value[:100]!r} may not change labels on this "
                                             "labelling server (not its origin)")
                return None  # Origin, when there is one, decides; the Referer is only a fallback
        return None

    def _check_key(self, scope: dict, headers: dict[str, str]):
        """None when the request carries the key; else the redirect that stores a `?key=` in a cookie, or 401."""
        from starlette.datastructures import QueryParams
        from starlette.requests import cookie_parser
        from starlette.responses import RedirectResponse

        key = self.key.encode()

        def ok(given: str | None) -> bool:
            return given is not None and hmac.compare_digest(given.encode(), key)

        query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
        if ok(query.get("key")):
            rest = urlencode([(k, v) for k, v in query.multi_items() if k != "key"], quote_via=quote)
            response = RedirectResponse(home_path(scope["path"]) + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(KEY_COOKIE, self.key, httponly=True, samesite="strict")
            return response
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip() or None
        if ok(cookie_parser(headers.get("cookie", "")).get(KEY_COOKIE)) or ok(bearer):
            return None
        return _json(401, "this labelling server needs its access key: open it with ?key=<key>")

    @staticmethod
    def _refuse(status: int, detail: str):
        log.warning("refused a request: %s", detail)
        return _json(status, detail)

    async def _read_body(self, receive: Any, headers: dict[str, str]) -> bytes | str | None:
        """The whole body; why not (a string) when it is over the limit; None on a disconnect. Holds <= the limit."""
        limit = self.config.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return f"the request body is {int(declared):,} bytes; this labelling server accepts at most {limit:,}"
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return f"the request body is over {limit:,} bytes, the most this labelling server accepts"
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Any):
    """A `receive` that gives the already-read body once, then whatever the server sends next (a disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
