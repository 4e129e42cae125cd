"""Object stores and web servers (`s3://`, `gs://`, `hf://`, `https://`, ...) through fsspec: listing,
staging objects into local folders, and the helpers every remote path shares.

The readers seek: WARC damage recovery jumps between gzip members, Parquet reads its footer first, a
model loads safetensors through mmap. Rather than teach each of them a remote protocol, a remote object
is *staged*: downloaded once into a cache folder and read from there like any local file. The cache key
is the URL plus what the store says identifies this version of the object (ETag, size, modification
time), so a changed object is fetched again and an unchanged one never is, which is what makes a killed
ingest resume without downloading twice. A download goes to a temporary name and is renamed when
complete, so a kill never leaves a half file under the final name; it is refused before it starts when
the store reports more bytes than the caller's limit, and stopped as soon as it goes past it.
- `stage`: one listed object, into a folder the caller names (a collect source: `RUN/collect/remote-cache`);
- `local_copy`: an object, a glob or a whole prefix (a dataset, eval files, a tokenizer or model
  folder) into the user cache (`$LMFORGE_CACHE_DIR`, default `~/.cache/lmforge`), keeping its layout.
The run directory itself on a store is `lmforge.flow.mirror`.

Credentials are never part of a recipe: fsspec's backends find them the usual way (for S3, boto's
chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, the instance role; the endpoint of
an S3-compatible store from `AWS_ENDPOINT_URL`). URLs are logged and stored without user info, query
or fragment (`public_url`), so a signed URL or `user:password@` does not end up in logs or records.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from lmforge.errors import InputError, require

log = logging.getLogger(__name__)

CHUNK = 1 << 22
CACHE_DIR = "remote-cache"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "crc32c", "version_id", "VersionId", "LastModified", "mtime",
                 "last_modified", "updated", "last_commit")


class ObjectTooLarge(Exception):
    """The object has more bytes than the source allows; the caller quarantines it as file_too_large."""

    reason = "file_too_large"


def is_url(text: str) -> bool:
    """Whether a configured path is a URL with a scheme (s3://, https://, memory://), not a local path."""
    return bool(_SCHEME.match(text))


def public_url(url: str) -> str:
    """The URL without user info, query and fragment: what may be logged and kept in records."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"  # `memory:///x` keeps its `//`


@dataclass(frozen=True)
class RemoteFile:
    """One listed object: its URL (the record locator), its size, a string naming its version and its
    modification time (given to the cached copy, so that `modified_at` in provenance is the object's)."""

    url: str
    size: int | None
    version: str
    mtime: float | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name

    @property
    def suffixes(self) -> list[str]:
        return PurePosixPath(self.name).suffixes

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    def __str__(self) -> str:
        return public_url(self.url)

    def __repr__(self) -> str:  # the URL may carry a signature in its query
        return f"RemoteFile({public_url(self.url)!r}, size={self.size})"


def list_remote(pattern: str, field: str, recursive: bool = True, directories: bool = True) -> list[RemoteFile]:
    """Objects a URL names: one object, a glob (`s3://b/crawl/*.warc.gz`) or, with `directories`, a prefix.

    A missing bucket or object, refused access, or a glob that matches nothing is an InputError naming
    `field` and the URL (a glob in a missing bucket lists nothing, so the two cannot be told apart).
    """
    fs, root = filesystem(pattern, field)
    fs.invalidate_cache()  # listings are cached per process: a second run in it must see new objects
    try:
        if _is_glob(pattern):
            infos = fs.glob(root, detail=True)  # `**` spans folders, whatever `recursive` says
        else:
            info = fs.info(root)
            if info.get("type") == "directory":
                infos = fs.find(root, detail=True, maxdepth=None if recursive else 1) if directories else {}
            else:
                infos = {root: info}
    except Exception as exc:  # noqa: BLE001 - every backend has its own errors; each becomes one line
        raise store_error(field, pattern, exc) from None
    files = [_remote_file(fs, path, info) for path, info in infos.items() if info.get("type", "file") == "file"]
    if not files:
        raise InputError(f"{field}: no object matches {public_url(pattern)} (is the bucket or prefix right?)")
    return sorted(files, key=lambda f: f.url)


def stage(remote: RemoteFile, cache_dir: Path, max_bytes: int, field: str = "input") -> Path:
    """A local copy of `remote` under `cache_dir`, downloaded unless this version is already there.

    Raises ObjectTooLarge when the object has more than `max_bytes`, and InputError when the store
    cannot be read (a transient failure must stop the run, which then resumes, rather than lose a file).
    """
    key = hashlib.sha256(f"{remote.url}\x00{remote.size}\x00{remote.version}".encode()).hexdigest()[:32]
    dest = cache_dir / key / _safe_name(remote.name)
    if dest.is_file() and (remote.size is None or dest.stat().st_size == remote.size):
        log.debug("%s: already staged at %s", remote, dest)
        return dest
    # one ingest per run directory: a stale .part is a killed one, which this download replaces
    return fetch(remote, dest, dest.with_name(dest.name + ".part"), max_bytes, field)


def fetch(remote: RemoteFile, dest: Path, part: Path, max_bytes: int, field: str) -> Path:
    """Download `remote` to `part`, then rename it to `dest` once complete and of the listed size."""
    if remote.size is not None and remote.size > max_bytes:
        raise ObjectTooLarge(f"{remote.size} bytes > {max_bytes}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs, path = filesystem(remote.url, field)
    log.info("downloading %s", remote)
    try:
        got = _download(fs, path, part, max_bytes)
    except ObjectTooLarge:
        part.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - as in list_remote
        part.unlink(missing_ok=True)
        raise store_error(field, remote.url, exc) from None
    if remote.size is not None and got != remote.size:
        part.unlink(missing_ok=True)
        raise InputError(f"{field}: {remote} changed while it was read ({got} bytes, listed as {remote.size}); "
                         "run again to read the new version")
    if remote.mtime is not None:
        os.utime(part, (remote.mtime, remote.mtime))
    os.replace(part, dest)
    return dest


def cache_root() -> Path:
    """The user cache: `$LMFORGE_CACHE_DIR`, else `~/.cache/lmforge` (staged copies, run mirrors)."""
    return Path(os.environ.get("LMFORGE_CACHE_DIR") or Path.home() / ".cache" / "lmforge").expanduser()


def local_copy(url: str, field: str, max_bytes: int | None = None) -> Path:
    """A local path holding what `url` names: the file for one object, else a folder with the objects
    under the prefix (or matching the glob) at their paths relative to it.

    The copy lives in `cache_root()/remote`, keyed by the URL and every object's version, so a second
    call downloads nothing and a changed object makes a new copy. A folder is complete only once its
    `.complete` file exists; a killed download is redone from the objects still missing.
    """
    files = list_remote(url, field)
    fs, base = filesystem(url_root(url), field)
    base = base.rstrip("/")
    key = hashlib.sha256("\x00".join([url, *(f"{f.url}|{f.size}|{f.version}" for f in files)]).encode()).hexdigest()
    root = cache_root() / "remote" / key[:32]
    single = len(files) == 1 and fs._strip_protocol(files[0].url).rstrip("/") == base
    target = root / _safe_name(files[0].name if single else PurePosixPath(base).name or "bucket")
    if (root / ".complete").is_file():
        return target
    limit = max_bytes if max_bytes is not None else 1 << 62
    for f in files:
        dest = target if single else target / _relative(fs._strip_protocol(f.url), base)
        if not (dest.is_file() and (f.size is None or dest.stat().st_size == f.size)):
            # a name of its own: worker processes may stage the same eval files or tokenizer at once
            fetch(f, dest, dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"), limit, field)
    done = root / f".complete.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    done.write_text(public_url(url) + "\n", encoding="utf-8")
    os.replace(done, root / ".complete")
    log.info("%s: %d object(s) staged in %s", public_url(url), len(files), target)
    return target


def local_path(path: str | Path, field: str) -> Path:
    """A path as given, or the local copy of a URL (`local_copy`): for whatever reads a folder or file
    that may also live on a store (a model, a tokenizer)."""
    return local_copy(path, field) if isinstance(path, str) and is_url(path) else Path(path)


def copy_url(url: str, copy: Path, path: Path) -> str:
    """The public URL that `path`, a file or folder inside `copy = local_copy(url)`, stands for: what
    records and reports name it by, so that they never depend on where the cache is."""
    return "/".join([url_root(public_url(url)).rstrip("/"), *path.relative_to(copy).parts])


def url_root(url: str) -> str:
    """What relative paths start from: the URL itself, or for a glob the folder above its first wildcard."""
    if not _is_glob(url):
        return url
    scheme, rest = url.split("://", 1)
    parts = rest.split("/")
    fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    return f"{scheme}://{'/'.join(parts[:fixed])}"


def _relative(path: str, base: str) -> str:
    """The object's path under `base`, each part made safe (no `..`, no absolute paths out of the copy)."""
    tail = path[len(base):] if path.startswith(base) else PurePosixPath(path).name
    return "/".join(_safe_name(p) for p in tail.split("/") if p not in ("", ".", "..")) or "object"


def _download(fs: Any, path: str, part: Path, max_bytes: int) -> int:
    """Copy the object into `part` in chunks, stopping past `max_bytes`; the byte count copied."""
    got = 0
    with fs.open(path, "rb", block_size=CHUNK) as src, open(part, "wb") as out:
        while chunk := src.read(CHUNK):
            got += len(chunk)
            if got > max_bytes:
                raise ObjectTooLarge(f"more than {max_bytes} bytes")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return got


def _is_glob(url: str) -> bool:
    """Wildcards in the path; a web URL is never a glob (`?` starts its query, and a server has no listing)."""
    parts = urlsplit(url)
    return parts.scheme not in ("http", "https") and glob.has_magic(parts.path)


def filesystem(url: str, field: str) -> tuple[Any, str]:
    require("fsspec", "remote")
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        scheme = url.split("://", 1)[0]
        raise InputError(f"{field}: cannot open {public_url(url)}: {scheme}:// needs an fsspec backend that is "
                         f"not installed ({short_error(exc, url)}); s3:// comes with lmforge[remote]") from None


def _remote_file(fs: Any, path: str, info: dict) -> RemoteFile:
    version = ";".join(f"{k}={info[k]}" for k in _VERSION_KEYS if info.get(k) not in (None, ""))
    size = info.get("size")
    return RemoteFile(url=fs.unstrip_protocol(path), size=int(size) if size is not None else None, version=version,
                      mtime=_timestamp(info))


def _timestamp(info: dict) -> float | None:
    """The object's modification time as a Unix time: backends give a datetime, a number or an ISO string."""
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _safe_name(name: str) -> str:
    """The object's base name for its cached copy (readers look at suffixes), without odd characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return cleaned[-200:] or "object"


def store_error(field: str, url: str, exc: BaseException, verb: str = "read") -> InputError:
    """One line naming the field, the URL without secrets and what the store said."""
    if isinstance(exc, FileNotFoundError):
        what = "not found (no such bucket or object)"
    elif isinstance(exc, PermissionError):
        what = "access denied (check the credentials in the environment or profile)"
    else:
        what = f"{type(exc).__name__}: {short_error(exc, url)}"
    return InputError(f"{field}: cannot {verb} {public_url(url)}: {what}")


def short_error(exc: BaseException, url: str) -> str:
    """The first line of an error message, with the URL made public: the message may quote it whole."""
    text = str(exc).replace(url, public_url(url)).strip()
    return (text.splitlines() or [""])[0][:300]
