"""Turning the paths, directories and globs of a recipe into files, safely across symlinks.

Directories and `**` globs are walked here rather than by `glob`/`rglob`: `glob` follows a directory
link back to its own ancestor until the kernel's ELOOP, listing every file some 40 times (and with
two such links, 2**40 paths), while `rglob` skips directory links silently. This walk follows
directory links, visits each real directory once, and reports a link that loops (or a link to
itself) as `symlink_loop` and a dangling link as `broken_symlink`, so that they are counted and
logged instead of vanishing.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.collect.remote import RemoteFile, is_url, list_remote
from lmforge.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Listing:
    """What one pattern matched: files in sorted order, and entries skipped with a reason."""

    files: list[Path | RemoteFile] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def skip(self, path: Path, reason: str) -> None:
        log.warning("skipping %s: %s", path, "symlink loop" if reason == "symlink_loop" else reason.replace("_", " "))
        self.skipped.append((path, reason))


def expand_paths(patterns: list[str], base_dir: Path, field: str, recursive: bool = True,
                 directories: bool = True) -> Iterator[tuple[Path | str, Listing]]:
    """(pattern as a path, what it matched) per pattern; a pattern matching nothing is an error.

    Relative patterns start at `base_dir` (the recipe's folder); with `directories`, a directory
    stands for the files below it. The error names `field[i]` so a recipe mistake is easy to find.
    A URL (`s3://bucket/crawl/*.warc.gz`) is listed through fsspec: it comes back as itself, with
    RemoteFile entries that the source stages before reading (`collect.remote`).
    """
    for i, pattern in enumerate(patterns):
        if is_url(pattern):
            yield pattern, Listing(list_remote(pattern, f"{field}[{i}]", recursive, directories))
            continue
        full = Path(pattern) if Path(pattern).is_absolute() else base_dir / pattern
        if directories and full.is_dir():
            listing = walk(full, _everything, recursive)
        elif recursive and "**" in full.parts:
            root, rest = _split_magic(full)
            listing = walk(root, lambda rel, rest=rest: _matches(rel, rest), True, prune=rest)
        else:
            listing = _globbed(str(full), recursive)
        if not listing.files and not listing.skipped:
            raise ConfigError(f"{field}[{i}]: no file matches {pattern!r} (looked in {base_dir})")
        yield full, listing


def walk(root: Path, wanted, recursive: bool, prune: tuple[str, ...] | None = None) -> Listing:
    """Files below `root` whose path relative to it `wanted` accepts, each real directory visited once."""
    listing = Listing()
    try:
        top = root.stat()
    except OSError:
        return listing
    seen = {(top.st_dev, top.st_ino)}
    stack: list[tuple[Path, tuple[str, ...], frozenset]] = [(root, (), frozenset(seen))]
    while stack:
        directory, rel, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", directory, exc)
            continue
        for entry in entries:
            path, parts = Path(entry.path), (*rel, entry.name)
            kind, key = _kind(entry, path)
            if kind == "dir":
                if not recursive or (prune is not None and not _may_match(parts, prune)):
                    continue
                if key in ancestors:
                    listing.skip(path, "symlink_loop")
                elif key in seen:
                    log.info("not listing %s again: it is a link to a directory already listed", path)
                else:
                    seen.add(key)
                    stack.append((path, parts, ancestors | {key}))
            elif kind == "file":
                if wanted(parts):
                    listing.files.append(path)
            elif kind is not None and wanted(parts):
                listing.skip(path, kind)
    listing.files.sort()
    listing.skipped.sort()
    return listing


def _kind(entry: os.DirEntry, path: Path) -> tuple[str | None, tuple[int, int]]:
    """("file", "dir", a skip reason for a bad link, or None for sockets, pipes and devices), and the
    (device, inode) the entry leads to, links followed."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink_loop", (0, 0)
        return ("broken_symlink" if entry.is_symlink() else None), (0, 0)
    key = (st.st_dev, st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        return "dir", key
    return ("file" if stat.S_ISREG(st.st_mode) else None), key


def _globbed(pattern: str, recursive: bool) -> Listing:
    """A pattern without `**`: glob lists it (no recursion, so no loop); bad links are reported."""
    listing = Listing()
    for match in sorted(Path(p) for p in glob.glob(pattern, recursive=recursive)):
        try:
            mode = match.stat().st_mode
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                listing.skip(match, "symlink_loop")
            elif match.is_symlink():
                listing.skip(match, "broken_symlink")
            continue
        if stat.S_ISREG(mode):
            listing.files.append(match)
    return listing


def _split_magic(full: Path) -> tuple[Path, tuple[str, ...]]:
    """The folder before the first component with a wildcard, and the components from there on."""
    parts = full.parts
    for k, part in enumerate(parts):
        if glob.has_magic(part):
            return Path(*parts[:k]), tuple(parts[k:])
    return full.parent, (full.name,)


def _everything(rel: tuple[str, ...]) -> bool:
    return True


def _name_matches(name: str, pattern: str) -> bool:
    """glob's rule for one component, hidden names included: `*` does not match a leading dot."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _advance(states: set[int], name: str, pattern: tuple[str, ...]) -> set[int]:
    """Positions in `pattern` reachable after one more path component (`**` takes zero or more)."""
    out = set()
    for s in _closure(states, pattern):
        if s >= len(pattern):
            continue
        if pattern[s] == "**":
            if not name.startswith("."):
                out.add(s)
        elif _name_matches(name, pattern[s]):
            out.add(s + 1)
    return out


def _closure(states: set[int], pattern: tuple[str, ...]) -> set[int]:
    out, todo = set(states), list(states)
    while todo:
        s = todo.pop()
        if s < len(pattern) and pattern[s] == "**" and s + 1 not in out:
            out.add(s + 1)
            todo.append(s + 1)
    return out


def _states(parts: tuple[str, ...], pattern: tuple[str, ...]) -> set[int]:
    states = {0}
    for name in parts:
        states = _advance(states, name, pattern)
        if not states:
            break
    return states


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return len(pattern) in _closure(_states(parts, pattern), pattern)


def _may_match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether files below the directory `parts` could still match: prunes the walk like glob does."""
    return bool(_states(parts, pattern))
