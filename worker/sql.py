"""SQL sources and destinations through SQLAlchemy: reading projects, writing ``project_tags`` with an idempotent upsert.

SQLite is the default (a file path or ``sqlite:///projects.db``); PostgreSQL
is given by URL (``postgresql://user@host/db``, driven by psycopg 3). The
tags of a project are its rows in ``project_tags`` (project id, label id,
kind, score, model version, tagged-at), primary key (project_id, label_id);
records that could not be tagged are in ``project_tag_errors`` with the
reason. Both tables are created if missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifier.errors import InvalidInputError
from classifier.records import Columns, RawRecord

TAGS_TABLE = "project_tags"
ERRORS_TABLE = "project_tag_errors"
JOBS_TABLE = "granttag_jobs"
CHUNKS_TABLE = "granttag_job_chunks"

_ENGINES: dict[tuple[int, str], Any] = {}
_TABLES: dict[tuple[int, str], Any] = {}


def is_url(text: str) -> bool:
    """Return True when ``text`` looks like a database URL rather than a file path."""
    return "://" in text


def normalize_url(url: str) -> str:
    """Return ``url`` with a relative SQLite path made absolute and PostgreSQL bound to psycopg 3.

    Workers resolve the URL in their own directory, so a relative path would
    name another file there.
    """
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        path = url[len("sqlite:///") :]
        return "sqlite:///" + str(Path(path).resolve())
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def safe_url(url: str) -> str:
    """Return ``url`` with any password hidden, for messages and listings."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


def engine(url: str) -> Any:
    """Return this process's engine for ``url`` (a forked process makes its own)."""
    key = (os.getpid(), url)
    if key not in _ENGINES:
        from sqlalchemy import create_engine, event
        from sqlalchemy.exc import ArgumentError

        try:
            if url.startswith("sqlite"):
                from sqlalchemy.pool import NullPool

                # No pooled connections: a long-lived worker must see a database file that was replaced meanwhile.
                eng = create_engine(url, connect_args={"timeout": 120}, poolclass=NullPool)

                @event.listens_for(eng, "connect")
                def _connect(dbapi_conn: Any, _: Any) -> None:
                    # Undecodable text becomes surrogate escapes, so that record (not the chunk) fails.
                    dbapi_conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")

            else:
                eng = create_engine(url, pool_pre_ping=True)
        except (ArgumentError, ImportError) as exc:
            raise InvalidInputError(f"cannot use database URL {safe_url(url)}: {exc}") from exc
        _ENGINES[key] = eng
    return _ENGINES[key]


def dispose_engines() -> None:
    """Close this process's engines (tests, and a worker shutting down)."""
    for (pid, url), eng in list(_ENGINES.items()):
        if pid == os.getpid():
            eng.dispose()
            del _ENGINES[(pid, url)]
    for key in [k for k in _TABLES if k[0] == os.getpid()]:
        del _TABLES[key]


def schema(url: str, *, create: bool = False) -> dict[str, Any]:
    """Return the granttag tables of the database at ``url``; ``create`` creates those that are missing.

    Tables are created when a job is created or started, not on every use,
    so a worker never issues DDL in the middle of a chunk.
    """
    key = (os.getpid(), url)
    if key not in _TABLES:
        from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

        md = MetaData()
        tables = {
            "tags": Table(
                TAGS_TABLE,
                md,
                Column("project_id", String(255), primary_key=True),
                Column("label_id", String(64), primary_key=True),
                Column("kind", String(8), nullable=False),
                Column("score", Float, nullable=False),
                Column("model_version", String(128), nullable=False),
                Column("tagged_at", String(32), nullable=False),
            ),
            "errors": Table(
                ERRORS_TABLE,
                md,
                Column("project_id", String(255), primary_key=True),
                Column("reason", Text, nullable=False),
                Column("model_version", String(128), nullable=False),
                Column("job_id", String(40), nullable=False),
                Column("failed_at", String(32), nullable=False),
            ),
            "jobs": Table(
                JOBS_TABLE,
                md,
                Column("id", String(40), primary_key=True),
                Column("fingerprint", String(64), nullable=False, index=True),
                Column("spec", Text, nullable=False),
                Column("state", String(16), nullable=False),
                Column("created", String(32), nullable=False),
                Column("updated", String(32), nullable=False),
            ),
            "chunks": Table(
                CHUNKS_TABLE,
                md,
                Column("job_id", String(40), primary_key=True),
                Column("chunk", Integer, primary_key=True),
                Column("input", Text, nullable=True),
                Column("state", String(16), nullable=False),
                Column("result", Text, nullable=True),
                Column("output", Text, nullable=True),
                Column("updated", String(32), nullable=False),
            ),
        }
        _TABLES[key] = tables
    if create:
        next(iter(_TABLES[key].values())).metadata.create_all(engine(url))
    return _TABLES[key]


def now() -> str:
    """Return the current UTC time as ISO 8601 text (stored as text so SQLite and PostgreSQL agree)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def upsert(conn: Any, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """Insert ``rows`` into ``table``, updating the row with the same ``keys`` where there is one."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt: Any = sqlite_insert(table)
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        )
        conn.execute(stmt, rows)
        return
    from sqlalchemy import and_, delete

    for row in rows:  # other databases: delete then insert, inside the caller's transaction
        conn.execute(delete(table).where(and_(*[table.c[k] == row[k] for k in keys])))
    conn.execute(table.insert(), rows)


class SqlSource:
    """A table of projects: lists its ids and reads records by id, with the columns mapped to document fields."""

    def __init__(self, url: str, table: str, columns: dict[str, Any]) -> None:
        self.url = url
        self.table_name = table
        self.columns = columns
        self._table: Any = None
        self._mapping: dict[str, str] | None = None

    def _reflect(self) -> tuple[Any, dict[str, str]]:
        if self._table is None:
            from sqlalchemy import MetaData, Table
            from sqlalchemy.exc import NoSuchTableError

            schema_name, _, name = self.table_name.rpartition(".")
            try:
                self._table = Table(name, MetaData(), autoload_with=engine(self.url), schema=schema_name or None)
            except NoSuchTableError:
                raise InvalidInputError(f"{safe_url(self.url)}: no table {self.table_name!r} (--table)") from None
            header = [c.name for c in self._table.columns]
            self._mapping = Columns(**self.columns).resolve(header, f"{safe_url(self.url)} table {self.table_name}")
        assert self._mapping is not None
        return self._table, self._mapping

    def ids(self) -> tuple[list[Any], int, int]:
        """Return (distinct ids in the database's order, rows in the table, rows without an id)."""
        from sqlalchemy import select

        table, mapping = self._reflect()
        col = table.c[mapping["id"]]
        seen: set[Any] = set()
        ids: list[Any] = []
        rows = missing = 0
        with engine(self.url).connect() as conn:
            for (value,) in conn.execute(select(col).order_by(col)):
                rows += 1
                if value is None or str(value).strip() == "":
                    missing += 1
                    continue
                value = value if isinstance(value, (int, str)) else str(value)
                if value not in seen:
                    seen.add(value)
                    ids.append(value)
        return ids, rows, missing

    def fetch(self, ids: list[Any]) -> list[RawRecord]:
        """Return one RawRecord per row holding one of ``ids``, in the order of ``ids``.

        An id whose row is gone becomes an error record; a second row with the
        same id is an error record too (the tags of an id would be ambiguous).
        """
        from sqlalchemy import select

        table, mapping = self._reflect()
        cols = [table.c[c].label(name) for name, c in mapping.items()]
        by_id: dict[str, list[dict[str, Any]]] = {}
        with engine(self.url).connect() as conn:
            for row in conn.execute(select(*cols).where(table.c[mapping["id"]].in_(ids))):
                fields = dict(row._mapping)
                if "text" in fields:
                    fields["abstract"] = fields.pop("text")
                by_id.setdefault(str(fields["id"]), []).append(fields)
        out: list[RawRecord] = []
        for value in ids:
            where = f"{self.table_name} id {value}"
            rows = by_id.get(str(value))
            if not rows:
                out.append(RawRecord(where, 0, None, f"{where}: the record is no longer in the source", str(value)))
                continue
            out.append(RawRecord(where, 0, rows[0], raw_id=str(value)))
            for _ in rows[1:]:
                out.append(RawRecord(where, 0, None, f"{where}: another row has the same id; only the first is tagged", str(value)))
        return out


def tagged_ids(conn: Any, url: str, ids: Iterable[str], version: str) -> set[str]:
    """Return which of ``ids`` already have tags from model ``version`` in the database at ``url``."""
    from sqlalchemy import select

    tags = schema(url)["tags"]
    ids = list(ids)
    if not ids:
        return set()
    query = select(tags.c.project_id).where(tags.c.project_id.in_(ids), tags.c.model_version == version).distinct()
    return {r[0] for r in conn.execute(query)}


def write_outcomes(conn: Any, url: str, outcomes: list[dict[str, Any]], version: str, job_id: str) -> None:
    """Write the tags and error rows of one chunk in the caller's transaction; safe to repeat.

    A project's tags from another model version are replaced; a project that
    is tagged now loses its old error row.
    """
    from sqlalchemy import delete

    tables = schema(url)
    tags, errors = tables["tags"], tables["errors"]
    stamp = now()
    ok = [o for o in outcomes if o.get("status") == "ok"]
    bad = [o for o in outcomes if o.get("status") != "ok" and o.get("id")]
    ok_ids = [str(o["id"]) for o in ok]
    if ok_ids:
        conn.execute(delete(tags).where(tags.c.project_id.in_(ok_ids), tags.c.model_version != version))
        conn.execute(delete(errors).where(errors.c.project_id.in_(ok_ids)))
    rows = []
    for o in ok:
        for kind in ("domains", "pillars"):
            for label in o[kind]:
                rows.append(
                    {
                        "project_id": str(o["id"]),
                        "label_id": label["id"],
                        "kind": kind[:-1],
                        "score": float(label["score"]),
                        "model_version": version,
                        "tagged_at": stamp,
                    }
                )
    upsert(conn, tags, rows, ["project_id", "label_id"])
    # A duplicate row's error must not hide the tags of the id's first row.
    first_ok = set(ok_ids)
    err_rows = [
        {"project_id": str(o["id"]), "reason": str(o.get("error")), "model_version": version, "job_id": job_id, "failed_at": stamp}
        for o in bad
        if str(o["id"]) not in first_ok
    ]
    seen: set[str] = set()
    unique = [r for r in err_rows if not (r["project_id"] in seen or seen.add(r["project_id"]))]  # type: ignore[func-returns-value]
    upsert(conn, errors, unique, ["project_id"])
