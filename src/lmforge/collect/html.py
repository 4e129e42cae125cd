"""Charset handling for HTML bytes: HTTP header first, then <meta>, then detection."""

from __future__ import annotations

import re

from lmforge.collect.encoding import decode_bytes

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def declared_charset(html: bytes) -> str | None:
    """The charset a page declares in <meta charset> or <meta http-equiv> within its first 4 KB."""
    match = _META_CHARSET.search(html[:4096])
    return match.group(1).decode("ascii", "replace") if match else None


def header_charset(content_type: str | None) -> str | None:
    """The charset parameter of a Content-Type header value."""
    match = _HEADER_CHARSET.search(content_type or "")
    return match.group(1) if match else None


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, str] | None:
    """(text, codec) using the HTTP charset, else the <meta> charset, else detection; None if undecodable."""
    return decode_bytes(body, header_charset(content_type) or declared_charset(body))
