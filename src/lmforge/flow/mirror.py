"""A run directory on an object store (`--out s3://bucket/runs/cc`): the run works in a local mirror that
is published to the store as it goes, and pulled back from it to resume.

Why a mirror rather than every writer speaking S3: an object store has no rename, no append and no
partial write, while the run's writers rely on all three (atomic renames for shards and markers,
checkpoints written as a folder then renamed, a log that grows). So every step, executor and reader
keeps its local paths, and the store gets whole files, in an order that keeps it consistent:

- a pass publishes new and changed files, each uploaded to a temporary key (`.NAME.upload-<hex>`)
  and then moved to its own, so no reader ever sees half an object; completion markers (`*.done`)
  go after the other files and are snapshotted before them, so a marker on the store always has its
  outputs beside it;
- last, the pass writes `.lmforge-mirror.json`, the manifest: every published file with its size
  and SHA-256. Only what the manifest lists counts as published, so a pass killed halfway leaves
  the store at the previous pass; files the run has deleted are removed after the manifest;
- passes run every `interval` seconds from a thread, after every step, and at the end (also when
  the run fails); a SIGKILL loses at most the work since the last pass;
- a run starts (or resumes, on any machine) by pulling every manifest file the mirror lacks or holds
  in another version, and then resumes as a local run would: marked shards are kept, others redone.

The mirror lives in `$LMFORGE_CACHE_DIR/runs/` (default `~/.cache/lmforge/runs/`), one folder per URL.
A store that holds no manifest starts a fresh run, and a mirror left from an older run of that URL
is cleared first. Staged input copies (`collect/remote-cache`) and temporary files are never published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import InputError
from lmforge.storage import cache_root, filesystem, is_url, public_url, store_error

log = logging.getLogger(__name__)

MANIFEST = ".lmforge-mirror.json"
MARKER_SUFFIX = ".done"
SKIPPED_DIRS = ("collect/remote-cache",)
FIELD = "--out"


def mirror_dir(url: str) -> Path:
    """The local folder that mirrors the run at `url` (the same for every process of this machine)."""
    shown = public_url(url.rstrip("/"))
    key = hashlib.sha256(shown.encode()).hexdigest()[:16]
    return cache_root() / "runs" / f"{key}-{shown.rsplit('/', 1)[-1] or 'run'}"


class RunMirror:
    """The local folder a remote run works in, and the passes that keep the store in step with it."""

    def __init__(self, url: str, interval: float = 10.0, field: str = FIELD) -> None:
        self.url = url.rstrip("/")
        self.shown = public_url(self.url)
        self.field = field  # what a store error names: --out for a run, RUN_DIR for stats and report
        self.fs, self.root = filesystem(self.url, field)
        self.root = self.root.rstrip("/")
        self.local = mirror_dir(self.url)
        self.interval = interval
        self._published: dict[str, dict[str, Any]] = {}  # rel path -> {"size", "sha256", "stat"}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the run's life

    def __enter__(self) -> RunMirror:
        self.pull()
        self._thread = threading.Thread(target=self._loop, name="lmforge-mirror", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.publish()  # also after a failure: what finished is kept on the store
        except Exception as err:  # noqa: BLE001
            if exc_type is None:
                raise
            log.warning("%s: the last pass failed too (%s); re-run to publish and resume", self.shown, err)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.try_publish()

    def try_publish(self) -> None:
        """A pass during the run: a store that fails for a while (network, throttling) must not stop it."""
        try:
            self.publish()
        except Exception as exc:  # noqa: BLE001 - the next pass (or the last one, which raises) tries again
            log.warning("%s: publishing failed, will retry: %s", self.shown, exc)

    # ------------------------------------------------------------------ pull

    def pull(self) -> None:
        """Fetch what the store's manifest lists and the mirror lacks; clear a mirror of an older run."""
        manifest = self._read_manifest()
        self._remove_orphans()
        if manifest is None:
            if self.local.exists() and any(self.local.iterdir()):
                log.warning("%s holds no run: clearing the old mirror %s", self.shown, self.local)
                shutil.rmtree(self.local)
            self.local.mkdir(parents=True, exist_ok=True)
            self._write_manifest()  # an empty run: also finds a missing bucket or refused access before any work
            return
        self._fetch(manifest)

    def pull_existing(self, wanted: Callable[[str], bool] = lambda rel: True) -> Path:
        """The mirror of a run the store already holds, brought up to date with the `wanted` files of its
        manifest, for commands that read a run (`lmforge stats`, `report`): a URL that holds no run is
        the user's mistake here, and the store is left as it is."""
        manifest = self._read_manifest()
        if manifest is None:
            raise InputError(f"{self.field}: no lmforge run at {self.shown} (no {MANIFEST}; is the URL right?)")
        self.local.mkdir(parents=True, exist_ok=True)
        self._fetch(manifest, wanted)
        return self.local

    def _fetch(self, manifest: dict[str, Any], wanted: Callable[[str], bool] = lambda rel: True) -> None:
        fetched = 0
        for rel, entry in manifest["files"].items():
            if not wanted(rel):
                continue
            path = self.local / rel
            digest = _sha256(path) if path.is_file() and path.stat().st_size == entry["size"] else None
            if digest != entry["sha256"]:
                self._download(rel, path)
                fetched += 1
                # A killed pass may have replaced a listed object before writing its manifest (only files
                # that are rewritten: stats, logs, an unmarked shard); what was fetched is what is there.
                digest = _sha256(path)
            self._published[rel] = {"size": path.stat().st_size, "sha256": digest, "stat": _stat(path)}
        log.info("%s: %d files on the store, %d fetched into %s", self.shown, len(manifest["files"]), fetched,
                 self.local)

    def _remove_orphans(self) -> None:
        """Temporary keys a killed pass left (uploaded, never moved to their name)."""
        try:
            orphans = [k for k in self.fs.find(self.root) if ".upload-" in k.rsplit("/", 1)[-1]]
        except FileNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001
            raise store_error(self.field, self.url, exc) from None
        for key in orphans:
            self._remove(key)
        if orphans:
            log.info("%s: removed %d temporary object(s) of an interrupted pass", self.shown, len(orphans))

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(f"{self.root}/{MANIFEST}"))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - every backend has its own errors; each becomes one line
            raise store_error(self.field, self.url, exc) from None

    def _download(self, rel: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            self.fs.get_file(f"{self.root}/{rel}", str(part))
            os.replace(part, path)
        except Exception as exc:  # noqa: BLE001
            part.unlink(missing_ok=True)
            raise store_error(self.field, f"{self.url}/{rel}", exc) from None

    # ------------------------------------------------------------------ publish

    def publish(self) -> int:
        """One pass (see the module docstring); the number of files uploaded or deleted."""
        with self._lock:
            markers = {rel: st for rel, st in self._scan() if rel.endswith(MARKER_SUFFIX)}  # before their outputs
            files = {rel: st for rel, st in self._scan() if not rel.endswith(MARKER_SUFFIX)}
            changed = [rel for rel, st in files.items() if self._changed(rel, st)]
            changed += [rel for rel, st in markers.items() if self._changed(rel, st)]
            current = {**files, **markers}
            gone = [rel for rel in self._published if rel not in current]
            if not changed and not gone:
                return 0
            for rel in changed:
                try:
                    self._upload(rel, current[rel])
                except FileNotFoundError:  # removed since the scan: the next pass sees it gone
                    self._published.pop(rel, None)
            for rel in gone:
                del self._published[rel]
            self._write_manifest()
            for rel in sorted(gone, key=lambda r: not r.endswith(MARKER_SUFFIX)):  # markers first
                self._remove(f"{self.root}/{rel}")
            log.debug("%s: published %d file(s), removed %d", self.shown, len(changed), len(gone))
            return len(changed) + len(gone)

    def publish_file(self, rel: str) -> None:
        """One file a command added to a fully pulled run (`lmforge report`'s report.html), then the
        manifest: whatever else the mirror holds (an older run's leftovers) stays off the store."""
        with self._lock:
            self._upload(rel, _stat(self.local / rel))
            self._write_manifest()

    def _scan(self) -> Iterator[tuple[str, tuple[int, int]]]:
        """Every publishable file of the mirror as (relative path, (size, mtime_ns))."""
        for dirpath, dirnames, filenames in os.walk(self.local):
            rel_dir = os.path.relpath(dirpath, self.local)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            dirnames[:] = [d for d in dirnames if not _temporary(d) and f"{rel_dir}{d}" not in SKIPPED_DIRS]
            for name in filenames:
                if _temporary(name):
                    continue
                try:
                    yield rel_dir + name, _stat(Path(dirpath) / name)
                except FileNotFoundError:  # replaced or removed while the pass looked
                    continue

    def _changed(self, rel: str, stat: tuple[int, int]) -> bool:
        entry = self._published.get(rel)
        return entry is None or tuple(entry["stat"]) != stat

    def _upload(self, rel: str, stat: tuple[int, int]) -> None:
        path = self.local / rel
        digest = _sha256(path)
        entry = self._published.get(rel)
        if entry is not None and entry["sha256"] == digest:  # touched, not changed
            entry["stat"] = stat
            return
        self._put(rel, lambda tmp: self.fs.put_file(str(path), tmp), local=path)
        if _stat(path) != stat:  # rewritten while it was read (a log line, new stats): unlisted until the next pass
            self._published.pop(rel, None)
            return
        self._published[rel] = {"size": stat[0], "sha256": digest, "stat": stat}

    def _remove(self, key: str) -> None:
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:  # already gone
            pass
        except Exception as exc:  # noqa: BLE001
            raise store_error(self.field, f"{self.fs.unstrip_protocol(key)}", exc, "remove") from None

    def _write_manifest(self) -> None:
        files = {rel: {"size": e["size"], "sha256": e["sha256"]} for rel, e in sorted(self._published.items())}
        body = json.dumps({"url": self.shown, "files": files}, indent=1).encode()
        self._put(MANIFEST, lambda tmp: self.fs.pipe_file(tmp, body), shown=self.url)

    def _put(self, rel: str, write: Callable[[str], object], local: Path | None = None,
             shown: str | None = None) -> None:
        """`write(key)` to a temporary key beside `rel`, then moved to it: no reader sees half an object.
        A store error is one line naming `shown` (default: the object's URL); FileNotFoundError passes
        through when it is the `local` file that went away, not the bucket."""
        head, _, name = f"{self.root}/{rel}".rpartition("/")
        tmp = f"{head}/.{name}.upload-{uuid.uuid4().hex[:8]}"
        try:
            write(tmp)
            self.fs.mv(tmp, f"{head}/{name}")
        except Exception as exc:  # noqa: BLE001 - every backend has its own errors; each becomes one line
            if isinstance(exc, FileNotFoundError) and local is not None and not local.exists():
                raise
            raise store_error(self.field, shown or f"{self.url}/{rel}", exc, "write") from None


def _temporary(name: str) -> bool:
    """Files and folders being written: atomic writes' `.NAME.<pid>.<hex>.tmp`, checkpoints' `step-N.tmp`, `.part`."""
    return name.endswith((".tmp", ".part")) or ".upload-" in name


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def local_run(run_dir: str, wanted: Callable[[str], bool] = lambda rel: True) -> tuple[Path, RunMirror | None]:
    """A RUN_DIR argument, a folder or a run's URL: the local folder to read, and for a URL the mirror that
    `pull_existing` brought up to date with the `wanted` files (to publish what the command adds)."""
    if not is_url(run_dir):
        return Path(run_dir), None
    mirror = RunMirror(run_dir, field="RUN_DIR")
    return mirror.pull_existing(wanted), mirror
