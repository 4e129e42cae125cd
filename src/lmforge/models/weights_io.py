"""Read safetensors weights straight into a model's own tensors: memory-mapped, copied once.

`safetensors.torch.load_file` returns a full copy of every tensor, and the model then copies it
again (and a dtype change a third time), so importing a checkpoint used to peak at two to three
times its size. Here each file is memory-mapped; a tensor's bytes are viewed in place and copied
(converted if need be) into the slice of the destination parameter where they belong, in chunks,
and each chunk's pages are handed back to the kernel right away (MADV_DONTNEED), so the mapped
file never accumulates in the process's resident memory. Peak memory is the model itself plus
one chunk.

The header is parsed here (8-byte length, JSON, raw little-endian data), so nothing but the
bytes the caller asks for is ever read; no pickle is involved anywhere.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from lmforge.config import shorten
from lmforge.errors import InputError
from lmforge.models.sizes import read_safetensors_header

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
CHUNK_BYTES = 16 * 1024 * 1024
_PAGE = mmap.PAGESIZE


class WeightReader:
    """The tensors of one or more safetensors files by name; `copy_into` moves bytes without a copy in between."""

    def __init__(self, files: list[Path]) -> None:
        self.where: dict[str, tuple[Path, dict, int]] = {}  # name -> (file, header entry, data start)
        for file in files:
            try:
                header = read_safetensors_header(file)
                with open(file, "rb") as fh:
                    start = 8 + int.from_bytes(fh.read(8), "little")
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {file}: {shorten(str(exc))}") from None
            for name, info in header.items():  # shapes and offsets were checked with the header
                if info.get("dtype") not in DTYPES:
                    raise InputError(f"{file}: tensor {name!r} has dtype {info.get('dtype')!r}, not a float or int type")
                self.where[name] = (file, info, start)
        self._maps: dict[Path, mmap.mmap] = {}

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name][1]["shape"])

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def _map(self, file: Path) -> mmap.mmap:
        if file not in self._maps:
            with open(file, "rb") as fh:
                # ACCESS_COPY: a private mapping torch may view as writable; nothing is ever written back.
                self._maps[file] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._maps[file]

    @contextmanager
    def _view(self, name: str, rows: slice | None = None) -> Iterator[torch.Tensor]:
        """The stored tensor (or rows of it) as a tensor over the mapped bytes; pages released afterwards."""
        file, info, start = self.where[name]
        dtype, shape = DTYPES[info["dtype"]], list(info["shape"])
        row_bytes = dtype.itemsize * math.prod(shape[1:])
        first, last = (0, shape[0] if shape else 1) if rows is None else (rows.start, rows.stop)
        offset = start + info["data_offsets"][0] + first * row_bytes
        count = (last - first) * row_bytes // dtype.itemsize
        mm = self._map(file)
        view = torch.frombuffer(mm, dtype=dtype, count=count, offset=offset) if count else torch.empty(0, dtype=dtype)
        try:
            yield view.view([last - first, *shape[1:]] if shape else [])
        finally:
            del view
            begin = offset // _PAGE * _PAGE
            if count and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED, begin, offset + count * dtype.itemsize - begin)

    def tensor(self, name: str) -> torch.Tensor:
        """A standalone copy (for small tensors whose values decide the config, e.g. GPT-2's biases)."""
        with self._view(name) as view:
            return view.clone()

    def copy_into(self, name: str, dest: torch.Tensor, transposed: bool = False) -> None:
        """Copy tensor `name` into `dest` (same shape, or transposed), converting dtype on the way."""
        shape = self.shape(name)
        expected = tuple(reversed(shape)) if transposed else shape
        if tuple(dest.shape) != expected:
            raise ValueError(f"{name}: stored shape {shape}")
        if transposed or len(shape) < 2:
            with self._view(name) as view:
                dest.copy_(view.t() if transposed else view)
            return
        rows_per_chunk = max(1, CHUNK_BYTES // max(1, dest[0].numel() * DTYPES[self.where[name][1]["dtype"]].itemsize))
        for first in range(0, shape[0], rows_per_chunk):
            last = min(shape[0], first + rows_per_chunk)
            with self._view(name, slice(first, last)) as view:
                dest[first:last].copy_(view)

    def close(self) -> None:
        for mm in self._maps.values():
            mm.close()
        self._maps.clear()

    def __enter__(self) -> WeightReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

