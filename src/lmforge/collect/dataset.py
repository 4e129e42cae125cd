"""Datasets already on disk, offline: `datasets.save_to_disk` folders, Parquet/Arrow/JSONL directories,
and Hugging Face hub dataset folders (a downloaded repo or a hub-cache snapshot).

A local folder never touches the network: a hub folder is read as the files it contains. A URL
(`s3://bucket/ds`, `hf://datasets/org/name`, ...) is staged into the user cache first (`lmforge.storage`)
and read like a local folder, but records name it by the URL, never by the cache path: ids, locators and
`source` are the same whoever staged it and wherever the cache is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from lmforge.collect.files import FilesConfig, file_format, read_file
from lmforge.config import StrictModel
from lmforge.errors import ConfigError, InputError, require
from lmforge.pipeline.source import Source, SourceContext
from lmforge.records import Record, jsonable, make_id
from lmforge.storage import copy_url, is_url, local_copy, public_url

log = logging.getLogger(__name__)
DATA_FORMATS = ("parquet", "jsonl", "json", "csv", "tsv", "text")


class DatasetConfig(StrictModel):
    path: str = Field(description="a dataset folder on disk (relative to the recipe), or a URL of one "
                                  "(s3://bucket/ds, hf://datasets/org/name), staged into the user cache")
    kind: Literal["auto", "saved", "arrow", "files"] = Field(
        "auto", description="saved: datasets.save_to_disk; arrow: Arrow IPC files; files: Parquet/JSONL/CSV")
    split: str | None = Field(None, description="split to read (default: all splits, in name order)")
    text_field: str = "text"
    id_field: str | None = None


def detect_kind(root: Path) -> str:
    if (root / "dataset_info.json").exists() or (root / "dataset_dict.json").exists():
        return "saved"
    if any(root.rglob("*.arrow")):
        return "arrow"
    return "files"


def iter_dataset(config: DatasetConfig, base_dir: Path, work_dir: Path | None = None) -> Iterator[Record]:
    url = public_url(config.path) if is_url(config.path) else None
    if url is not None:
        root = local_copy(config.path, "input.dataset.path")
        if not root.is_dir():
            raise ConfigError(f"input.dataset.path: {url} is one object, not a dataset folder (name its prefix)")
    else:
        root = Path(config.path) if Path(config.path).is_absolute() else base_dir / config.path
        if not root.is_dir():
            raise ConfigError(f"input.dataset.path: {root} is not a directory")
    staged, root = root, _snapshot(root)
    kind = detect_kind(root) if config.kind == "auto" else config.kind
    source = f"dataset:{root.name}" if url is None else \
        f"dataset:{PurePosixPath(urlsplit(url).path).name or urlsplit(url).netloc}"

    def name(path: Path) -> str:
        """What records call a file or folder: its local path, or its URL for a staged copy."""
        return str(path) if url is None else copy_url(config.path, staged, path)

    if kind == "saved":
        yield from _saved(root, config, source, name)
    elif kind == "arrow":
        yield from _arrow(sorted(_split_filter(root.rglob("*.arrow"), root, config.split)), config, source, name)
    else:
        yield from _files(root, config, source, name)


def _snapshot(root: Path) -> Path:
    """A hub cache folder (datasets--org--name) holds snapshots/<revision>/; read the newest one."""
    snaps = root / "snapshots"
    if root.name.startswith("datasets--") and snaps.is_dir():
        revisions = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if revisions:
            return revisions[-1]
    return root


def _split_filter(paths, root: Path, split: str | None):
    """Keep files belonging to `split`: a folder named after it, or a file name starting with it."""
    for p in paths:
        rel = p.relative_to(root)
        if split is None or split in rel.parts[:-1] or rel.name.startswith((f"{split}-", f"{split}.", f"{split}_")):
            yield p


def _row_record(row: dict[str, Any], config: DatasetConfig, source: str, locator: str) -> Record:
    text = row.get(config.text_field)
    given = row.get(config.id_field) if config.id_field else row.get("id")
    rid = str(given) if given not in (None, "") else make_id(source, locator)
    if not isinstance(text, str):
        return Record(id=rid, text="", source=source, url=locator,
                      meta={"drop_reason": "no_text_field", "drop_stage": "input",
                            "error": f"field {config.text_field!r} is {type(text).__name__}"})
    extra = {k: v for k, v in row.items() if k not in (config.text_field, config.id_field, "id")}
    return Record(id=rid, text=text, source=source, url=locator, lang=str(row.get("lang") or ""),
                  meta={"fields": jsonable(extra)} if extra else {})


def _saved(root: Path, config: DatasetConfig, source: str, name_of: Callable[[Path], str]) -> Iterator[Record]:
    datasets = require("datasets", "data")
    try:
        loaded = datasets.load_from_disk(str(root))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(f"cannot load dataset {name_of(root)}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = [config.split] if config.split else sorted(loaded)
        missing = [n for n in names if n not in loaded]
        if missing:
            raise ConfigError(f"input.dataset.split: {missing[0]!r} not in {sorted(loaded)}")
        parts = [(n, loaded[n]) for n in names]
    else:
        parts = [(config.split or "train", loaded)]
    for name, ds in parts:
        if config.text_field not in ds.column_names:
            raise InputError(f"dataset {name_of(root)} split {name!r} has no column {config.text_field!r} "
                             f"(columns: {ds.column_names})")
        for i, row in enumerate(ds):
            yield _row_record(row, config, source, f"{name_of(root)}/{name}#{i}")


def _arrow(paths: list[Path], config: DatasetConfig, source: str, name_of: Callable[[Path], str]) -> Iterator[Record]:
    import pyarrow as pa

    for path in paths:
        name = name_of(path)
        try:
            try:
                reader = pa.ipc.open_stream(pa.memory_map(str(path)))
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(pa.memory_map(str(path)))
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = iter(reader)
            offset = 0
            for batch in batches:
                for i, row in enumerate(batch.to_pylist()):
                    yield _row_record(row, config, source, f"{name}#{offset + i}")
                offset += batch.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            yield Record(id=make_id(source, f"{name}#damaged"), text="", source=source, url=name,
                         meta={"drop_reason": "corrupt_file", "drop_stage": "input", "error": str(exc)[:300]})


def _files(root: Path, config: DatasetConfig, source: str, name_of: Callable[[Path], str]) -> Iterator[Record]:
    files = sorted(p for p in _split_filter(root.rglob("*"), root, config.split)
                   if p.is_file() and file_format(p) in DATA_FORMATS and not p.name.startswith("."))
    if not files:
        raise InputError(f"no data files (Parquet, JSONL, CSV, text) under {name_of(root)}"
                         + (f" for split {config.split!r}" if config.split else ""))
    fcfg = FilesConfig(paths=[str(root)], text_field=config.text_field, id_field=config.id_field)
    for path in files:
        name = name_of(path)
        for record in read_file(path, fcfg, name):
            record.source = source
            yield record


class DatasetSource(Source):
    """A Hugging Face dataset saved on disk."""

    name = "dataset"
    Config = DatasetConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        return iter_dataset(self.config, ctx.base_dir, ctx.work_dir)
