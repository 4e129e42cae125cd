"""MinHash-LSH near-duplicate removal: real Chinese and English text, keep rule, meta, config, determinism,
the character-vs-word shingle question for Chinese, and a SIGKILL/resume run."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmforge.collect.builtin import corpus_records
from lmforge.dedup import minhash_cluster as mc
from lmforge.dedup.minhash import MinHashDedup
from lmforge.errors import ConfigError
from lmforge.pipeline.stage import Summaries, run_chain
from lmforge.records import Record

HERE = Path(__file__).parent
_WORD = re.compile(r"\w+")


def long_docs(name: str, n: int, min_chars: int) -> list[str]:
    """Consecutive paragraphs of a built-in corpus joined until each text has `min_chars`."""
    out, buf = [], []
    joiner = "" if name in ("peoples_daily", "reviews") else " "
    for record in corpus_records(name):
        buf.append(record.text)
        if sum(map(len, buf)) >= min_chars:
            out.append(joiner.join(buf))
            buf = []
            if len(out) == n:
                return out
    raise AssertionError("corpus too small")


def substitute(text: str, k: int, seed: int, words: bool) -> str:
    """k random substitutions: a word gets a suffix, a CJK character becomes a different one."""
    rng = random.Random(seed)
    units = text.split(" ") if words else list(text)
    for _ in range(k):
        if words:
            i = rng.randrange(len(units))
            units[i] += "x"
        else:
            i = rng.choice([j for j, ch in enumerate(units) if "\u4e00" <= ch <= "\u9fff"])
            units[i] = "鑫" if units[i] != "鑫" else "淼"
    return (" " if words else "").join(units)


def run_stage(records: list[Record], **config):
    stage = MinHashDedup(**config)
    dropped: list[Record] = []
    out, stats = run_chain([stage], records, dropped.append)
    kept = list(out)
    return kept, dropped, stats[0]


def cluster_of(kept: list[Record], dropped: list[Record]) -> dict[str, str]:
    """Record id -> cluster id, for every record in a cluster of two or more."""
    return {r.id: r.meta["minhash_dedup"]["cluster"] for r in kept + dropped if "minhash_dedup" in r.meta}


def shingle_set(text: str, lang: str) -> set[str]:
    """The 5-gram shingles the stage hashes: characters without whitespace for zh, `\\w+` words for en."""
    units = "".join(text.lower().split()) if lang == "zh" else _WORD.findall(text.lower())
    sep = "" if lang == "zh" else " "
    return {sep.join(units[i : i + 5]) for i in range(len(units) - 4)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def unrelated(texts: list[str], lang: str, n: int) -> list[str]:
    """The first n texts whose Jaccard with every earlier pick is below 0.5: the corpora hold a few
    real near-duplicates (the Python docs repeat a paragraph under two topics)."""
    picked: list[tuple[str, set[str]]] = []
    for t in texts:
        s = shingle_set(t, lang)
        if all(jaccard(s, other) < 0.5 for _, other in picked):
            picked.append((t, s))
    assert len(picked) >= n
    return [t for t, _ in picked[:n]]


@pytest.fixture(scope="module")
def bilingual() -> list[Record]:
    """20 Chinese and 20 English unrelated base documents, each followed later by a lightly edited copy."""
    zh = unrelated(long_docs("peoples_daily", 24, 150), "zh", 20)
    en = unrelated(long_docs("python_docs", 24, 500), "en", 20)
    bases = [Record(id=f"zh{i}", text=t, lang="zh") for i, t in enumerate(zh)]
    bases += [Record(id=f"en{i}", text=t, lang="en") for i, t in enumerate(en)]
    copies = [Record(id=f"{r.id}-copy", text=substitute(r.text, 2 if r.lang == "zh" else 1, i, r.lang == "en"),
                     lang=r.lang) for i, r in enumerate(bases)]
    return bases + copies


def test_near_duplicates_found_in_both_languages_and_unrelated_kept(bilingual):
    kept, dropped, stats = run_stage([Record(r.id, r.text, lang=r.lang) for r in bilingual])
    clusters = cluster_of(kept, dropped)
    for i in range(20):
        for lang in ("zh", "en"):
            assert clusters[f"{lang}{i}"] == clusters[f"{lang}{i}-copy"], f"{lang}{i} and its copy not merged"
    families: dict[str, set[str]] = {}
    for doc, cluster in clusters.items():
        families.setdefault(cluster, set()).add(doc.removesuffix("-copy"))
    assert all(len(f) == 1 for f in families.values()), "unrelated documents were merged"
    assert len(kept) == 40 and len(dropped) == 40
    assert stats.dropped == {"near_duplicate": 40} and stats.counters["clusters"] == 40


def test_estimated_jaccard_tracks_true_jaccard(bilingual):
    """The map's signatures agree on about the true share of shared shingles (5-grams)."""
    table = MinHashDedup().map(bilingual)
    sig = table.column("signature").combine_chunks().flatten().to_numpy().reshape(len(bilingual), -1)
    assert table.column("char_shingles").to_pylist() == [r.lang == "zh" for r in bilingual]
    n = len(bilingual) // 2
    for i in range(0, n, 3):  # a base and its copy, then a base and an unrelated base
        for j in (i + n, (i + 1) % n):
            true = jaccard(shingle_set(bilingual[i].text, bilingual[i].lang),
                           shingle_set(bilingual[j].text, bilingual[j].lang))
            assert abs(float(np.mean(sig[i] == sig[j])) - true) < 0.15, (i, j, true)


def every_nth_character_changed(text: str, n: int) -> str:
    """One CJK character in every n replaced, evenly spread (so every clause-level 5-gram is touched)."""
    units = list(text)
    for p in range(n // 2, len(units), n):
        while p < len(units) and not "\u4e00" <= units[p] <= "\u9fff":
            p += 1
        if p < len(units):
            units[p] = "鑫" if units[p] != "鑫" else "淼"
    return "".join(units)


def test_chinese_needs_character_shingles():
    """Chinese has no spaces: whitespace tokens are whole paragraphs and even `\\w+` words are whole
    clauses, so one changed character in 60 (true character-5-gram Jaccard >= 0.83) leaves almost
    no word 5-gram intact and every copy is missed, as by tools that shingle all text by words;
    character 5-grams find every copy."""
    texts = long_docs("peoples_daily", 12, 400)
    assert not any(" " in t for t in texts)
    records = [Record(id=f"d{i}", text=t) for i, t in enumerate(texts)]  # no lang: auto decides by CJK share
    records += [Record(id=f"d{i}-copy", text=every_nth_character_changed(t, 60)) for i, t in enumerate(texts)]
    assert min(jaccard(shingle_set(t, "zh"), shingle_set(every_nth_character_changed(t, 60), "zh"))
               for t in texts) > 0.8

    def merged(shingle: str) -> int:
        kept, dropped, _ = run_stage([Record(r.id, r.text) for r in records], shingle=shingle)
        clusters = cluster_of(kept, dropped)
        return sum(clusters.get(f"d{i}") is not None and clusters.get(f"d{i}") == clusters.get(f"d{i}-copy")
                   for i in range(len(texts)))

    assert merged("char") == len(texts)
    assert merged("auto") == len(texts)
    assert merged("word") == 0


def test_keep_longest_with_ties_to_the_earliest():
    base = " ".join(f"word{i}" for i in range(80))
    records = [
        Record(id="short", text=base),
        Record(id="tie-a", text=base + " extra"),
        Record(id="tie-b", text=base + " other"),
        Record(id="unrelated", text=" ".join(f"term{i}" for i in range(80))),
    ]
    kept, dropped, _ = run_stage(records)
    assert [r.id for r in kept] == ["tie-a", "unrelated"]
    assert kept[0].meta["minhash_dedup"] == {"cluster": "tie-a", "cluster_size": 3}
    assert "minhash_dedup" not in kept[1].meta
    assert [(r.id, r.meta["drop_reason"], r.meta["drop_stage"], r.meta["minhash_dedup"]) for r in dropped] == [
        ("short", "near_duplicate", "minhash_dedup", {"duplicate_of": "tie-a", "cluster": "tie-a", "cluster_size": 3}),
        ("tie-b", "near_duplicate", "minhash_dedup", {"duplicate_of": "tie-a", "cluster": "tie-a", "cluster_size": 3}),
    ]
    kept, dropped, _ = run_stage([Record(r.id, r.text) for r in records], keep="first")
    assert [r.id for r in kept] == ["short", "unrelated"]
    assert {r.meta["minhash_dedup"]["duplicate_of"] for r in dropped} == {"short"}


def test_empty_texts_are_not_clustered():
    records = [Record(id="a", text=""), Record(id="b", text="   "), Record(id="c", text="")]
    kept, dropped, _ = run_stage(records)
    assert [r.id for r in kept] == ["a", "b", "c"] and not dropped


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"bands": 16, "rows": 4}, "minhash_dedup.rows"),
        ({"num_perm": 64}, "minhash_dedup.rows"),
        ({"shingle": "whitespace"}, "minhash_dedup.shingle"),
        ({"keep": "shortest"}, "minhash_dedup.keep"),
        ({"threshold": 1.5}, "minhash_dedup.threshold"),
        ({"char_ngram": 0}, "minhash_dedup.char_ngram"),
        ({"bands_rows": 3}, "minhash_dedup.bands_rows"),
    ],
)
def test_config_errors_name_the_field(config, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        MinHashDedup(config)


def test_config_accepts_consistent_bands_and_rows():
    assert MinHashDedup(num_perm=64, bands=8, rows=8).config.bands == 8
    with pytest.raises(ConfigError, match=r"bands \* rows must equal num_perm, but 16 \* 4 = 64 != 128"):
        MinHashDedup(rows=4)


def test_sharded_reduce_equals_one_shard_and_map_is_deterministic(bilingual):
    records = [Record(r.id, r.text, lang=r.lang) for r in bilingual]
    stage = MinHashDedup()
    whole = stage.map(records)
    assert whole.equals(MinHashDedup().map(records)), "a fresh stage must hash identically"
    one = stage.reduce(Summaries([("all", whole)]))["all"]
    parts = [records[i : i + 13] for i in range(0, len(records), 13)]
    summaries = Summaries([(f"{k:05d}", stage.map(p)) for k, p in enumerate(parts)])
    sharded = stage.reduce(summaries)
    assert [sharded[sid].num_rows for sid in summaries.ids] == [len(p) for p in parts]
    import pyarrow as pa

    assert pa.concat_tables([sharded[sid] for sid in summaries.ids]).equals(one)


def test_hashing_does_not_depend_on_pythonhashseed(bilingual):
    code = (
        "import sys, json\n"
        "from lmforge.dedup.minhash import MinHashDedup\n"
        "from lmforge.records import Record\n"
        "texts = json.loads(sys.stdin.read())\n"
        "t = MinHashDedup().map([Record(id=str(i), text=x) for i, x in enumerate(texts)])\n"
        "print(json.dumps([t.column(c).to_pylist() for c in t.column_names if c.startswith('band_')]))\n"
    )
    texts = [r.text for r in bilingual[:10]]
    got = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, timeout=120, check=True)
    here = MinHashDedup().map([Record(id=str(i), text=x) for i, x in enumerate(texts)])
    assert json.loads(got.stdout) == [here.column(c).to_pylist() for c in here.column_names if c.startswith("band_")]


def test_union_find_matches_a_reference():
    rng = np.random.default_rng(0)
    n = 300
    u, v = rng.integers(0, n, 200), rng.integers(0, n, 200)
    parent = np.arange(n)
    mc.union(parent, u, v)
    ref = list(range(n))

    def find(x: int) -> int:
        while ref[x] != x:
            x = ref[x]
        return x

    for a, b in zip(u.tolist(), v.tolist(), strict=True):
        ra, rb = find(a), find(b)
        ref[max(ra, rb)] = min(ra, rb)
    assert parent.tolist() == [find(x) for x in range(n)]  # roots are each component's smallest index


def test_bucket_pairs_small_buckets_all_pairs_large_ones_a_star():
    keys = np.array([5, 9, 5, 7, 9, 5], dtype=np.uint64)
    members = np.arange(6)
    u, v = mc.bucket_pairs(keys, members, all_pairs_up_to=8)
    assert sorted(zip(u.tolist(), v.tolist(), strict=True)) == [(0, 2), (0, 5), (1, 4), (2, 5)]
    u, v = mc.bucket_pairs(keys, members, all_pairs_up_to=2)
    assert sorted(zip(u.tolist(), v.tolist(), strict=True)) == [(0, 2), (0, 5), (1, 4)]
    assert mc.agreement_needed(128, 0.8) == 94


# --------------------------------------------------------------------------- SIGKILL and resume

STAGES = ["strip_html: {}", "normalize: {}", "length_filter: {min_chars: 10}", "exact_dedup: {}",
          '"slowdedup:SlowMinHashDedup": {sleep: 0.12}']
SEG = "stages/03-minhash_dedup"


def kill_when(proc: subprocess.Popen, directory: Path, pattern: str, count: int) -> int:
    deadline = time.time() + 120
    while time.time() < deadline and len(list(directory.glob(pattern))) < count and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list(directory.glob(pattern)))


def test_sigkill_in_map_and_in_apply_then_rerun_equals_uninterrupted(make_recipe, tmp_path, snapshot, lmforge_cli):
    def lmforge(*args: str, wait: bool = True):
        return lmforge_cli(*args, path=HERE, wait=wait)

    recipe = make_recipe(shard_size=20, workers=2, stages=STAGES)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    seg = killed / SEG
    proc = lmforge("run", str(recipe), "--out", str(killed), wait=False)
    done = kill_when(proc, seg / "map", "summary-*.done", 3)
    assert 3 <= done < 18 and not (seg / "reduce" / "reduce.done").exists(), "first kill should land in map"
    proc = lmforge("run", str(recipe), "--out", str(killed), wait=False)
    done = kill_when(proc, seg, "shard-*.done", 3)
    assert 3 <= done < 18 and (seg / "reduce" / "reduce.done").exists(), "second kill should land in apply"
    resumed = lmforge("run", str(recipe), "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    straight = lmforge("run", str(recipe), "--out", str(clean))
    assert straight.returncode == 0, straight.stderr

    a, b = snapshot(killed), snapshot(clean)
    assert a.keys() == b.keys() and a == b
    assert not list(killed.rglob(".*.tmp")), "temporary files left behind"
    stats = json.loads((killed / "stats.json").read_text())
    assert stats["totals"]["dropped"]["near_duplicate"] > 50
    assert stats["totals"]["dropped"]["exact_duplicate"] == 42
    strip = [(s["name"], s["in"], s["out"], s["dropped"], s.get("counters")) for s in stats["stages"]]
    assert strip == [(s["name"], s["in"], s["out"], s["dropped"], s.get("counters"))
                     for s in json.loads((clean / "stats.json").read_text())["stages"]]
