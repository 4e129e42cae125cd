"""Datasets already on disk, offline: `datasets.save_to_disk` folders, Parquet/Arrow/JSONL directories,
and Hugging Face hub dataset folders (a downloaded repo or a hub-cache snapshot).

Nothing here touches the network: a hub folder is read as the files it contains.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lmforge.collect.files import FilesConfig, file_format, read_file
from lmforge.config import StrictModel
from lmforge.errors import ConfigError, InputError, require
from lmforge.pipeline.source import Source, SourceContext
from lmforge.records import Record, jsonable, make_id

log = logging.getLogger(__name__)
DATA_FORMATS = ("parquet", "jsonl", "json", "csv", "tsv", "text")


class DatasetConfig(StrictModel):
    path: str = Field(description="a dataset folder on disk (relative to the recipe)")
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
    root = Path(config.path) if Path(config.path).is_absolute() else base_dir / config.path
    if not root.is_dir():
        raise ConfigError(f"input.dataset.path: {root} is not a directory")
    root = _snapshot(root)
    kind = detect_kind(root) if config.kind == "auto" else config.kind
    source = f"dataset:{root.name}"
    if kind == "saved":
        yield from _saved(root, config, source)
    elif kind == "arrow":
        yield from _arrow(sorted(_split_filter(root.rglob("*.arrow"), root, config.split)), config, source)
    else:
        yield from _files(root, config, source)


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


def _saved(root: Path, config: DatasetConfig, source: str) -> Iterator[Record]:
    datasets = require("datasets", "data")
    try:
        loaded = datasets.load_from_disk(str(root))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(f"cannot load dataset {root}: {exc}") from None
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
            raise InputError(f"dataset {root} split {name!r} has no column {config.text_field!r} "
                             f"(columns: {ds.column_names})")
        for i, row in enumerate(ds):
            yield _row_record(row, config, source, f"{root}/{name}#{i}")


def _arrow(paths: list[Path], config: DatasetConfig, source: str) -> Iterator[Record]:
    import pyarrow as pa

    for path in paths:
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
                    yield _row_record(row, config, source, f"{path}#{offset + i}")
                offset += batch.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            yield Record(id=make_id(source, f"{path}#damaged"), text="", source=source, url=str(path),
                         meta={"drop_reason": "corrupt_file", "drop_stage": "input", "error": str(exc)[:300]})


def _files(root: Path, config: DatasetConfig, source: str) -> Iterator[Record]:
    files = sorted(p for p in _split_filter(root.rglob("*"), root, config.split)
                   if p.is_file() and file_format(p) in DATA_FORMATS and not p.name.startswith("."))
    if not files:
        raise InputError(f"no data files (Parquet, JSONL, CSV, text) under {root}"
                         + (f" for split {config.split!r}" if config.split else ""))
    fcfg = FilesConfig(paths=[str(root)], text_field=config.text_field, id_field=config.id_field)
    for path in files:
        for record in read_file(path, fcfg):
            record.source = source
            yield record


class DatasetSource(Source):
    """A Hugging Face dataset saved on disk."""

    name = "dataset"
    Config = DatasetConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        return iter_dataset(self.config, ctx.base_dir, ctx.work_dir)
