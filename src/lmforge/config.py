"""Typed configs: strict pydantic models whose errors name the field, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lmforge.errors import ConfigError


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
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(exc: ValidationError, where: str = "", prefix: str = "") -> str:
    """One line per problem: `where: field.path: message (got value)`."""
    lines = []
    for err in exc.errors():
        path = _loc(tuple(p for p in (prefix,) if p) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        got = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        head = f"{where}: " if where else ""
        lines.append(f"{head}{path or '<root>'}: {msg}{shown}")
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
