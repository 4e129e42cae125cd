"""Decontamination: drop (or flag) training documents that share an n-gram with an evaluation set.

A model scored on questions it saw in pretraining reports memory, not skill, so documents that
share a long n-gram with any benchmark item are taken out before training. The test is the one
GPT-3 and most later reports use: 13 consecutive words in common, on lowercased text with
punctuation removed. Chinese has no spaces, so Chinese-like text (eval items and documents,
each detected on its own) is compared on 13 consecutive characters instead.

Eval items shorter than n use the whole item as one n-gram (a 9-word question is contamination
when all 9 words appear in order); items shorter than `min_item_tokens` as well are skipped,
because a 3-word answer such as "the United States" is in countless innocent documents.

The eval n-grams are hashed once per process (lazily, when the first document arrives) into a
sorted NumPy array; each document's n-grams are hashed with the same rolling hash and looked up
with `searchsorted`. Hashes are blake2b/splitmix64-based, never Python's `hash()`, so every worker
process (and Ray node) builds the same index.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from lmforge.collect.files import FilesConfig, file_format, read_file
from lmforge.config import StrictModel
from lmforge.errors import ConfigError, InputError
from lmforge.lang import CJK_RE, is_cjk
from lmforge.pipeline.stage import Stage
from lmforge.records import Record
from lmforge.storage import copy_url, is_url, list_remote, local_copy, public_url

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[^\W_]+")  # letters and digits; punctuation, spaces and "_" separate words
_NON_ALNUM = re.compile(r"[\W_]+")
_ROW_PROBLEMS = {"no_text_field", "bad_json", "bad_utf8", "line_too_long", "nul_byte", "bad_csv_row"}  # one bad row; others condemn the file
_STRUCTURED = {"json", "jsonl", "csv", "tsv", "parquet"}
FIELD = "decontaminate.eval_files"


class DecontaminateConfig(StrictModel):
    eval_files: list[str] = Field(
        default_factory=list,
        description="evaluation files, directories or globs (jsonl, json, csv, tsv, parquet, txt, md), local or "
                    "URLs (s3://bucket/evals/*.jsonl, staged into the user cache); relative paths are resolved "
                    "from the current directory when the config is validated",
    )
    eval_tasks: list[str] = Field(
        default_factory=list,
        description="built-in fine-tuning tasks (e.g. zh_sentiment) whose validation and test texts are eval items",
    )
    text_field: str | list[str] = Field(
        "text",
        description="field(s) holding eval text in jsonl/json/csv/parquet; each field is its own item "
                    "(e.g. [question, answer]); txt/md files give one item per non-empty line",
    )
    n: int = Field(13, ge=1, description="word n-gram length for space-separated text")
    char_n: int = Field(13, ge=1, description="character n-gram length for Chinese-like text")
    action: Literal["drop", "flag"] = Field(
        "drop", description="drop contaminated documents (reason 'contaminated') or keep them with meta set"
    )
    min_matches: int = Field(1, ge=1, description="distinct shared n-grams that make a document contaminated")
    min_item_tokens: int = Field(
        8, ge=1, description="eval items shorter than n and than this many words (characters for Chinese) "
                             "are skipped; longer short items count as one whole-item n-gram",
    )

    @field_validator("eval_files")
    @classmethod
    def _resolve(cls, patterns: list[str]) -> list[str]:
        """Absolute paths, so worker processes and Ray nodes with another working directory agree; a URL
        is kept as it is, once the store has listed something under it."""
        resolved = []
        for i, pattern in enumerate(patterns):
            if is_url(pattern):
                try:
                    list_remote(pattern, FIELD)
                except InputError as exc:
                    raise ValueError(f"{exc} (entry {i})") from None
                resolved.append(pattern)
                continue
            path = os.path.abspath(os.path.expanduser(pattern))
            if not expand(path):
                raise ValueError(
                    f"no file matches {pattern!r} (entry {i}; relative paths start at {os.getcwd()})")
            resolved.append(path)
        return resolved

    @model_validator(mode="after")
    def _some_eval_set(self) -> DecontaminateConfig:
        if not self.eval_files and not self.eval_tasks:
            raise ValueError("give eval_files and/or eval_tasks: the evaluation data to protect")
        if self.eval_tasks:
            from lmforge.tasks.builtin import BUILTIN_TASKS

            unknown = [t for t in self.eval_tasks if t not in BUILTIN_TASKS]
            if unknown:
                raise ValueError(f"eval_tasks {unknown} are not built-in tasks; allowed: {sorted(BUILTIN_TASKS)}")
        return self

    @field_validator("text_field")
    @classmethod
    def _fields(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (not value or not all(value)):
            raise ValueError("must be a field name or a non-empty list of field names")
        return value

    @property
    def fields(self) -> list[str]:
        return [self.text_field] if isinstance(self.text_field, str) else list(self.text_field)


def expand(pattern: str) -> list[Path]:
    """Files named by a path, a directory (recursively) or a glob, sorted; a URL's staged local copies.

    In a directory only files of a readable format count, so a stray .DS_Store or notes.docx
    beside the benchmark files is not an error; a file named outright must be readable.
    """
    return [path for path, _ in eval_files(pattern)]


def eval_files(pattern: str) -> list[tuple[Path, str]]:
    """(local file, name) for each file `expand` finds: the name is the path, or the object's public URL."""
    if not is_url(pattern):
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and file_format(p) is not None)
        else:
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        return [(p, p.as_posix()) for p in found]
    local = local_copy(pattern, FIELD)  # one object: that file; a prefix or a glob: a folder of its objects
    if local.is_file():
        return [(local, public_url(pattern))]
    return [(p, copy_url(pattern, local, p))
            for p in sorted(local.rglob("*")) if p.is_file() and file_format(p) is not None]


# --------------------------------------------------------------------------- hashing

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd, so the rolling step is a bijection mod 2**64


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads structured inputs (code points, rolled sums) over 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def word_tokens(norm: str) -> np.ndarray:
    """Hashes of the words of normalized text (punctuation dropped)."""
    words = _TOKEN.findall(norm)
    return np.fromiter((_word_hash(w) for w in words), dtype=np.uint64, count=len(words))


def char_tokens(norm: str) -> np.ndarray:
    """Hashes of the letters and digits of normalized text (spaces and punctuation dropped)."""
    compact = _NON_ALNUM.sub("", norm).encode("utf-32-le", "surrogatepass")
    return _mix(np.frombuffer(compact, dtype=np.uint32).astype(np.uint64) + np.uint64(0x5BD1E995))


def gram_hashes(tokens: np.ndarray, k: int) -> np.ndarray:
    """Hashes of every run of k consecutive tokens; k is folded in so runs of different lengths differ."""
    m = len(tokens) - k + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    acc = np.full(m, k, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            acc = acc * _MULT + tokens[j : j + m]
    return _mix(acc)


# --------------------------------------------------------------------------- the eval index


@dataclass
class _Grams:
    """Eval n-gram hashes of one kind (words or characters), sorted, with the file each came from."""

    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    files: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    lengths: tuple[int, ...] = ()  # run lengths to hash in a document: n and those of whole short items

    @classmethod
    def build(cls, parts: list[tuple[np.ndarray, int]], lengths: set[int]) -> _Grams:
        if not parts:
            return cls()
        hashes = np.concatenate([h for h, _ in parts])
        files = np.concatenate([np.full(len(h), f, np.int32) for h, f in parts])
        pairs = np.unique(np.stack([hashes, files.astype(np.uint64)], axis=1), axis=0)  # sorted by hash
        return cls(pairs[:, 0].copy(), pairs[:, 1].astype(np.int32), tuple(sorted(lengths)))

    def find(self, tokens: np.ndarray) -> np.ndarray:
        """Distinct hashes of the document's runs that are also eval n-grams."""
        if not len(self.hashes):
            return np.empty(0, np.uint64)
        found = []
        for k in self.lengths:
            grams = gram_hashes(tokens, k)
            if len(grams):
                at = np.minimum(np.searchsorted(self.hashes, grams), len(self.hashes) - 1)
                found.append(grams[self.hashes[at] == grams])
        return np.unique(np.concatenate(found)) if found else np.empty(0, np.uint64)

    def files_of(self, matched: np.ndarray) -> set[int]:
        lo = np.searchsorted(self.hashes, matched, "left")
        hi = np.searchsorted(self.hashes, matched, "right")
        return {int(f) for a, b in zip(lo, hi, strict=True) for f in self.files[a:b]}


@dataclass
class EvalIndex:
    names: list[str]  # eval files as shown in meta and counters
    words: _Grams
    chars: _Grams

    def match(self, text: str) -> tuple[int, list[str]]:
        """(distinct eval n-grams the text contains, eval files they come from)."""
        norm = normalize(text)
        n_hits, files = 0, set()
        kinds = [(self.words, word_tokens)]
        if len(self.chars.hashes) and CJK_RE.search(norm):  # char runs only where Chinese can be
            kinds.append((self.chars, char_tokens))
        for grams, tokenize in kinds:
            if len(grams.hashes):
                hits = grams.find(tokenize(norm))
                n_hits += len(hits)
                files |= grams.files_of(hits)
        return n_hits, [self.names[i] for i in sorted(files)]


def _display_names(names: list[str]) -> list[str]:
    """Paths (or URLs) relative to the eval files' common folder: short, yet mmlu/test.jsonl != gsm8k/test.jsonl."""
    parts = [n.split("/") for n in names]
    if len(parts) == 1:
        return [parts[0][-1]]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return ["/".join(p[common:]) for p in parts]


def eval_texts(path: Path, fields: list[str], name: str | None = None) -> Iterator[str]:
    """Eval items of one file; a file that cannot be read at all is a ConfigError."""
    if file_format(path) in _STRUCTURED:
        configs = [FilesConfig(paths=[str(path)], text_field=f) for f in fields]
    else:
        configs = [FilesConfig(paths=[str(path)], text_split="line")]
    for cfg in configs:
        for record in read_file(path, cfg):
            reason = record.drop_reason
            if reason is None:
                yield record.text
            elif reason not in _ROW_PROBLEMS:
                raise ConfigError(f"{FIELD}: cannot use {name or path}: {reason} "
                                  f"({record.meta.get('error', '')})")


def task_texts(name: str) -> Iterator[str]:
    """The validation and test texts of a built-in task (what its scores are computed on)."""
    from lmforge.tasks.builtin import load_task

    data = load_task(name)
    for e in data.val + data.test:
        yield from (t for t in e.texts() if t)


def build_index(config: DecontaminateConfig) -> EvalIndex:
    files = dict(pair for pattern in config.eval_files for pair in eval_files(pattern))  # local path -> name
    if config.eval_files and not files:
        raise ConfigError(f"{FIELD}: no file matches {[public_url(p) if is_url(p) else p for p in config.eval_files]}")
    sources: list[tuple[str, Callable[[], Iterator[str]]]] = [
        *((name, functools.partial(eval_texts, p, config.fields, name)) for p, name in files.items()),
        *((f"task:{t}", functools.partial(task_texts, t)) for t in config.eval_tasks)]
    parts: dict[str, list[tuple[np.ndarray, int]]] = {"words": [], "chars": []}
    lengths: dict[str, set[int]] = {"words": {config.n}, "chars": {config.char_n}}
    items = skipped = 0
    for fi, (path, texts) in enumerate(sources):
        used = 0
        for text in texts():
            norm = normalize(text)
            if is_cjk(norm):
                kind, n, tokens = "chars", config.char_n, char_tokens(norm)
            else:
                kind, n, tokens = "words", config.n, word_tokens(norm)
            k = n if len(tokens) >= n else len(tokens)
            if k < n and k < config.min_item_tokens:
                skipped += 1
                continue
            lengths[kind].add(k)
            parts[kind].append((gram_hashes(tokens, k), fi))
            used += 1
        if not used:
            raise ConfigError(
                f"decontaminate.text_field: no usable eval item with field(s) {config.fields} in {path} "
                f"(items need {config.min_item_tokens}+ words/characters)")
        items += used
    names = _display_names(list(files.values())) if files else []
    index = EvalIndex(names + [f"task:{t}" for t in config.eval_tasks], _Grams.build(parts["words"], lengths["words"]),
                      _Grams.build(parts["chars"], lengths["chars"]))
    log.info("decontaminate: %d eval items from %d files (%d too short, skipped): "
             "%d word and %d char n-grams",
             items, len(sources), skipped, len(index.words.hashes), len(index.chars.hashes))
    return index


_INDEXES: dict[tuple, EvalIndex] = {}


def load_index(config: DecontaminateConfig) -> EvalIndex:
    """The index for this config, built once per process; edited eval files are read again."""
    stamp = []
    for pattern in config.eval_files:
        for p in expand(pattern):
            st = p.stat()
            stamp.append((str(p), st.st_mtime_ns, st.st_size))
    key = (tuple(stamp), tuple(config.eval_tasks), tuple(config.fields), config.n, config.char_n,
           config.min_item_tokens)
    if key not in _INDEXES:
        if len(_INDEXES) >= 4:
            _INDEXES.pop(next(iter(_INDEXES)))
        _INDEXES[key] = build_index(config)
    return _INDEXES[key]


# --------------------------------------------------------------------------- the stage


class Decontaminate(Stage):
    """Drops or flags documents sharing an n-gram (words, or characters for Chinese) with an eval set."""

    name = "decontaminate"
    Config = DecontaminateConfig

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        index: EvalIndex | None = None
        for record in records:
            if index is None:  # built on the first document, so constructing the stage stays cheap
                index = load_index(self.config)
            n_hits, files = index.match(record.text)
            if n_hits < self.config.min_matches:
                yield record
                continue
            self.count("contaminated_docs")
            self.count("matched_ngrams", n_hits)
            for name in files:
                self.count(f"eval:{name}")
            details = {"ngrams": n_hits, "eval_files": files}
            if self.config.action == "drop":
                self.drop(record, "contaminated", **details)
            else:
                record.meta[self.name] = {"contaminated": True, **details}
                yield record
