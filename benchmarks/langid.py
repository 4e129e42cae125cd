"""Language ID: lmforge's LangId against plain py3langid and lingua on built-in Chinese and English lines.

The sample is `lmforge.clean.langid.labelled_lines`: sentences of People's Daily and product
reviews (zh) and of the Python docs and docstrings (en), drawn at random with a fixed seed.
Accuracy is reported separately for short (< 20 characters) and long lines, counting any
answer other than the corpus language as wrong (so "fr" for an English line is an error).
Short lines that occur naturally in these corpora are mostly fragments ("Error.", "（新华社记者摄）"),
so short text is also measured on "cuts": the start of each long line, cut at a word boundary
before 20 characters (English) or after 4 to 19 characters (Chinese).
lingua is measured only if installed (`pip install lingua-language-detector`).

"load s" is the time to build a detector and answer once; models already loaded in the
process by an earlier row (lingua's zh and en) are not loaded again.

Run from the repo root: `python benchmarks/langid.py`.
Last line: `accuracy <lmforge zh-vs-en accuracy on lines >= 20 chars> lines_per_s <lmforge lines/s>`.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable

from lmforge.clean.langid import WEB_LANGUAGES, LangIdConfig, LanguageIdentifier, labelled_lines

log = logging.getLogger("benchmarks.langid")

PER_LANGUAGE = 3000
SHORT = 20
Detector = Callable[[str], str]


def py3langid_detector(languages: list[str] | None) -> Detector:
    from py3langid.langid import MODEL_FILE
    from py3langid.langid import LanguageIdentifier as Py3

    model = Py3.from_model_file(MODEL_FILE, norm_probs=True)
    if languages:
        model.set_languages(languages)
    return lambda text: model.classify(text)[0]


def lingua_detector(languages: list[str] | None) -> Detector | None:
    try:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
    except ImportError:
        return None
    if languages:
        chosen = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in languages]
        builder = LanguageDetectorBuilder.from_languages(*chosen)
    else:
        builder = LanguageDetectorBuilder.from_all_languages()
    detector = builder.with_preloaded_language_models().build()

    def detect(text: str) -> str:
        lang = detector.detect_language_of(text)
        return lang.iso_code_639_1.name.lower() if lang is not None else "und"

    return detect


def lmforge_detector(languages: list[str] | None) -> Detector:
    identifier = LanguageIdentifier(LangIdConfig(languages=languages))
    return lambda text: identifier.identify(text)[0]


def cuts(sample: list[tuple[str, str]], seed: int = 1) -> list[tuple[str, str]]:
    """Short text that is still real language: the first words (or characters) of long lines."""
    rng = random.Random(seed)
    out = []
    for text, lang in sample:
        if len(text) < 2 * SHORT:
            continue
        if lang == "zh":
            out.append((text[: rng.randint(4, SHORT - 1)], lang))
            continue
        head = ""
        for word in text.split():
            if len(head) + len(word) + 1 >= SHORT:
                break
            head = f"{head} {word}".strip()
        if len(head) >= 5:
            out.append((head, lang))
    return out


def accuracy(predicted: list[str], sample: list[tuple[str, str]], keep: Callable[[str, str], bool]) -> float:
    hits = [p == gold for p, (text, gold) in zip(predicted, sample, strict=True) if keep(text, gold)]
    return sum(hits) / len(hits) if hits else float("nan")


def measure(detect: Detector, sample: list[tuple[str, str]], short: list[tuple[str, str]]) -> dict[str, float]:
    t0 = time.perf_counter()
    predicted = [detect(text) for text, _ in sample]
    seconds = time.perf_counter() - t0
    cut = [detect(text) for text, _ in short]
    row: dict[str, float] = {"lines_per_s": len(sample) / seconds}
    for lang in ("zh", "en"):
        row[f"{lang}_cut"] = accuracy(cut, short, lambda _, gold, lang=lang: gold == lang)
        row[f"{lang}_short"] = accuracy(predicted, sample, lambda t, gold, lang=lang: gold == lang and len(t) < SHORT)
        row[f"{lang}_long"] = accuracy(predicted, sample, lambda t, gold, lang=lang: gold == lang and len(t) >= SHORT)
    row["long"] = accuracy(predicted, sample, lambda t, _: len(t) >= SHORT)
    return row


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    from lmforge.sysinfo import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sample = labelled_lines(PER_LANGUAGE, docs=2000)
    counts = {(lang, size): 0 for lang in ("zh", "en") for size in ("short", "long")}
    for text, lang in sample:
        counts[lang, "short" if len(text) < SHORT else "long"] += 1
    short = cuts(sample)
    log.info("sample: %s; cuts: zh %d, en %d", ", ".join(f"{lang} {size} {n}" for (lang, size), n in counts.items()),
             sum(lang == "zh" for _, lang in short), sum(lang == "en" for _, lang in short))

    candidates: list[tuple[str, Callable[[list[str] | None], Detector | None], list[str] | None]] = [
        ("py3langid (all 140)", py3langid_detector, None),
        ("py3langid (zh, en)", py3langid_detector, ["zh", "en"]),
        ("lingua (all 75)", lingua_detector, None),
        ("lingua (zh, en)", lingua_detector, ["zh", "en"]),
        ("lmforge LangId (all 140)", lmforge_detector, None),
        ("lmforge LangId (default)", lmforge_detector, list(WEB_LANGUAGES)),
        ("lmforge LangId (zh, en)", lmforge_detector, ["zh", "en"]),
    ]
    header = f"{'method':<26} {'load s':>7} {'zh cut':>7} {'zh<20':>7} {'zh>=20':>7} {'en cut':>7} {'en<20':>7} " \
             f"{'en>=20':>7} {'all>=20':>8} {'lines/s':>9}"
    log.info(header)
    rows = {}
    for name, make, languages in candidates:
        t0 = time.perf_counter()
        detect = make(languages)
        if detect is None:
            log.info("%-26s not installed", name)
            continue
        detect("warm up: lmforge loads its model on the first call")
        load = time.perf_counter() - t0
        rows[name] = row = measure(detect, sample, short)
        cells = " ".join(f"{row[f'{lang}_{size}']:>7.4f}" for lang in ("zh", "en") for size in ("cut", "short", "long"))
        log.info(f"{name:<26} {load:>7.2f} {cells} {row['long']:>8.4f} {row['lines_per_s']:>9.0f}")
    ours = rows["lmforge LangId (default)"]
    log.info(f"accuracy {ours['long']:.4f} lines_per_s {ours['lines_per_s']:.0f}")


if __name__ == "__main__":
    main()
