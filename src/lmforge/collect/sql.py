"""SQL databases as a source: a table (or a query) with a text column, streamed in batches.

Any SQLAlchemy URL works; SQLite needs nothing beyond the standard library and is the
default, PostgreSQL is tested against a real server. Rows are streamed with
`stream_results` + `yield_per`, which on PostgreSQL is a server-side cursor, so a table
larger than memory is read `batch_size` rows at a time.

Identity and order, which resuming relies on:

- with `id_column`, a record's id is the hash of the database, the table (or query) and
  that column's value;
- without it the id is the hash of the database, the table (or query) and the *text*:
  a row's position is not stable (inserts, vacuums, another plan), its content is. Rows
  with identical text therefore share an id; they are the same document, and exact dedup
  would keep one anyway. Give `id_column` when row identity matters;
- a table is read `ORDER BY order_by` (default: `id_column`, else the text column), with
  `id_column` as tie-breaker; a query is run as written, so it should have its own ORDER BY.

Table and column names are checked to be plain identifiers and then only ever used through
SQLAlchemy's `table()`/`column()` constructs, which quote them; nothing the user gives is
formatted into SQL except `query`, which is the user's own SQL and is run as `text()`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from lmforge.config import StrictModel
from lmforge.errors import ConfigError, InputError, require
from lmforge.pipeline.source import Source, SourceContext
from lmforge.records import Record, jsonable, make_id

log = logging.getLogger(__name__)

# Letters (any script), digits and underscores, not starting with a digit. Anything else
# (spaces, quotes, semicolons) is refused rather than quoted, so a typo or an injection
# attempt is reported instead of silently naming some other object.
_IDENTIFIER = re.compile(r"[^\W\d]\w*")
_MAX_BAD_TEXT = 10_000


def _check_identifier(value: str, what: str, dotted: bool = False) -> str:
    parts = value.split(".") if dotted else [value]
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        shape = "name or schema.name" if dotted else "name"
        raise ValueError(
            f"{what} must be a plain SQL {shape} (letters, digits, underscores); "
            "use `query` for anything else"
        )
    return value


class SqlConfig(StrictModel):
    """One table or query of one database; see the module docstring for ids and order."""

    url: str = "sqlite:///data.db"
    password_env: str | None = None  # env var with the password, so recipes hold none
    table: str | None = None
    query: str | None = None
    text_column: str = "text"
    id_column: str | None = None
    meta_columns: list[str] = Field(default_factory=list)  # copied to meta["sql"] (with id_column)
    lang_column: str | None = None
    url_column: str | None = None
    batch_size: int = Field(1000, gt=0)
    order_by: str | None = None

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_identifier(value, "table", dotted=True)

    @field_validator("text_column", "id_column", "lang_column", "url_column", "order_by")
    @classmethod
    def _column_name(cls, value: str | None, info) -> str | None:
        return None if value is None else _check_identifier(value, info.field_name)

    @field_validator("meta_columns")
    @classmethod
    def _meta_names(cls, value: list[str]) -> list[str]:
        for name in value:
            _check_identifier(name, "each of meta_columns")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SqlConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` or `query`")
        if self.query is not None and not self.query.strip():
            raise ValueError("`query` is empty")
        if self.query is not None and self.order_by is not None:
            raise ValueError("`order_by` applies to `table`; put an ORDER BY in the query instead")
        return self


def iter_sql(config: SqlConfig, base_dir: Path, work_dir: Path) -> Iterator[Record]:
    """Stream the rows of `config.table` (or `config.query`) as records, `batch_size` rows at a time."""
    sa = require("sqlalchemy", "sql")
    url, shown = _resolve_url(config, Path(base_dir))
    what = f"table {config.table!r}" if config.table else f"query {config.query!r}"
    source = f"sql:{config.table}" if config.table else "sql:query"
    namespace = f"{_id_namespace(config.url)}|{config.table or config.query}"
    provenance = {
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "content_type": "text/plain",
        "encoding": "utf-8",
        "database": shown,
        **({"table": config.table} if config.table else {"query": config.query}),
    }
    try:
        engine = sa.create_engine(url)
    except ImportError as exc:
        raise InputError(f"cannot open database {shown}: its driver is not installed ({exc}); "
                         "PostgreSQL's comes with pip install 'lmforge[sql]'") from None
    except (sa.exc.SQLAlchemyError, ValueError) as exc:
        raise InputError(f"cannot open database {shown}: {_short(exc, url)}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_lenient_text)
    try:
        with engine.connect() as conn:
            stmt = _table_select(sa, conn, config, shown) if config.table else sa.text(config.query)
            result = conn.execution_options(stream_results=True, yield_per=config.batch_size).execute(stmt)
            if config.query:
                _check_result_columns(config, list(result.keys()), shown)
            # The size is explicit because for text() statements SQLAlchemy 2.1 otherwise
            # hands out one-row partitions despite yield_per.
            for batch, rows in enumerate(result.partitions(config.batch_size)):
                log.debug("%s %s: batch %d (%d rows)", shown, what, batch, len(rows))
                for row in rows:
                    yield _record(row._mapping, config, source, namespace, provenance)
    except sa.exc.SQLAlchemyError as exc:
        raise InputError(f"cannot read {what} from {shown}: {_short(exc, url)}") from None
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- connection


def _resolve_url(config: SqlConfig, base_dir: Path):
    """The URL to connect with, and the same URL with its password masked for messages."""
    sa = require("sqlalchemy", "sql")
    try:
        url = sa.engine.make_url(config.url)
    except (sa.exc.ArgumentError, ValueError):
        shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", config.url)
        raise InputError(f"not a valid SQLAlchemy database URL: {shown}") from None
    if config.password_env:
        password = os.environ.get(config.password_env)
        if password is None:
            raise ConfigError(f"password_env: environment variable {config.password_env} is not set")
        url = url.set(password=password)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not url.database.startswith("file:"):
        path = Path(url.database).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise InputError(f"SQLite database not found: {path} (from {shown})")
        # Read-only URI: a collector must never create or modify the database it reads.
        url = url.set(database=f"{path.resolve().as_uri()}?mode=ro", query={**url.query, "uri": "true"})
        shown = f"sqlite:///{path}"
    return url, shown


def _id_namespace(raw_url: str) -> str:
    """The configured URL without any password: ids must not change when a password does."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1@", raw_url)


def _sqlite_lenient_text(dbapi_conn, _record) -> None:
    """Let TEXT values that are not UTF-8 through as bytes, so one bad row is quarantined.

    sqlite3's default text factory raises on such a value and would end the whole stream.
    """
    dbapi_conn.text_factory = _decode_or_bytes


def _decode_or_bytes(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _short(exc: BaseException, url) -> str:
    """The driver's own message (first line), with any password removed."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    message = message.splitlines()[0] if message else type(exc).__name__
    if getattr(url, "password", None):
        message = message.replace(str(url.password), "***")
    return message[:300]


# --------------------------------------------------------------------------- statement


def _wanted_columns(config: SqlConfig) -> list[str]:
    names = [config.text_column, config.id_column, config.lang_column, config.url_column, *config.meta_columns]
    return list(dict.fromkeys(n for n in names if n))


def _table_select(sa, conn, config: SqlConfig, shown: str):
    """SELECT of the wanted columns, checked against the table's real columns first.

    Reflecting first turns "no such column" from some driver into a message naming the
    column and listing the ones that exist.
    """
    schema, _, name = config.table.rpartition(".")
    schema = schema or None
    inspector = sa.inspect(conn)
    if not inspector.has_table(name, schema=schema):
        tables = inspector.get_table_names(schema=schema)
        raise InputError(f"table {config.table!r} not found in {shown} (tables: {', '.join(tables) or 'none'})")
    existing = [c["name"] for c in inspector.get_columns(name, schema=schema)]
    _check_columns(config, existing, f"table {config.table!r} in {shown}")
    order = [config.order_by or config.id_column or config.text_column]
    if config.id_column and config.id_column not in order:
        order.append(config.id_column)  # tie-breaker, so equal order_by values keep one order
    wanted = _wanted_columns(config)
    tbl = sa.table(name, *(sa.column(c) for c in dict.fromkeys(wanted + order)), schema=schema)
    return sa.select(*(tbl.c[c] for c in wanted)).order_by(*(tbl.c[c] for c in order))


def _check_columns(config: SqlConfig, existing: list[str], where: str) -> None:
    roles = {
        "text_column": [config.text_column], "id_column": [config.id_column], "lang_column": [config.lang_column],
        "url_column": [config.url_column], "meta_columns": config.meta_columns, "order_by": [config.order_by],
    }
    for field, names in roles.items():
        for name in names:
            if name and name not in existing:
                raise InputError(f"{field}: {where} has no column {name!r} (columns: {', '.join(existing)})")


def _check_result_columns(config: SqlConfig, keys: list[str], shown: str) -> None:
    _check_columns(config, keys, f"the result of query {config.query!r} on {shown}")


# --------------------------------------------------------------------------- records


def _record(row, config: SqlConfig, source: str, namespace: str, provenance: dict) -> Record:
    value = row[config.text_column]
    text, reason, error = _as_text(value)
    meta: dict[str, Any] = {}
    columns = [*([config.id_column] if config.id_column else []), *config.meta_columns]
    if columns:
        meta["sql"] = {c: jsonable(row[c]) for c in columns}
    if config.id_column and row[config.id_column] is not None:
        rid = make_id(namespace, f"id:{row[config.id_column]}")
    elif reason is None:
        rid = make_id(namespace, f"text:{text}")
    else:
        # No id and no usable text: the row's other values are the only stable handle.
        rid = make_id(namespace, f"{reason}:{_fingerprint(row)}")
    if reason is not None:
        meta.update(drop_reason=reason, drop_stage="input", error=error)
    return Record(
        id=rid,
        text=text,
        source=source,
        url=_optional_str(row[config.url_column]) if config.url_column else "",
        lang=_optional_str(row[config.lang_column]) if config.lang_column else "",
        meta=meta,
        provenance=dict(provenance),
    )


def _as_text(value: Any) -> tuple[str, str | None, str]:
    """(text, drop reason or None, error): bytes count as text only if they are UTF-8."""
    if isinstance(value, str):
        return value, None, ""
    if value is None:
        return "", "sql_null_text", "text column is NULL"
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode("utf-8"), None, ""
        except UnicodeDecodeError as exc:
            return data[:_MAX_BAD_TEXT].decode("utf-8", "replace"), "sql_bad_text", f"not UTF-8: {exc}"[:200]
    return str(value)[:_MAX_BAD_TEXT], "sql_bad_text", f"text column holds {type(value).__name__}, not text"


def _fingerprint(row) -> str:
    data = repr(sorted((k, repr(v)) for k, v in row.items())).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _optional_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class SqlSource(Source):
    """Rows of a database table or query."""

    name = "sql"
    Config = SqlConfig

    def read(self, ctx: SourceContext) -> Iterator[Record]:
        return iter_sql(self.config, ctx.base_dir, ctx.work_dir)
