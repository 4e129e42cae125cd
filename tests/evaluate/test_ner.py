"""Entity-level NER scores: conlleval chunking by hand, then equality with seqeval's default mode."""

from __future__ import annotations

import random

import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.evaluate import entities, ner_report


def test_entities_follow_conlleval_rules():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    # I- after O starts an entity; I- of another type ends the previous one and starts its own
    assert entities(["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == [
        ("PER", 1, 3), ("LOC", 3, 4), ("LOC", 4, 6)
    ]
    # B- after B- of the same type: two entities; an entity may run to the end
    assert entities(["B-ORG", "B-ORG", "I-ORG"]) == [("ORG", 0, 1), ("ORG", 1, 3)]
    assert entities(["B-人名", "I-人名", "I-人名"]) == [("人名", 0, 3)]
    assert entities(["S-PER", "B-LOC", "E-LOC", "E-LOC"], scheme="BIOES") == [
        ("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)
    ]
    assert entities([]) == []


def test_hand_computed_report():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG"]]
    r = ner_report(true, pred)
    # true: PER(0:2), LOC(3:4), ORG(0:1); predicted: PER(0:2), ORG(0:2); only PER matches exactly
    assert r["support"] == 3 and r["predicted"] == 2
    assert r["precision"] == pytest.approx(1 / 2) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(2 * 1 / (2 + 3))  # 2tp / (predicted + true) = 0.4
    assert r["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert r["per_type"]["LOC"]["f1"] == 0.0 and r["per_type"]["ORG"]["f1"] == 0.0
    assert r["macro"]["f1"] == pytest.approx(1 / 3)
    assert r["token_accuracy"] == pytest.approx(4 / 6)  # positions 3 and 5 differ


def _random_tags(rng: random.Random, prefixes: str, types: list[str]) -> list[str]:
    tags = ["O"] + [f"{p}-{t}" for p in prefixes for t in types]
    weights = [4] + [1] * (len(tags) - 1)
    return rng.choices(tags, weights=weights, k=rng.randint(0, 14))


def _seqeval_check(true, pred, scheme):
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.metrics.sequence_labeling import get_entities

    r = ner_report(true, pred, scheme=scheme)
    assert r["f1"] == pytest.approx(seqeval.f1_score(true, pred, zero_division=0), abs=1e-12)
    assert r["precision"] == pytest.approx(seqeval.precision_score(true, pred, zero_division=0), abs=1e-12)
    assert r["recall"] == pytest.approx(seqeval.recall_score(true, pred, zero_division=0), abs=1e-12)
    assert r["token_accuracy"] == pytest.approx(seqeval.accuracy_score(true, pred), abs=1e-12)
    report = seqeval.classification_report(true, pred, output_dict=True, zero_division=0)
    for key, ours in (("macro avg", r["macro"]), ("weighted avg", r["weighted"])):
        theirs = report[key]
        assert [ours["precision"], ours["recall"], ours["f1"]] == pytest.approx(
            [theirs["precision"], theirs["recall"], theirs["f1-score"]], abs=1e-12
        )
    per_type = {k: v for k, v in report.items() if not k.endswith(" avg")}
    assert sorted(per_type) == list(r["per_type"])
    for name, theirs in per_type.items():
        ours = r["per_type"][name]
        assert [ours["precision"], ours["recall"], ours["f1"], ours["support"]] == pytest.approx(
            [theirs["precision"], theirs["recall"], theirs["f1-score"], theirs["support"]], abs=1e-12
        )
    for sentence in true + pred:  # seqeval's end is the last index, ours one past it
        assert entities(sentence, scheme) == [(t, s, e + 1) for t, s, e in get_entities(sentence)]


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_equals_seqeval_on_random_malformed_tags(seed, scheme):
    """Uniformly random tags: most sequences are ill-formed (I- after O, type switches, E- without B-)."""
    rng = random.Random(seed)
    prefixes = "BI" if scheme == "BIO" else "BIES"
    types = ["PER", "LOC", "ORG", "机构"][: rng.randint(1, 4)]
    true, pred = [], []
    for _ in range(rng.randint(8, 30)):
        t = _random_tags(rng, prefixes, types)
        # predictions: mostly the truth with some tags replaced, so that scores are neither 0 nor 1
        p = [tag if rng.random() < 0.7 else rng.choice(_random_tags(rng, prefixes, types) or ["O"]) for tag in t]
        true.append(t)
        pred.append(p)
    if not any(true) or not any(pred):
        true.append(["B-PER"])
        pred.append(["I-PER"])
    _seqeval_check(true, pred, scheme)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: ner_report([], []), InputError, "true_tags is empty"),
        (lambda: ner_report([[]], [[]]), InputError, "every sentence is empty"),
        (lambda: ner_report([["O"]], [["O"], ["O"]]), InputError, "1 sentences but pred_tags has 2"),
        (lambda: ner_report([["O", "O"]], [["O"]]), InputError, "sentence 0 has 2 true tags"),
        (lambda: ner_report([["E-PER"]], [["O"]]), InputError, "'E-PER' at true_tags sentence 0, position 0"),
        (lambda: ner_report([["PER"]], [["O"]]), InputError, "'O' or B-TYPE, I-TYPE"),
        (lambda: ner_report([["O"]], [["O"]], scheme="BILUO"), ConfigError, "scheme must be one of"),
        (lambda: entities([["B-PER"]]), InputError, "one sentence"),
    ],
)
def test_errors_are_one_clear_line(call, error, words):
    with pytest.raises(error, match=words) as info:
        call()
    assert "\n" not in str(info.value)
