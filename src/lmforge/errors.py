"""Errors a user can fix.

Bad *data* never raises (it is quarantined with a reason); bad *requests* do, as a
`UserError` with one clear sentence that the CLI prints before exiting with status 2.
"""

from __future__ import annotations

MAX_MESSAGE = 2000  # characters; a message quoting a user's huge value is cut here, whoever built it


class UserError(Exception):
    """A mistake the user can fix: bad config, missing file, unreadable input."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and len(args[0]) > MAX_MESSAGE:
            args = (args[0][: MAX_MESSAGE - 30] + f"... ({len(args[0]) - MAX_MESSAGE + 30:,} more characters)",)
        super().__init__(*args)


class ConfigError(UserError):
    """A recipe or config value is invalid; the message names the field."""


class InputError(UserError):
    """An input file cannot be read at all (corrupt, missing, wrong format); the message names it."""


class Interrupted(UserError):
    """Ctrl-C: finished shards and steps are kept, so the same command resumes."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted; run the same command again to resume where it stopped")


class MissingDependencyError(UserError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str):
    """Import an optional dependency or explain which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"this feature needs the '{module}' package: pip install 'lmforge[{extra}]'"
        ) from exc
