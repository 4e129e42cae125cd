"""Stage names usable in recipes, resolved lazily so validating a recipe imports nothing heavy.

A recipe may also name a custom stage as `package.module:ClassName`.
"""

from __future__ import annotations

import importlib

from lmforge.errors import ConfigError
from lmforge.pipeline.stage import Stage

BUILTIN_STAGES: dict[str, str] = {
    "extract": "lmforge.clean.extract:Extract",
    "normalize": "lmforge.clean.normalize:Normalize",
    "boilerplate_lines": "lmforge.clean.normalize:BoilerplateLines",
    "langid": "lmforge.clean.langid:LangId",
    "pii": "lmforge.clean.pii:PiiRedact",
    "strip_html": "lmforge.clean.basic:StripHtml",
    "length_filter": "lmforge.clean.basic:LengthFilter",
    "gopher_repetition": "lmforge.clean.filters.gopher:GopherRepetition",
    "gopher_quality": "lmforge.clean.filters.gopher:GopherQuality",
    "c4": "lmforge.clean.filters.c4:C4Filter",
    "fineweb": "lmforge.clean.filters.fineweb:FineWebFilter",
    "url_blocklist": "lmforge.clean.filters.blocklist:UrlBlocklist",
    "bad_words": "lmforge.clean.filters.blocklist:BadWords",
    "exact_dedup": "lmforge.dedup.exact:ExactDedup",
    "minhash_dedup": "lmforge.dedup.minhash:MinHashDedup",
    "line_dedup": "lmforge.dedup.lines:LineDedup",
    "decontaminate": "lmforge.dedup.decontaminate:Decontaminate",
    "eda": "lmforge.augment.stages:EdaStage",
    "back_translate": "lmforge.augment.backtranslate:BackTranslateStage",
    "contextual_substitute": "lmforge.augment.contextual:ContextualStage",
}


def resolve_stage(name: str) -> type[Stage]:
    target = BUILTIN_STAGES.get(name)
    if target is None and ":" not in name:
        allowed = ", ".join(sorted(BUILTIN_STAGES))
        raise ConfigError(f"unknown stage {name!r}; allowed: {allowed} (or 'package.module:Class')")
    module_name, _, attr = (target or name).partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load stage {name!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"{name!r} is not a lmforge Stage subclass")
    return cls
