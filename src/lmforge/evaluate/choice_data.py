"""Multiple-choice question sets from local files, in the layouts C-Eval, CMMLU and MMLU are released in.

Each file's layout is recognised from its first row:

- C-Eval CSV: header `id,question,A,B,C,D,answer[,explanation]`; files `SUBJECT_dev.csv`,
  `SUBJECT_val.csv`, `SUBJECT_test.csv` (the test split has no answers, so it cannot be scored);
- CMMLU CSV: header `,Question,A,B,C,D,Answer` (the first column an unnamed row index); files
  `dev/SUBJECT.csv` and `test/SUBJECT.csv`;
- MMLU CSV (the original release): no header, `question,A,B,C,D,answer`; files `SUBJECT_dev.csv`, ...;
- JSONL: one object per line with `question`, the options as `A`, `B`, ... fields or a `choices`
  list, `answer` a letter or a 0-based index, and optionally `subject` (field names in any case): the
  rows of the Hugging Face copies of MMLU (`cais/mmlu`: question, subject, choices, answer 0-3), C-Eval
  and CMMLU have this shape.

A row's subject is its `subject` field, else the file name without `_dev`/`_val`/`_test`. A file's split
is that suffix, else the name of its directory. `dev` files hold the few-shot examples: those under the
given path, else the `dev` directory beside it (`ceval/val` finds `ceval/dev`, `mmlu/test` finds
`mmlu/dev`); every other file is evaluated. A subject found in two evaluated splits is refused, since
pointing at the root of a release that holds val and test would otherwise score both.

A C-Eval style `subject_mapping.json` (`{"key": ["English name", "中文名", "category"]}`) in the file's
directory or up to two above names a Chinese subject in its prompt header. C-Eval and CMMLU subjects are
Chinese; any other subject is when most of its questions hold Han characters. The language picks the
prompt's header and answer cue.

Bad rows raise an `InputError` naming file and line, or with `on_error="skip"` are skipped and counted.
Files, rows and cells are bounded so that a wrong path (a corpus, a binary) fails at once.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.errors import InputError
from lmforge.lang import has_han
from lmforge.tasks.loaders import Problems, json_object
from lmforge.tasks.spans import RowError

SUFFIXES = (".csv", ".jsonl", ".jsonl.gz", ".ndjson")
SPLITS = ("dev", "val", "test")
LETTERS = string.ascii_uppercase[:10]  # at most ten options: A-J
MAX_FILE_BYTES = 64 << 20  # all of MMLU's test split is 8 MB
MAX_FILES = 2000  # CMMLU has 134 files, C-Eval 156
MAX_QUESTIONS = 200_000  # MMLU's test split has 14,042
MAX_CELL = 64_000  # characters in one question or option
MAX_MAPPING_BYTES = 1 << 20
CHINESE_LAYOUTS = ("ceval-csv", "cmmlu-csv")
BUILTIN = "builtin:choice"
BUILTIN_DIR = Path(__file__).parent / "data" / "choice"


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    where: str  # file:line


@dataclass
class ChoiceSet:
    """Questions to evaluate, few-shot examples per subject, and what each subject is called and written in."""

    questions: list[Question]
    dev: dict[str, list[Question]]
    names: dict[str, str]  # subject -> the name its prompt header uses
    langs: dict[str, str]  # subject -> "zh" or "en"
    files: int
    skipped: int = 0
    layouts: dict[str, int] = field(default_factory=dict)  # layout -> files

    @property
    def subjects(self) -> list[str]:
        return sorted({q.subject for q in self.questions})


def subject_and_split(path: Path) -> tuple[str, str]:
    """`abstract_algebra_test.csv` -> (abstract_algebra, test); `dev/agronomy.csv` -> (agronomy, dev)."""
    stem = path.name
    for suffix in SUFFIXES:
        stem = stem.removesuffix(suffix)
    for split in SPLITS:
        if stem.endswith(f"_{split}") and len(stem) > len(split) + 1:
            return stem[: -len(split) - 1], split
    return stem, path.parent.name.lower()


def _cell(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError(f"{what} must be text (got {type(value).__name__})")
    text = str(value).strip()
    if len(text) > MAX_CELL:
        raise RowError(f"{what} has {len(text):,} characters (at most {MAX_CELL:,})")
    return text


def _answer(value: Any, n_options: int) -> int:
    """A letter (any case) or, in JSON, a 0-based index."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < n_options:
            return value
        raise RowError(f"answer index {value} is outside 0-{n_options - 1}")
    if value is not None and not isinstance(value, str):
        raise RowError(f"answer must be a letter or a 0-based index (got {type(value).__name__})")
    letter = value.strip().upper() if value else None
    if not letter:
        raise RowError("no answer" + (" (C-Eval's test split has no public answers: evaluate val)"
                                      if value is None or value == "" else ""))
    if len(letter) == 1 and letter in LETTERS[:n_options]:
        return LETTERS.index(letter)
    raise RowError(f"answer {value!r:.40} is not one of {', '.join(LETTERS[:n_options])}")


def make_question(subject: str, question: Any, options: list[Any], answer: Any, where: str) -> Question:
    text = _cell(question, "question")
    if not text:
        raise RowError("empty question")
    if not 2 <= len(options) <= len(LETTERS):
        raise RowError(f"{len(options)} options (2 to {len(LETTERS)} are allowed)")
    opts = tuple(_cell(o, f"option {LETTERS[i]}") for i, o in enumerate(options))
    return Question(subject, text, opts, _answer(answer, len(opts)), where)


# --------------------------------------------------------------------------- CSV


def _header(row: list[str]) -> dict[str, int] | None:
    """Column indices of a header row (C-Eval, CMMLU, or any with question, A, B and answer), else None."""
    names = [c.strip().lower() for c in row]
    if "question" not in names or "a" not in names or "b" not in names:
        return None
    return {name: i for i, name in enumerate(names) if name}


def _letters(columns: dict[str, int]) -> list[int]:
    found = []
    for letter in LETTERS.lower():
        if letter not in columns:
            break
        found.append(columns[letter])
    return found


def _csv_rows(path: Path, data: bytes):
    """(line, cells) of every non-blank row, with the line a row starts on."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        if any(c.strip() for c in cells):
            yield line, cells


def read_csv(path: Path, data: bytes, problems: Problems) -> tuple[str, list[Question]]:
    """(layout, questions) of a C-Eval, CMMLU, other headed, or headerless MMLU CSV file."""
    subject, _ = subject_and_split(path)
    rows = _csv_rows(path, data)
    first = next(rows, None)
    if first is None:
        return "empty", []
    columns = _header(first[1])
    if columns is None:  # MMLU: question, options..., answer on every row, the first included
        layout, pending = "mmlu-csv", [first]
    else:
        layout = "ceval-csv" if "id" in columns else "cmmlu-csv" if not first[1][0].strip() else "csv"
        pending = []
        if "answer" not in columns:
            raise InputError(f"{path}: no answer column (columns: {', '.join(first[1])[:200]}); C-Eval's test "
                             "split has no public answers: evaluate val")
    out = []
    for line, cells in [*pending, *rows]:
        try:
            if columns is None:
                if len(cells) < 4:
                    raise RowError(f"{len(cells)} columns; a headerless (MMLU) row is question, options, answer")
                q = make_question(subject, cells[0], cells[1:-1], cells[-1], f"{path.name}:{line}")
            else:
                if len(cells) != len(first[1]):
                    raise RowError(f"{len(cells)} columns, the header has {len(first[1])}")
                where_subject = cells[columns["subject"]].strip() if "subject" in columns else ""
                q = make_question(where_subject or subject, cells[columns["question"]],
                                  [cells[i] for i in _letters(columns)], cells[columns["answer"]],
                                  f"{path.name}:{line}")
        except RowError as exc:
            problems.bad(line, str(exc))
            continue
        out.append(q)
    return layout, out


# --------------------------------------------------------------------------- JSONL


def _json_options(row: dict[str, Any]) -> list[Any]:
    choices = row.get("choices", row.get("options"))
    if choices is not None:
        if not isinstance(choices, list):
            raise RowError(f"choices must be a list (got {type(choices).__name__})")
        return choices
    options = []
    for letter in LETTERS.lower():
        if letter not in row:
            break
        options.append(row[letter])
    if not options:
        raise RowError(f"no options: expected A, B, ... fields or a choices list (fields: {', '.join(row)[:200]})")
    return options


def read_jsonl(path: Path, data: bytes, problems: Problems) -> tuple[str, list[Question]]:
    subject, _ = subject_and_split(path)
    out = []
    for line, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = {k.strip().lower(): v for k, v in json_object(raw).items()}  # CMMLU's rows say Question, A, ..., Answer
            row_subject = _cell(row.get("subject") or subject, "subject")
            if "question" not in row:
                raise RowError(f"no field 'question' (fields: {', '.join(row)[:200]})")
            out.append(make_question(row_subject, row["question"], _json_options(row), row.get("answer"),
                                     f"{path.name}:{line}"))
        except RowError as exc:
            problems.bad(line, str(exc))
    return ("mmlu-jsonl" if b'"choices"' in data[:4096] else "jsonl"), out


def read_file(path: Path, on_error: Literal["raise", "skip"] = "raise") -> tuple[str, list[Question], int]:
    """(layout, questions, rows skipped) of one file."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InputError(f"{path} has {size:,} bytes; a multiple-choice file may have at most {MAX_FILE_BYTES:,}")
    problems = Problems(path, on_error)
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path) as f:
                data = f.read(MAX_FILE_BYTES + 1)  # bounded: a small archive may unpack to gigabytes
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: damaged gzip file ({exc})") from None
        if len(data) > MAX_FILE_BYTES:
            raise InputError(f"{path} unpacks to over {MAX_FILE_BYTES:,} bytes; a multiple-choice file may not")
    else:
        data = path.read_bytes()
    reader = read_csv if path.name.endswith(".csv") else read_jsonl
    layout, questions = reader(path, data, problems)
    problems.done(len(questions))
    return layout, questions, problems.count


# --------------------------------------------------------------------------- a path: files, splits, names


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name.endswith(SUFFIXES) and not any(part.startswith(".") for part in p.parts):
            files.append(p)
            if len(files) > MAX_FILES:
                raise InputError(f"{root} holds over {MAX_FILES} CSV/JSONL files; point at one split's directory")
    return files


def _dev_files(root: Path, files: list[Path], subjects: set[str]) -> list[Path]:
    """dev files under `root`; else beside it (a file's own directory, then ../dev), there only CSV files
    named after an evaluated subject, and JSONL files, which name their subjects in each row."""
    dev = [f for f in files if subject_and_split(f)[1] == "dev"]
    if dev:
        return dev
    base = root.parent if root.is_file() else root
    near = [p for p in sorted(base.iterdir()) if p.is_file() and p.name.endswith(SUFFIXES)
            and subject_and_split(p)[1] == "dev"] if root.is_file() else []
    beside = base.parent / "dev"
    far = _files(beside) if beside.is_dir() and beside != base else []
    return [p for p in near + far if not p.name.endswith(".csv") or subject_and_split(p)[0] in subjects]


def _mapping(path: Path, cache: dict[Path, dict]) -> dict[str, Any]:
    """The nearest subject_mapping.json at or up to two directories above `path`."""
    for d in (path.parent, path.parent.parent, path.parent.parent.parent):
        if d not in cache:
            file, cache[d] = d / "subject_mapping.json", {}
            if file.is_file() and file.stat().st_size <= MAX_MAPPING_BYTES:
                try:
                    loaded = json.loads(file.read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InputError(f"{file}: not valid JSON ({str(exc)[:200]})") from None
                cache[d] = loaded if isinstance(loaded, dict) else {}
        if cache[d]:
            return cache[d]
    return {}


def _name(subject: str, lang: str, mapping: dict[str, Any]) -> str:
    """C-Eval's Chinese name for a Chinese subject when the mapping has one; else the key with spaces."""
    entry = mapping.get(subject)
    if lang == "zh" and isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], str) and entry[1]:
        return entry[1]
    return subject.replace("_", " ")


def _check_splits(splits: dict[str, set[str]], root: Path) -> None:
    mixed = {s: sorted(v) for s, v in splits.items() if len(v) > 1}
    if mixed:
        subject, found = next(iter(sorted(mixed.items())))
        raise InputError(f"{root}: subject {subject!r} is in the splits {', '.join(found)}; point at one split's "
                         "directory (its dev examples are found beside it)")


def load_choice(path: str | Path, on_error: Literal["raise", "skip"] = "raise") -> ChoiceSet:
    """The questions under `path` (a file, a directory, or `builtin:choice`) and their few-shot examples."""
    root = BUILTIN_DIR if str(path) == BUILTIN else Path(path)
    if not root.exists():
        raise InputError(f"multiple-choice data {root} does not exist")
    files = _files(root)
    questions: list[Question] = []
    splits: dict[str, set[str]] = defaultdict(set)
    layouts: Counter[str] = Counter()
    mappings: dict[Path, dict] = {}
    mapping_of: dict[str, dict[str, Any]] = {}
    chinese_layout: set[str] = set()
    skipped = 0
    evaluated = [f for f in files if subject_and_split(f)[1] != "dev"]
    for file in evaluated:
        split = subject_and_split(file)[1]
        layout, rows, bad = read_file(file, on_error)
        layouts[layout] += 1
        skipped += bad
        for q in rows:
            if layout in CHINESE_LAYOUTS:
                chinese_layout.add(q.subject)
            if split in ("val", "test"):
                splits[q.subject].add(split)
            mapping_of.setdefault(q.subject, _mapping(file, mappings))
        questions.extend(rows)
        if len(questions) > MAX_QUESTIONS:
            raise InputError(f"{root} holds over {MAX_QUESTIONS:,} questions; evaluate fewer subjects at a time")
    if not questions:
        raise InputError(f"{root}: no questions to evaluate in {len(evaluated)} file(s) (dev files only hold "
                         "few-shot examples)")
    _check_splits(splits, root)
    dev: dict[str, list[Question]] = defaultdict(list)
    dev_files = _dev_files(root, files, set(mapping_of))
    for file in dev_files:
        layout, rows, bad = read_file(file, on_error)
        layouts[layout] += 1
        skipped += bad
        for q in rows:
            dev[q.subject].append(q)
    langs = _languages(questions, chinese_layout)
    names = {s: _name(s, langs[s], mapping_of[s]) for s in langs}
    return ChoiceSet(questions, {s: dev[s] for s in langs if s in dev}, names, langs,
                     len(evaluated) + len(dev_files), skipped, dict(layouts))


def _languages(questions: list[Question], chinese_layout: set[str]) -> dict[str, str]:
    """zh for C-Eval/CMMLU subjects and subjects whose questions mostly hold Han characters (a C-Eval
    math question is Chinese though most of its characters are formula), else en."""
    han: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for q in questions:
        total[q.subject] += 1
        han[q.subject] += has_han(q.question)
    return {s: "zh" if s in chinese_layout or 2 * han[s] > total[s] else "en" for s in sorted(total)}
