"""Remote inputs of the collect sources: each object is staged into the run's `collect/remote-cache` and
read there like a local file (the store side, listing and staging, is `lmforge.storage`)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmforge.storage import CACHE_DIR, ObjectTooLarge, RemoteFile, is_url, list_remote, public_url, stage

__all__ = ["ObjectTooLarge", "RemoteFile", "is_url", "list_remote", "public_url", "read_staged", "stage"]

log = logging.getLogger(__name__)


def read_staged(remote: RemoteFile, work_dir: Path | None, max_bytes: int, field: str,
                read: Callable[[Path], Iterator[Any]], too_large: Callable[[str], Any]) -> Iterator[Any]:
    """What `read` makes of the staged copy of `remote`, or the one record `too_large` makes of the error.

    The copy is kept in `work_dir/remote-cache`, so that a re-run downloads nothing; without a
    `work_dir` (a Python call outside a run) it lives in a temporary folder while it is read.
    """
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="lmforge-remote-") as tmp:
            yield from read_staged(remote, Path(tmp), max_bytes, field, read, too_large)
        return
    try:
        local = stage(remote, work_dir / CACHE_DIR, max_bytes, field)
    except ObjectTooLarge as exc:
        log.warning("%s: %s (max_file_bytes): quarantined without reading it", remote, exc)
        yield too_large(f"{exc} (max_file_bytes)")
        return
    yield from read(local)
