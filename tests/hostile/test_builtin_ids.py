"""Built-in corpus ids are unique and stable (issue 19, item 20).

`python_docstrings` named docstrings by bare function name, so `difflib.py:__init__#1` meant two or
three different texts. An id must name one text, and the same one on every load, in every process
(hash randomisation differs between processes, so the second load runs in a child).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from lmforge.collect.builtin import CORPORA, corpus_records

DIGEST = """
import hashlib, json, sys
from lmforge.collect.builtin import CORPORA, corpus_records
out = {}
for name in CORPORA:
    h = hashlib.sha256()
    for r in corpus_records(name):
        h.update(r.id.encode() + b"\\0" + hashlib.sha256(r.text.encode()).digest())
    out[name] = h.hexdigest()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def loads():
    """Every corpus loaded here while a child process loads it too (in parallel: the stdlib parse is slow)."""
    child = subprocess.Popen([sys.executable, "-c", DIGEST], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONHASHSEED": "12345"})
    records = {name: [(r.id, r.url, r.text) for r in corpus_records(name)] for name in CORPORA}
    out, _ = child.communicate(timeout=300)
    assert child.returncode == 0
    return records, json.loads(out)


def test_every_builtin_id_is_unique_and_stable_across_loads(loads):
    records, other_process = loads
    for name in CORPORA:
        seen: dict[str, str] = {}
        h = hashlib.sha256()
        for rid, url, text in records[name]:
            assert rid not in seen, f"{name}: id {rid} ({url}) names two records: {seen[rid]!r} / {text[:60]!r}"
            seen[rid] = text[:60]
            h.update(rid.encode() + b"\0" + hashlib.sha256(text.encode()).digest())
        assert seen, f"{name} is empty"
        assert other_process[name] == h.hexdigest(), f"{name}: a second load (another process) gave other ids or texts"


def test_docstring_locators_name_the_class(loads):
    """The locator is the qualified name, so a method's id says which class it belongs to."""
    urls = {url for _, url, _ in loads[0]["python_docstrings"]}
    assert {"difflib.py:SequenceMatcher.__init__#1", "difflib.py:HtmlDiff.__init__#1"} <= urls
    assert not any(u.startswith("difflib.py:__init__#") for u in urls)
