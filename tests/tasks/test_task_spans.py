import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import InputError
from lmforge.tasks.spans import (
    bio_to_spans,
    join_tokens,
    locate_tokens,
    read_spans,
    repair_bio,
    spans_to_bio,
    spans_to_tags,
    tags_to_spans,
    tokenize_with_offsets,
    valid_spans,
)

# --------------------------------------------------------------------------- tokens and BIO


def test_tokenization_is_per_character_for_chinese_and_per_word_for_english():
    assert [t for t, _, _ in tokenize_with_offsets("江泽民在Beijing说: don't panic!")] == \
        ["江", "泽", "民", "在", "Beijing", "说", ":", "don't", "panic", "!"]
    tokens, tags, dropped = spans_to_bio("New York is big", [(0, 8, "LOC"), (4, 8, "LOC")])
    assert tags == ["B-LOC", "I-LOC", "O", "O"] and dropped == 1
    with pytest.raises(InputError, match="outside the text"):
        spans_to_bio("abc", [(1, 9, "X")])
    assert repair_bio(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]
    with pytest.raises(InputError, match="'PER' at token 1"):
        repair_bio(["O", "PER"])


# --------------------------------------------------------------------------- properties

WORDS = st.sampled_from(["江", "泽", "民", "北", "京", "New", "York", "don't", "1998", "年", "!", "，", "Bill", "é", "x"])
SEPS = st.sampled_from(["", " ", "  ", "\n", "\t"])
TEXTS = st.text(alphabet=st.sampled_from("江泽民北京 New York'’-.,!？\n\t1998年éx\u3000\U00020000"), max_size=40)


@st.composite
def text_and_spans(draw):
    """A text of words and separators, and non-overlapping spans over whole tokens of it."""
    parts = draw(st.lists(st.tuples(WORDS, SEPS), min_size=1, max_size=12))
    text = draw(SEPS) + "".join(w + s for w, s in parts)
    toks = tokenize_with_offsets(text)
    cuts = sorted(draw(st.sets(st.integers(0, len(toks)), max_size=8)))
    spans = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        if draw(st.booleans()):
            spans.append((toks[a][1], toks[b - 1][2], draw(st.sampled_from(["PER", "LOC", "ORG"]))))
    return text, spans


@settings(max_examples=150, deadline=None)
@given(text_and_spans())
def test_spans_to_bio_to_spans_round_trips(case):
    text, spans = case
    tokens, tags, dropped = spans_to_bio(text, spans)
    assert dropped == 0 and len(tags) == len(tokens)
    offsets = [(s, e) for _, s, e in tokenize_with_offsets(text)]
    assert tags_to_spans(tags, offsets) == spans
    assert bio_to_spans(text, tokens, tags) == spans
    assert all(t == "O" or t[:2] in ("B-", "I-") for t in tags) and repair_bio(tags) == tags


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_token_offsets_stay_inside_the_text_and_cover_it(text):
    toks = tokenize_with_offsets(text)
    previous_end = 0
    for tok, start, end in toks:
        assert previous_end <= start < end <= len(text) and text[start:end] == tok
        previous_end = end
    # re-joined, the tokens are the text without its whitespace: nothing is lost or invented
    assert "".join(t for t, _, _ in toks) == "".join(text.split())
    assert locate_tokens(text, [t for t, _, _ in toks]) == [(s, e) for _, s, e in toks]


@settings(max_examples=150, deadline=None)
@given(TEXTS, st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8), st.sampled_from(["A", "B"])), max_size=5))
def test_any_character_spans_become_tags_covering_them(text, raw):
    """Spans need not fall on token edges: a token partly inside one belongs to it, so an entity only
    grows to whole tokens (and sheds the whitespace at its edges)."""
    spans = [(s, min(s + n, len(text)), t) for s, n, t in raw if s < len(text)]
    spans = [sp for sp in spans if text[sp[0]:sp[1]].strip()]
    tokens, tags, dropped = spans_to_bio(text, spans)
    found = bio_to_spans(text, tokens, tags)
    assert all(0 <= s < e <= len(text) for s, e, _ in found)
    assert len(found) + dropped == len(spans)
    inner = [(a + len(text[a:b]) - len(text[a:b].lstrip()), b - len(text[a:b]) + len(text[a:b].rstrip()), k)
             for a, b, k in spans]
    for s, e, t in found:  # every entity kept contains the non-space part of the span it came from
        assert any(s <= a and b <= e and t == k for a, b, k in inner)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]), max_size=15),
       st.sampled_from(["", " "]))
def test_tags_to_spans_to_tags_repairs_like_repair_bio(tags, sep):
    tokens = [chr(0x4E00 + i) if not sep else f"w{i}" for i in range(len(tags))]
    text, offsets = join_tokens(tokens, sep)
    assert locate_tokens(text, tokens) == offsets
    spans = tags_to_spans(tags, offsets)
    again, dropped = spans_to_tags(offsets, spans, len(text))
    assert again == repair_bio(tags) and dropped == 0


def test_span_fields_as_files_write_them():
    assert read_spans('[{"start": 0, "end": 2, "labels": ["PER"]}, [3, 5, "LOC"]]') == [(0, 2, "PER"), (3, 5, "LOC")]
    with pytest.raises(InputError, match="has no label"):
        read_spans([{"start": 0, "end": 2}])
    with pytest.raises(InputError, match="covers only whitespace"):
        spans_to_tags([(0, 1)], [(1, 2, "X")], 3)
    assert spans_to_tags([(0, 1)], [(1, 2, "X")], 3, empty="ignore") == (["O"], 0)
    assert valid_spans([[3, 5, "LOC"], {"start": 0, "end": 2, "label": "PER"}], 5) == [(0, 2, "PER"), (3, 5, "LOC")]
    assert valid_spans([[0, 3, "A"], [2, 4, "B"]], 5) is None  # overlapping
    assert valid_spans([[0, 9, "A"]], 5) is None and valid_spans([["0", 1, "A"]], 5) is None
