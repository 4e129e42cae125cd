"""Stage names usable in recipes, resolved lazily so validating a recipe imports nothing heavy.

A recipe may also name a custom stage as `package.module:ClassName`. Loading that stage imports
the module, which runs its code: that is what custom stages are for, so a recipe that names one
is code. `resolve_stage(..., allow_custom=False)` (`lmforge run --no-custom-stages`) refuses every
custom stage before anything is imported, for recipes from someone you do not trust.
"""

from __future__ import annotations

import importlib
import re

from lmforge.errors import ConfigError
from lmforge.pipeline.custom import source_verdict
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
_CUSTOM = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_custom(name: str) -> bool:
    """Whether `name` is a custom stage (code outside lmforge) rather than a built-in one."""
    return name not in BUILTIN_STAGES


def resolve_stage(name: str, allow_custom: bool = True) -> type[Stage]:
    if name in BUILTIN_STAGES:
        module_name, _, attr = BUILTIN_STAGES[name].partition(":")
        return getattr(importlib.import_module(module_name), attr)
    if ":" not in name:
        allowed = ", ".join(sorted(BUILTIN_STAGES))
        raise ConfigError(f"unknown stage {name!r}; allowed: {allowed} (or 'package.module:Class')")
    if not _CUSTOM.fullmatch(name):
        raise ConfigError(f"custom stage {name!r} must be written 'package.module:ClassName'")
    if not allow_custom:
        raise ConfigError(
            f"custom stage {name!r} refused: custom stages are turned off (--no-custom-stages), "
            "since loading one imports and runs its module's code; only built-in stages may run"
        )
    return _import_custom(name)


def _import_custom(name: str) -> type[Stage]:
    module_name, _, attr = name.partition(":")
    refusal = source_verdict(module_name, attr)  # what the source shows, before running any of it
    if refusal:
        raise ConfigError(f"cannot load stage {name!r}: {refusal}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot load stage {name!r}: cannot import module {module_name!r} ({exc})") from None
    except SyntaxError as exc:
        raise ConfigError(f"cannot load stage {name!r}: module {module_name!r} has a syntax error "
                          f"at line {exc.lineno}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"cannot load stage {name!r}: module {module_name!r} has no attribute {attr!r}")
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        what = f"class {cls.__name__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ConfigError(f"{name!r} is {what}, not a subclass of lmforge.pipeline.Stage")
    return cls
