"""The report page: blocks (figures, tables, text) in sections, rendered to one self-contained HTML file.

Everything a run produced is untrusted text (crawled pages, user labels, prompts), so every
string is escaped here, in one place; only the SVG of our own charts goes in as markup. The
page loads nothing: CSS is inline, charts are inline SVG, and fonts are lists of local families
with CJK fallbacks, so it opens offline and from an e-mail attachment alike.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FONT_STACK = ('system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", '
              '"Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", '
              '"WenQuanYi Micro Hei", sans-serif')
MONO_STACK = 'ui-monospace, "SFMono-Regular", Menlo, Consolas, "Noto Sans Mono CJK SC", "Noto Sans Mono", monospace'
MAX_CELL = 400  # characters shown per table cell; longer text ends with an ellipsis


@dataclass
class Figure:
    svg: str  # produced by plots.Chart: trusted markup
    title: str
    caption: str = ""


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    wide_text: bool = False  # long free text (samples): wrap, left-align every column
    kv: bool = False  # a key/value list: no header row, values left-aligned


@dataclass
class Grid:
    """Small tables side by side (e.g. one per config section)."""

    blocks: list[Any]


@dataclass
class Text:
    text: str
    kind: str = "p"  # "p", "note" (muted), "error"


@dataclass
class Details:
    summary: str
    blocks: list[Any]
    open: bool = False


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A table value as text: thousands separators, 4 significant digits, JSON for structures."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if 100 <= abs(v) < 1e12:
            return f"{v:,.1f}"
        if v == 0 or abs(v) >= 1e-4:
            return f"{v:.4g}"
        return f"{v:.3e}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _cell(value: Any) -> str:
    text = fmt(value)
    if len(text) > MAX_CELL:
        text = text[: MAX_CELL - 1] + "…"
    numeric = isinstance(value, numbers.Number) and not isinstance(value, bool)
    return f'<td class="num">{esc(text)}</td>' if numeric else f"<td>{esc(text)}</td>"


def render_block(block: Any) -> str:
    if isinstance(block, Figure):
        caption = f'<p class="note">{esc(block.caption)}</p>' if block.caption else ""
        return (f'<figure class="chart"><figcaption>{esc(block.title)}</figcaption>{block.svg}{caption}'
                "</figure>")
    if isinstance(block, Table):
        head = "" if block.kv else "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.header) + "</tr></thead>"
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in block.rows)
        cls = " ".join(["table", *(["wide"] if block.wide_text else []), *(["kv"] if block.kv else [])])
        caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
        return f'<div class="scroll"><table class="{cls}">{caption}{head}<tbody>{body}</tbody></table></div>'
    if isinstance(block, Text):
        cls = {"p": "", "note": ' class="note"', "error": ' class="error"'}[block.kind]
        return f"<p{cls}>{esc(block.text)}</p>"
    if isinstance(block, Grid):
        return f'<div class="tables">{"".join(render_block(b) for b in block.blocks)}</div>'
    if isinstance(block, Details):
        inner = "".join(render_block(b) for b in block.blocks)
        return f'<details{" open" if block.open else ""}><summary>{esc(block.summary)}</summary>{inner}</details>'
    raise TypeError(f"unknown report block {type(block).__name__}")


def _group(blocks: Sequence[Any]) -> str:
    """Consecutive figures share a responsive grid; everything else flows full width."""
    out, charts = [], []
    for block in [*blocks, None]:
        if isinstance(block, Figure):
            charts.append(render_block(block))
            continue
        if charts:
            out.append(f'<div class="charts">{"".join(charts)}</div>')
            charts = []
        if block is not None:
            out.append(render_block(block))
    return "".join(out)


def render_page(title: str, facts: Mapping[str, Any], sections: Sequence[Section]) -> str:
    """The whole document: header facts, a table of contents, then each section."""
    toc = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
    facts_html = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(fmt(v))}</dd></div>" for k, v in facts.items())
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{_group(s.blocks)}</section>'
                   for s in sections)
    made = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="lmforge report">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><dl class="facts">{facts_html}</dl>
<nav><ol>{toc}</ol></nav></header>
<main>{body}</main>
<footer>Written by <code>lmforge report</code> on {esc(made)}. Self-contained: opens offline.</footer>
</body>
</html>
"""


_CSS = f"""
:root {{ color-scheme: light; --ink: #1d2330; --muted: #5d6675; --line: #dfe3ea; --accent: #3366aa; }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; font-family: {FONT_STACK}; color: var(--ink); background: #f6f7f9; line-height: 1.45; }}
header, main, footer {{ max-width: 1280px; margin: 0 auto; padding: 0 24px; }}
header {{ padding-top: 24px; }}
h1 {{ font-size: 26px; margin: 0 0 12px; }}
h2 {{ font-size: 20px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--accent); }}
section {{ background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 20px;
  margin: 18px 0; }}
.facts {{ display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0 0 12px; }}
.facts dt {{ font-size: 12px; color: var(--muted); }}
.facts dd {{ margin: 0; font-weight: 600; }}
nav ol {{ display: flex; flex-wrap: wrap; gap: 6px 18px; padding: 0; margin: 0; list-style: none; }}
nav a {{ color: var(--accent); text-decoration: none; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 16px;
  margin-bottom: 12px; }}
.tables {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 0 24px; }}
figure.chart {{ margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px; }}
figure.chart figcaption {{ font-weight: 600; margin-bottom: 6px; }}
figure.chart svg {{ width: 100%; height: auto; display: block; }}
.scroll {{ overflow-x: auto; margin: 8px 0 12px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
caption {{ text-align: left; font-weight: 600; padding: 4px 0; white-space: nowrap; }}
th, td {{ border-bottom: 1px solid var(--line); padding: 4px 10px; vertical-align: top; text-align: left; }}
th {{ background: #eef1f5; position: sticky; top: 0; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
table.wide td {{ white-space: pre-wrap; word-break: break-word; max-width: 60ch; }}
table.wide td.num {{ white-space: nowrap; }}
table.kv td.num {{ text-align: left; }}
table.kv td:first-child {{ color: var(--muted); white-space: nowrap; }}
details {{ margin: 8px 0; }}
summary {{ cursor: pointer; font-weight: 600; }}
p.note {{ color: var(--muted); font-size: 13px; margin: 4px 0 10px; }}
p.error {{ color: #a02020; background: #fff0f0; padding: 6px 10px; border-radius: 4px; }}
code, pre {{ font-family: {MONO_STACK}; }}
footer {{ color: var(--muted); font-size: 12px; padding-bottom: 24px; }}
"""
