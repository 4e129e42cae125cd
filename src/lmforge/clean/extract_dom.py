"""Main-content extraction on a lexbor (selectolax) tree: prune, score, pick, render.

Why our own extractor rather than trafilatura alone: trafilatura spends most of its time in
XPath pruning over lxml trees (about 15 ms a page), while lexbor parses a page in well under a
millisecond and its CSS selectors run in C. The algorithm is the readability family's, adjusted
on the article-extraction benchmark with general rules only:

1. prune: drop tags that never hold article text, hidden elements and elements whose class/id
   names boilerplate (comments, share bars, sidebars...), unless they hold much of the page's
   paragraph text (layout classes such as "l-sidebar-fixed" wrap whole articles);
2. score: every paragraph-like block adds points (length, commas) to its parent and, less, to
   its grandparents; a candidate's score is discounted by its link density;
3. pick: the best candidate, widened to a common ancestor when the article is split across
   sections, then joined with siblings that score well;
4. render: text blocks in document order, dropping link-dense blocks (menus, "related" lists);
   headings, lists and tables optionally as Markdown.

Lengths count a CJK character twice, so Chinese paragraphs (no spaces, more meaning per
character) reach the same thresholds as English ones of similar content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lmforge.lang import CJK_RE

# Elements that never carry article text. `head` goes too: the title is read before pruning.
JUNK_TAGS = [
    "script", "style", "noscript", "svg", "iframe", "template", "button", "input", "select", "textarea",
    "canvas", "video", "audio", "object", "embed", "nav", "footer", "aside", "menu", "dialog", "head",
    "link", "meta",
]
_JUNK_SELECTOR = ",".join(JUNK_TAGS)
HIDDEN = (
    '[hidden],[aria-hidden="true"],[style*="display:none"],[style*="display: none"],'
    '[style*="visibility:hidden"],[style*="visibility: hidden"]'
)
# Class/id words naming boilerplate, matched where a word starts ("post-comments", "share_bar",
# "sidebarLeft"), so that words merely containing them ("compare") do not count; "ad" must stand alone.
_NEG = re.compile(
    r"(?:^|[^a-z])(comment|disqus|share|sharing|social|related|recommend|newsletter|subscri|promo|advert|ads?(?![a-z])|"
    r"sponsor|banner|cookie|consent|gdpr|popup|modal|sidebar|widget|footer|masthead|navbar|nav|navigation|menu|"
    r"breadcrumb|pagination|pager|tags|byline|author|outbrain|taboola|trending|popular|most-read|read-more|"
    r"signup|login|paywall|toolbar|print|skip|caption|credit|follow|hidden|sr-only|visually-hidden|"
    r"screen-reader|rating|poll|more-stories|teaser|header|topbar|top-bar|bottom|foot|copyright|legal|"
    r"disclaimer|meta|dateline|timestamp|date)"
)
_POS = re.compile(r"(?:^|[^a-z])(article|content|entry|post|story|body|main|text|blog|news)")
# Boilerplate so specific that a positive word beside it ("post-comments") does not save it.
_STRONG = re.compile(
    r"comment|disqus|related|recommend|newsletter|outbrain|taboola|share|social|cookie|sidebar|footer|advert|promo"
)
# Inline tags whose class names say nothing about page structure; never pruned by name.
_NEVER_PRUNE = frozenset({"html", "body", "a", "p", "span", "em", "strong", "b", "i", "h1", "h2", "h3", "li"})

BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "td", "th",
    "tbody", "thead", "tfoot", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "figure", "figcaption",
    "header", "center", "address", "hr", "br", "caption", "details", "summary", "body", "html", "form",
    "fieldset", "hgroup",
})
_INLINE_TAGS = frozenset({
    "span", "a", "em", "strong", "b", "i", "font", "u", "small", "sup", "sub", "abbr", "cite", "q", "mark",
    "time", "code", "s", "strike", "del", "ins", "big", "label", "kbd", "var", "tt", "bdi", "bdo", "nobr",
})
_TABLE_LAYOUT = "p,div,table,ul,ol,pre,blockquote,h1,h2,h3,h4,h5,h6"
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_TAG_WEIGHT = {
    "div": 5, "article": 5, "main": 5, "section": 3, "pre": 3, "td": 3, "blockquote": 3,
    "ol": -3, "ul": -3, "dl": -3, "li": -3, "form": -3, "address": -3, "h1": -5, "h2": -5, "h3": -5, "th": -5,
}
_COMMAS = re.compile(r"[,，、。；;]")
_SENTENCE_END = re.compile(r"[.!?。！？]( |$)")

MIN_BLOCK = 25  # weighted chars for a block to count as a paragraph when scoring
MIN_MASS_PARAGRAPH = 40  # weighted chars for a <p> to count as article mass (the pruning guard)
PROTECT_SHARE = 0.3  # an element holding this share of the paragraph mass is never pruned by name
CLIMB_RATIO = 1.5  # widen the pick to its parent when the parent holds this much more mass


@dataclass(slots=True)
class DomResult:
    text: str
    title: str | None


def weighted_len(text: str) -> int:
    """Characters, with CJK ones counted twice (see the module docstring)."""
    if text.isascii():
        return len(text)
    return len(text) + len(CJK_RE.findall(text))


def _attrs(node: Any) -> str:
    attrs = node.attributes
    return f"{attrs.get('class') or ''} {attrs.get('id') or ''}".lower()


def _has_descendant(node: Any, selector: str) -> bool:
    """lexbor's css() also matches the node itself; only descendants count here."""
    own = node.mem_id
    return any(found.mem_id != own for found in node.css(selector))


def _link_chars(node: Any) -> int:
    return sum(len(a.text()) for a in node.css("a"))


def find_title(tree: Any) -> str | None:
    """og:title first (sites put the bare headline there), then <title>, then the first <h1>."""
    meta = tree.css_first('meta[property="og:title"]')
    if meta is not None:
        content = " ".join((meta.attributes.get("content") or "").split())
        if content:
            return content
    for selector in ("title", "h1"):
        node = tree.css_first(selector)
        if node is not None:
            text = " ".join(node.text().split())
            if text:
                return text
    return None


def extract_dom(html: str, markdown: bool = False) -> DomResult:
    """Parse `html` with lexbor and return the main text and the title (both may be empty/None)."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    title = find_title(tree)
    body = tree.body
    if body is None:
        return DomResult("", title)
    _remove_all(tree.css(_JUNK_SELECTOR))
    mass = _paragraph_mass(body)
    _prune(body, mass)
    chosen = _choose(body, mass)
    if not chosen:
        return DomResult("", title)
    lines: list[str] = []
    for node in chosen:
        _render(node, lines, markdown)
    return DomResult(_join_markdown(lines) if markdown else "\n".join(lines), title)


def _join_markdown(lines: list[str]) -> str:
    """Blank lines between blocks, but consecutive list items stay one list."""
    parts: list[str] = []
    for i, line in enumerate(lines):
        if i:
            same_list = line.startswith("- ") and lines[i - 1].startswith("- ")
            parts.append("\n" if same_list else "\n\n")
        parts.append(line)
    return "".join(parts)


def _remove_all(nodes: list[Any]) -> None:
    """Detach nodes from the tree without freeing them.

    Detaching (decompose(recursive=False)) rather than destroying keeps every other node we hold
    valid, including matches nested inside a removed one; the document frees all at the end. One
    selector for all tags means one pass over the tree, and the time limit can strike between
    calls instead of waiting for one long C call per tag.
    """
    for node in nodes:
        node.decompose(recursive=False)


def _paragraph_mass(body: Any) -> dict[int, int]:
    """Weighted length of real paragraphs under each element, keyed by lexbor node id."""
    mass: dict[int, int] = {0: 0}  # key 0 holds the page total
    for p in body.css("p"):
        n = weighted_len(p.text(strip=True))
        if n < MIN_MASS_PARAGRAPH:
            continue
        mass[0] += n
        node = p.parent
        while node is not None:
            key = node.mem_id
            mass[key] = mass.get(key, 0) + n
            node = node.parent
    return mass


def _prune(body: Any, mass: dict[int, int]) -> None:
    """Remove hidden and boilerplate-named elements, sparing those that hold much of the article."""
    protected = PROTECT_SHARE * mass[0]
    _remove_all([node for node in body.css(HIDDEN) if not mass[0] or mass.get(node.mem_id, 0) <= protected / 3])
    body_chars = len(body.text())
    for node in body.css("[class],[id]"):
        if node.tag in _NEVER_PRUNE:
            continue
        attrs = _attrs(node)
        if not _NEG.search(attrs) or (_POS.search(attrs) and not _STRONG.search(attrs)):
            continue
        if mass[0] and mass.get(node.mem_id, 0) > protected:
            continue
        if len(node.text()) > 0.5 * body_chars:
            continue
        node.decompose(recursive=False)


def _block_text(block: Any) -> tuple[str, Any]:
    """The text a block contributes and the element that receives its score.

    A paragraph scores its parent. A div (section, article) scores itself with its own loose
    text and inline children: sites that write paragraphs as divs with <br>s or spans make the
    div the container of the text.
    """
    if block.tag in ("p", "pre", "td", "blockquote"):
        return block.text(strip=True), block.parent
    parts = []
    for child in block.iter(include_text=True):
        if child.tag == "-text":
            parts.append(child.text_content or "")
        elif child.tag in _INLINE_TAGS:
            parts.append(child.text())
    return " ".join("".join(parts).split()), block


def _initial_score(node: Any) -> float:
    score = float(_TAG_WEIGHT.get(node.tag, 0))
    attrs = _attrs(node)
    if attrs.strip():
        if _NEG.search(attrs):
            score -= 25
        if _POS.search(attrs):
            score += 25
    return score


def _choose(body: Any, mass: dict[int, int]) -> list[Any]:
    """Pick the element(s) holding the article, readability-style (see the module docstring)."""
    scores: dict[int, float] = {}
    nodes: dict[int, Any] = {}
    for block in body.css("p,pre,td,blockquote,div,section,article"):
        text, target = _block_text(block)
        n = weighted_len(text)
        if n < MIN_BLOCK:
            continue
        points = 1 + len(_COMMAS.findall(text)) + min(n / 100, 3)
        node, level = target, 0
        while node is not None and node.tag != "html" and level < 3:
            key = node.mem_id
            if key not in nodes:
                nodes[key] = node
                scores[key] = _initial_score(node)
            scores[key] += points / (1, 2, 6)[level]
            node, level = node.parent, level + 1
    if not scores:
        return []
    ranked = []
    for key, node in nodes.items():
        chars = len(node.text()) or 1
        scores[key] *= 1 - min(1.0, _link_chars(node) / chars)
        ranked.append((scores[key], key))
    ranked.sort(key=lambda item: item[0], reverse=True)
    best_score, best = ranked[0][0], nodes[ranked[0][1]]
    best = _common_ancestor(best, [nodes[k] for s, k in ranked[1:6] if s >= 0.75 * best_score])
    best = _widen(best, mass)
    best_score = max(best_score, scores.get(best.mem_id, 0.0))
    return _with_siblings(best, best_score, scores)


def _ancestor_ids(node: Any) -> set[int]:
    ids = set()
    while node is not None:
        ids.add(node.mem_id)
        node = node.parent
    return ids


def _common_ancestor(best: Any, rivals: list[Any]) -> Any:
    """Three near-equal candidates under one ancestor are parts of one article: take the ancestor."""
    if len(rivals) < 3:
        return best
    chains = [_ancestor_ids(r) for r in rivals]
    node = best.parent
    while node is not None and node.tag not in ("body", "html"):
        if sum(1 for chain in chains if node.mem_id in chain) >= 3:
            return node
        node = node.parent
    return best


def _widen(best: Any, mass: dict[int, int]) -> Any:
    """Climb through wrappers with one child, and to parents holding much more paragraph mass
    (articles split into sections by figures or ads)."""
    while True:
        parent = best.parent
        if parent is None or parent.tag in ("body", "html"):
            return best
        only_child = sum(1 for _ in parent.iter()) == 1
        more_mass = mass.get(parent.mem_id, 0) > CLIMB_RATIO * mass.get(best.mem_id, 0)
        if not (only_child or more_mass):
            return best
        best = parent


def _with_siblings(best: Any, best_score: float, scores: dict[int, float]) -> list[Any]:
    """The pick plus siblings that score well or are plain prose paragraphs."""
    parent = best.parent
    if parent is None or best.tag == "body":
        return [best]
    threshold = max(10.0, best_score * 0.2)
    best_class = best.attributes.get("class")
    chosen = []
    for sibling in parent.iter():
        if sibling.mem_id == best.mem_id:
            chosen.append(sibling)
            continue
        bonus = best_score * 0.2 if best_class and sibling.attributes.get("class") == best_class else 0.0
        score = scores.get(sibling.mem_id)
        if score is not None and score + bonus >= threshold:
            chosen.append(sibling)
        elif sibling.tag == "p":
            text = sibling.text(strip=True)
            n = len(text)
            density = _link_chars(sibling) / n if n else 1.0
            if (n > 80 and density < 0.25) or (0 < n <= 80 and density == 0 and _SENTENCE_END.search(text)):
                chosen.append(sibling)
    return chosen


# --------------------------------------------------------------------------- rendering


class _Lines:
    """Collects inline text runs into blocks; a block mostly made of link text is dropped."""

    def __init__(self, out: list[str]) -> None:
        self.out = out
        self.runs: list[tuple[str, bool]] = []
        self.prefix = ""

    def add(self, text: str, in_link: bool) -> None:
        self.runs.append((text, in_link))

    def flush(self) -> None:
        if not self.runs:
            return
        text = " ".join("".join(t for t, _ in self.runs).split())
        if text:
            link = sum(len("".join(t.split())) for t, in_link in self.runs if in_link)
            if link <= 0.5 * len("".join(text.split())):
                self.out.append(self.prefix + text)
        self.runs.clear()
        self.prefix = ""


def _render(root: Any, out: list[str], markdown: bool) -> None:
    """Depth-first walk with an explicit stack, so deeply nested pages cannot exhaust recursion."""
    lines = _Lines(out)
    stack: list[tuple[Any, bool] | None] = [(root, False)]  # None marks the end of a block
    while stack:
        item = stack.pop()
        if item is None:
            lines.flush()
            continue
        node, in_link = item
        tag = node.tag
        if tag == "-text":
            lines.add(node.text_content or "", in_link)
            continue
        if tag == "-comment":
            continue
        is_block = tag in BLOCK_TAGS
        if is_block:
            lines.flush()
            if tag in ("br", "hr"):
                continue
            if tag == "table" and not _has_descendant(node, _TABLE_LAYOUT):
                _render_table(node, out, markdown)
                continue
            if markdown:
                if tag in _HEADINGS:
                    lines.prefix = "#" * _HEADINGS[tag] + " "
                elif tag == "li":
                    lines.prefix = "- "
            stack.append(None)
        children = list(node.iter(include_text=True))
        link = in_link or tag == "a"
        stack.extend((child, link) for child in reversed(children))
    lines.flush()


def _render_table(table: Any, out: list[str], markdown: bool) -> None:
    """A data table: one line per row, cells separated by tabs (plain) or pipes (Markdown)."""
    rows = []
    for row in table.css("tr"):
        cells = [" ".join(cell.text().split()) for cell in row.css("th,td")]
        if any(cells):
            rows.append(cells)
    if not rows:
        return
    if not markdown:
        out.extend("\t".join(c for c in cells if c) for cells in rows)
        return
    width = max(len(cells) for cells in rows)
    lines = []
    for i, cells in enumerate(rows):
        cells = cells + [""] * (width - len(cells))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if i == 0:
            lines.append("|" + " --- |" * width)
    out.append("\n".join(lines))
