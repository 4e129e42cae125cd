"""Rows of tables that are not lmforge records: a plain Parquet file (a Hugging Face dataset file)
and a `datasets` save_to_disk directory, as dicts, streamed so a large file is not read whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import InputError


def is_record_shard(path: Path) -> bool:
    """An lmforge record shard has id, text and meta columns; anything else is a table of rows."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    return {"id", "text", "meta"} <= names


def is_datasets_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "state.json",
                                                                "dataset_dict.json"))


def parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    for batch in file.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def datasets_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of one split, or of every split of a DatasetDict with the split's name in `split`."""
    from lmforge.errors import require

    require("datasets", "data")
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a datasets directory ({exc})") from None
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for name, split in splits:
        for row in split:
            yield {**row, "split": row.get("split") or name} if name else row
