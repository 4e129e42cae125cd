"""HTTP JSON APIs as a source: paginated requests whose items become records.

Each response is JSON; `items` selects the list of items in it, and `text_field` (one or more
selectors) the text inside an item. Selectors are a small JSONPath subset, see `select`.

Pagination styles, and when each stops (besides `max_pages`/`max_items` and an empty page):

- `none`: one request;
- `page`: `page_param` = start_page, start_page + 1, ... (and `limit_param` = limit);
- `offset`: `offset_param` = 0, then advanced by the number of items each page returned
  (a server may cap the page size below `limit`);
- `cursor`: `cursor_param` = the value `next_cursor` selects in the previous response; stops
  when that is missing, null or empty, or repeats;
- `link`: follows the `Link: <...>; rel="next"` header; stops when there is none.

A page identical to the one before also stops the loop: a server that ignores the page
parameter would otherwise be read until `max_pages`.

Failures: connection errors, timeouts, 5xx and 429 are retried `retries` times with
exponential backoff (`backoff`, 2x, 4x, ... seconds; a `Retry-After` in seconds replaces it).
Any other 4xx, or retries used up, raises `InputError` naming method, URL and status: a
truncated collection must not pass as a complete one. `timeout` is a total deadline per request
(connecting, redirects, headers and the whole body), so a server sending a byte a second times
out like one that sends nothing. A body that is not JSON is retried too (proxies serve HTML error
pages), and so is one that is not in its declared Content-Encoding; a body over `max_bytes` once
decoded is not (it would be as large again). If such a body persists on the first page the source
is unreadable (`InputError`); on a later page the items so far are kept, the body becomes a
quarantine record (`api_bad_json`, `api_bad_encoding`, `api_too_large`) and collection stops,
since the next page cannot be known.

Requests are made in `api_http`: bodies are read raw and decoded there under `max_bytes`
(`collect.bounded`), since httpx would inflate a whole network read at once and 1 MB of gzip can
be 1 GB of zeros; only the codings that decoder can cap are asked for, and redirects are followed
without reading their bodies.

Secrets: the auth header's value comes from the environment (`auth_env`) and never reaches
records, provenance, error messages or this module's logs. Keep secrets out of `url` and
`params`: query strings show in server logs and in httpx's request log (lmforge itself masks
query values whose names look secret).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from lmforge.collect.api_http import MAX_BAD_BODY, BadPage, Fetcher, Session, public_url
from lmforge.collect.bounded import accept_encoding
from lmforge.config import StrictModel
from lmforge.errors import ConfigError, require
from lmforge.pipeline.source import Source, SourceContext
from lmforge.records import Record, make_id

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- selectors

_STEP = re.compile(
    r"""\.(?P<name>[^.\[\]]+)                                   # .key   (.* = every value)
      | \[\s*(?P<index>-?\d+)\s*\]                              # [0], [-1]
      | \[\s*(?P<star>\*)\s*\]                                  # [*]
      | \[\s*(?P<q>["'])(?P<quoted>(?:\\.|(?!(?P=q)).)*)(?P=q)\s*\]  # ["key with spaces"]
    """,
    re.VERBOSE,
)


@lru_cache(maxsize=256)
def parse_selector(selector: str) -> tuple[tuple[str, Any], ...]:
    """Steps of a selector as (kind, argument) pairs; ValueError saying where it cannot be read.

    Syntax: `$` is the document; then any number of `.key`, `["key"]` (any characters,
    backslash escapes the quote), `[n]` (negative counts from the end), and `[*]` or `.*`
    (every element of a list, every value of an object). No filters, slices or recursion:
    API responses rarely need them, and a tiny evaluator is easy to trust.
    """
    text = selector.strip()
    if not text.startswith("$"):
        raise ValueError(f"selector {selector!r} must start with '$'")
    steps: list[tuple[str, Any]] = []
    pos = 1
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None:
            raise ValueError(f"selector {selector!r}: cannot read {text[pos:]!r} (at position {pos})")
        if m["star"] or m["name"] == "*":
            steps.append(("all", None))
        elif m["name"] is not None:
            steps.append(("key", m["name"]))
        elif m["index"] is not None:
            steps.append(("index", int(m["index"])))
        else:
            steps.append(("key", re.sub(r"\\(.)", r"\1", m["quoted"])))
        pos = m.end()
    return tuple(steps)


def select(data: Any, selector: str) -> list[Any]:
    """Every value `selector` reaches in `data`, in document order; [] when it reaches none.

    A key on a non-object or an index on a non-list simply matches nothing: API responses
    vary item by item, and a missing field is data to quarantine, not an error.
    """
    matches = [data]
    for kind, arg in parse_selector(selector):
        found: list[Any] = []
        for value in matches:
            if kind == "key":
                if isinstance(value, dict) and arg in value:
                    found.append(value[arg])
            elif kind == "index":
                if isinstance(value, list) and -len(value) <= arg < len(value):
                    found.append(value[arg])
            elif isinstance(value, list):
                found.extend(value)
            elif isinstance(value, dict):
                found.extend(value.values())
        matches = found
    return matches


def _first(data: Any, selector: str | None) -> Any:
    found = select(data, selector) if selector else []
    return found[0] if found else None


# --------------------------------------------------------------------------- config


class ApiConfig(StrictModel):
    """One JSON endpoint; see the module docstring for pagination, retries and secrets."""

    url: str
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, Any] = Field(default_factory=dict)  # query string for GET, JSON body for POST
    headers: dict[str, str] = Field(default_factory=dict)
    auth_header: str = "Authorization"
    auth_env: str | None = None  # env var holding the token (or the whole "Bearer ..." value)
    auth_prefix: str = "Bearer "
    pagination: Literal["none", "page", "offset", "cursor", "link"] = "none"
    page_param: str = "page"
    start_page: int = 1
    offset_param: str = "offset"
    limit_param: str | None = "limit"  # sent with page, offset and cursor requests; None: not sent
    limit: int = Field(100, gt=0)
    cursor_param: str = "cursor"
    next_cursor: str = "$.next"
    items: str = "$.data[*]"
    text_field: str | list[str] = "$.text"  # several selectors: their strings joined by blank lines
    id_field: str | None = "$.id"
    url_field: str | None = None
    lang_field: str | None = None
    meta_fields: dict[str, str] = Field(default_factory=dict)  # meta["api"][name] = value at selector
    max_pages: int | None = Field(None, gt=0)
    max_items: int | None = Field(None, gt=0)
    rate_limit: float | None = Field(5.0, gt=0)  # requests per second at most; None: unlimited
    retries: int = Field(3, ge=0)
    backoff: float = Field(0.5, ge=0)
    timeout: float = Field(
        30, gt=0, description="total seconds one request may take: connecting, redirects, headers and the whole "
                              "body. A server that sends a byte a second is cut off here; each retry has its own "
                              "deadline, so a page costs at most (retries + 1) x timeout plus the backoff")
    max_bytes: int = Field(64_000_000, gt=0, description="largest response body read, counted after its "
                           "Content-Encoding is decoded; reading stops one byte past it (api_too_large)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("next_cursor", "items", "text_field", "id_field", "url_field", "lang_field", "meta_fields")
    @classmethod
    def _selectors(cls, value: str | list[str] | dict[str, str] | None):
        """Parse every selector now, so that a typo fails before any request, naming its field."""
        if value == []:
            raise ValueError("needs at least one selector")
        found = value.values() if isinstance(value, dict) else [value] if isinstance(value, str) else value or []
        for selector in found:
            parse_selector(selector)
        return value


# --------------------------------------------------------------------------- collection


def iter_api(config: ApiConfig, base_dir: Path, work_dir: Path) -> Iterator[Record]:
    """Records of every item of every page, in the server's order."""
    httpx = require("httpx", "api")
    from lmforge.version import __version__

    auth = _auth_value(config)
    # both the header value and the bare token, so either is masked wherever it might echo
    secrets = [s for s in (auth, auth and auth.removeprefix(config.auth_prefix)) if s and len(s) >= 4]
    endpoint = public_url(config.url)
    source = f"api:{endpoint}"
    headers = httpx.Headers({"Accept": "application/json", "User-Agent": f"lmforge/{__version__}",
                             "Accept-Encoding": accept_encoding()})  # only the codings we can cap
    headers.update(config.headers)  # case-insensitively
    if auth:
        headers[config.auth_header] = auth
    position = _Position(config.url, config.start_page)
    previous_digest, produced = None, 0
    session = Session(httpx, headers, config.timeout)
    try:
        fetcher = Fetcher(httpx, session, config, secrets)
        for page_no in itertools.count(1):
            if config.max_pages is not None and page_no > config.max_pages:
                log.info("%s: stopping at max_pages=%d", endpoint, config.max_pages)
                return
            response, data = fetcher.fetch(position.url, position.params(config, page_no), first=page_no == 1)
            prov = {
                "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "content_type": response.headers.get("content-type", ""),
                "encoding": response.encoding or "utf-8",
                "http_status": response.status_code,
                "endpoint": endpoint,
                "page": page_no,
            }
            if isinstance(data, BadPage):
                log.warning("%s: page %d: %s; stopping, keeping the %d items before it",
                            endpoint, page_no, data.problem, produced)
                yield _bad_page_record(data, source, prov, fetcher.scrub)
                return
            items = _page_items(data, config.items)
            if not items:
                if page_no == 1 and not select(data, config.items):
                    log.warning("%s: items selector %r matched nothing in the first response", endpoint, config.items)
                return
            digest = hashlib.blake2b(json.dumps(items, sort_keys=True, default=str).encode()).digest()
            if digest == previous_digest:
                log.warning("%s: page %d repeats the previous page; stopping", endpoint, page_no)
                return
            previous_digest = digest
            for item in items:
                yield _item_record(item, config, source, prov)
                produced += 1
                if config.max_items is not None and produced >= config.max_items:
                    return
            if not position.advance(config, len(items), data, response):
                return
    finally:
        session.close()


@dataclass
class _Position:
    """Where the next request goes, for every pagination style."""

    url: str
    page: int
    offset: int = 0
    cursor: Any = None

    def params(self, config: ApiConfig, page_no: int) -> dict[str, Any] | None:
        if config.pagination == "link" and page_no > 1:
            return None  # the next link already carries every parameter
        params = dict(config.params)
        if config.pagination == "page":
            params[config.page_param] = self.page
        elif config.pagination == "offset":
            params[config.offset_param] = self.offset
        elif config.pagination == "cursor" and self.cursor is not None:
            params[config.cursor_param] = self.cursor
        if config.pagination in ("page", "offset", "cursor") and config.limit_param:
            params[config.limit_param] = config.limit
        return params

    def advance(self, config: ApiConfig, n_items: int, data: Any, response) -> bool:
        """Move to the next page; False when the response says there is none."""
        style = config.pagination
        if style == "page":
            self.page += 1
        elif style == "offset":
            self.offset += n_items
        elif style == "cursor":
            nxt = _first(data, config.next_cursor)
            if nxt in (None, "") or nxt == self.cursor:
                return False
            self.cursor = nxt
        elif style == "link":
            link = response.links.get("next", {}).get("url")
            if not link:
                return False
            self.url = str(response.url.join(link))
        return style != "none"


def _page_items(data: Any, selector: str) -> list[Any]:
    found = select(data, selector)
    # `$.data` (the list itself) means the same as `$.data[*]` (its elements)
    if len(found) == 1 and isinstance(found[0], list):
        return found[0]
    return found


def _auth_value(config: ApiConfig) -> str | None:
    """The auth header's value; the env var may hold the bare token or the whole value."""
    if not config.auth_env:
        return None
    token = (os.environ.get(config.auth_env) or "").strip()
    if not token:
        raise ConfigError(f"auth_env: environment variable {config.auth_env} is not set (it should hold the token)")
    scheme = config.auth_prefix.strip().lower()
    if scheme and token.lower().startswith(scheme + " "):
        return token
    return config.auth_prefix + token


# --------------------------------------------------------------------------- records


def _item_record(item: Any, config: ApiConfig, source: str, prov: dict) -> Record:
    selectors = [config.text_field] if isinstance(config.text_field, str) else config.text_field
    texts = [t for sel in selectors for t in select(item, sel) if isinstance(t, str)]
    text = "\n\n".join(texts)
    item_id = _first(item, config.id_field)
    meta: dict[str, Any] = {}
    if config.meta_fields:
        meta["api"] = {name: _meta_value(select(item, sel)) for name, sel in config.meta_fields.items()}
    if item_id is not None and not isinstance(item_id, (dict, list)):
        rid = make_id(source, str(item_id))
        meta["api_id"] = item_id  # the server's own id, to trace a record back
    elif texts:
        rid = make_id(source, "text:" + text)
    else:  # nothing stable but the item itself
        rid = make_id(source, "item:" + json.dumps(item, sort_keys=True, ensure_ascii=False, default=str))
    if not texts:
        meta.update(drop_reason="api_no_text", drop_stage="input",
                    error=f"no string at {config.text_field!r} in the item")
        text = json.dumps(item, ensure_ascii=False, default=str)[:MAX_BAD_BODY]
    url, lang = _first(item, config.url_field), _first(item, config.lang_field)
    return Record(
        id=rid,
        text=text,
        source=source,
        url=str(url) if url is not None else "",
        lang=str(lang) if lang is not None else "",
        meta=meta,
        provenance=dict(prov),
    )


def _meta_value(found: list[Any]) -> Any:
    return found[0] if len(found) == 1 else (found or None)


def _bad_page_record(bad: BadPage, source: str, prov: dict, scrub) -> Record:
    page_url = public_url(str(bad.response.url))
    return Record(
        id=make_id(source, f"{bad.reason.removeprefix('api_')}:{page_url}"),
        text=scrub(bad.response.text)[:MAX_BAD_BODY],  # scrub first: a cut could leave half a secret
        source=source,
        url=page_url,
        meta={"drop_reason": bad.reason, "drop_stage": "input", "bytes_read": bad.bytes_read,
              "error": scrub(f"page {prov['page']} of {prov['endpoint']}: {bad.problem}")},
        provenance=dict(prov),
    )


class ApiSource(Source):
    """Items of a paginated JSON API."""

    name = "api"
    Config = ApiConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        return iter_api(self.config, ctx.base_dir, ctx.work_dir)
