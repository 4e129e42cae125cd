"""Evaluation results as JSON (for tools) and Markdown tables (for people), and side-by-side comparisons.

Any dict of metrics renders: scalar metrics and small groups such as {"macro": {"f1": …}}
become one "metric | value" table (keys joined with dots), per-class or per-type groups
become a table of their own, and a confusion matrix next to its `labels` becomes a matrix.
Floats are shown with 4 decimals; the JSON keeps full precision.

JSON is written strictly: NaN and infinities (say, the perplexity of an untrained model
that overflowed) become null, since JSON has no such numbers and many readers reject them.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmforge.errors import InputError
from lmforge.records import atomic_path, write_json_atomic

MISSING = "—"
# The first column's name in these group tables (multiple-choice results); other groups say "label".
GROUP_LABELS = {"subjects": "subject", "languages": "language"}


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | numbers.Number)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def cell(value: Any) -> str:
    """One table cell: floats with 4 decimals, ints as they are, text with pipes and newlines escaped."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4f}"
    if isinstance(value, list | tuple) and all(_is_scalar(v) for v in value):
        text = ", ".join(cell(v) for v in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(jsonable(value), ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def flatten(results: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"macro": {"f1": 0.5}} -> {"macro.f1": 0.5}; lists and scalars stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _is_group_table(value: Any) -> bool:
    """{label: {metric: number}}: per-class or per-type scores, rendered with one row per label."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, Mapping) and all(_is_scalar(x) for x in v.values()) for v in value.values())
    )


def _rows_table(rows: Sequence[tuple[str, Mapping[str, Any]]], first: str) -> list[str]:
    flat = [(name, flatten(row)) for name, row in rows]
    columns = list(dict.fromkeys(k for _, row in flat for k in row))
    return _table([first, *columns], [[cell(name), *(cell(row.get(c)) for c in columns)] for name, row in flat])


def _matrix(labels: Sequence[Any], matrix: Sequence[Sequence[Any]]) -> list[str]:
    header = ["true \\ predicted", *(cell(label) for label in labels)]
    return _table(header, [[cell(label), *(cell(v) for v in row)] for label, row in zip(labels, matrix, strict=True)])


def _dict_sections(results: Mapping[str, Any]) -> list[str]:
    matrix = results.get("confusion_matrix")
    labels = results.get("labels")
    has_matrix = isinstance(matrix, list) and isinstance(labels, list) and len(matrix) == len(labels)
    main: dict[str, Any] = {}
    groups: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in results.items():
        if has_matrix and key in ("confusion_matrix", "labels"):
            continue
        if _is_group_table(value):
            groups.append((key, value))
        elif isinstance(value, Mapping):
            main.update(flatten(value, f"{key}."))
        else:
            main[key] = value
    lines = _table(["metric", "value"], [[cell(k), cell(v)] for k, v in main.items()]) if main else []
    for key, value in groups:
        first = GROUP_LABELS.get(key, "label")
        lines += ["", f"### {key}", "", *_rows_table([(str(k), v) for k, v in value.items()], first)]
    if has_matrix:
        lines += ["", "### confusion matrix", "", *_matrix(labels, matrix)]
    return lines


def to_markdown(results: Mapping[str, Any] | Sequence[Mapping[str, Any]], title: str | None = None) -> str:
    """A readable Markdown rendering of one result dict, a list of them, or {name: result}.

    A list becomes one table with a row per dict; a dict whose values are all dicts of
    scores ({"fine-tuned": {...}, "from scratch": {...}}) becomes a table with a row per name;
    any other dict gets the sections described in the module docstring.
    """
    lines = [f"## {title}", ""] if title else []
    if isinstance(results, Mapping):
        if results and all(isinstance(v, Mapping) for v in results.values()):
            lines += _rows_table([(str(k), v) for k, v in results.items()], "")
        else:
            lines += _dict_sections(results)
    elif isinstance(results, Sequence) and not isinstance(results, str) and all(
        isinstance(r, Mapping) for r in results
    ):
        lines += _rows_table([(str(i), r) for i, r in enumerate(results)], "#")
    else:
        raise InputError(f"to_markdown needs a dict or a list of dicts of results (got {type(results).__name__})")
    return "\n".join(lines) + "\n"


def compare_table(rows: Mapping[str, Mapping[str, Any]], digits: int = 4) -> str:
    """Metrics side by side, one column per run, and the change from the first run.

    `rows` maps a run's name to its metrics, e.g. {"from scratch": {...}, "fine-tuned": {...}};
    the first is the baseline. Nested metrics are compared by their dotted names. With two
    runs there is one "Δ" column (second minus first); with more, a "Δ name" per later run.
    Whether a positive change is good depends on the metric (it is not for perplexity).
    """
    if not isinstance(rows, Mapping) or not rows:
        raise InputError("compare_table needs a non-empty dict of {run name: {metric: value}}")
    names = [str(name) for name in rows]
    flat = [flatten(metrics) if isinstance(metrics, Mapping) else {} for metrics in rows.values()]
    metrics = list(dict.fromkeys(k for row in flat for k in row))
    deltas = names[1:]
    header = ["metric", *names, *(["Δ"] if len(names) == 2 else [f"Δ {n}" for n in deltas])]
    body = []
    for metric in metrics:
        base = flat[0].get(metric)
        line = [cell(metric), *(cell(row.get(metric)) for row in flat)]
        for row in flat[1:]:
            value = row.get(metric)
            if _is_number(base) and _is_number(value) and math.isfinite(base) and math.isfinite(value):
                line.append(f"{float(value) - float(base):+.{digits}f}")
            else:
                line.append(MISSING)
        body.append(line)
    return "\n".join(_table(header, body)) + "\n"


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, tuples as lists, keys as strings, NaN/inf as null."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy arrays and tensors
        return jsonable(value.tolist())
    return str(value)


def write_report(
    path_stem: str | Path,
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write `path_stem.json` and `path_stem.md`, each atomically; returns both paths.

    A stem ending in .json or .md loses that suffix, so "eval.json" writes eval.json and eval.md.
    """
    stem = Path(path_stem)
    if stem.suffix in (".json", ".md"):
        stem = stem.with_suffix("")
    json_path, md_path = Path(f"{stem}.json"), Path(f"{stem}.md")
    markdown = to_markdown(results, title=title)  # fails before anything is written
    write_json_atomic(json_path, jsonable(results))
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    return json_path, md_path
