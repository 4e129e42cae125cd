"""Line/paragraph dedup: boilerplate repeated across documents is removed, content and rare lines stay."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.dedup.lines import LineDedup, split_units
from lmforge.errors import ConfigError
from lmforge.flow import run_recipe
from lmforge.flow.recipe import load_recipe
from lmforge.pipeline import run_chain
from lmforge.pipeline.stage import Summaries
from lmforge.records import Record

SUBSCRIBE = "Subscribe to our newsletter for weekly updates."  # docs 0, 4, 8: one per shard of 4
RIGHTS = "© 2024 Example News. All rights reserved."  # docs 1, 5: below the threshold of 3
QR = "扫描二维码关注我们的微信公众号"  # docs 2, 3, 6, 9
DISCLAIMER = "本文仅代表作者观点，与本站无关。"  # docs 3, 7
CONTENT = [
    "The Python language reference describes the exact syntax and semantics of the language.",
    "A function definition is an executable statement that binds the function name to a function object.",
    "人民日报讯，新年伊始，各地群众以多种方式欢度元旦佳节。",
    "这本书的内容很好，印刷清晰，送货也很快，值得推荐给大家。",
    "Names refer to objects and are introduced by name binding operations such as assignment.",
    "The global statement is a declaration which holds for the entire current code block.",
    "酒店的位置不错，但是房间的隔音太差了，晚上睡不好觉。",
    "价格要是能再低点就更好了！快递的服务态度不是很好。",
    "Exceptions are a means of breaking out of the normal flow of control of a code block.",
]
EXTRA = {0: [SUBSCRIBE], 1: [RIGHTS], 2: [QR], 3: [QR, DISCLAIMER], 4: [SUBSCRIBE], 5: [RIGHTS],
         6: [QR], 7: [DISCLAIMER], 8: [SUBSCRIBE]}


def corpus() -> list[Record]:
    """Ten documents: a short menu line 'Home' everywhere, content, boilerplate; doc 9 is only boilerplate."""
    docs = []
    for i, content in enumerate(CONTENT):
        docs.append(Record(id=f"d{i}", text="\n".join(["Home", content, *EXTRA[i]])))
    docs.append(Record(id="d9", text=f"{QR}\n\n{QR}\n"))
    return docs


def run_sharded(stage: LineDedup, shards: list[list[Record]]) -> tuple[list, list, dict]:
    """map per shard -> reduce once -> apply per shard, as the runner does, in memory."""
    summaries = Summaries([(f"{i:05d}", stage.map(s)) for i, s in enumerate(shards)])
    decisions = stage.reduce(summaries)
    outputs, dropped, counters = [], [], {}
    for i, shard in enumerate(shards):
        out, stats = run_chain([stage.applier(decisions[f"{i:05d}"])], shard, dropped.append)
        outputs.append(list(out))
        for k, v in stats[0].counters.items():
            counters[k] = counters.get(k, 0) + v
    return outputs, dropped, counters


def texts(records: list[Record]) -> dict[str, str]:
    return {r.id: r.text for r in records}


def test_removes_lines_in_at_least_min_docs_documents_across_shards():
    docs = corpus()
    outputs, dropped, counters = run_sharded(LineDedup(min_docs=3), [docs[0:4], docs[4:8], docs[8:]])
    kept = texts([r for shard in outputs for r in shard])
    assert kept == {
        "d0": f"Home\n{CONTENT[0]}",
        "d1": f"Home\n{CONTENT[1]}\n{RIGHTS}",  # 2 documents < min_docs: kept
        "d2": f"Home\n{CONTENT[2]}",
        "d3": f"Home\n{CONTENT[3]}\n{DISCLAIMER}",
        "d4": f"Home\n{CONTENT[4]}",
        "d5": f"Home\n{CONTENT[5]}\n{RIGHTS}",
        "d6": f"Home\n{CONTENT[6]}",
        "d7": f"Home\n{CONTENT[7]}\n{DISCLAIMER}",
        "d8": f"Home\n{CONTENT[8]}",
    }
    # 'Home' is in every document but shorter than min_chars, so it is not counted
    assert [(r.id, r.drop_reason, r.meta["line_dedup"]) for r in dropped] == [
        ("d9", "line_dedup_empty", {"lines_removed": 2})]
    assert dropped[0].text == f"{QR}\n\n{QR}\n", "quarantine keeps the original text"
    assert counters == {"lines_removed": 3 + 5, "docs_changed": 7}  # SUBSCRIBE x3, QR x5 (twice in d9)
    assert {r.id: r.meta.get("line_dedup") for shard in outputs for r in shard}["d3"] == {"lines_removed": 1}


def test_threshold_on_both_sides_and_repeats_within_a_document_count_once():
    docs = corpus()
    at_two = texts(LineDedup(min_docs=2).run(corpus()))
    assert RIGHTS not in at_two["d1"] and DISCLAIMER not in at_two["d7"]
    at_four = texts(LineDedup(min_docs=4).run(docs))
    assert SUBSCRIBE in at_four["d0"] and QR not in at_four["d2"]  # 3 documents < 4 <= 4 documents
    # d9 holds QR twice; with it, QR is in 4 documents, not 5
    assert QR in texts(LineDedup(min_docs=5).run(corpus()))["d9"]


SPELLINGS = [
    "Read more\nSUBSCRIBE  to our   newsletter for weekly updates.\nFirst story about the harbour.",
    "Read more\nSubscribe to our newsletter for weekly updates.\nSecond story about the market.",
    "Read more\n  subscribe to our newsletter for weekly updates.  \nThird story about the weather.",
]


def spellings() -> list[Record]:
    return [Record(id=str(i), text=t) for i, t in enumerate(SPELLINGS)]


def test_min_chars_and_normalize():
    out = texts(LineDedup(min_docs=3, min_chars=10).run(spellings()))
    assert out == {"0": "Read more\nFirst story about the harbour.",  # 'read more' is 9 characters
                   "1": "Read more\nSecond story about the market.",
                   "2": "Read more\nThird story about the weather."}
    shorter = texts(LineDedup(min_docs=3, min_chars=5).run(spellings()))
    assert shorter["1"] == "Second story about the market."
    exact = texts(LineDedup(min_docs=3, normalize=False).run(spellings()))
    assert exact == {str(i): t for i, t in enumerate(SPELLINGS)}  # three spellings: none is in 3 docs


def test_keep_first_keeps_the_first_copy_in_shard_order():
    docs = corpus()
    stage = LineDedup(min_docs=3, keep_first=True)
    outputs, dropped, _ = run_sharded(stage, [docs[0:4], docs[4:8], docs[8:]])
    kept = texts([r for shard in outputs for r in shard])
    assert kept["d0"].endswith(SUBSCRIBE) and SUBSCRIBE not in kept["d4"] + kept["d8"]
    assert kept["d2"].endswith(QR) and QR not in kept["d3"] + kept["d6"]
    assert [r.id for r in dropped] == ["d9"]


def test_paragraph_unit():
    notice = "Cookies help us deliver our services.\nBy using them you agree to our use of cookies."
    docs = [Record(id=str(i), text=f"{body}\n\n{notice}\n \n{tail}") for i, (body, tail) in enumerate([
        ("First article body.\nIt has two lines.", "Comments are closed."),
        ("Second article body.", "Comments are closed."),
        ("第三篇文章的正文。", "评论已关闭，谢谢阅读本文。"),
    ])]
    units, seps = split_units(docs[0].text, "paragraph")
    assert units == ["First article body.\nIt has two lines.", notice, "Comments are closed."]
    assert seps == ["", "\n\n", "\n \n"]
    out = texts(LineDedup(unit="paragraph", min_docs=3).run(docs))
    assert out == {"0": "First article body.\nIt has two lines.\n \nComments are closed.",
                   "1": "Second article body.\n \nComments are closed.",
                   "2": "第三篇文章的正文。\n \n评论已关闭，谢谢阅读本文。"}


def test_keep_empty_documents_when_asked():
    out = list(LineDedup(min_docs=3, drop_empty=False).run(corpus()))
    assert len(out) == 10 and out[-1].text == "" and out[-1].meta["line_dedup"] == {"lines_removed": 2}


def test_partitioned_reduce_equals_single_pass_and_is_deterministic():
    def result(**cfg) -> tuple[list[dict], list[str]]:
        docs = corpus()
        outputs, dropped, _ = run_sharded(LineDedup(min_docs=3, **cfg), [docs[0:3], docs[3:6], docs[6:]])
        return [r.to_dict() for s in outputs for r in s], [r.id for r in dropped]

    one = result()
    assert one == result()
    assert one == result(reduce_partition_rows=2)  # the hash space split into several partitions
    assert result(keep_first=True) == result(keep_first=True, reduce_partition_rows=3)


def test_summary_is_aggregated_per_shard():
    docs = corpus()
    table = LineDedup(min_docs=3).map(docs)
    assert table.column_names == ["hash", "n_docs"]
    counts = sorted(table.column("n_docs").to_pylist(), reverse=True)
    assert counts[:4] == [4, 3, 2, 2]  # QR, SUBSCRIBE, RIGHTS, DISCLAIMER; every content line once
    assert table.num_rows == len(CONTENT) + 4
    assert LineDedup(keep_first=True).map(docs).column_names == ["hash", "n_docs", "first_row"]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"line_dedup\.min_docs"):
        LineDedup(min_docs=1)
    with pytest.raises(ConfigError, match=r"line_dedup\.unit"):
        LineDedup(unit="sentence")


def test_recipe_run_over_several_shards(tmp_path: Path):
    (tmp_path / "corpus").mkdir()
    rows = [json.dumps(r.to_dict(), ensure_ascii=False) for r in corpus()]
    (tmp_path / "corpus" / "docs.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        "name: lines\ninput:\n  files: ['corpus/*.jsonl']\n  shard_size: 4\n"
        "executor: {kind: local, workers: 1}\npipeline:\n  - lmforge.dedup.lines:LineDedup: {min_docs: 3}\n",
        encoding="utf-8")
    result = run_recipe(load_recipe(recipe_path), tmp_path / "run", base_dir=tmp_path)
    stage_dir = result.run_dir / "stages" / "01-line_dedup"
    shards = sorted(stage_dir.glob("shard-*.parquet"))
    assert [p.name for p in shards] == [f"shard-0000{i}.parquet" for i in range(3)]
    out = {r["id"]: r for p in shards for r in pq.read_table(p).to_pylist()}
    assert out["d0"]["text"] == f"Home\n{CONTENT[0]}" and out["d1"]["text"].endswith(RIGHTS)
    assert json.loads(out["d3"]["meta"]) == {"line_dedup": {"lines_removed": 1}}
    quarantine = pq.read_table(stage_dir / "quarantine-00002.parquet").to_pylist()
    assert [(q["id"], json.loads(q["meta"])["drop_reason"]) for q in quarantine] == [
        ("d9", "line_dedup_empty")]
    stats = json.loads((result.run_dir / "stats.json").read_text())
    (entry,) = [s for s in stats["stages"] if s["name"] == "line_dedup"]
    assert (entry["in"], entry["out"], entry["dropped"]) == (10, 9, {"line_dedup_empty": 1})
    assert entry["counters"] == {"docs_changed": 7, "lines_removed": 8}
    again = run_recipe(load_recipe(recipe_path), tmp_path / "run2", base_dir=tmp_path)
    again_stats = json.loads((again.run_dir / "stats.json").read_text())
    assert again_stats["stages"][-1]["counters"] == entry["counters"]

    def rows(run_dir: Path) -> list[list[dict]]:
        files = sorted((run_dir / "stages" / "01-line_dedup").glob("*.parquet"))
        return [pq.read_table(p).to_pylist() for p in files]

    assert rows(result.run_dir) == rows(again.run_dir)
