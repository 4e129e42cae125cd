"""Model evaluation: classification, NER, text, language-model and multiple-choice metrics; reports.

Names are exported lazily (PEP 562): `from lmforge.evaluate import rouge` imports only the
module that defines `rouge`, so `import lmforge.evaluate` itself costs nothing, and sacrebleu,
jieba and torch load only when a metric that needs them runs. `perplexity.py` (windowed
validation perplexity, which imports torch) is left out on purpose; import it directly.
"""

from __future__ import annotations

import importlib as _importlib

_EXPORTS = {
    "metrics": ("accuracy", "classification_report", "confusion_matrix", "f1"),
    "ner": ("entities", "ner_report"),
    "text": ("bleu", "chrf", "detect_lang", "exact_match", "normalize_answer", "qa_f1", "rouge"),
    "lm": ("bits_per_byte", "lm_scores", "perplexity_from_nll"),
    "report": ("compare_table", "to_markdown", "write_report"),
    "choice": ("evaluate_choice", "run_choice"),
    "choice_data": ("load_choice",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_EXPORTS, "perplexity"})
