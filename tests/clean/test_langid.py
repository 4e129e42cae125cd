import pytest

from lmforge.clean.langid import LangId, LangIdConfig, LanguageIdentifier, chinese_script, labelled_lines
from lmforge.errors import ConfigError
from lmforge.pipeline import run_chain
from lmforge.records import Record

SENTENCES = {
    "zh": "新华社北京１月１日电，国家主席江泽民发表了新年讲话。",
    "en": "The interpreter reads the source file and executes each statement in turn.",
    "ja": "これは日本語の小さなテストです。東京は晴れています。",
    "ko": "이것은 한국어로 쓴 작은 시험 문장입니다.",
    "de": "Das ist ein kleiner Test, der auf Deutsch geschrieben wurde.",
    "fr": "Ceci est un petit test écrit en français pour le programme.",
    "es": "Esta es una pequeña prueba escrita en español para el programa.",
    "ru": "Это небольшой тест, написанный на русском языке для программы.",
    "uk": "Це невелика перевірка, написана українською мовою.",
    "ar": "هذا اختبار صغير مكتوب باللغة العربية من أجل البرنامج.",
    "fa": "این یک آزمایش کوچک است که به زبان فارسی نوشته شده است.",
    "hi": "यह हिंदी में लिखा गया एक छोटा सा परीक्षण वाक्य है।",
    "th": "นี่คือการทดสอบเล็กๆ ที่เขียนเป็นภาษาไทย",
    "el": "Αυτό είναι ένα μικρό τεστ γραμμένο στα ελληνικά.",
    "he": "זהו מבחן קטן שנכתב בעברית עבור התוכנית.",
    "vi": "Đây là một bài kiểm tra nhỏ được viết bằng tiếng Việt.",
    "pt": "Este é um pequeno teste escrito em português para o programa.",
    "it": "Questo è un piccolo test scritto in italiano per il programma.",
    "nl": "Dit is een kleine test die in het Nederlands is geschreven.",
    "pl": "To jest mały test napisany po polsku dla tego programu.",
    "tr": "Bu, program için Türkçe yazılmış küçük bir testtir.",
}


@pytest.fixture(scope="module")
def ident():
    return LanguageIdentifier()


def test_zh_vs_en_accuracy_on_builtin_lines(ident):
    sample = [(text, lang) for text, lang in labelled_lines(800, docs=300) if len(text) >= 20]
    assert sum(lang == "zh" for _, lang in sample) >= 500 and sum(lang == "en" for _, lang in sample) >= 500
    correct = sum(ident.identify(text)[0] == lang for text, lang in sample)
    assert correct / len(sample) >= 0.99


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_common_web_languages(ident, lang):
    found, score = ident.identify(SENTENCES[lang])
    assert found == lang and 0.5 < score <= 1.0


def test_empty_and_letterless_text_is_und(ident):
    for text in ["", "   \n ", "１９９８．１２．３１", "12:30 -- 45%", "OK"]:
        assert ident.identify(text) == ("und", 0.0)


def test_chinese_script_in_meta_but_lang_is_zh(ident):
    assert ident.describe("这是简体中文的软件说明。") == {"lang": "zh", "score": 1.0, "script": "Hans"}
    assert ident.describe("這是繁體中文的軟體說明。") == {"lang": "zh", "score": 1.0, "script": "Hant"}
    assert chinese_script("中文") == "Hani"  # only characters both scripts share
    assert chinese_script("no Chinese here") is None


def test_chinese_with_code_and_english_with_a_quoted_character(ident):
    assert ident.identify("使用 pip install requests 安装依赖库")[0] == "zh"
    assert ident.identify("The character 中 means middle in this example sentence.")[0] == "en"


def test_restricting_candidates_helps_short_text_and_gives_und_for_other_scripts():
    only = LanguageIdentifier(LangIdConfig(languages=["zh", "en"]))
    assert only.identify("Error.")[0] == "en"
    assert only.identify("Это русский текст.") == ("und", 0.0)
    assert LanguageIdentifier(LangIdConfig(languages=None)).identify(SENTENCES["fr"])[0] == "fr"


def test_min_score_turns_weak_guesses_into_und():
    strict = LanguageIdentifier(LangIdConfig(min_score=0.99))
    lang, score = strict.identify("The character 中 means middle.")
    assert lang == "und" and 0 < score < 0.99


def test_per_line_spans_and_shares_for_mixed_text():
    text = "第一章 总则\n本法适用于中华人民共和国境内的所有公民。\n\nChapter One: General Provisions\n" \
           "This law applies to every citizen of the country.\n42"
    info = LanguageIdentifier(LangIdConfig(per_line=True, languages=["zh", "en"])).describe(text)
    zh_end = text.index("\n\n")
    assert info["spans"] == [[0, zh_end, "zh"], [zh_end + 2, len(text), "en"]]  # "42" joins the span before
    assert set(info["lines"]) == {"zh", "en"} and info["lines"]["en"] > info["lines"]["zh"]
    assert sum(info["lines"].values()) == pytest.approx(1.0, abs=1e-3)


def test_stage_sets_lang_and_meta_and_keep_drops_with_reason():
    recs = [Record(id=str(i), text=SENTENCES[lang]) for i, lang in enumerate(["zh", "en", "de", "ja"])]
    recs.append(Record(id="4", text="2024-01-15"))
    dropped = []
    out, stats = run_chain([LangId(keep=["zh", "en"])], recs, dropped.append)
    out = list(out)
    assert [(r.id, r.lang) for r in out] == [("0", "zh"), ("1", "en")]
    assert out[0].meta["langid"]["script"] == "Hans" and out[1].meta["langid"]["score"] > 0.5
    assert {r.id: r.drop_reason for r in dropped} == {"2": "lang_de", "3": "lang_ja", "4": "lang_und"}
    assert dict(stats[0].dropped) == {"lang_de": 1, "lang_ja": 1, "lang_und": 1}


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"langid.languages: unknown language code\(s\) \['xx'\]"):
        LangId(languages=["zh", "xx"])
    with pytest.raises(ConfigError, match="langid.keep: .*lowercase ISO 639"):
        LangId(keep=["Chinese"])
    with pytest.raises(ConfigError, match="langid.min_score"):
        LangId(min_score=2)
