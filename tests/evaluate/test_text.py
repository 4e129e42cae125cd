"""Text metrics: BLEU/chrF equal sacrebleu's, ROUGE equals rouge-score's on English and works on Chinese."""

from __future__ import annotations

import math
import random

import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.evaluate import bleu, chrf, detect_lang, exact_match, normalize_answer, qa_f1, rouge
from lmforge.evaluate.text import lcs_length

# ASCII on purpose: rouge-score drops everything else. Capitals, digits, punctuation and "_" test its tokenizer.
EN_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "The", "Cat", "quickly,", "ran.", "42", "3.5", "U.S.",
            "don't", "well-known", "snake_case", "(x)", "!"]
ZH_PREDS = ["今天天气很好。", "我爱北京天安门", "机器学习是人工智能的一个分支"]
ZH_REFS = ["今天天气不错。", "我爱北京", "机器学习是人工智能的重要分支"]


def _sentences(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choices(EN_WORDS, k=rng.randint(0, 15))) for _ in range(n)]


# --------------------------------------------------------------------------- BLEU and chrF


@pytest.fixture
def sacrebleu():
    return pytest.importorskip("sacrebleu")


def test_bleu_by_hand(sacrebleu):
    # 13a splits on spaces here: p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0/1 -> exp smoothing makes it 1/(2*1);
    # lengths are equal so BP = 1; BLEU = (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = 0.125 ** 0.25 = 0.5946
    out = bleu(["a b c d"], ["a b c e"], lang="en")
    assert out["bleu"] == pytest.approx(100 * 0.125**0.25)
    assert out["precisions"][:3] == pytest.approx([75.0, 200 / 3, 50.0])
    assert out["brevity_penalty"] == 1.0 and out["tokenize"] == "13a"


@pytest.mark.parametrize("seed", range(4))
def test_bleu_and_chrf_equal_sacrebleu(seed, sacrebleu):
    rng = random.Random(seed)
    preds, refs, refs2 = _sentences(rng, 20), _sentences(rng, 20), _sentences(rng, 20)
    assert bleu(preds, refs, lang="en")["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert chrf(preds, refs)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert chrf(preds, refs, word_order=2)["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(preds, [refs], word_order=2).score
    )
    multi = [[a, b] for a, b in zip(refs, refs2, strict=True)]
    assert bleu(preds, multi, lang="en")["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs, refs2]).score)
    assert chrf(preds, multi)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs, refs2]).score)


def test_bleu_chinese_uses_zh_tokenizer(sacrebleu):
    out = bleu(ZH_PREDS, ZH_REFS)  # auto
    assert out["tokenize"] == "zh" and "tok:zh" in out["signature"]
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ZH_PREDS, [ZH_REFS], tokenize="zh").score)
    # with 13a each Chinese sentence is one "word": nothing matches, so BLEU is near 0
    assert sacrebleu.corpus_bleu(ZH_PREDS, [ZH_REFS], tokenize="13a").score < 10 < out["bleu"]


def test_variable_number_of_references(sacrebleu):
    preds = ["the cat sat on the mat", "a dog ran"]
    refs = [["the cat sat on a mat", "a cat sat on the mat"], ["the dog ran"]]
    expected = sacrebleu.corpus_bleu(preds, [["the cat sat on a mat", "the dog ran"], ["a cat sat on the mat", None]])
    assert bleu(preds, refs)["bleu"] == pytest.approx(expected.score)


def test_language_detection():
    assert detect_lang(["The city of 北京 is large and very old.", "Winters are cold."]) == "en"  # 2 of 10 words
    assert detect_lang(["我们使用 PyTorch 和 TensorFlow 训练模型。"]) == "zh"
    assert detect_lang(["an English sentence with several words", "一句中文"]) == "zh"  # bilingual sets lean zh


# --------------------------------------------------------------------------- ROUGE


def test_rouge_by_hand():
    # unigrams: the cat sat on the mat / the cat lay on the rug -> overlap the*2, cat, on = 4 of 6 each side
    # bigrams: (the cat), (on the) shared = 2 of 5; LCS: the cat on the = 4
    out = rouge(["the cat sat on the mat"], ["the cat lay on the rug"])
    assert out == pytest.approx({"rouge1": 4 / 6, "rouge2": 2 / 5, "rougeL": 4 / 6})


def test_bit_parallel_lcs_equals_the_table():
    def table(a, b):
        row = [0] * (len(b) + 1)
        for x in a:
            prev = row[:]
            for j, y in enumerate(b, start=1):
                row[j] = prev[j - 1] + 1 if x == y else max(prev[j], row[j - 1])
        return row[-1]

    rng = random.Random(0)
    for _ in range(500):
        a, b = rng.choices("abcd", k=rng.randint(0, 25)), rng.choices("abcde", k=rng.randint(0, 25))
        assert lcs_length(a, b) == table(a, b)
    assert lcs_length("今天天气很好", "今天天气不错") == 4


@pytest.mark.parametrize("seed", range(4))
def test_rouge_equals_rouge_score_on_english(seed):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rng = random.Random(seed)
    preds, refs, refs2 = _sentences(rng, 25), _sentences(rng, 25), _sentences(rng, 25)
    pairs = [scorer.score(r, p) for p, r in zip(preds, refs, strict=True)]
    expected = {k: sum(s[k].fmeasure for s in pairs) / len(pairs) for k in ("rouge1", "rouge2", "rougeL")}
    assert rouge(preds, refs) == pytest.approx(expected, abs=1e-12)
    assert rouge(preds, refs, tokenizer="word") == pytest.approx(expected, abs=1e-12)
    multi = [scorer.score_multi([a, b], p) for p, a, b in zip(preds, refs, refs2, strict=True)]
    expected = {k: sum(s[k].fmeasure for s in multi) / len(multi) for k in ("rouge1", "rouge2", "rougeL")}
    assert rouge(preds, [[a, b] for a, b in zip(refs, refs2, strict=True)]) == pytest.approx(expected, abs=1e-12)


def test_rouge_on_chinese_where_rouge_score_gives_zero():
    """The reason lmforge has its own ROUGE: rouge-score keeps only [a-z0-9], so Chinese scores 0."""
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    theirs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"]).score("今天天气不错", "今天天气很好")
    assert all(s.fmeasure == 0.0 for s in theirs.values())
    # characters: 今 天 天 气 很 好 / 今 天 天 气 不 错: 4 of 6 shared; bigrams 今天 天天 天气 shared, 3 of 5; LCS 今天天气
    ours = rouge(["今天天气很好"], ["今天天气不错"])
    assert ours == pytest.approx({"rouge1": 4 / 6, "rouge2": 3 / 5, "rougeL": 4 / 6})


def test_rouge_tokenizers_on_chinese():
    # jieba: 我/爱/北京/天安门 vs 我/爱/北京 -> P 3/4, R 1 -> F 2*0.75/1.75
    assert rouge(["我爱北京天安门"], ["我爱北京"], tokenizer="jieba")["rouge1"] == pytest.approx(1.5 / 1.75)
    # pre-segmented text keeps its words with "word"; mixed text keeps English words whole with "char"
    assert rouge(["我 爱 北京"], ["我 爱 上海"], tokenizer="word")["rouge1"] == pytest.approx(2 / 3)
    assert rouge(["用Python编程"], ["用 python 写程序"])["rouge1"] == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))


# --------------------------------------------------------------------------- exact match and QA F1


def test_normalization():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("（北京）。") == "北京"
    assert normalize_answer(" ＡＢＣ 公司 ") == "abc公司"  # full-width letters folded, spaces dropped


def test_exact_match_and_f1_by_hand():
    preds = ["The Eiffel Tower!", "北京。", "（ＡＢＣ公司）", "Paris"]
    refs = ["eiffel tower", [" 北京 ", "北京市"], "abc公司", "London"]
    assert exact_match(preds, refs) == pytest.approx(3 / 4)
    assert exact_match(preds, refs, normalize=False) == 0.0
    # "the cat sat" vs "a cat sat down": cat, sat shared -> P 2/2, R 2/3 -> F1 0.8
    # 北京大学 vs 北京: 2 characters shared -> P 2/4, R 2/2 -> F1 2/3; an empty pair agrees (1.0)
    assert qa_f1(["the cat sat", "北京大学", ""], ["a cat sat down", "北京", "the"]) == pytest.approx(
        (0.8 + 2 / 3 + 1.0) / 3
    )


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: bleu([], []), InputError, "predictions is empty"),
        (lambda: chrf([], []), InputError, "predictions is empty"),
        (lambda: rouge([], []), InputError, "predictions is empty"),
        (lambda: exact_match([], []), InputError, "predictions is empty"),
        (lambda: qa_f1([], []), InputError, "predictions is empty"),
        (lambda: rouge(["a"], ["a", "b"]), InputError, "1 predictions but 2 references"),
        (lambda: rouge(["a"], [[]]), InputError, r"references\[0\] must be"),
        (lambda: rouge("a", "a"), InputError, "not a single string"),
        (lambda: bleu(["a"], ["a"], lang="fr"), ConfigError, "lang must be one of"),
        (lambda: rouge(["a"], ["a"], tokenizer="bpe"), ConfigError, "tokenizer must be one of"),
        (lambda: chrf(["a"], ["a"], word_order=3), ConfigError, "word_order must be"),
    ],
)
def test_errors_are_one_clear_line(call, error, words):
    with pytest.raises(error, match=words) as info:
        call()
    assert "\n" not in str(info.value)


def test_scores_are_plain_floats(sacrebleu):
    out = bleu(["a b"], ["a b"])
    assert type(out["bleu"]) is float and not math.isnan(out["bleu"])
    assert all(type(v) is float for v in rouge(["a b"], ["a b"]).values())
