"""Main-content extraction from HTML: the `extract` stage and `extract_html` for library use.

The work is done by our own lexbor-based extractor (`extract_dom`), which on the
article-extraction benchmark is both more accurate and about ten times faster than trafilatura.
When it finds (almost) nothing, trafilatura gets a second try: some pages keep their text in
markup the scorer does not favour, and trafilatura's cascade of heuristics is a good safety
net for the few pages where that happens.

The per-document time limit: a pathological page (hundreds of thousands of nested elements, a
20 MB dump) must not stall a worker. On the main thread of a Unix process, which is where
process-pool and Ray workers run stages, a SIGALRM interval timer interrupts the extraction.
Elsewhere (a worker thread, Windows) signals cannot be used, so the limit becomes a size cap:
documents longer than `timeout * untimed_chars_per_second` characters are given up up front.
Either way the record is dropped with reason `extract_timeout`.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from pydantic import Field

from lmforge.config import StrictModel
from lmforge.pipeline.stage import Drop, Transform
from lmforge.records import Record

log = logging.getLogger(__name__)

_LOOKS_HTML = re.compile(r"<\s*(!doctype\s+html|html|head|body|div|p|article|section|span|table|br|a\s)[\s>/]", re.I)
_HTML_TYPES = ("html", "xhtml", "xml")
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)[^<>]*?(/?)>")
# Tags that never nest: void elements, and elements whose end tag is implied by the next sibling.
_FLAT_TAGS = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
    "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "tbody", "thead", "tfoot", "colgroup",
    "rb", "rt", "rp", "param", "keygen", "basefont", "frame", "isindex",
})
# Below this many '<' a page cannot nest deep enough to make parsing slow (< 0.1 s).
_DEPTH_CHECK_TAGS = 10_000


class ExtractConfig(StrictModel):
    timeout: float = Field(1.0, ge=0, description="seconds per document; 0 disables the limit")
    include_title: bool = Field(True, description="put the title as the first line of the text")
    markdown: bool = Field(False, description="headings, lists and tables as Markdown")
    min_chars: int = Field(25, ge=0, description="drop as extract_empty when the body text is shorter")
    fallback: Literal["trafilatura", "none"] = Field(
        "trafilatura", description="second extractor tried when ours finds less than fallback_below_chars"
    )
    fallback_below_chars: int = Field(250, ge=0)
    untimed_chars_per_second: int = Field(
        5_000_000, gt=0, description="size cap per second of timeout where no timer can run (worker threads)"
    )
    max_depth: int = Field(
        3000, gt=0, description="give up on pages nested deeper than this (the HTML parser is quadratic in depth)"
    )


class ExtractTimeout(Exception):
    """Extraction of one document ran past its time limit."""


def extract_html(html: str, config: ExtractConfig | None = None) -> tuple[str, str | None]:
    """Main text and title of an HTML page. Never raises on bad HTML: returns ("", None) instead.

    The time limit is not applied here (a library caller may be on any thread); wrap the call in
    `time_limit` or use the `Extract` stage for that. ExtractTimeout from an enclosing
    `time_limit` does propagate.
    """
    config = config or ExtractConfig()
    try:
        text, title, _ = _extract(html, config)
    except ExtractTimeout:
        raise
    except Exception as exc:  # a bug in a parser must not stop a corpus; the stage counts these
        log.debug("extraction failed: %s: %s", type(exc).__name__, exc)
        return "", None
    return _with_title(text, title, config), title


def _extract(html: str, config: ExtractConfig) -> tuple[str, str | None, str]:
    """(body text, title, method) without the title line.

    method is "lexbor", "trafilatura", or "fallback_unavailable" when the fallback was wanted but
    trafilatura cannot be imported (the stage counts those, so a broken install never passes silently).
    """
    from lmforge.clean.extract_dom import extract_dom

    result = extract_dom(html, markdown=config.markdown)
    text, method = result.text, "lexbor"
    if config.fallback == "trafilatura" and len(text) < config.fallback_below_chars:
        trafilatura = _trafilatura_module()
        if trafilatura is None:
            method = "fallback_unavailable"
        else:
            other = _trafilatura(trafilatura, html, config.markdown)
            if len(other) > len(text):
                text, method = other, "trafilatura"
    return text.strip(), result.title, method


_TRAFILATURA: list = []  # [module or None] once the import has been tried in this process


def _trafilatura_module():
    """trafilatura, or None with one warning per process when it cannot be imported.

    The import fails not only when trafilatura is absent but also when a dependency it needs at
    import time is (lxml >= 6 moved `lxml.html.clean` into the separate lxml_html_clean package).
    """
    if not _TRAFILATURA:
        try:
            import trafilatura
        except ImportError as exc:
            log.warning("extract: the trafilatura fallback is unavailable (%s); pages our extractor finds "
                        "(almost) empty stay empty. Install it with: pip install 'lmforge[clean]'", exc)
            trafilatura = None
        else:
            logging.getLogger("trafilatura").setLevel(logging.ERROR)
        _TRAFILATURA.append(trafilatura)
    return _TRAFILATURA[0]


def _trafilatura(trafilatura, html: str, markdown: bool) -> str:
    """Trafilatura with the settings that score best on the benchmark (precision, no comments)."""
    text = trafilatura.extract(
        html, favor_precision=True, include_comments=False, output_format="markdown" if markdown else "txt"
    )
    return text or ""


def _with_title(text: str, title: str | None, config: ExtractConfig) -> str:
    if config.include_title and title and text and not text.startswith(title):
        return f"{'# ' if config.markdown else ''}{title}\n\n{text}"
    return text


# --------------------------------------------------------------------------- time limit


def timer_available() -> bool:
    """SIGALRM timers only work on the main thread of a Unix process."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float) -> Iterator[bool]:
    """Raise ExtractTimeout inside the block after `seconds`; yields whether a timer is armed.

    A timer that someone else had set is restored afterwards, less the time spent here.
    """
    if seconds <= 0 or not timer_available():
        yield False
        return
    armed = True

    def on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
        if armed:
            raise ExtractTimeout(f"extraction took longer than {seconds:g} s")

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer[0] > 0:
            remaining = max(previous_timer[0] - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_timer[1])


def nesting_depth(html: str, stop_at: int) -> int:
    """Upper estimate of element nesting, stopping early once past `stop_at`.

    Why: lexbor's parser takes time quadratic in nesting depth (200,000 nested divs: over a
    minute) inside one C call that no signal can interrupt, so such pages are refused before
    parsing. Only pages with very many tags are scanned, so ordinary pages pay nothing.
    """
    if html.count("<") < _DEPTH_CHECK_TAGS:
        return 0
    depth = deepest = 0
    for match in _TAG.finditer(html):
        closing, name, self_closing = match.groups()
        name = name.lower()
        if self_closing or name in _FLAT_TAGS:
            continue
        if closing:
            depth = max(0, depth - 1)
        else:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_at:
                    break
    return deepest


# --------------------------------------------------------------------------- stage


def looks_like_html(record: Record) -> bool:
    """HTML by declared content type; without one, by the presence of common tags near the start."""
    content_type = str(record.provenance.get("content_type") or "").lower()
    if content_type:
        return any(t in content_type for t in _HTML_TYPES)
    return bool(_LOOKS_HTML.search(record.text[:4096]))


class Extract(Transform):
    """Replaces HTML in `record.text` with the page's main text; the title goes to meta["extract"]."""

    name = "extract"
    Config = ExtractConfig

    def apply(self, record: Record) -> Record | Drop:
        if not looks_like_html(record):
            return record
        reason = self._apply(record)
        return record if reason is None else Drop(reason)

    def _apply(self, record: Record) -> str | None:
        """Extract in place; returns a drop reason, or None to keep the record."""
        cfg = self.config
        html = record.text
        started = time.perf_counter()
        if cfg.timeout > 0 and not timer_available() and len(html) > cfg.timeout * cfg.untimed_chars_per_second:
            record.meta.setdefault(self.name, {}).update(chars_in=len(html), timer=False)
            return "extract_timeout"
        if cfg.timeout > 0 and nesting_depth(html, cfg.max_depth) > cfg.max_depth:
            record.meta.setdefault(self.name, {}).update(chars_in=len(html), too_deep=True)
            return "extract_timeout"
        try:
            with time_limit(cfg.timeout):
                text, title, method = _extract(html, cfg)
        except ExtractTimeout:
            record.meta.setdefault(self.name, {}).update(chars_in=len(html), seconds=round(
                time.perf_counter() - started, 3))
            return "extract_timeout"
        except Exception as exc:  # bad data never raises (ARCHITECTURE.md): quarantine it with the error
            record.meta.setdefault(self.name, {})["error"] = f"{type(exc).__name__}: {exc}"[:200]
            return "extract_error"
        record.meta[self.name] = {"title": title, "method": method, "chars_in": len(html)}
        if method == "fallback_unavailable":
            self.count("fallback_unavailable")
        if len(text) < cfg.min_chars:
            return "extract_empty"
        record.text = _with_title(text, title, cfg)
        return None
