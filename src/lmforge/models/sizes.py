"""Model sizes computed from a config and checked before anything is allocated.

A config is a few numbers that someone else may have written: `n_layer: 1000000` in a checkpoint's
config.json used to fill 22 GB before dying, `vocab_size: 1e10` to die in the allocator. Each model
config lists its parts (`size_parts()`: elements per embedding, per layer stack, ...), and here they
are compared, before the module is built, with

- the memory this process can still get (`available_memory`), and
- the weights on disk, read from the safetensors headers only (`weights_on_disk`), so a config
  that describes far more than its weights hold is refused instead of allocated and then mismatched.

Errors are one line naming the field, its value and the bytes it would need. Torch-free.
"""

from __future__ import annotations

import json
import os
import re
import resource
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, InputError

BYTES_PER_ELEMENT = 4  # models are built in float32
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on a header
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:h|layers|layer)\.(\d+)\.")


@dataclass(frozen=True)
class SizePart:
    """Elements one part of a model allocates, and the config fields that set its size.

    `stored`: the part is saved in the weights file (rotary tables are rebuilt from the config).
    """

    name: str
    elements: int
    fields: tuple[str, ...]
    stored: bool = True


class ModelTooLarge(ConfigError):
    """A model config asks for more memory than there is, or than its weights on disk hold."""


def human(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError  # pragma: no cover


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, capped by an address-space limit (ulimit -v)."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - no way to tell
            return 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm", encoding="ascii") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            used = 0
        available = min(available, max(0, soft - used))
    return available


def _blame(config: Any, parts: list[SizePart], field_names: dict[str, str]) -> tuple[str, Any]:
    """The field most to blame: in the largest part, the explicitly set field with the largest value."""
    biggest = max(parts, key=lambda p: p.elements)
    candidates = [(f, getattr(config, f)) for f in biggest.fields if isinstance(getattr(config, f, None), int)]
    derived = set(getattr(config, "derived_fields", lambda: ())())
    chosen = [c for c in candidates if c[0] not in derived] or candidates
    field, value = max(chosen, key=lambda c: c[1])
    return field_names.get(field, field), value


def check_fits(config: Any, prefix: str = "model.", field_names: dict[str, str] | None = None,
               available: int | None = None, bytes_per_element: int = BYTES_PER_ELEMENT,
               dtype_name: str = "float32") -> int:
    """Refuse a config whose model would not fit in memory; returns the bytes it needs.

    `field_names` maps lmforge's field names to the ones the user wrote (an HF config's
    `num_hidden_layers`), so the error names what is in the user's file.
    """
    parts = config.size_parts()
    elements = sum(p.elements for p in parts)
    need = elements * bytes_per_element
    available = available_memory() if available is None else available
    if need > available:
        field, value = _blame(config, parts, field_names or {})
        raise ModelTooLarge(
            f"{prefix}{field}={value:,} makes a model of {elements:,} parameters that needs {need:,} bytes "
            f"({human(need)}) in {dtype_name}, more than the {human(available)} of memory available"
        )
    return need


@dataclass(frozen=True)
class WeightsOnDisk:
    elements: int
    bytes: int
    layers: int  # distinct layer indices in the tensor names (0: none found)


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets); no tensor is read."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise InputError(f"{file} is not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER, size - 8):
                raise InputError(f"{file} is not a valid safetensors file (header of {length:,} bytes)")
            header = json.loads(fh.read(length))
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(f"{file} is not a valid safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise InputError(f"{file} is not a valid safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        ok = (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
              and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
              and 0 <= offsets[0] <= offsets[1] <= data_bytes)
        width = _DTYPE_BYTES.get(info.get("dtype")) if ok else None
        if not ok or (width is not None and _numel(shape) * width != offsets[1] - offsets[0]):
            raise InputError(f"{file} is not a valid safetensors file (tensor {name[:80]!r} does not fit the file)")
    return header


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def weights_on_disk(files: Iterable[Path]) -> WeightsOnDisk:
    elements = n_bytes = 0
    layers: set[int] = set()
    for file in files:
        for name, info in read_safetensors_header(file).items():
            elements += _numel(info["shape"])
            n_bytes += info["data_offsets"][1] - info["data_offsets"][0]
            if m := _LAYER_INDEX.search(name):
                layers.add(int(m.group(1)))
    return WeightsOnDisk(elements, n_bytes, len(layers))


def check_against_weights(config: Any, files: list[Path], where: str,
                          field_names: dict[str, str] | None = None, layer_field: str = "n_layer",
                          bytes_per_element: int = BYTES_PER_ELEMENT, dtype_name: str = "float32") -> None:
    """Refuse a config that describes far more than its weights hold, or weights that cannot fit in memory.

    Run before the model is built: a mismatch found after building has already paid for the model.
    A config may describe a little more than is stored (heads left to a fresh init on import), never
    a different number of layers or several times the stored elements.
    """
    names = field_names or {}
    disk = weights_on_disk(files)
    parts = config.size_parts()
    stored = sum(p.elements for p in parts if p.stored)
    shown = ", ".join(f.name for f in files[:3]) + (", ..." if len(files) > 3 else "")
    n_layer = getattr(config, layer_field)
    layers_differ = disk.layers and n_layer != disk.layers
    if layers_differ or stored > 2 * disk.elements + 1_000_000:
        field, value = (names.get(layer_field, layer_field), n_layer) if layers_differ else _blame(config, parts, names)
        layers = f"{disk.layers} layers, " if disk.layers else ""
        raise ModelTooLarge(
            f"{where}: {field}={value:,} describes {stored:,} parameters ({stored * BYTES_PER_ELEMENT:,} bytes in "
            f"float32) but {shown} holds {layers}{disk.elements:,} ({disk.bytes:,} bytes); the config does not "
            "describe these weights"
        )
    available = available_memory()
    if disk.elements * bytes_per_element > available:
        need = disk.elements * bytes_per_element
        raise ModelTooLarge(f"{where}: the weights in {shown} take {need:,} bytes ({human(need)}) in {dtype_name}, "
                            f"more than the {human(available)} of memory available")
    try:
        check_fits(config, prefix="", field_names=names, available=available, bytes_per_element=bytes_per_element,
                   dtype_name=dtype_name)
    except ModelTooLarge as exc:
        raise ModelTooLarge(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- any transformers directory

_HF_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "width": ("hidden_size", "n_embd", "d_model"),
    "vocab": ("vocab_size",),
}
MAX_HF_CONFIG = 16 * 1024 * 1024


@dataclass(frozen=True)
class _HFShape:
    """The few numbers every transformer config has, enough for a lower bound of its size."""

    fields: dict[str, tuple[str, int]]  # role -> (config.json key, value)

    def size_parts(self) -> list[SizePart]:
        (lk, layers), (wk, width), (vk, vocab) = (self.fields[r] for r in ("layers", "width", "vocab"))
        # at least the token embedding, and a query and an output projection per layer
        return [SizePart("embeddings", vocab * width, (vk, wk)), SizePart("layers", 2 * layers * width * width, (lk, wk))]

    def __getattr__(self, name: str) -> Any:
        for key, value in self.fields.values():
            if key == name:
                return value
        raise AttributeError(name)


def check_hf_dir(path: str | Path) -> None:
    """Before `transformers.AutoModel*.from_pretrained(path)`: refuse a config.json whose model is far larger
    than its weights, or than the memory available, for any architecture.

    transformers builds the model from config.json before it reads the weights, so `num_hidden_layers:
    1000000` fills memory first. Only a lower bound of the size is known for an arbitrary architecture
    (embeddings, plus a query and an output projection per layer), which is enough for absurd values.
    """
    path = Path(path)
    file = path / "config.json"
    if not file.is_file():
        return  # not a local directory: transformers reports it
    try:
        if file.stat().st_size > MAX_HF_CONFIG:
            raise InputError(f"{file} is too large ({file.stat().st_size:,} bytes) for a model config")
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{file} is unreadable: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{file} is not a JSON object")
    text = raw.get("text_config")
    fields = {}
    for role, keys in _HF_KEYS.items():
        for source in (raw, text if isinstance(text, dict) else {}):
            found = next(((k, source[k]) for k in keys if isinstance(source.get(k), int)
                          and not isinstance(source.get(k), bool)), None)
            if found:
                fields[role] = found
                break
    files = sorted(path.glob("*.safetensors"))
    available = available_memory()
    if files:
        disk = weights_on_disk(files)
        elements, n_bytes = disk.elements, disk.bytes
    else:  # pickled or other formats: at least one byte per element
        n_bytes = sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".bin", ".pt", ".h5", ".msgpack"))
        elements = n_bytes
    if n_bytes > available:
        raise ModelTooLarge(f"{file}: the weights in {path} take {n_bytes:,} bytes ({human(n_bytes)}), more than "
                            f"the {human(available)} of memory available")
    if len(fields) < 3:
        return
    shape = _HFShape(fields)
    least = sum(p.elements for p in shape.size_parts())
    if least > 2 * elements + 1_000_000 or least * 2 > available:  # 2: the smallest float (bf16)
        field, value = _blame(shape, shape.size_parts(), {})
        raise ModelTooLarge(
            f"{file}: {field}={value:,} means at least {least:,} parameters (at least {least * 2:,} bytes) but "
            f"{path.name} holds {elements:,} in {n_bytes:,} bytes, with {human(available)} of memory available"
        )
