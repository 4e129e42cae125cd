"""Readers for labelled files: JSONL, CSV/TSV, lmforge record shards and Label Studio JSON exports.

A labelled file is small and hand-made, so a bad row is most likely a mistake the user wants to
hear about: it raises an `InputError` naming the file and line. With `on_error="skip"` such rows
are skipped instead, and their count and the first one logged.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lmforge.config import StrictModel, validate
from lmforge.errors import InputError
from lmforge.tasks import tables
from lmforge.tasks.chat import any_preference_from_row, chat_from_row
from lmforge.tasks.examples import (
    ClassificationExample,
    Example,
    InstructionExample,
    Kind,
    NerExample,
    TaskKind,
)
from lmforge.tasks.spans import RowError, read_spans, repair_bio

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- loaders


class LoaderConfig(StrictModel):
    """How to read a labelled file: what kind of task, which fields hold what, what a bad row does."""

    kind: TaskKind = "classification"
    format: Literal["auto", "jsonl", "csv", "label_studio", "records", "parquet", "datasets"] = Field(
        "auto", description="auto: by suffix (.jsonl/.jsonl.gz/.ndjson, .csv/.tsv, .json = Label Studio, "
                            ".parquet = lmforge records or plain rows, a directory = lmforge records or a "
                            "`datasets` save_to_disk directory)")
    text_field: str = "text"
    label_field: str = Field("label", description="the class; for ner, spans [{start, end, label}] over the "
                                                  "text; for records, a dotted path in meta")
    tokens_field: str = "tokens"
    tags_field: str = "tags"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str | None = Field(None, description="conversation: the messages field [default: messages, "
                                                         "then conversations (ShareGPT)]")
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    on_error: Literal["raise", "skip"] = "raise"


class Problems:
    """Bad rows of one file: raise at the first, or count them and log a summary at the end."""

    def __init__(self, path: Path, on_error: str) -> None:
        self.path, self.skip, self.count, self.first = path, on_error == "skip", 0, ""

    def bad(self, where: Any, message: str) -> None:
        text = f"{self.path}:{where}: {message}"
        if not self.skip:
            raise InputError(text)
        self.count += 1
        self.first = self.first or text

    def done(self, kept: int) -> None:
        if self.count:
            log.warning("%s: skipped %d bad rows, kept %d (first: %s)", self.path, self.count, kept, self.first)


def _need(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        what = "no field" if name not in row else "empty field"
        raise RowError(f"{what} {name!r} (fields: {', '.join(map(str, row)) or 'none'})")
    return value


def _string(row: Mapping[str, Any], name: str, strip: bool = True) -> str:
    value = _need(row, name)
    if isinstance(value, bool | int | float):
        return str(value)
    if not isinstance(value, str):
        raise RowError(f"field {name!r} must be a string (got {type(value).__name__})")
    return value.strip() if strip else value


def _sequence(row: Mapping[str, Any], name: str) -> list[str]:
    value = _need(row, name)
    if isinstance(value, str):  # CSV cells: space-separated
        return value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RowError(f"field {name!r} must be a list of strings")
    return value


def _example(row: Mapping[str, Any], cfg: LoaderConfig) -> Example:
    if cfg.kind == "conversation":
        return chat_from_row(row, cfg.messages_field, cfg.prompt_field, cfg.response_field)
    if cfg.kind == "preference":
        return any_preference_from_row(row, cfg.prompt_field, cfg.chosen_field, cfg.rejected_field)
    if cfg.kind == "classification":
        return ClassificationExample(text=_string(row, cfg.text_field), label=_string(row, cfg.label_field))
    if cfg.kind == "instruction":
        return InstructionExample(prompt=_string(row, cfg.prompt_field), response=_string(row, cfg.response_field))
    if cfg.tokens_field in row:
        tokens, tags = _sequence(row, cfg.tokens_field), _sequence(row, cfg.tags_field)
        if len(tokens) != len(tags):
            raise RowError(f"{len(tokens)} tokens but {len(tags)} tags")
        return NerExample(tokens=tokens, tags=repair_bio(tags))
    text = _string(row, cfg.text_field, strip=False)  # span offsets count from the text as given
    return NerExample.from_spans(text, read_spans(row.get(cfg.label_field) or []))[0]


def _config(**values: Any) -> LoaderConfig:
    return validate(LoaderConfig, values)


def read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a file") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: damaged gzip file ({exc})") from None
    return data


def load_jsonl(path: str | Path, kind: TaskKind = "classification", *, text_field: str = "text",
               label_field: str = "label", tokens_field: str = "tokens", tags_field: str = "tags",
               prompt_field: str = "prompt", response_field: str = "response",
               on_error: Literal["raise", "skip"] = "raise") -> list[Example]:
    """Examples from JSON lines (optionally .gz), one object per line; blank lines are ignored."""
    cfg = _config(kind=kind, text_field=text_field, label_field=label_field, tokens_field=tokens_field,
                  tags_field=tags_field, prompt_field=prompt_field, response_field=response_field, on_error=on_error)
    return _jsonl(Path(path), cfg)


def _jsonl(path: Path, cfg: LoaderConfig) -> list[Example]:
    return jsonl_examples(path, lambda row: _example(row, cfg), cfg.on_error)


def json_object(raw: bytes) -> dict[str, Any]:
    """One JSONL line as a JSON object, or a RowError saying what it is instead."""
    try:
        row = json.loads(raw)
    except ValueError as exc:  # also UnicodeDecodeError
        raise RowError(f"not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(row, dict):
        raise RowError(f"not a JSON object (got {type(row).__name__})")
    return row


def jsonl_examples(path: Path, make: Callable[[dict[str, Any]], Example], on_error: str = "raise") -> list[Example]:
    """`make(row)` of every JSON object line, with meta where (file:line), id and split from the row."""
    problems, out = Problems(path, on_error), []
    for lineno, raw in enumerate(read_bytes(path).split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json_object(raw)
            ex = make(row)
        except RowError as exc:
            problems.bad(lineno, str(exc))
            continue
        ex.meta.update({"where": f"{path.name}:{lineno}", **({"id": row["id"]} if "id" in row else {}),
                        **({"split": row["split"]} if "split" in row else {})})
        out.append(ex)
    problems.done(len(out))
    return out


def load_csv(path: str | Path, kind: TaskKind = "classification", *, text_field: str = "text",
             label_field: str = "label", tokens_field: str = "tokens", tags_field: str = "tags",
             prompt_field: str = "prompt", response_field: str = "response",
             on_error: Literal["raise", "skip"] = "raise", delimiter: str | None = None) -> list[Example]:
    """Examples from a CSV (or .tsv) file with a header row, UTF-8 with or without BOM.

    For ner, `tokens` and `tags` cells are space-separated, or `label` holds JSON spans over `text`.
    """
    cfg = _config(kind=kind, text_field=text_field, label_field=label_field, tokens_field=tokens_field,
                  tags_field=tags_field, prompt_field=prompt_field, response_field=response_field, on_error=on_error)
    return _csv(Path(path), cfg, delimiter)


def _csv(path: Path, cfg: LoaderConfig, delimiter: str | None = None) -> list[Example]:
    data = read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    delimiter = delimiter or ("\t" if ".tsv" in path.suffixes else ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise InputError(f"{path}: empty file (expected a header row)") from None
    _require_columns(path, header, cfg)
    problems, out = Problems(path, cfg.on_error), []
    while True:
        lineno = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        if not any(v.strip() for v in values):
            continue
        try:
            if len(values) != len(header):
                raise RowError(f"{len(values)} fields, but the header has {len(header)}")
            row = dict(zip(header, values, strict=True))
            ex = _example(row, cfg)
        except RowError as exc:
            problems.bad(lineno, str(exc))
            continue
        ex.meta.update({"where": f"{path.name}:{lineno}", **({"split": row["split"]} if row.get("split") else {})})
        out.append(ex)
    problems.done(len(out))
    return out


def _require_columns(path: Path, header: list[str], cfg: LoaderConfig) -> None:
    needed = {"classification": ["text_field", "label_field"], "instruction": ["prompt_field", "response_field"],
              "conversation": [], "preference": [],
              "ner": ["tokens_field", "tags_field"] if cfg.tokens_field in header else ["text_field", "label_field"]}
    for option in needed[cfg.kind]:
        column = getattr(cfg, option)
        if column not in header:
            raise InputError(f"{path}: no column {column!r} (columns: {', '.join(header)}); "
                             f"set {option} to the column that holds it")


def load_records(run_or_stage_dir: str | Path, label_field: str = "label", kind: TaskKind = "classification", *,
                 on_error: Literal["raise", "skip"] = "raise") -> list[Example]:
    """Examples from lmforge records: a run directory (its last stage), a stage directory or one shard.

    The label is `record.meta[label_field]`, where a dotted path reaches into a stage's keys
    (e.g. "reviews.label"). Quarantined records are ignored. For ner the value is spans over
    the record's text; for instruction the text is the prompt and the value the response.
    """
    cfg = _config(kind=kind, label_field=label_field, on_error=on_error)
    return _records(Path(run_or_stage_dir), cfg)


def record_files(path: Path) -> list[Path]:
    """The record shards of a run directory (its last stage with shards), a stage directory, or one file."""
    if path.is_file():
        return [path]
    stages = path / "stages"
    dirs = sorted(d for d in stages.iterdir() if d.is_dir()) if stages.is_dir() else [path]
    for d in reversed(dirs):
        shards = sorted(d.glob("shard-*.parquet"))
        if shards:
            unfinished = [s.name for s in shards if not s.with_suffix(".done").exists()]
            if unfinished:
                log.warning("%s: %d shards have no .done marker; the run may be unfinished", d, len(unfinished))
            return shards
    raise InputError(f"no record shards in {path} (expected a run directory, a stage directory with "
                     "shard-*.parquet, or a .parquet/.jsonl file)")


def _records(path: Path, cfg: LoaderConfig) -> list[Example]:
    from lmforge.records import read_jsonl, read_parquet

    out: list[Example] = []
    row_cfg = cfg.model_copy(update={"label_field": "label", "text_field": "text"})
    for file in record_files(path):
        problems = Problems(file, cfg.on_error)
        reader = read_parquet(file) if file.suffix == ".parquet" else read_jsonl(file)
        kept = 0
        for n, rec in enumerate(reader, start=1):
            if rec.drop_reason:
                continue
            try:
                value: Any = rec.meta
                for part in cfg.label_field.split("."):
                    if not isinstance(value, dict) or part not in value:
                        raise RowError(f"no meta.{cfg.label_field} (meta keys: {', '.join(rec.meta) or 'none'})")
                    value = value[part]
                row = {"prompt": rec.text, "response": value} if cfg.kind == "instruction" else \
                    {"messages": value} if cfg.kind == "conversation" and isinstance(value, list) else \
                    {"prompt": rec.text, "response": value} if cfg.kind == "conversation" else \
                    value if isinstance(value, dict) else {"text": rec.text, "label": value}
                ex = _example(row, row_cfg)
            except RowError as exc:
                problems.bad(f"row {n} (id {rec.id})", str(exc))
                continue
            ex.meta.update({"id": rec.id, "source": rec.source, **({"split": rec.meta["split"]}
                                                                   if "split" in rec.meta else {})})
            out.append(ex)
            kept += 1
        problems.done(kept)
    return out


def _rows_examples(path: Path, rows, cfg: LoaderConfig) -> list[Example]:
    """Examples of dict rows (a Parquet table or a `datasets` split), with meta where = file:row."""
    problems, out = Problems(path, cfg.on_error), []
    for n, row in enumerate(rows, start=1):
        row = {k: v for k, v in row.items() if v is not None}  # a column another layout's rows fill is null here
        try:
            ex = _example(row, cfg)
        except RowError as exc:
            problems.bad(f"row {n}", str(exc))
            continue
        ex.meta.update({"where": f"{path.name}:row {n}", **({"id": row["id"]} if row.get("id") is not None else {}),
                        **({"split": row["split"]} if row.get("split") else {})})
        out.append(ex)
    problems.done(len(out))
    return out


def _parquet_rows(path: Path, cfg: LoaderConfig) -> list[Example]:
    return _rows_examples(path, tables.parquet_rows(path), cfg)


def _datasets_dir(path: Path, cfg: LoaderConfig) -> list[Example]:
    return _rows_examples(path, tables.datasets_rows(path), cfg)


def load_conversations(path: str | Path, *, messages_field: str | None = None,
                       on_error: Literal["raise", "skip"] = "raise") -> list[Example]:
    """Conversations from any supported file (messages, ShareGPT, Alpaca or prompt/response rows)."""
    return load_examples(path, kind="conversation", messages_field=messages_field, on_error=on_error)


def load_preferences(path: str | Path, *, prompt_field: str = "prompt", chosen_field: str = "chosen",
                     rejected_field: str = "rejected", on_error: Literal["raise", "skip"] = "raise") -> list[Example]:
    """Preference pairs from any supported file (prompt/chosen/rejected, or scored completions)."""
    return load_examples(path, kind="preference", prompt_field=prompt_field, chosen_field=chosen_field,
                         rejected_field=rejected_field, on_error=on_error)


def load_label_studio(path: str | Path, kind: Kind | None = None, *, text_field: str = "text",
                      from_name: str | None = None, on_error: Literal["raise", "skip"] = "raise") -> list[Example]:
    """Examples from a Label Studio JSON export: choices (classification) or labels spans (ner).

    The kind is found from the annotations unless given. Skipped (cancelled) annotations and
    tasks nobody annotated are ignored and counted in the log; of several annotations of a task
    the ground-truth one is used, else the first. Span offsets in UTF-16 units (as the browser
    counts them) are converted when the text has characters beyond the BMP.
    """
    path = Path(path)
    tasks = read_label_studio(path)
    cfg = _config(kind=label_studio_kind(tasks, path, kind), text_field=text_field, on_error=on_error)
    problems, out, counts = Problems(path, on_error), [], Counter()
    for i, task in enumerate(tasks, start=1):
        annotations = task.get("annotations") or []
        done = [a for a in annotations if not a.get("was_cancelled")]
        counts["cancelled"] += len(annotations) - len(done)
        if not done:
            counts["not annotated" if not annotations else "skipped tasks"] += 1
            continue
        counts["extra annotations"] += len(done) - 1
        chosen = next((a for a in done if a.get("ground_truth")), done[0])
        try:
            ex = _label_studio_example(task, chosen, cfg, from_name)
        except RowError as exc:
            problems.bad(f"task {i} (id {task.get('id')})", str(exc))
            continue
        ex.meta.update({"where": f"{path.name}:task {i}", "id": task.get("id")})
        out.append(ex)
    problems.done(len(out))
    log.info("%s: %d %s examples; %s", path, len(out), cfg.kind,
             ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing skipped")
    return out


def read_label_studio(path: str | Path) -> list[dict]:
    """The tasks of a Label Studio JSON export, checked to be a list of tasks with `data`."""
    path = Path(path)
    try:
        tasks = json.loads(read_bytes(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise InputError(f"{path}: not a Label Studio JSON export (a list of tasks with 'data' and "
                         "'annotations'); export as JSON, not JSON-MIN or CSV")
    return tasks


def label_studio_kind(tasks: list[dict], path: str | Path, kind: Kind | None = None) -> Kind:
    """The task kind the annotations hold (spans: ner, else classification), or `kind` checked against them."""
    results = [r for t in tasks for a in t.get("annotations") or [] for r in a.get("result") or []]
    if kind is None:
        types = {r.get("type") for r in results}
        if not types & {"labels", "choices"}:
            raise InputError(f"{path}: no 'choices' or 'labels' annotations found")
        return "ner" if "labels" in types else "classification"
    if kind == "ner" and results and not any(r.get("type") == "labels" for r in results):
        raise InputError(f"{path}: kind is ner but the export has no 'labels' (span) annotations")
    return kind


def label_studio_example(task: dict, annotation: dict, kind: Kind, text_field: str = "text",
                         from_name: str | None = None) -> Example:
    """One annotation of one task as an Example; raises RowError when it cannot be read."""
    return _label_studio_example(task, annotation, _config(kind=kind, text_field=text_field), from_name)


def _label_studio_example(task: dict, annotation: dict, cfg: LoaderConfig, from_name: str | None) -> Example:
    data = task["data"] if isinstance(task["data"], dict) else {}
    strings = [v for v in data.values() if isinstance(v, str)]
    text = data.get(cfg.text_field, strings[0] if len(strings) == 1 else None)
    if not isinstance(text, str):
        raise RowError(f"data has no text field {cfg.text_field!r} (fields: {', '.join(data)}); set text_field")
    results = [r for r in annotation.get("result") or [] if from_name is None or r.get("from_name") == from_name]
    if cfg.kind == "classification":
        choices = [r for r in results if r.get("type") == "choices"]
        names = sorted({str(r.get("from_name")) for r in choices})
        if len(names) > 1:
            raise RowError(f"several choice fields ({', '.join(names)}); set from_name to one of them")
        picked = [c for r in choices for c in (r.get("value") or {}).get("choices") or []]
        if not picked:
            raise RowError("no choice selected" + (f" in {from_name!r}" if from_name else ""))
        if len(picked) > 1:
            raise RowError(f"{len(picked)} choices selected; exactly one is needed (multi-label is not supported)")
        return ClassificationExample(text=text, label=str(picked[0]))
    spans = []
    for r in results:
        if r.get("type") != "labels":
            continue
        value = r.get("value") or {}
        labels = value.get("labels") or []
        if len(labels) != 1:
            raise RowError(f"span {value.get('start')}-{value.get('end')} has {len(labels)} labels; one is needed")
        start, end = _offsets(text, value.get("start"), value.get("end"), value.get("text"))
        spans.append((start, end, labels[0]))
    example, dropped = NerExample.from_spans(text, spans)
    if dropped:
        log.debug("dropped %d overlapping spans of task %s", dropped, task.get("id"))
    return example


def _offsets(text: str, start: Any, end: Any, quoted: Any) -> tuple[int, int]:
    """Character offsets of a span, converting from UTF-16 units when that is what makes `quoted` match."""
    if not (isinstance(start, int) and isinstance(end, int)):
        raise RowError(f"span offsets must be integers (got {start!r}-{end!r})")
    if not isinstance(quoted, str) or text[start:end] == quoted:
        return start, end
    units = [0]
    for ch in text:
        units.append(units[-1] + (2 if ord(ch) > 0xFFFF else 1))
    if start in units and end in units and text[units.index(start):units.index(end)] == quoted:
        return units.index(start), units.index(end)
    raise RowError(f"span {start}-{end} is {text[start:end]!r} in the text but {quoted!r} in the export")


def load_examples(path: str | Path, config: LoaderConfig | dict | None = None, **overrides: Any) -> list[Example]:
    """Examples from any supported file, the format chosen by `config.format` or the suffix."""
    cfg = config if isinstance(config, LoaderConfig) else _config(**(config or {}))
    if overrides:
        cfg = _config(**{**cfg.model_dump(), **overrides})
    path = Path(path)
    fmt = cfg.format
    if fmt == "auto":
        suffixes = [s.lower() for s in path.suffixes]
        fmt = ("datasets" if tables.is_datasets_dir(path) else
               "records" if path.is_dir() or (suffixes[-1:] == [".parquet"] and tables.is_record_shard(path)) else
               "parquet" if suffixes[-1:] == [".parquet"] else
               "jsonl" if {".jsonl", ".ndjson"} & set(suffixes) else
               "csv" if {".csv", ".tsv"} & set(suffixes) else
               "label_studio" if suffixes[-1:] == [".json"] else "")
        if not fmt:
            raise InputError(f"{path}: cannot tell the format from the name; set format to jsonl, csv, "
                             "label_studio or records")
    if fmt == "jsonl":
        return _jsonl(path, cfg)
    if fmt == "csv":
        return _csv(path, cfg)
    if fmt == "records":
        return _records(path, cfg)
    if fmt == "parquet":
        return _parquet_rows(path, cfg)
    if fmt == "datasets":
        return _datasets_dir(path, cfg)
    if cfg.kind in ("conversation", "preference"):
        raise InputError(f"{path}: {cfg.kind} data is read from JSONL, Parquet, datasets directories or records, "
                         "not Label Studio exports")
    return load_label_studio(path, cfg.kind, text_field=cfg.text_field, on_error=cfg.on_error)
