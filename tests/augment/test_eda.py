"""EDA: each operation's invariants (label kept, protected spans untouched, rate respected, seeded determinism)."""

import random
from collections import Counter

import pytest

from lmforge.augment.eda import Eda, EdaConfig
from lmforge.augment.lexicon import Cilin, WordNet
from lmforge.augment.text import ProtectConfig, Segmenter, render
from lmforge.errors import ConfigError
from lmforge.pipeline.registry import resolve_stage

ZH = "这家酒店的房间价格是398元，服务不好，北京的朋友说马悦凌推荐过。"
EN = "Yesterday John did not buy 3 apples in Paris, but Mary never liked the small red apples."


def only(**rates):
    base = {"alpha_sr": 0.0, "alpha_ri": 0.0, "alpha_rs": 0.0, "p_rd": 0.0}
    return Eda(EdaConfig(**{**base, **rates}))


def fake_synonyms(eda, table):
    """Swap the lexicon for a known table, so counts can be checked exactly."""
    eda.synonyms = lambda lang: (lambda word: table.get(word.lower(), []))
    return eda


# --------------------------------------------------------------------------- segmentation and protection


def test_protected_units_in_both_languages():
    seg = Segmenter()
    _, zh = seg.units(ZH, "zh")
    assert [u.text for u in zh if u.protected] == ["398", "元", "不好", "北京", "马悦凌"]
    _, en = seg.units(EN, "en")
    # names mid-sentence, the number, negations and the word each negation governs
    assert [u.text for u in en if u.protected] == ["John", "not", "buy", "3", "Paris", "Mary", "never", "liked"]
    assert not any(u.protected for u in en if u.text in ("Yesterday", "apples", "small"))


def test_protection_switches_terms_patterns_and_scope():
    seg = Segmenter(ProtectConfig(entities=False, numbers=False, negation_scope=0, terms=["red apples"],
                                  patterns=[r"sm\w+"]))
    _, en = seg.units(EN, "en")
    assert [u.text for u in en if u.protected] == ["not", "never", "small", "red apples"]
    with pytest.raises(ConfigError, match="pattern '\\(' is not a valid regular expression"):
        resolve_stage("eda")({"protect": {"patterns": ["("]}})


def test_render_is_the_identity_and_moves_entity_offsets():
    seg = Segmenter()
    for text, lang in ((ZH, "zh"), (EN, "en"), ("  Two  spaces, kept.", "en")):
        lead, units = seg.units(text, lang)
        assert render(lead, units, lang)[0] == text
    text = "新华社记者在北京报道"
    lead, units = seg.units(text, "zh", [(0, 3, "ORG"), (6, 8, "LOC")])
    assert [u.text for u in units if u.label] == ["新华社", "北京"]
    del units[1]  # 记者
    new, spans = render(lead, units, "zh")
    assert new == "新华社在北京报道" and [new[s:e] for s, e, _ in spans] == ["新华社", "北京"]


# --------------------------------------------------------------------------- the operations


@pytest.mark.parametrize("op", ["alpha_sr", "alpha_ri", "alpha_rs", "p_rd"])
@pytest.mark.parametrize(("text", "lang", "kept"), [
    (ZH, "zh", ["398元", "不好", "北京", "马悦凌"]),
    (EN, "en", ["John", "not buy 3", "Paris", "Mary never liked"]),
])
def test_protected_spans_survive_every_operation(op, text, lang, kept):
    eda = only(**{op: 0.5})
    outputs = [a for seed in range(60) for a in eda.augment(text, lang, random.Random(seed), 4)]
    assert len(outputs) > 60, "the operation changed too few sentences to test anything"
    for a in outputs:
        for span in kept:
            assert a.text.count(span) == text.count(span), (a.op, a.text)


def test_synonym_replacement_changes_exactly_n_words_from_the_lexicon():
    replaceable = "quick brown fox jumps lazy dog sleeps garden morning"
    table = {w: [w.upper()] for w in replaceable.split()}
    eda = fake_synonyms(only(alpha_sr=0.25), table)
    text = "the quick brown fox jumps over the lazy dog that sleeps in the garden every morning"
    n_words = len(text.split())
    for seed in range(30):
        (a,) = eda.augment(text, "en", random.Random(seed), 1)
        old, new = text.split(), a.text.split()
        changed = [(o, w) for o, w in zip(old, new, strict=True) if o != w]
        assert a.op == "synonym_replacement" and a.changes == len(changed) == int(0.25 * n_words)
        assert all(w == o.upper() and o in table for o, w in changed)


def test_random_insertion_adds_n_synonyms_of_words_already_there():
    table = {"hotel": ["inn"], "room": ["chamber"], "clean": ["spotless"]}
    eda = fake_synonyms(only(alpha_ri=0.3), table)
    text = "the hotel room was clean and the staff were kind to us"
    for seed in range(30):
        (a,) = eda.augment(text, "en", random.Random(seed), 1)
        added = Counter(a.text.split()) - Counter(text.split())
        assert a.changes == sum(added.values()) == int(0.3 * len(text.split()))
        assert set(added) <= {"inn", "chamber", "spotless"}
        assert not Counter(text.split()) - Counter(a.text.split()), "insertion removed a word"


def test_random_swap_permutes_unprotected_words_only():
    eda = only(alpha_rs=0.2)
    for seed in range(30):
        (a,) = eda.augment(EN, "en", random.Random(seed), 1)
        assert sorted(a.text.replace(",", " ,").replace(".", " .").split()) == \
            sorted(EN.replace(",", " ,").replace(".", " .").split())
        assert a.changes == int(0.2 * 16)  # 16 words, punctuation excluded


def test_random_deletion_rate_is_respected_on_average_and_never_empties():
    eda = only(p_rd=0.2)
    text = "一个 两个 苹果 香蕉 橘子 西瓜 葡萄 草莓 桃子 李子 梨子 柠檬 芒果 菠萝 樱桃 榴莲 椰子 石榴 柚子 甘蔗 山楂"
    words = [w for w in text.split() if w not in ("一个", "两个")]  # those two are numbers: protected
    deleted = []
    for seed in range(400):
        outs = eda.augment(text, "zh", random.Random(seed), 1)
        gone = len(text.split()) - len(outs[0].text.split()) if outs else 0
        assert (outs[0].changes if outs else 0) == gone
        deleted.append(gone / len(words))
        if outs:
            assert "一个" in outs[0].text and "两个" in outs[0].text
    assert abs(sum(deleted) / len(deleted) - 0.2) < 0.02
    single = only(p_rd=1.0)
    assert all(a.text for s in range(20) for a in single.augment("好 酒店", "zh", random.Random(s), 1))


def test_same_seed_same_augmentations_different_seed_different_ones():
    eda = Eda()
    runs = [[a.text for a in eda.augment(ZH, "zh", random.Random(s), 8)] for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert len(set(runs[0])) == len(runs[0]) and ZH not in runs[0]


def test_operations_take_turns_and_rates_of_zero_switch_an_operation_off():
    eda = Eda()
    ops = Counter(a.op for s in range(40) for a in eda.augment(ZH, "zh", random.Random(s), 4))
    assert set(ops) == {"synonym_replacement", "random_insertion", "random_swap", "random_deletion"}
    no_swap = Eda(EdaConfig(alpha_rs=0.0))
    assert "random_swap" not in {a.op for s in range(40) for a in no_swap.augment(ZH, "zh", random.Random(s), 4)}
    with pytest.raises(ConfigError, match="every rate .* is 0"):
        resolve_stage("eda")({"alpha_sr": 0, "alpha_ri": 0, "alpha_rs": 0, "p_rd": 0})


# --------------------------------------------------------------------------- the offline lexicons


def test_wordnet_synonyms_most_frequent_senses_first():
    wn = WordNet(max_senses=2)
    assert {"fast", "speedy"} <= set(wn("quick"))
    assert "quick" not in wn("quick")
    assert wn("dogs") == [] and wn("xyzzy") == []  # exact lemmas only
    assert len(WordNet(max_senses=8)("run")) > len(wn("run"))


def test_cilin_synonyms_come_from_equal_groups_only():
    cilin = Cilin()
    assert len(cilin) > 40000
    assert {"美丽", "好看"} <= set(cilin("漂亮"))
    assert "船主" not in cilin("货主")  # 货主 and 船主 share only a "#" (related) group
    assert cilin("马悦凌") == []
