import pytest

from lmforge.clean.basic import LengthFilter, Normalize, StripHtml
from lmforge.dedup.exact import ExactDedup
from lmforge.errors import ConfigError
from lmforge.pipeline import KEEP, Drop, Filter, run_chain
from lmforge.pipeline.stage import Summaries
from lmforge.records import Record


def rec(i, text):
    return Record(id=str(i), text=text)


def test_normalize_keeps_chinese_punctuation_and_folds_fullwidth_alnum():
    n = Normalize()
    assert n.normalize("１９９８年，ＡＢＣ！\u200b  好\t\t的\r\n\r\n\r\n\r\n下一段 ") == "1998年，ABC！ 好 的\n\n下一段"
    assert Normalize(cjk_punctuation="normalize").normalize("你好，世界！") == "你好,世界!"
    assert Normalize(form="none").normalize("ＡＢＣ") == "ＡＢＣ"
    assert n.normalize("ﬁne") == "fine"  # NFKC ligature


def test_strip_html():
    s = StripHtml()
    out = s.apply(rec(0, "<html><head><style>p{}</style><script>alert(1)</script></head>"
                         "<body><p>一&amp;二</p><div>Three &lt;4&gt;</div><!-- c --></body></html>")).text
    assert "alert" not in out and "p{}" not in out and "<" not in out.replace("<4>", "")
    assert "一&二" in out and "Three <4>" in out
    assert s.apply(rec(1, "a < b and c > d")).text == "a < b and c > d"


def test_filter_drops_go_to_sink_with_reason_and_stats_count_them():
    recs = [rec(i, t) for i, t in enumerate(["", "short", "this one is long enough", "x" * 50])]
    dropped = []
    out, stats = run_chain([LengthFilter(min_chars=10, max_chars=40)], recs, dropped.append)
    assert [r.id for r in out] == ["2"]
    assert {r.id: r.drop_reason for r in dropped} == {"0": "empty", "1": "too_short", "3": "too_long"}
    assert all(r.meta["drop_stage"] == "length_filter" for r in dropped)
    (st,) = stats
    assert (st.records_in, st.records_out, dict(st.dropped)) == (4, 1, {"empty": 1, "too_short": 1, "too_long": 1})
    assert st.bytes_in == 5 + 23 + 50 and st.bytes_out == 23


def test_chain_stats_per_stage():
    class DropOdd(Filter):
        name = "drop_odd"

        def decide(self, r):
            return Drop("odd") if int(r.id) % 2 else KEEP

    recs = [rec(i, f"<b>文本 {i}</b> with enough characters") for i in range(10)]
    out, stats = run_chain([StripHtml(), DropOdd(), LengthFilter(min_chars=5)], recs)
    assert len(list(out)) == 5
    assert [(s.name, s.records_in, s.records_out) for s in stats] == [
        ("strip_html", 10, 10), ("drop_odd", 10, 5), ("length_filter", 5, 5)]
    assert stats[0].bytes_out < stats[0].bytes_in  # tags removed


def test_exact_dedup_keeps_first_and_names_it():
    texts = ["Hello  World", "hello world", "你好", "ＨＥＬＬＯ world", "你好", "other"]
    recs = [rec(i, t) for i, t in enumerate(texts)]
    dropped = []
    out, _ = run_chain([ExactDedup()], recs, dropped.append)
    assert [r.id for r in out] == ["0", "2", "5"]
    assert {r.id: r.meta["exact_dedup"]["duplicate_of"] for r in dropped} == {"1": "0", "3": "0", "4": "2"}
    strict, _ = run_chain([ExactDedup(normalize=False)], [rec(i, t) for i, t in enumerate(texts)])
    assert [r.id for r in strict] == ["0", "1", "2", "3", "5"]


def test_exact_dedup_across_shards_in_shard_order():
    d = ExactDedup()
    shards = {"a": [rec(1, "x"), rec(2, "y")], "b": [rec(3, "y"), rec(4, "z"), rec(5, "x")]}
    decisions = d.reduce(Summaries([(k, d.map(v)) for k, v in shards.items()]))
    assert decisions["a"].column("duplicate_of").to_pylist() == [None, None]
    assert decisions["b"].column("duplicate_of").to_pylist() == ["2", None, "1"]


def test_stage_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"length_filter.min_chars: Input should be a valid integer.*'many'"):
        LengthFilter(min_chars="many")
    with pytest.raises(ConfigError, match="normalize.form: must be one of"):
        Normalize(form="NFX")
    with pytest.raises(ConfigError, match="max_chars .* must be >= min_chars"):
        LengthFilter(min_chars=10, max_chars=5)


def test_stage_counters_reach_stats():
    from lmforge.clean.pii import PiiRedact

    recs = [rec(0, "mail me at a.b@example.com or 13812345678"), rec(1, "nothing here"), rec(2, "c@d.org")]
    out, (st,) = run_chain([PiiRedact()], recs)
    texts = [r.text for r in out]
    assert "<EMAIL>" in texts[0] and "<PHONE>" in texts[0]
    assert dict(st.counters) == {"email": 2, "phone": 1}
    assert st.to_dict()["counters"] == {"email": 2, "phone": 1}


def test_exact_dedup_names_the_kept_copy_across_shards_whatever_their_order():
    """Duplicates in a later shard whose kept copies lie in earlier shards in the opposite order."""
    import pyarrow as pa

    from lmforge.dedup.exact import ExactDedup
    from lmforge.pipeline.stage import Summaries
    from lmforge.records import Record

    stage = ExactDedup()
    shards = [[Record(id="a", text="alpha text")], [Record(id="b", text="beta text")],
              [Record(id="b2", text="beta text"), Record(id="a2", text="Alpha  text"), Record(id="c", text="gamma")]]
    decisions = stage.reduce(Summaries([(f"s{i}", stage.map(s)) for i, s in enumerate(shards)]))
    assert [decisions[f"s{i}"].column("duplicate_of").to_pylist() for i in range(3)] == [
        [None], [None], ["b", "a", None]]
    assert decisions["s0"].schema.field("duplicate_of").type == pa.string()
    kept = list(stage.apply(decisions["s2"], shards[2]))
    assert [r.id for r in kept] == ["c"]
