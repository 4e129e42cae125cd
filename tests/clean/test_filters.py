"""Gopher filters and what all quality filters share, on hand-made English and Chinese documents.

Each check is tested alone (the others switched off in the config) on both sides of its threshold,
so that the drop reason is exactly the one under test; realistic articles check that ordinary
prose passes every filter. C4 and FineWeb are in test_c4_fineweb.py.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from lmforge.clean.filters.c4 import C4Filter
from lmforge.clean.filters.common import Doc, analyze, en_tokens
from lmforge.clean.filters.fineweb import FineWebFilter
from lmforge.clean.filters.gopher import (
    GopherQuality,
    GopherQualityConfig,
    GopherRepetition,
    GopherRepetitionConfig,
    NgramIndex,
)
from lmforge.errors import ConfigError
from lmforge.lang import words
from lmforge.pipeline.stage import run_chain
from lmforge.records import Record

sys.path.insert(0, str(Path(__file__).parent))
from filter_texts import EN, LANGS, PROSE, WORD, repeated, verdict  # noqa: E402

# --------------------------------------------------------------------------- realistic documents


@pytest.mark.parametrize("lang", LANGS)
def test_ordinary_articles_pass_every_filter(lang):
    text = "\n".join(PROSE[lang])
    stages = [GopherRepetition(), GopherQuality(), C4Filter(), FineWebFilter()]
    out, stats = run_chain(stages, [Record(id="a", text=text)])
    kept = list(out)
    assert [r.text for r in kept] == [text]
    assert all(not st.dropped for st in stats)


def test_defaults_are_the_published_thresholds():
    rep = GopherRepetitionConfig()
    assert (rep.dup_line_frac, rep.dup_para_frac, rep.dup_line_char_frac, rep.dup_para_char_frac) == (
        0.30, 0.30, 0.20, 0.20)
    assert rep.top_ngram_char_frac == {2: 0.20, 3: 0.18, 4: 0.16}
    assert rep.dup_ngram_char_frac == {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    q = GopherQualityConfig()
    assert (q.min_doc_words, q.max_doc_words, q.min_avg_word_length, q.max_avg_word_length) == (50, 100_000, 3, 10)
    assert (q.max_symbol_word_ratio, q.max_bullet_lines_ratio, q.max_ellipsis_lines_ratio) == (0.1, 0.9, 0.3)
    assert (q.min_alpha_words_ratio, q.min_stop_words) == (0.8, 2)
    c4 = C4Filter().config
    assert (c4.min_words_per_line, c4.min_num_sentences, c4.filter_no_terminal_punct) == (3, 3, True)
    fw = FineWebFilter().config
    assert (fw.line_punct_thr, fw.short_line_thr, fw.short_line_length, fw.char_duplicates_ratio,
            fw.new_line_ratio) == (0.12, 0.67, 30, 0.01, 0.3)


# --------------------------------------------------------------------------- Gopher repetition

REP_OFF = {"dup_line_frac": None, "dup_para_frac": None, "dup_line_char_frac": None, "dup_para_char_frac": None,
           "top_ngram_char_frac": {}, "dup_ngram_char_frac": {}}


def rep_only(field: str, value=None) -> GopherRepetition:
    default = getattr(GopherRepetitionConfig(), field)
    return GopherRepetition({**REP_OFF, field: default if value is None else value})


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize(("unit", "sep"), [("para", "\n\n"), ("line", "\n")])
def test_duplicate_fraction_of_lines_and_paragraphs(lang, unit, sep):
    s = PROSE[lang]
    stage = rep_only(f"dup_{unit}_frac")
    assert verdict(stage, sep.join(s[:7] + [s[0]] * 3)) == "keep"  # 3 of 10 repeat: 0.30 is allowed
    assert verdict(stage, sep.join(s[:6] + [s[0]] * 4)) == f"gopher_rep_dup_{unit}_frac"  # 0.40


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize(("unit", "sep"), [("para", "\n\n"), ("line", "\n")])
def test_duplicate_characters_of_lines_and_paragraphs(lang, unit, sep):
    s = PROSE[lang]
    stage = rep_only(f"dup_{unit}_char_frac")
    keep, drop = sep.join(s[:6] + [s[0]]), sep.join(s[:6] + [s[0]] * 2)
    assert len(s[0]) / len(keep) < 0.2 < 2 * len(s[0]) / len(drop)  # about 0.15 and 0.25
    assert verdict(stage, keep) == "keep"
    assert verdict(stage, drop) == f"gopher_rep_dup_{unit}_char_frac"


def reference_tokens(text: str, lang: str) -> list[str]:
    return words(text, "zh") if lang == "zh" else en_tokens(text)


def reference_top(tokens: list[str], n: int) -> int:
    """Gopher's definition, written the obvious way: n-grams as space-joined strings."""
    grams = [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def reference_dup(tokens: list[str], n: int) -> int:
    seen, chars, i = set(), 0, 0
    while i < len(tokens) - n + 1:
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            chars += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


PHRASE = {
    "en": ["red", "foxes", "jump", "over", "lazy", "dogs", "every", "single", "sunny", "day"],
    "zh": ["我们", "喜欢", "学习", "中文", "每天", "都", "在", "公园", "里", "散步"],
}


def boundary_texts(lang: str, n: int, limit: float, reference) -> tuple[str, str]:
    """The text with the most repeats of an n-word phrase still at or under `limit`, and one more."""
    filler = " ".join(PROSE[lang][:4])
    phrase = " ".join(PHRASE[lang][:n])
    previous = None
    for m in range(1, 200):
        text = filler + (" " + phrase) * m
        if reference(reference_tokens(text, lang), n) / len(text) > limit:
            assert previous is not None
            return previous, text
        previous = text
    raise AssertionError("never crossed the limit")


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_top_ngram_character_fraction(lang, n):
    limit = GopherRepetitionConfig().top_ngram_char_frac[n]
    keep, drop = boundary_texts(lang, n, limit, reference_top)
    stage = GopherRepetition({**REP_OFF, "top_ngram_char_frac": {n: limit}})
    assert verdict(stage, keep) == "keep"
    assert verdict(stage, drop) == f"gopher_rep_top_{n}_gram"


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10])
def test_duplicate_ngram_character_fraction(lang, n):
    limit = GopherRepetitionConfig().dup_ngram_char_frac[n]
    keep, drop = boundary_texts(lang, n, limit, reference_dup)
    stage = GopherRepetition({**REP_OFF, "dup_ngram_char_frac": {n: limit}})
    assert verdict(stage, keep) == "keep"
    assert verdict(stage, drop) == f"gopher_rep_dup_{n}_gram"


def test_repetition_drop_records_the_measured_value():
    record = Record(id="r", text="\n".join(EN[:3] + [EN[0]] * 7))
    verdict = rep_only("dup_line_frac").decide(record)
    assert (verdict.reason, verdict.value) == ("gopher_rep_dup_line_frac", 0.7)
    assert list(rep_only("dup_line_frac").run([record])) == []  # the stage keeps the value beside the reason
    assert record.meta["gopher_repetition"]["value"] == 0.7 and record.drop_reason == "gopher_rep_dup_line_frac"


def test_empty_text_is_dropped():
    assert verdict(GopherRepetition(), "") == "gopher_rep_empty"


def test_ngram_index_matches_the_obvious_implementation():
    rng = random.Random(7)
    for trial in range(400):
        tokens = [rng.choice(["a", "bb", "ccc", "d", "ee"][: rng.randint(1, 5)]) for _ in range(rng.randint(0, 40))]
        index = NgramIndex(tokens)
        sizes = list(range(2, 11))
        rng.shuffle(sizes)  # levels must come out right whatever order they are asked in
        for n in sizes:
            if trial % 2:
                assert index.top_chars(n) == reference_top(tokens, n), (tokens, n)
            else:
                assert index.repeated_chars(n) == reference_dup(tokens, n), (tokens, n)


# --------------------------------------------------------------------------- Gopher quality

QUALITY_OFF = {name: None for name in (
    "min_doc_words", "max_doc_words", "min_avg_word_length", "max_avg_word_length", "min_avg_word_length_zh",
    "max_avg_word_length_zh", "max_symbol_word_ratio", "max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
    "min_alpha_words_ratio", "min_stop_words")}


def quality_only(*fields: str, **values) -> GopherQuality:
    defaults = GopherQualityConfig()
    return GopherQuality({**QUALITY_OFF, **{f: getattr(defaults, f) for f in fields}, **values})


@pytest.mark.parametrize("lang", LANGS)
def test_document_word_count(lang):
    w = WORD[lang]
    short = quality_only("min_doc_words")
    assert verdict(short, repeated(w, 50)) == "keep"
    assert verdict(short, repeated(w, 49)) == "gopher_short_doc"
    # punctuation is not a word
    assert verdict(short, repeated(w, 49) + (" ." if lang == "en" else "。")) == "gopher_short_doc"


@pytest.mark.parametrize("lang", LANGS)
def test_document_word_count_upper_bound(lang):
    stage = quality_only("max_doc_words")
    assert verdict(stage, repeated(WORD[lang], 100_000)) == "keep"
    assert verdict(stage, repeated(WORD[lang], 100_001)) == "gopher_long_doc"


@pytest.mark.parametrize(("text", "expected"), [
    (repeated("cat", 50), "keep"),                                   # mean 3.00
    (repeated("cat", 49) + " it", "gopher_below_avg_word_length"),   # mean 2.98
    (repeated("harbourage", 50), "keep"),                            # mean 10.00
    (repeated("harbourage", 49) + " harbourages", "gopher_above_avg_word_length"),  # mean 10.02
])
def test_mean_word_length_english(text, expected):
    assert verdict(quality_only("min_avg_word_length", "max_avg_word_length"), text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (repeated("我们", 4) + " " + repeated("的", 16), "keep"),                              # mean 1.20
    (repeated("我们", 3) + " " + repeated("的", 17), "gopher_below_avg_word_length"),      # mean 1.15
    (repeated("中华人民共和国", 2) + " " + repeated("我们", 3), "keep"),                   # mean 4.00
    (repeated("中华人民共和国", 3) + " " + repeated("我们", 3), "gopher_above_avg_word_length"),  # 4.50
])
def test_mean_word_length_chinese(text, expected):
    assert verdict(quality_only("min_avg_word_length_zh", "max_avg_word_length_zh"), text) == expected


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize(("symbol", "reason"), [("#", "gopher_too_many_hashes"), ("...", "gopher_too_many_ellipsis")])
def test_symbol_to_word_ratio(lang, symbol, reason):
    stage = quality_only("max_symbol_word_ratio")
    if lang == "zh":  # jieba words exclude punctuation; a Chinese ellipsis "……" counts once
        symbol = "……" if symbol == "..." else symbol
        keep, drop = repeated("我们", 100) + f" {symbol}" * 10, repeated("我们", 100) + f" {symbol}" * 11
    else:  # English words include punctuation tokens, so the symbols count in the denominator too
        keep, drop = repeated("harbour", 90) + f" {symbol}" * 10, repeated("harbour", 89) + f" {symbol}" * 11
    assert verdict(stage, keep) == "keep"
    assert verdict(stage, drop) == reason


@pytest.mark.parametrize("lang", LANGS)
def test_bullet_lines(lang):
    s = PROSE[lang]
    stage = quality_only("max_bullet_lines_ratio")
    bullet = "• " if lang == "zh" else "- "
    nine = [bullet + line for line in s[:9]] + [s[9]]
    assert verdict(stage, "\n".join(nine)) == "keep"  # 0.9 is allowed
    assert verdict(stage, "\n".join(bullet + line for line in s[:10])) == "gopher_too_many_bullets"


@pytest.mark.parametrize("lang", LANGS)
def test_lines_ending_with_an_ellipsis(lang):
    s = PROSE[lang]
    stage = quality_only("max_ellipsis_lines_ratio")
    cut = "……" if lang == "zh" else "..."
    lines = [line[:-1] + cut for line in s[:4]] + s[4:10]
    assert verdict(stage, "\n".join(s[:1] + lines[1:])) == "keep"  # 3 of 10
    assert verdict(stage, "\n".join(lines)) == "gopher_too_many_end_ellipsis"  # 4 of 10


@pytest.mark.parametrize("lang", LANGS)
def test_words_with_a_letter(lang):
    stage = quality_only("min_alpha_words_ratio")
    w = WORD[lang]
    assert verdict(stage, repeated(w, 80) + " 2024" * 20) == "keep"  # 0.80
    assert verdict(stage, repeated(w, 79) + " 2024" * 21) == "gopher_below_alpha_threshold"


def test_punctuation_counts_as_words_without_letters_in_english():
    stage = quality_only("min_alpha_words_ratio")
    assert verdict(stage, "harbour , " * 10) == "gopher_below_alpha_threshold"  # half the tokens are commas
    assert verdict(stage, "我们，" * 10) == "keep"  # jieba words exclude punctuation


@pytest.mark.parametrize(("lang", "two", "one"), [
    ("en", "cats chase mice and the dogs chase cats", "cats chase mice while the dogs chase cats"),
    ("zh", "猫 追 老鼠 的 狗 追 了 猫", "猫 追 老鼠 的 狗 追 猫"),
])
def test_stop_words(lang, two, one):
    stage = quality_only("min_stop_words")
    assert verdict(stage, two) == "keep"
    assert verdict(stage, one) == "gopher_few_stop_words"


def test_stop_words_are_configurable():
    stage = quality_only(min_stop_words=1, stop_words=["whale"])
    assert verdict(stage, "the sea of the north") == "gopher_few_stop_words"
    assert verdict(stage, "a whale") == "keep"


def test_record_lang_decides_the_language():
    stage = quality_only("min_doc_words")
    text = repeated("我们喜欢学习中文", 13)  # 52 jieba words, but only 13 space-separated runs
    assert Doc(text).chinese and Doc(text, "zh-Hans").chinese and not Doc(text, "en").chinese
    assert verdict(stage, text) == "keep"
    assert verdict(stage, text, lang="en") == "gopher_short_doc"


# --------------------------------------------------------------------------- shared analysis and config


def test_analysis_is_shared_until_the_text_changes():
    record = Record(id="s", text="\n".join(EN))
    first = analyze(record)
    assert analyze(record) is first
    record.text = record.text + "\nOne more line here."
    assert analyze(record) is not first
    record.lang = "zh"
    assert analyze(record).chinese


def test_english_tokens_follow_spacy_conventions():
    assert en_tokens("Don't stop: the U.S. company’s 1,000 shares rose 3.5% (see www.example.com/a).") == [
        "Do", "n't", "stop", ":", "the", "U.S.", "company", "’s", "1,000", "shares", "rose", "3.5", "%", "(",
        "see", "www.example.com/a", ")", ".",
    ]


@pytest.mark.parametrize(("stage", "options", "field"), [
    (GopherRepetition, {"dup_line_frac": 1.5}, "dup_line_frac"),
    (GopherRepetition, {"top_ngram_char_frac": {0: 0.2}}, "top_ngram_char_frac"),
    (GopherRepetition, {"dup_ngram_char_frac": {5: -0.1}}, "dup_ngram_char_frac"),
    (GopherQuality, {"min_doc_words": 200, "max_doc_words": 100}, "min_doc_words"),
    (GopherQuality, {"min_avg_word_length_zh": 5, "max_avg_word_length_zh": 4}, "min_avg_word_length_zh"),
    (GopherQuality, {"max_bullet_lines_ratio": "many"}, "max_bullet_lines_ratio"),
    (C4Filter, {"min_words_per_line": -1}, "min_words_per_line"),
    (C4Filter, {"terminal_punct": []}, "terminal_punct"),
    (FineWebFilter, {"line_punct_thr": 2}, "line_punct_thr"),
    (FineWebFilter, {"short_line_lenght": 30}, "short_line_lenght"),
])
def test_config_errors_name_the_field(stage, options, field):
    with pytest.raises(ConfigError, match=field):
        stage(options)
