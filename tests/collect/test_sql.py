"""The SQL collector against real databases: a SQLite file made here, and a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import tracemalloc
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from lmforge.collect.sql import SqlConfig, iter_sql
from lmforge.config import validate
from lmforge.errors import ConfigError, InputError

ZH = ["人民日报讯，新年伊始，各地群众以多种方式欢度元旦佳节。", "酒店的位置不错，但是房间的隔音太差了。"]
EN = ["A function definition is an executable statement.", "Names refer to objects."]
BIG = "大" * (10 * 1024 * 1024 // 3)  # ~10 MB of UTF-8


def collect(tmp_path: Path, **kwargs) -> list:
    return list(iter_sql(SqlConfig(**kwargs), tmp_path, tmp_path / "work"))


@pytest.fixture
def docs_db(tmp_path: Path) -> Path:
    """docs(id, text, lang, author, link) with good rows and every kind of bad text."""
    path = tmp_path / "corpus.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, text, lang TEXT, author TEXT, link TEXT)")
        rows = [
            (1, ZH[0], "zh", "新华社", "https://example.org/1"),
            (2, EN[0], "en", "PSF", "https://example.org/2"),
            (3, None, "en", "nobody", None),
            (4, b"\xff\xfe\x00bad", "en", "blob", None),  # a BLOB that is not UTF-8
            (5, 12345, "en", "number", None),
            (6, BIG, "zh", "big", None),
            (7, ZH[1].encode("utf-8"), "zh", "utf8 blob", None),  # a BLOB that is UTF-8: fine
            (8, EN[1], "en", "PSF", None),
        ]
        conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", rows)
        # TEXT holding invalid UTF-8: sqlite3 itself raises on it unless the collector copes
        conn.execute("INSERT INTO docs VALUES (9, CAST(X'C3284142' AS TEXT), 'en', 'cast', NULL)")
        conn.commit()
    return path


def test_table_records_quarantine_and_meta(tmp_path: Path, docs_db: Path):
    records = collect(tmp_path, url="sqlite:///corpus.db", table="docs", id_column="id", lang_column="lang",
                      url_column="link", meta_columns=["author"], batch_size=3)
    assert [r.meta["sql"]["id"] for r in records] == list(range(1, 10))
    by_id = {r.meta["sql"]["id"]: r for r in records}
    assert by_id[1].text == ZH[0] and by_id[1].lang == "zh" and by_id[1].url == "https://example.org/1"
    assert by_id[1].meta["sql"] == {"id": 1, "author": "新华社"} and "drop_reason" not in by_id[1].meta
    assert by_id[1].source == "sql:docs"
    assert by_id[6].text == BIG and by_id[7].text == ZH[1]
    reasons = {i: r.meta.get("drop_reason") for i, r in by_id.items()}
    assert reasons == {1: None, 2: None, 3: "sql_null_text", 4: "sql_bad_text", 5: "sql_bad_text", 6: None,
                       7: None, 8: None, 9: "sql_bad_text"}
    assert all(by_id[i].meta["drop_stage"] == "input" for i in (3, 4, 5, 9))
    assert by_id[5].text == "12345" and "int" in by_id[5].meta["error"]
    assert by_id[4].meta["sql"]["author"] == "blob"
    prov = by_id[1].provenance
    assert prov["database"] == f"sqlite:///{docs_db}" and prov["table"] == "docs"
    assert prov["content_type"] == "text/plain" and prov["encoding"] == "utf-8" and prov["fetched_at"].endswith("+00:00")
    assert len({r.id for r in records}) == len(records)


def test_ids_and_order_do_not_depend_on_storage_order(tmp_path: Path, docs_db: Path):
    first = collect(tmp_path, url="sqlite:///corpus.db", table="docs", id_column="id")
    again = collect(tmp_path, url="sqlite:///corpus.db", table="docs", id_column="id")
    assert [(r.id, r.text) for r in first] == [(r.id, r.text) for r in again]

    # Same rows, inserted in reverse into a table without a primary key, read without id_column:
    # the ids come from the text and the order from ORDER BY text, so both match the original.
    for name, order in (("a.db", 1), ("b.db", -1)):
        with contextlib.closing(sqlite3.connect(tmp_path / name)) as conn:
            conn.execute("CREATE TABLE t (text TEXT)")
            conn.executemany("INSERT INTO t VALUES (?)", [(t,) for t in (ZH + EN + [ZH[0]])[::order]])
            conn.commit()
    a = collect(tmp_path, url="sqlite:///a.db", table="t")
    b = collect(tmp_path, url="sqlite:///b.db", table="t")
    assert [r.text for r in a] == sorted(ZH + EN + [ZH[0]])
    assert [r.text for r in a] == [r.text for r in b]
    # the database is part of the id, so two files differ; within one, equal text means equal id
    ids = {r.text: r.id for r in a}
    assert len(ids) == 4 and [r.id for r in a].count(ids[ZH[0]]) == 2


def test_query_mode_with_where(tmp_path: Path, docs_db: Path):
    records = collect(tmp_path, url="sqlite:///corpus.db",
                      query="SELECT id, text, lang FROM docs WHERE lang = 'zh' AND typeof(text) = 'text' ORDER BY id",
                      id_column="id", lang_column="lang")
    assert [r.text for r in records] == [ZH[0], BIG]
    assert all(r.source == "sql:query" and r.provenance["query"].startswith("SELECT") for r in records)


def test_streams_in_batches(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    chunk = "流" * (1024 * 1024 // 3)  # 1 MB of UTF-8 per row
    path = tmp_path / "big.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE pages (id INTEGER PRIMARY KEY, text TEXT)")
        conn.executemany("INSERT INTO pages VALUES (?, ?)", [(i, f"{i} {chunk}") for i in range(40)])
        conn.commit()
    config = SqlConfig(url="sqlite:///big.db", table="pages", id_column="id", batch_size=4)

    caplog.set_level(logging.DEBUG, logger="lmforge.collect.sql")
    stream = iter_sql(config, tmp_path, tmp_path)
    next(stream)
    assert sum("batch" in m for m in caplog.messages) == 1  # lazily: one batch read so far
    tracemalloc.start()
    try:
        count = 1 + sum(1 for _ in stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stream.close()
    assert count == 40
    assert sum("batch" in m for m in caplog.messages) == 10
    assert peak < 15 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB: rows were not streamed (40 MB in all)"


@pytest.mark.parametrize("table", ["docs; DROP TABLE docs", "docs--", 'docs" ; DROP TABLE "docs', "a.b.c", "1docs"])
def test_table_name_injection_is_refused(tmp_path: Path, docs_db: Path, table: str):
    with pytest.raises(ConfigError, match="table"):
        validate(SqlConfig, {"url": "sqlite:///corpus.db", "table": table})
    with pytest.raises(ValidationError):
        SqlConfig(url="sqlite:///corpus.db", table=table)
    with pytest.raises(ConfigError, match="text_column"):
        validate(SqlConfig, {"table": "docs", "text_column": "text FROM docs; DROP TABLE docs; --"})
    with contextlib.closing(sqlite3.connect(docs_db)) as conn:
        assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 9


def test_config_needs_exactly_one_of_table_or_query():
    with pytest.raises(ConfigError, match="exactly one of `table` or `query`"):
        validate(SqlConfig, {"table": "docs", "query": "SELECT 1"})
    with pytest.raises(ConfigError, match="exactly one"):
        validate(SqlConfig, {})
    with pytest.raises(ConfigError, match="batch_size"):
        validate(SqlConfig, {"table": "docs", "batch_size": 0})
    with pytest.raises(ConfigError, match="order_by"):
        validate(SqlConfig, {"query": "SELECT text FROM docs", "order_by": "id"})


def test_unreadable_sources_raise_input_error_naming_them(tmp_path: Path, docs_db: Path):
    with pytest.raises(InputError, match="text_column: .*no column 'txt'.*columns: id, text"):
        collect(tmp_path, url="sqlite:///corpus.db", table="docs", text_column="txt")
    with pytest.raises(InputError, match="meta_columns: .*no column 'editor'"):
        collect(tmp_path, url="sqlite:///corpus.db", table="docs", meta_columns=["editor"])
    with pytest.raises(InputError, match="no column 'body'"):
        collect(tmp_path, url="sqlite:///corpus.db", query="SELECT text FROM docs", text_column="body")
    with pytest.raises(InputError, match="table 'missing' not found .*tables: docs"):
        collect(tmp_path, url="sqlite:///corpus.db", table="missing")
    with pytest.raises(InputError, match="query 'SELECT nope FROM docs'.*nope"):
        collect(tmp_path, url="sqlite:///corpus.db", query="SELECT nope FROM docs")
    with pytest.raises(InputError, match="SQLite database not found: .*absent.db"):
        collect(tmp_path, url="sqlite:///absent.db", table="docs")
    assert not (tmp_path / "absent.db").exists()  # opened read-only: nothing is created
    with pytest.raises(InputError, match="not a valid SQLAlchemy database URL"):
        collect(tmp_path, url="not a url", table="docs")


def test_password_is_masked_and_can_come_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # port 1 on 127.0.0.1 refuses at once, so this fails fast after the URL is parsed
    with pytest.raises(InputError) as info:
        collect(tmp_path, url="postgresql+psycopg://lmforge:hunter2@127.0.0.1:1/lmforge", table="docs")
    assert "hunter2" not in str(info.value) and "lmforge:***@127.0.0.1:1" in str(info.value)
    with pytest.raises(ConfigError, match="LMFORGE_TEST_NO_SUCH_VAR"):
        collect(tmp_path, url="postgresql+psycopg://lmforge@127.0.0.1:1/lmforge", table="docs",
                password_env="LMFORGE_TEST_NO_SUCH_VAR")
    monkeypatch.setenv("LMFORGE_TEST_PG_PASSWORD", "s3cret-from-env")
    with pytest.raises(InputError) as info:
        collect(tmp_path, url="postgresql+psycopg://lmforge@127.0.0.1:1/lmforge", table="docs",
                password_env="LMFORGE_TEST_PG_PASSWORD")
    assert "s3cret-from-env" not in str(info.value) and "***" in str(info.value)


def test_absolute_sqlite_path_and_base_dir(tmp_path: Path, docs_db: Path):
    absolute = collect(tmp_path / "elsewhere", url=f"sqlite:///{docs_db}", table="docs", id_column="id")
    relative = collect(tmp_path, url="sqlite:///corpus.db", table="docs", id_column="id")
    assert [r.text for r in absolute] == [r.text for r in relative]


# --------------------------------------------------------------------------- PostgreSQL

DEFAULT_PG_URL = "postgresql+psycopg://lmforge:lmforge@127.0.0.1:5432/lmforge"


def _can_connect(url: str) -> str | None:
    """None if a connection works, else why not."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:  # any failure just means "no server here"
        return str(exc).splitlines()[0]
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _throwaway_cluster():
    """A PostgreSQL cluster of Debian's binaries in a temp dir, or None with the reason it is unavailable."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not initdbs:
        yield None, "no PostgreSQL binaries in /usr/lib/postgresql/*/bin"
        return
    bindir = Path(initdbs[-1]).parent
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            yield None, "running as root and there is no 'postgres' user to run initdb as"
            return
        if not shutil.which("runuser"):
            yield None, "running as root and runuser is missing"
            return
        run_as = ["runuser", "-u", "postgres", "--"]
    top = Path(tempfile.mkdtemp(prefix="lmforge-pg-"))
    if run_as:
        os.chown(top, owner.pw_uid, owner.pw_gid)
    data, port = top / "data", _free_port()
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "lmforge", "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(top / "log"), "-w",
                        "-o", f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(top, ignore_errors=True)
        yield None, f"could not start a throwaway cluster: {exc} {detail.decode(errors='replace')[:300]}"
        return
    try:
        yield f"postgresql+psycopg://lmforge@127.0.0.1:{port}/postgres", ""
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url():
    """A PostgreSQL URL: LMFORGE_TEST_POSTGRES_URL (or the CI default), else a throwaway cluster."""
    pytest.importorskip("psycopg")
    url = os.environ.get("LMFORGE_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    why = _can_connect(url)
    if why is None:
        logging.getLogger(__name__).info("PostgreSQL tests use %s", url)
        yield url
        return
    with _throwaway_cluster() as (throwaway, reason):
        if throwaway is None:
            pytest.skip(f"no PostgreSQL server: cannot connect to {url} ({why}) and {reason}; "
                        "run `bash scripts/ci_postgres.sh` as root (Debian) or set LMFORGE_TEST_POSTGRES_URL")
        yield throwaway


@pytest.fixture
def pg_table(pg_url: str):
    """A fresh table with 3000 bilingual rows, one NULL text and one non-UTF-8 bytea, dropped afterwards."""
    import sqlalchemy as sa

    name = f"lmforge_test_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (id integer PRIMARY KEY, body text, raw bytea, lang text)"))
        conn.execute(sa.text(
            f"INSERT INTO {name} SELECT g, CASE WHEN g % 2 = 0 THEN '第' || g || '条 中文新闻' "
            f"ELSE 'English line ' || g END, convert_to('ok ' || g, 'UTF8'), "
            f"CASE WHEN g % 2 = 0 THEN 'zh' ELSE 'en' END FROM generate_series(1, 3000) g"
        ))
        conn.execute(sa.text(f"UPDATE {name} SET body = NULL WHERE id = 1500"))
        conn.execute(sa.text(f"UPDATE {name} SET raw = '\\xfffe41'::bytea WHERE id = 77"))
    yield name, engine
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


def test_postgres_server_side_cursor_streams(tmp_path: Path, pg_url: str, pg_table):
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name, engine = pg_table
    config = SqlConfig(url=pg_url, table=f"public.{name}", text_column="body", id_column="id",
                       lang_column="lang", batch_size=250)
    stream = iter_sql(config, tmp_path, tmp_path)
    first = next(stream)
    with engine.connect() as conn:  # another session sees the collector's backend FETCHing from a cursor
        queries = conn.execute(sa.text(
            "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database()"
        )).scalars().all()
    records = [first, *stream]
    assert any(q.startswith("FETCH FORWARD") for q in queries), queries
    assert len(records) == 3000 and [r.meta["sql"]["id"] for r in records] == list(range(1, 3001))
    assert records[1].text == "第2条 中文新闻" and records[1].lang == "zh"
    dropped = {r.meta["sql"]["id"]: r.meta["drop_reason"] for r in records if "drop_reason" in r.meta}
    assert dropped == {1500: "sql_null_text"}
    password = make_url(pg_url).password
    assert records[0].provenance["database"] == make_url(pg_url).render_as_string(hide_password=True)
    assert not password or f":{password}@" not in repr([r.provenance for r in records])
    assert [r.id for r in records] == [r.id for r in iter_sql(config, tmp_path, tmp_path)]


def test_postgres_bytea_and_query(tmp_path: Path, pg_url: str, pg_table, monkeypatch: pytest.MonkeyPatch):
    from sqlalchemy.engine import make_url

    name, _ = pg_table
    url = make_url(pg_url)
    monkeypatch.setenv("LMFORGE_TEST_PG_PASSWORD", url.password or "unused")
    no_password = url._replace(password=None).render_as_string(hide_password=False)
    records = list(iter_sql(SqlConfig(url=no_password, password_env="LMFORGE_TEST_PG_PASSWORD",
                                      query=f"SELECT id, raw FROM {name} WHERE id BETWEEN 70 AND 80 ORDER BY id",
                                      text_column="raw", id_column="id"), tmp_path, tmp_path))
    assert [r.meta["sql"]["id"] for r in records] == list(range(70, 81))
    assert {r.meta["sql"]["id"] for r in records if r.meta.get("drop_reason") == "sql_bad_text"} == {77}
    assert records[0].text == "ok 70"
    with pytest.raises(InputError, match=f"{name}.*no column 'nope'"):
        list(iter_sql(SqlConfig(url=pg_url, table=name, text_column="nope"), tmp_path, tmp_path))
