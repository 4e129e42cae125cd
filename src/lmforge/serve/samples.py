"""K sampled answers per prompt, from a JSON-lines file of prompts to a JSON-lines file of samples.

The first step of preference data made in lmforge: `lmforge generate MODEL --prompts-file
prompts.jsonl -n 4 --out samples.jsonl` samples K answers to each prompt, and
`lmforge label serve samples.jsonl --kind pairwise` shows them two at a time to a person, whose
choices become chosen/rejected pairs (`lmforge.label.pairwise`).

A prompt row is `{"prompt": "..."}` (a user turn with `--chat`, else text to continue) or
`{"messages": [{role, content}, ...]}` (or `prompt` as such a list), which is always rendered
with the model's chat template. `id` (default: the line number) and a `meta` object are
optional and carried over. One row comes out per prompt:

    {"id": "q3", "prompt": "...", "samples": ["...", "..."],
     "meta": {..., "generation": {"seed": 81723, "temperature": 0.8, ...},
              "finish_reasons": ["stop", "length"], "tokens": [41, 64]}}

Each prompt samples from its own seed, derived from `--seed` and the row's id: a row gives the
same answers wherever it sits in the file and whatever shares its batch, and two prompts never
draw from the same random stream (with one seed for all, sample 1 of every prompt would).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import InputError
from lmforge.records import json_lines

if TYPE_CHECKING:
    from lmforge.serve.loading import LoadedModel
    from lmforge.serve.sampling import SamplingParams

# Prompts handed to the engine at once: enough to keep its slots full, few enough to show progress.
BATCH_PROMPTS = 32
MAX_PROMPT_FILE_BYTES = 1 << 30


@dataclass
class PromptRow:
    """One prompt: text, or messages (a list of {role, content}) to render with the chat template."""

    id: str
    prompt: str | list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)


def _messages(value: Any) -> list[dict[str, str]]:
    from lmforge.tasks.chat import turns_from
    from lmforge.tasks.examples import check_turns

    return [t.to_dict() for t in check_turns(turns_from(value), need_assistant=False)]


def prompt_row(row: Any, default_id: str) -> PromptRow:
    """A `PromptRow` of one parsed JSON line; an InputError (a RowError for a bad message) says what is wrong."""
    if not isinstance(row, dict):
        raise InputError(f"not a JSON object (got {type(row).__name__})")
    value = row["messages"] if "messages" in row else row.get("prompt")
    if isinstance(value, list):
        value = _messages(value)
    elif not isinstance(value, str) or not value.strip():
        raise InputError(f"no prompt: a row needs a non-empty `prompt` string or `messages` "
                         f"(fields: {', '.join(map(str, row)) or 'none'})")
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise InputError(f"meta must be an object (got {type(meta).__name__})")
    return PromptRow(str(row.get("id", default_id)), value, dict(meta or {}))


def read_prompts(path: str | Path) -> list[PromptRow]:
    """The prompts of a JSON-lines file; a bad line or a repeated id is an InputError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}")
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise InputError(f"{path}: {path.stat().st_size:,} bytes is over the {MAX_PROMPT_FILE_BYTES:,} a prompts "
                         "file may have; split it")
    rows: list[PromptRow] = []
    seen: set[str] = set()
    for lineno, parsed in json_lines(path):
        try:
            row = prompt_row(parsed, str(lineno))
        except InputError as exc:  # RowError (a bad message) included
            raise InputError(f"{path}:{lineno}: {exc}") from None
        if row.id in seen:
            raise InputError(f"{path}:{lineno}: id {row.id!r} appears twice")
        seen.add(row.id)
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no prompts")
    return rows


def row_seed(seed: int, row_id: str) -> int:
    """The seed of one prompt's samples: a stable hash of the run's seed and the row's id (63 bits)."""
    digest = hashlib.sha256(f"{seed}\0{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _encode(loaded: LoadedModel, rows: Sequence[PromptRow], chat: bool) -> list[str | list[int]]:
    """Text to continue, or the token ids of the rendered chat (special token strings in content stay text)."""
    from lmforge.tokenize.chat import ChatEncoder

    encoder = None
    out: list[str | list[int]] = []
    for row in rows:
        if isinstance(row.prompt, str) and not chat:
            out.append(row.prompt)
            continue
        encoder = encoder or ChatEncoder(loaded.tokenizer, loaded.chat_template, **loaded.chat_tokens)
        messages = row.prompt if isinstance(row.prompt, list) else [{"role": "user", "content": row.prompt}]
        out.append(encoder.encode(messages))
    return out


def sample_rows(loaded: LoadedModel, rows: Sequence[PromptRow], params: SamplingParams, chat: bool = False,
                batch: int = BATCH_PROMPTS) -> Iterator[dict[str, Any]]:
    """One output row per prompt (in order), `params.n` samples each; batches of prompts share the engine."""
    from lmforge import progress
    from lmforge.serve.generate import generate_batch

    settings = {"model": loaded.name, "max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
                "top_k": params.top_k, "top_p": params.top_p, "repetition_penalty": params.repetition_penalty,
                "stop": list(params.stop)}
    with progress.task(f"generate: {params.n} samples per prompt", total=len(rows)) as bar:
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            each = [replace(params, seed=row_seed(params.seed or 0, r.id)) for r in chunk]
            results = generate_batch(loaded.model, loaded.tokenizer, _encode(loaded, chunk, chat), each,
                                     loaded.stop_ids)
            for row, p, completions in zip(chunk, each, results, strict=True):
                generation = {**settings, "seed": p.seed, "chat": chat or isinstance(row.prompt, list)}
                yield {"id": row.id, "prompt": row.prompt, "samples": [c.text for c in completions],
                       "meta": {**row.meta, "generation": generation,
                                "finish_reasons": [c.finish_reason for c in completions],
                                "tokens": [len(c.token_ids) for c in completions]}}
            bar.advance(len(chunk))


@dataclass
class SamplesWritten:
    path: Path
    prompts: int
    samples: int


def write_samples(loaded: LoadedModel, rows: Sequence[PromptRow], params: SamplingParams, out: str | Path,
                  chat: bool = False) -> SamplesWritten:
    """`sample_rows` into `out` (JSON lines); the file appears whole or not at all."""
    from lmforge.records import atomic_path

    out = Path(out)
    written = SamplesWritten(out, 0, 0)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in sample_rows(loaded, rows, params, chat):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            written.prompts += 1
            written.samples += len(row["samples"])
    return written


__all__ = ["PromptRow", "SamplesWritten", "prompt_row", "read_prompts", "row_seed", "sample_rows", "write_samples"]
