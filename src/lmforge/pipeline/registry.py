"""The one registry: every source and stage a recipe can name, resolved lazily by "module:Class".

Validating a recipe imports only the modules of the names it uses. Adding a source or a stage is one
class and one entry here; the entry's kind says where a recipe may name it: a source under `input`
(read in the order listed here when an input names several), a stage in `pipeline`, and an augment
operation both in `pipeline` and in `augment.operations`.

A recipe may also name a custom stage as `package.module:ClassName`. Loading that stage imports
the module, which runs its code: that is what custom stages are for, so a recipe that names one
is code. `resolve_stage(..., allow_custom=False)` (`lmforge run --no-custom-stages`) refuses every
custom stage before anything is imported, for recipes from someone you do not trust.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails

from lmforge.errors import ConfigError
from lmforge.pipeline.custom import source_verdict
from lmforge.pipeline.source import Source
from lmforge.pipeline.stage import Stage

SOURCE, STAGE, OPERATION = "source", "stage", "operation"


class Entry(NamedTuple):
    kind: str  # SOURCE, STAGE or OPERATION (a stage that `augment` may also run)
    target: str  # "module:Class"


REGISTRY: dict[str, Entry] = {
    "builtin": Entry(SOURCE, "lmforge.collect.builtin:BuiltinSource"),
    "files": Entry(SOURCE, "lmforge.collect.files:FilesSource"),
    "warc": Entry(SOURCE, "lmforge.collect.warc:WarcSource"),
    "crawl": Entry(SOURCE, "lmforge.collect.crawl:CrawlSource"),
    "sql": Entry(SOURCE, "lmforge.collect.sql:SqlSource"),
    "api": Entry(SOURCE, "lmforge.collect.api:ApiSource"),
    "dataset": Entry(SOURCE, "lmforge.collect.dataset:DatasetSource"),
    "extract": Entry(STAGE, "lmforge.clean.extract:Extract"),
    "normalize": Entry(STAGE, "lmforge.clean.normalize:Normalize"),
    "boilerplate_lines": Entry(STAGE, "lmforge.clean.normalize:BoilerplateLines"),
    "langid": Entry(STAGE, "lmforge.clean.langid:LangId"),
    "pii": Entry(STAGE, "lmforge.clean.pii:PiiRedact"),
    "strip_html": Entry(STAGE, "lmforge.clean.basic:StripHtml"),
    "length_filter": Entry(STAGE, "lmforge.clean.basic:LengthFilter"),
    "gopher_repetition": Entry(STAGE, "lmforge.clean.filters.gopher:GopherRepetition"),
    "gopher_quality": Entry(STAGE, "lmforge.clean.filters.gopher:GopherQuality"),
    "c4": Entry(STAGE, "lmforge.clean.filters.c4:C4Filter"),
    "fineweb": Entry(STAGE, "lmforge.clean.filters.fineweb:FineWebFilter"),
    "url_blocklist": Entry(STAGE, "lmforge.clean.filters.blocklist:UrlBlocklist"),
    "bad_words": Entry(STAGE, "lmforge.clean.filters.blocklist:BadWords"),
    "exact_dedup": Entry(STAGE, "lmforge.dedup.exact:ExactDedup"),
    "minhash_dedup": Entry(STAGE, "lmforge.dedup.minhash:MinHashDedup"),
    "line_dedup": Entry(STAGE, "lmforge.dedup.lines:LineDedup"),
    "decontaminate": Entry(STAGE, "lmforge.dedup.decontaminate:Decontaminate"),
    "quality_classifier": Entry(STAGE, "lmforge.quality.fast:QualityClassifier"),
    "transformer_quality": Entry(STAGE, "lmforge.quality.transformer:TransformerQuality"),
    "perplexity_filter": Entry(STAGE, "lmforge.quality.perplexity:PerplexityFilter"),
    "eda": Entry(OPERATION, "lmforge.augment.stages:EdaStage"),
    "back_translate": Entry(OPERATION, "lmforge.augment.backtranslate:BackTranslateStage"),
    "contextual_substitute": Entry(OPERATION, "lmforge.augment.contextual:ContextualStage"),
}
_STAGE_KINDS = (STAGE, OPERATION)
_CUSTOM = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def names(*kinds: str) -> tuple[str, ...]:
    """Registered names of the given kinds, in registry order."""
    return tuple(name for name, entry in REGISTRY.items() if entry.kind in kinds)


def source_names() -> tuple[str, ...]:
    """Every source, in the order an input naming several reads them."""
    return names(SOURCE)


def operation_names() -> tuple[str, ...]:
    """The stages `augment.operations` may run."""
    return names(OPERATION)


def _load(name: str) -> type:
    module_name, _, attr = REGISTRY[name].target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def resolve_source(name: str) -> type[Source]:
    entry = REGISTRY.get(name)
    if entry is None or entry.kind != SOURCE:
        what = "a stage (it goes in 'pipeline')" if entry else "unknown"
        raise ConfigError(f"source {name!r} is {what}; allowed sources: {', '.join(source_names())}")
    return _load(name)


def typed_entries(data: dict[str, Any], kind: str, title: str) -> dict[str, BaseModel]:
    """Each `name: options` of `data` validated by the registered class's own Config, in registry order.

    For sections made of registry names (`input`, `augment.operations`): an unknown name is an
    unknown key, and an error inside an entry names its field (`files.paths`), as a typed field would.
    """
    known = names(kind)
    out: dict[str, BaseModel] = {}
    errors: list[InitErrorDetails] = []
    for key, value in data.items():
        if key not in known:
            errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=value))
        elif value is not None:
            try:
                out[key] = _typed(key, value)
            except ValidationError as exc:
                errors += [_nested(key, err) for err in exc.errors()]
    if errors:
        raise ValidationError.from_exception_data(title, errors)
    return {name: out[name] for name in known if name in out}


def _typed(name: str, value: Any) -> BaseModel:
    model = _load(name).Config
    return value if isinstance(value, model) else model.model_validate(value)


def _nested(name: str, err: Any) -> InitErrorDetails:
    details = InitErrorDetails(type=err["type"], loc=(name, *err["loc"]), input=err.get("input"))
    if "ctx" in err:
        details["ctx"] = err["ctx"]
    return details


def is_custom(name: str) -> bool:
    """Whether `name` is a custom stage (code outside lmforge) rather than a built-in one."""
    return name not in REGISTRY


def resolve_stage(name: str, allow_custom: bool = True) -> type[Stage]:
    entry = REGISTRY.get(name)
    if entry is not None and entry.kind in _STAGE_KINDS:
        return _load(name)
    if entry is not None:
        raise ConfigError(f"{name!r} is a source, not a stage: name it under 'input'")
    if ":" not in name:
        allowed = ", ".join(sorted(names(*_STAGE_KINDS)))
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
