"""The contract every quality scorer shares: per-language cutoffs from thresholds or top fractions, the score
in meta.quality, unscored documents quarantined, and the map -> reduce -> apply run over real shards."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lmforge.errors import ConfigError
from lmforge.pipeline.stage import Summaries, run_chain
from lmforge.quality.scoring import QUALITY, kth_best, language_code
from lmforge.records import Record


@pytest.fixture
def scorers(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # scorers.py lives beside this file
    import scorers

    return scorers


def docs(spec: dict[str, list[float | None]]) -> list[Record]:
    """Records per language whose text carries their score (None: unscorable)."""
    out = []
    for lang, scores in spec.items():
        for i, s in enumerate(scores):
            text = f"{'none' if s is None else s} document {i} in {lang or 'no language'}"
            out.append(Record(id=f"{lang}-{i}", text=text, lang=lang))
    return out


def run(stage, records):
    dropped: list[Record] = []
    out, stats = run_chain([stage], records, dropped.append)
    kept = list(out)
    return kept, dropped, stats[0]


def test_threshold_per_language_with_a_default(scorers):
    records = docs({"zh": [1, 2, 3], "en": [1, 2, 3], "fr": [1, 2, 3]})
    kept, dropped, stats = run(scorers.NumberScore(threshold={"zh": 2.5, "*": 1.5}, key="n"), records)
    assert [r.id for r in kept] == ["zh-2", "en-1", "en-2", "fr-1", "fr-2"]
    assert stats.dropped == {"quality_below_cutoff": 4}
    assert dropped[0].meta["number_score"] == {"value": 1.0, "cutoff": 2.5, "lang": "zh"}
    assert [r.meta["quality"]["n"] for r in kept] == [3.0, 2.0, 3.0, 2.0, 3.0]
    # a language neither named nor covered by "*" keeps everything
    kept, _, _ = run(scorers.NumberScore(threshold={"zh": 2.5}), docs({"zh": [1, 3], "en": [0, -5]}))
    assert [r.id for r in kept] == ["zh-1", "en-0", "en-1"]


def test_top_fraction_per_language_keeps_ties_at_the_cutoff(scorers):
    records = docs({"en": [1, 2, 3, 3, 3, 4], "zh": [5, 6, 7, 8]})
    kept, dropped, stats = run(scorers.NumberScore(top_fraction={"en": 0.5, "*": 0.25}), records)
    # en: the 3rd best of 6 is 3, and all three 3s stay; zh: the best quarter of 4 is one document
    assert sorted(r.id for r in kept) == ["en-2", "en-3", "en-4", "en-5", "zh-3"]
    assert stats.counters == {"scored_en": 6, "scored_zh": 4}
    assert {r.meta["number_score"]["cutoff"] for r in dropped if r.lang == "zh"} == {8.0}


def test_a_fraction_of_n_is_not_rounded_up_by_float_noise():
    scores = np.arange(100, dtype=float)
    assert 0.07 * 100 > 7  # 7.000000000000001
    assert kth_best(scores, 0.07) == 93.0  # exactly 7 documents score 93 or more, not 8
    assert kth_best(scores, 1.0) == -math.inf and kth_best(np.zeros(0), 0.5) == -math.inf
    assert kth_best(np.array([math.nan, 1.0, 2.0]), 0.5) == 2.0  # NaN takes no place among the best


def test_unscored_documents_are_quarantined_and_take_no_share(scorers):
    records = docs({"en": [None, 1, 2, 3, 4]})
    kept, dropped, stats = run(scorers.NumberScore(top_fraction=0.5), records)
    assert [r.id for r in kept] == ["en-3", "en-4"]  # half of the four scored documents
    assert stats.dropped == {"quality_below_cutoff": 2, "quality_unscored": 1}
    unscored = next(r for r in dropped if r.id == "en-0")
    assert unscored.meta["quality"] == {"score": None} and unscored.meta["drop_reason"] == "quality_unscored"


def test_language_comes_from_lang_then_the_text():
    assert language_code("zh-Hant", "x") == "zh" and language_code("EN_us", "") == "en"
    assert language_code("", "这本书的内容很好，印刷清晰。") == "zh"
    assert language_code("", "Plain English text.") == "und"


def test_rules_are_config_errors(scorers):
    with pytest.raises(ConfigError, match="give threshold or top_fraction, not both"):
        scorers.NumberScore(threshold=1.0, top_fraction=0.5)
    with pytest.raises(ConfigError, match=r"top_fraction must lie in \(0, 1\]"):
        scorers.NumberScore(top_fraction={"zh": 0.0})


def test_apply_refuses_records_other_than_the_scored_ones(scorers):
    stage = scorers.NumberScore(top_fraction=0.5)
    records = docs({"en": [1, 2, 3, 4]})
    decision = stage.reduce(Summaries([("s", stage.map(records))]))["s"]
    with pytest.raises(RuntimeError, match="not the ones scored"):
        list(stage.apply(decision, records[::-1]))
    with pytest.raises(RuntimeError, match="fewer records than when it was scored"):
        list(stage.apply(decision, records[:3]))
    with pytest.raises(RuntimeError, match="more records than when it was scored"):
        list(stage.apply(decision, records + records[:1]))
    assert [r.id for r in stage.apply(decision, records)] == ["en-2", "en-3"]


def test_a_recipe_runs_it_over_shards_in_worker_processes(scorers, tmp_path):
    from lmforge.flow.recipe import parse_recipe
    from lmforge.pipeline.executors import LocalExecutor
    from lmforge.pipeline.runner import collect_stats, iter_output, run_pipeline

    scores = {"zh": list(range(20)), "en": [None, *range(11)]}
    records = docs(scores)
    records.append(Record(id="long", text="50 " + "long words " * 10, lang="en"))
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": r.id, "text": r.text, "lang": r.lang}) + "\n" for r in records),
                      encoding="utf-8")
    recipe = parse_recipe({"input": {"files": [str(corpus)], "shard_size": 6}, "pipeline": [
        {"scorers:NumberScore": {"top_fraction": {"zh": 0.25, "en": 0.5}, "key": "num"}}]})
    out = run_pipeline(tmp_path / "run", recipe.input, recipe.stage_specs(), LocalExecutor(2), tmp_path)
    kept = list(iter_output(out))
    # fractions are of each language over all six shards: zh 5 of 20; en 6 of 12 scored (the unscored one aside)
    assert sorted(float(r.text.split()[0]) for r in kept if r.lang == "zh") == [15, 16, 17, 18, 19]
    assert sorted(float(r.text.split()[0]) for r in kept if r.lang == "en") == [6, 7, 8, 9, 10, 50]
    stage = collect_stats(tmp_path / "run")["stages"][-1]
    assert stage["shards"] == 6 and stage["dropped"] == {"quality_below_cutoff": 21, "quality_unscored": 1}
    # counted while scoring, in the map phase, and carried to stats.json through the decisions
    assert stage["counters"] == {"long": 1, "scored_en": 13, "scored_zh": 20}
    decisions = sorted((out / "reduce").glob("decision-*.parquet"))
    about = json.loads(pq.read_schema(decisions[0]).metadata[QUALITY])
    assert about["key"] == "num" and about["languages"] == {"en": {"cutoff": 6.0}, "zh": {"cutoff": 15.0}}
    summaries = sorted((out / "map").glob("summary-*.parquet"))
    chars: Counter = Counter()
    for path in summaries:  # what the report reads: every document's score, language and length
        table = pq.read_table(path).to_pydict()
        for lang, n in zip(table["lang"], table["chars"], strict=True):
            chars[lang] += n
    assert chars == {lang: sum(len(r.text) for r in records if r.lang == lang) for lang in ("zh", "en")}
