"""Typed configs: strict pydantic models whose errors name the field, the value and what is allowed.

Also the one YAML loader for user files (`load_yaml_file`): a recipe is untrusted input, so the
loader bounds its size, its nesting and what its aliases may expand to before anything walks it.
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lmforge.errors import ConfigError

# A value quoted in an error is cut to this; `short_repr` never builds the whole repr first.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxset = 3, 5, 5, 5, 5
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 80, 80, 40
MAX_SHOWN_ERRORS = 5  # problems listed in one validation error; the rest are counted


def shorten(text: str, limit: int = 300) -> str:
    """Text (an exception's message) as one line of at most `limit` characters, for an error message."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: Any, limit: int = 120) -> str:
    """A bounded repr for error messages: a huge or deeply shared value costs as little as a small one."""
    try:
        text = _SHOWN.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def valid_regex(pattern: str) -> str:
    """For config validators: the pattern itself if it compiles, else a ValueError saying why."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
    return pattern


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, defaults are the published sensible values."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if isinstance(part, str) else short_repr(part))
    return out if len(out) <= 200 else out[:197] + "..."


def format_validation_error(exc: ValidationError, where: str = "", prefix: str = "") -> str:
    """One line: `where: field.path: message (got value)` per problem, the first few of them.

    Values and messages are cut (`short_repr`), so a huge input cannot make a huge or slow error.
    """
    lines = []
    errors = exc.errors(include_url=False, include_context=True, include_input=True)
    for err in errors[:MAX_SHOWN_ERRORS]:
        path = _loc(tuple(p for p in (prefix,) if p) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        msg = shorten(msg)
        got = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(got, dict) else f" (got {short_repr(got)})"
        head = f"{where}: " if where else ""
        lines.append(f"{head}{path or '<root>'}: {msg}{shown}")
    if len(errors) > MAX_SHOWN_ERRORS:
        lines.append(f"and {len(errors) - MAX_SHOWN_ERRORS} more problems")
    return "; ".join(lines)


def validate(model: type[BaseModel], data: Any, where: str = "", prefix: str = "") -> Any:
    """Validate `data` against `model`, turning pydantic's report into a one-line ConfigError."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, prefix)) from None


class DataclassConfig:
    """to_dict/from_dict for the dataclass model configs saved in checkpoints (GPT, BERT).

    from_dict rejects unknown keys, so a typo in a config.json is an error, not a silent default.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; allowed: {sorted(known)}")
        if "vocab_size" not in data:
            raise ConfigError("model.vocab_size is required")
        return cls(**data)


# --------------------------------------------------------------------------- YAML

MAX_YAML_BYTES = 2 * 1024 * 1024  # a recipe is written by hand; this is far more than any needs
MAX_YAML_DEPTH = 64  # nesting, counted after aliases are expanded
MAX_ALIAS_VALUES = 10_000  # values that aliases may add to a document when expanded


def load_yaml_file(path: str | Path, what: str = "recipe") -> Any:
    """Read a user's YAML file safely: bounded size, nesting and alias expansion; one-line ConfigErrors.

    Every YAML file a user hands lmforge goes through here (recipes, run configs), so a billion-laughs
    document, a 10000-deep `[[[...]]]` or a multi-GB file is refused before it costs memory or time.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {what} is too large ({size:,} bytes; at most {MAX_YAML_BYTES:,})")
    with open(path, "rb") as fh:
        raw = fh.read(MAX_YAML_BYTES + 1)  # the file may have grown since stat
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {what} is too large (more than {MAX_YAML_BYTES:,} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from None
    return parse_yaml(text, where=str(path))


def parse_yaml(text: str, where: str = "<yaml>") -> Any:
    """`yaml.safe_load` of `text` within the limits above, or a one-line ConfigError naming `where`."""
    import yaml

    loader = _bounded_loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, loader.first_alias, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML{at}: {shorten(problem, 200)}") from None
    except _Refused as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{where}: invalid YAML value: {shorten(str(exc), 200)}") from None
    finally:
        loader.dispose()


class _Refused(Exception):
    """A limit of the YAML loader was hit; the message says which."""


_LOADER: list[type] = []


def _bounded_loader_class() -> type:
    """SafeLoader (pure Python: its composer is the one we can bound) refusing deep nesting as it reads."""
    if _LOADER:
        return _LOADER[0]
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.depth = 0
            self.first_alias: Any = None

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.first_alias is None and self.check_event(yaml.AliasEvent):
                self.first_alias = self.peek_event().start_mark
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    mark = self.peek_event().start_mark
                    raise _Refused(f"YAML nested more than {MAX_YAML_DEPTH} levels deep "
                                   f"(at line {mark.line + 1}, column {mark.column + 1})")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    _LOADER.append(BoundedLoader)
    return BoundedLoader


def _check_expansion(root: Any, first_alias: Any, where: str) -> None:
    """Refuse a node graph whose aliases expand too far or too deep, or loop back on themselves.

    The composed graph shares an aliased node; counting with a memo costs one visit per distinct
    node, whatever the expanded size (9 levels of 9 aliases: 81 visits for 387 million values).
    """
    memo: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    distinct = [0]
    at = f" (aliases from line {first_alias.line + 1})" if first_alias is not None else ""

    def measure(node: Any) -> tuple[int, int]:  # (values when expanded, depth when expanded)
        key = id(node)
        if key in memo:
            return memo[key]
        if key in on_path:
            raise _Refused(f"a YAML alias refers to a node that contains it{at}; recursive values are not allowed")
        on_path.add(key)
        distinct[0] += 1
        count, depth = 1, 0
        value = node.value if isinstance(node.value, list) else []
        children = [c for pair in value for c in (pair if isinstance(pair, tuple) else (pair,))]
        for child in children:
            c, d = measure(child)
            count, depth = count + c, max(depth, d)
            if len(on_path) + d > MAX_YAML_DEPTH:
                raise _Refused(f"YAML aliases nest values more than {MAX_YAML_DEPTH} levels deep{at}")
            if count - distinct[0] > MAX_ALIAS_VALUES:
                raise _Refused(f"YAML aliases expand to more than {MAX_ALIAS_VALUES:,} extra values{at}; "
                               "write the values out or use fewer aliases")
        on_path.discard(key)
        memo[key] = (count, depth + 1)
        return memo[key]

    measure(root)
