"""The stage shapes (Filter, Transform, Mapper, run_batch): one base turns verdicts into kept, quarantined and counted records."""

from __future__ import annotations

import pytest

from lmforge.clean.filters.gopher import GopherQuality
from lmforge.clean.langid import LangId
from lmforge.pipeline import KEEP, Drop, Filter, Mapper, Transform, run_chain
from lmforge.records import Record

TEXTS = ["short", "a somewhat longer line of text", "", "中文的一句话，有一些字。", "another fairly long sentence"]


def records() -> list[Record]:
    return [Record(id=str(i), text=t) for i, t in enumerate(TEXTS)]


class MinWords(Filter):
    name = "min_words"

    def decide(self, record: Record):
        n = len(record.text.split())
        return KEEP if n >= 3 else Drop("too_few_words", n)


class ShoutOrDrop(Transform):
    """Upper-cases text; drops records without a Latin letter."""

    name = "shout"

    def apply(self, record: Record):
        if not any("a" <= c <= "z" for c in record.text):
            return Drop("no_latin")
        record.text = record.text.upper()
        return record


class BatchedShout(ShoutOrDrop):
    """The same verdicts through run_batch, counting the batches it was given."""

    batch_size = 2
    batches: list[int] = []

    def run_batch(self, records: list[Record]):
        self.batches.append(len(records))
        return [self.apply(r) for r in records]


class Exclaim(Mapper):
    name = "exclaim"

    def apply(self, record: Record) -> Record:
        record.text += "!"
        return record


def test_filter_drop_reason_and_value_reach_quarantine_and_stats():
    quarantined: list[Record] = []
    out, stats = run_chain([MinWords()], records(), quarantined.append)
    assert [r.id for r in out] == ["1", "4"]
    assert [(r.id, r.drop_reason, r.meta["drop_stage"], r.meta["min_words"]["value"]) for r in quarantined] == [
        ("0", "too_few_words", "min_words", 1.0), ("2", "too_few_words", "min_words", 0.0),
        ("3", "too_few_words", "min_words", 1.0)]
    (st,) = stats
    assert (st.records_in, st.records_out, dict(st.dropped)) == (5, 2, {"too_few_words": 3})


def test_transform_rewrites_or_drops():
    quarantined: list[Record] = []
    out, stats = run_chain([ShoutOrDrop(), Exclaim()], records(), quarantined.append)
    assert [r.text for r in out] == ["SHORT!", "A SOMEWHAT LONGER LINE OF TEXT!", "ANOTHER FAIRLY LONG SENTENCE!"]
    assert [(r.id, r.drop_reason) for r in quarantined] == [("2", "no_latin"), ("3", "no_latin")]
    assert "shout" not in quarantined[0].meta  # no value given: nothing recorded beside the reason
    assert [(s.name, s.records_in, s.records_out, dict(s.dropped)) for s in stats] == [
        ("shout", 5, 3, {"no_latin": 2}), ("exclaim", 3, 3, {})]


def test_run_batch_is_used_when_defined_and_gives_the_per_record_output():
    BatchedShout.batches = []
    per_record_q: list[Record] = []
    batched_q: list[Record] = []
    per_record, st1 = run_chain([ShoutOrDrop()], records(), per_record_q.append)
    batched, st2 = run_chain([BatchedShout()], records(), batched_q.append)
    assert [r.to_dict() for r in batched] == [r.to_dict() for r in per_record]
    assert BatchedShout.batches == [2, 2, 1]
    assert [r.to_dict() for r in batched_q] == [r.to_dict() for r in per_record_q]
    assert dict(st2[0].dropped) == dict(st1[0].dropped) == {"no_latin": 2}


def test_run_batch_must_answer_every_record():
    class Short(Transform):
        name = "short"

        def run_batch(self, records):
            return records[:-1]

    with pytest.raises(RuntimeError, match="returned 1 outcomes for 2 records"):
        list(Short().run(records()[:2]))


def test_langid_drops_other_languages_as_lang_code_through_the_base():
    quarantined: list[Record] = []
    out, stats = run_chain([LangId(keep=["en"])], records()[1:4], quarantined.append)
    assert [r.lang for r in out] == ["en"]
    assert [(r.drop_reason, r.meta["langid"]["lang"]) for r in quarantined] == [("lang_und", "und"), ("lang_zh", "zh")]
    assert dict(stats[0].dropped) == {"lang_und": 1, "lang_zh": 1}


def test_gopher_drops_carry_the_measured_value():
    quarantined: list[Record] = []
    doc = Record(id="g", text="one two three")
    list(run_chain([GopherQuality()], [doc], quarantined.append)[0])
    (dropped,) = quarantined
    assert dropped.drop_reason == "gopher_short_doc" and dropped.meta["gopher_quality"] == {"value": 3.0}


def test_a_verdict_that_is_neither_keep_nor_drop_is_a_bug_not_a_silent_keep():
    class Forgetful(Filter):
        name = "forgetful"

        def decide(self, record):
            record.meta["seen"] = True  # and no return

    with pytest.raises(TypeError, match="filter 'forgetful' decided NoneType; expected KEEP or Drop"):
        list(Forgetful().run(records()[:1]))
