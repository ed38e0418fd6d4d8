"""Batch-tagging jobs: split a source into chunks, tag each chunk once, keep the state where any machine can read it.

A job's state lives in a *job store*:

- a database job (source a table, destination ``project_tags``) keeps it in
  the destination database (tables ``granttag_jobs`` and
  ``granttag_job_chunks``), in the same transaction as the chunk's tags, so a
  chunk is either wholly written and marked done or not at all, and the state
  survives Redis losing its data;
- a file job run through Celery keeps it in Redis (``granttag:job:<id>:*``),
  inputs and outputs included, because workers on other machines cannot read
  the submitter's files; with ``--local`` it is a SQLite file in the data
  directory.

Where each job lives is noted in Redis (``granttag:jobs``) and in
``<data dir>/jobs.json`` on the submitting machine, so ``job_status`` finds a
job by its id alone. A job's counts are sums over its finished chunks, so a
chunk that runs twice (a redelivered message) is counted once, and
``tagged + failed + skipped`` adds up to the input.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from classifier.errors import InvalidInputError, JobNotFoundError

STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = ("done", "failed", "cancelled")
REDIS_INDEX = "granttag:jobs"
REDIS_LOCATOR = "redis"
JOBS_DB = "jobs.sqlite"

# --- sources -------------------------------------------------------------------------


def normalize_source(source: dict[str, Any]) -> dict[str, Any]:
    """Return the canonical form of a job source; raises InvalidInputError.

    A source is ``{"kind": "database", "url", "table", "columns", "dest"}``
    (``dest``: the database for ``project_tags``, default the source's) or
    ``{"kind": "file", "path", "format", "columns"}``; ``columns`` maps
    id/title/text/keywords/program/field to column names. ``kind`` may be
    left out when ``url`` or ``path`` says it.
    """
    from worker.sql import is_url, normalize_url

    kind = source.get("kind") or ("database" if source.get("url") else "file" if source.get("path") else None)
    if kind == "sql":
        kind = "database"
    cols = {k: v for k, v in (source.get("columns") or {}).items() if v}
    unknown = set(cols) - {"id", "title", "text", "keywords", "program", "field"}
    if unknown:
        raise InvalidInputError(f"unknown column role(s) {', '.join(sorted(unknown))}; use id, title, text, keywords, program, field")
    if kind == "database":
        url = str(source.get("url") or "")
        if not is_url(url):
            raise InvalidInputError(f"not a database URL: {url!r} (e.g. sqlite:///projects.db or postgresql://user@host/db)")
        url = normalize_url(url)
        dest = normalize_url(str(source.get("dest") or url))
        return {"kind": "database", "url": url, "table": str(source.get("table") or "projects"), "columns": cols, "dest": dest}
    if kind == "file":
        path = Path(str(source.get("path") or "")).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"{path}: no such file")
        return {"kind": "file", "path": str(path.resolve()), "format": source.get("format"), "columns": cols}
    raise InvalidInputError(f"unknown source kind {kind!r}; use 'database' (url, table) or 'file' (path)")


def _fingerprint(spec: dict[str, Any]) -> str:
    """Identify "the same command": same source, columns and destination (and, for a file, the same bytes)."""
    key: dict[str, Any] = {k: spec[k] for k in ("kind", "url", "table", "columns", "dest", "path", "format") if k in spec}
    if spec["kind"] == "file":
        stat = Path(spec["path"]).stat()
        key["file"] = [stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _read_file(spec: dict[str, Any]) -> list[Any]:
    from classifier.records import Columns, read_records

    return list(read_records(spec["path"], Columns(**spec["columns"]), spec.get("format")))


def _record_json(rec: Any) -> dict[str, Any]:
    return {"where": rec.where, "line": rec.line, "fields": rec.fields, "error": rec.error, "raw_id": rec.raw_id}


def _record_from(obj: dict[str, Any]) -> Any:
    from classifier.records import RawRecord

    return RawRecord(obj["where"], obj["line"], obj["fields"], obj["error"], obj["raw_id"])


def _dumps(obj: Any) -> str:
    # ensure_ascii keeps surrogate-escaped (undecodable) text intact through JSON; default=str for dates in XLSX cells.
    return json.dumps(obj, default=str)


# --- job stores ---------------------------------------------------------------------


class SqlJobStore:
    """Job state in SQL tables (the destination database, or the local jobs.sqlite)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.locator = "sql:" + url

    def _t(self) -> dict[str, Any]:
        from worker.sql import schema

        return schema(self.url)

    def engine(self) -> Any:
        from worker.sql import engine

        return engine(self.url)

    def ensure(self) -> None:
        """Create the job tables if they are missing."""
        from worker.sql import schema

        schema(self.url, create=True)

    def create(self, job: dict[str, Any], inputs: list[Any] | None) -> None:
        from worker.sql import now

        t = self._t()
        with self.engine().begin() as conn:
            conn.execute(
                t["jobs"].insert(),
                [
                    {
                        "id": job["id"],
                        "fingerprint": job["fingerprint"],
                        "spec": _dumps(job),
                        "state": job["state"],
                        "created": job["created"],
                        "updated": job["created"],
                    }
                ],
            )
            rows = [
                {
                    "job_id": job["id"],
                    "chunk": k,
                    "input": None if inputs is None else _dumps(inputs[k]),
                    "state": "pending",
                    "result": None,
                    "output": None,
                    "updated": now(),
                }
                for k in range(job["chunks"])
            ]
            if rows:
                conn.execute(t["chunks"].insert(), rows)

    def job(self, job_id: str) -> dict[str, Any] | None:
        from sqlalchemy import select

        t = self._t()
        with self.engine().connect() as conn:
            row = conn.execute(select(t["jobs"]).where(t["jobs"].c.id == job_id)).first()
        if row is None:
            return None
        job: dict[str, Any] = json.loads(row.spec)
        job.update(state=row.state, updated=row.updated)
        return job

    def find(self, fingerprint: str) -> str | None:
        """Return the newest unfinished job with this fingerprint."""
        from sqlalchemy import select

        t = self._t()
        with self.engine().connect() as conn:
            rows = conn.execute(
                select(t["jobs"].c.id, t["jobs"].c.created)
                .where(t["jobs"].c.fingerprint == fingerprint)
                .order_by(t["jobs"].c.created.desc())
            ).all()
        for row in rows:
            status = job_status_from(self, row.id)
            if status["state"] not in ("done", "cancelled"):
                return str(row.id)
        return None

    def set_state(self, job_id: str, state: str) -> None:
        from sqlalchemy import update

        from worker.sql import now

        t = self._t()
        with self.engine().begin() as conn:
            conn.execute(update(t["jobs"]).where(t["jobs"].c.id == job_id).values(state=state, updated=now()))

    def chunk_input(self, job_id: str, k: int) -> Any:
        from sqlalchemy import select

        t = self._t()
        with self.engine().connect() as conn:
            value = conn.execute(select(t["chunks"].c.input).where(t["chunks"].c.job_id == job_id, t["chunks"].c.chunk == k)).scalar()
        return None if value is None else json.loads(value)

    def chunk_results(self, job_id: str) -> dict[int, dict[str, Any]]:
        """Return {chunk: result} of the chunks that finished or failed."""
        from sqlalchemy import select

        t = self._t()
        c = t["chunks"].c
        with self.engine().connect() as conn:
            rows = conn.execute(select(c.chunk, c.state, c.result).where(c.job_id == job_id, c.state != "pending")).all()
        return {int(r.chunk): {**json.loads(r.result or "{}"), "state": r.state} for r in rows}

    def chunk_result(self, conn: Any, job_id: str, k: int) -> dict[str, Any] | None:
        from sqlalchemy import select

        c = self._t()["chunks"].c
        row = conn.execute(select(c.state, c.result).where(c.job_id == job_id, c.chunk == k)).first()
        if row is None or row.state != "done":
            return None
        return {**json.loads(row.result or "{}"), "state": "done"}

    def commit(
        self, job_id: str, k: int, result: dict[str, Any], outputs: list[dict[str, Any]] | None, write: Callable[[Any], None] | None
    ) -> dict[str, Any]:
        """Write a chunk's tags (``write``) and mark it done in one transaction, unless it is already done."""
        from sqlalchemy import update

        from worker.sql import now

        t = self._t()
        with self.engine().begin() as conn:
            if self.url.startswith("sqlite"):
                # Take the write lock first so two processes cannot both find the chunk pending.
                from sqlalchemy import text

                conn.execute(text("UPDATE granttag_job_chunks SET state = state WHERE job_id = :j AND chunk = :k"), {"j": job_id, "k": k})
            else:
                from sqlalchemy import select

                c = t["chunks"].c
                conn.execute(select(c.state).where(c.job_id == job_id, c.chunk == k).with_for_update())
            done = self.chunk_result(conn, job_id, k)
            if done is not None:
                return done
            if write is not None:
                write(conn)
            values = {"state": "done", "result": _dumps(result), "updated": now()}
            if outputs is not None:
                values["output"] = _dumps(outputs)
            conn.execute(update(t["chunks"]).where(t["chunks"].c.job_id == job_id, t["chunks"].c.chunk == k).values(**values))
        return {**result, "state": "done"}

    def fail_chunk(self, job_id: str, k: int, message: str) -> None:
        from sqlalchemy import update

        from worker.sql import now

        c = self._t()["chunks"].c
        with self.engine().begin() as conn:
            conn.execute(
                update(self._t()["chunks"])
                .where(c.job_id == job_id, c.chunk == k, c.state != "done")
                .values(state="failed", result=_dumps({"error": message}), updated=now())
            )

    def reset_failed(self, job_id: str) -> None:
        from sqlalchemy import update

        c = self._t()["chunks"].c
        with self.engine().begin() as conn:
            conn.execute(update(self._t()["chunks"]).where(c.job_id == job_id, c.state == "failed").values(state="pending", result=None))

    def outputs(self, job_id: str, k: int) -> list[dict[str, Any]] | None:
        from sqlalchemy import select

        c = self._t()["chunks"].c
        with self.engine().connect() as conn:
            value = conn.execute(select(c.output).where(c.job_id == job_id, c.chunk == k)).scalar()
        return None if value is None else json.loads(value)

    def job_ids(self) -> list[str]:
        from sqlalchemy import select

        t = self._t()
        with self.engine().connect() as conn:
            return [str(r[0]) for r in conn.execute(select(t["jobs"].c.id))]


class RedisJobStore:
    """Job state in Redis, for file jobs run by Celery workers (which may be on other machines)."""

    locator = REDIS_LOCATOR

    def __init__(self, settings: Any) -> None:
        from worker.registry import redis_client

        self.settings = settings
        self.r = redis_client(settings)

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return f"granttag:job:{job_id}" + (f":{part}" if part else "")

    def _expire(self, job_id: str, pipe: Any) -> None:
        ttl = int(self.settings.job_ttl_days) * 86400
        for part in ("", "in", "chunks", "out"):
            pipe.expire(self.key(job_id, part), ttl)

    def create(self, job: dict[str, Any], inputs: list[Any] | None) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self.key(job["id"]), mapping={"spec": _dumps(job), "state": job["state"], "updated": job["created"]})
        if inputs:
            pipe.hset(self.key(job["id"], "in"), mapping={str(k): _dumps(v) for k, v in enumerate(inputs)})
        pipe.set(f"granttag:jobfp:{job['fingerprint']}", job["id"])
        self._expire(job["id"], pipe)
        pipe.execute()

    def job(self, job_id: str) -> dict[str, Any] | None:
        spec, state, updated = self.r.hmget(self.key(job_id), "spec", "state", "updated")
        if spec is None:
            return None
        job: dict[str, Any] = json.loads(spec)
        job.update(state=state.decode(), updated=updated.decode() if updated else job["created"])
        return job

    def find(self, fingerprint: str) -> str | None:
        raw = self.r.get(f"granttag:jobfp:{fingerprint}")
        if raw is None:
            return None
        job_id = raw.decode()
        if self.job(job_id) is None or job_status_from(self, job_id)["state"] in ("done", "cancelled"):
            return None
        return job_id

    def set_state(self, job_id: str, state: str) -> None:
        from worker.sql import now

        self.r.hset(self.key(job_id), mapping={"state": state, "updated": now()})

    def chunk_input(self, job_id: str, k: int) -> Any:
        raw = self.r.hget(self.key(job_id, "in"), str(k))
        return None if raw is None else json.loads(raw)

    def chunk_results(self, job_id: str) -> dict[int, dict[str, Any]]:
        return {int(k): json.loads(v) for k, v in self.r.hgetall(self.key(job_id, "chunks")).items()}

    def commit(
        self, job_id: str, k: int, result: dict[str, Any], outputs: list[dict[str, Any]] | None, write: Callable[[Any], None] | None
    ) -> dict[str, Any]:
        from worker.sql import now

        done = {**result, "state": "done"}
        pipe = self.r.pipeline()  # MULTI/EXEC: the outputs and the chunk's result land together
        if outputs is not None:
            pipe.hset(self.key(job_id, "out"), str(k), _dumps(outputs))
        pipe.hset(self.key(job_id, "chunks"), str(k), _dumps(done))
        pipe.hset(self.key(job_id), "updated", now())
        self._expire(job_id, pipe)
        pipe.execute()
        return done

    def fail_chunk(self, job_id: str, k: int, message: str) -> None:
        results = self.chunk_results(job_id)
        if results.get(k, {}).get("state") != "done":
            self.r.hset(self.key(job_id, "chunks"), str(k), _dumps({"state": "failed", "error": message}))

    def reset_failed(self, job_id: str) -> None:
        for k, res in self.chunk_results(job_id).items():
            if res.get("state") == "failed":
                self.r.hdel(self.key(job_id, "chunks"), str(k))

    def outputs(self, job_id: str, k: int) -> list[dict[str, Any]] | None:
        raw = self.r.hget(self.key(job_id, "out"), str(k))
        return None if raw is None else json.loads(raw)


def _local_store(settings: Any) -> SqlJobStore:
    from granttag.settings import data_dir

    return SqlJobStore("sqlite:///" + str(data_dir(settings) / JOBS_DB))


def open_store(settings: Any, locator: str) -> Any:
    """Return the job store a locator names ("redis" or "sql:<url>")."""
    if locator == REDIS_LOCATOR:
        return RedisJobStore(settings)
    if locator.startswith("sql:"):
        return SqlJobStore(locator[4:])
    raise JobNotFoundError(f"unknown job store {locator!r}")


# --- where jobs are ----------------------------------------------------------------


def _index_path(settings: Any) -> Path:
    from granttag.settings import data_dir

    return data_dir(settings) / "jobs.json"


def _remember(settings: Any, job_id: str, locator: str, *, redis: bool) -> None:
    """Note where a job lives: in the local index, and in Redis for workers and other machines."""
    path = _index_path(settings)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if index.get(job_id) != locator:
            index[job_id] = locator
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
            os.replace(tmp, path)
    if redis:
        from worker.registry import redis_client

        redis_client(settings).hset(REDIS_INDEX, job_id, locator)


def _locate(settings: Any, job_id: str) -> str:
    path = _index_path(settings)
    if path.exists():
        locator = json.loads(path.read_text(encoding="utf-8")).get(job_id)
        if locator:
            return str(locator)
    try:
        from worker.registry import redis_client

        raw = redis_client(settings).hget(REDIS_INDEX, job_id)
    except Exception:  # noqa: BLE001 - Redis down: the job is simply not found there
        raw = None
    if raw:
        return str(raw.decode())
    raise JobNotFoundError(f"no job {job_id!r} (see `granttag jobs list`)")


def _open(settings: Any, job_id: str) -> tuple[Any, dict[str, Any]]:
    store = open_store(settings, _locate(settings, job_id))
    job = store.job(job_id)
    if job is None:
        where = (
            "Redis lost it (restarted without persistence?); run the same `granttag tag` command again"
            if store.locator == REDIS_LOCATOR
            else "its database no longer holds it"
        )
        raise JobNotFoundError(f"job {job_id}: {where}")
    return store, job


# --- status --------------------------------------------------------------------------


def job_status_from(store: Any, job_id: str) -> dict[str, Any]:
    """Return a job's status from its store (see ``job_status``)."""
    job = store.job(job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id!r}")
    results = store.chunk_results(job_id)
    done = {k: r for k, r in results.items() if r.get("state") == "done"}
    failed_chunks = {k: r for k, r in results.items() if r.get("state") == "failed"}
    counts = {name: sum(int(r.get(name, 0)) for r in done.values()) for name in ("tagged", "failed", "skipped")}
    counts["failed"] += int(job.get("pre_failed", 0))
    versions = sorted({r["model_version"] for r in done.values() if r.get("model_version")})
    if job["state"] == "cancelled":
        state = "cancelled"
    elif len(done) == job["chunks"]:
        state = "done"
    elif failed_chunks and len(done) + len(failed_chunks) == job["chunks"]:
        state = "failed"
    elif done or failed_chunks or job["state"] == "running":
        state = "running"
    else:
        state = "queued"
    updated = max([job.get("updated") or job["created"]] + [str(r.get("finished", "")) for r in results.values()])
    status = {
        "id": job_id,
        "state": state,
        "kind": job["kind"],
        "total": job["total"],
        **counts,
        "model_versions": versions,
        "created": job["created"],
        "updated": updated,
        "chunks": job["chunks"],
        "chunks_done": len(done),
        "chunks_failed": len(failed_chunks),
        "local": job.get("local", False),
        "retag": job.get("retag", False),
        "source": _public_source(job["source"]),
    }
    if failed_chunks:
        status["errors"] = sorted({str(r.get("error")) for r in failed_chunks.values()})[:10]
    if job.get("pre_errors"):
        status["source_errors"] = job["pre_errors"]
    return status


def _public_source(source: dict[str, Any]) -> dict[str, Any]:
    from worker.sql import safe_url

    out = dict(source)
    for key in ("url", "dest"):
        if key in out:
            out[key] = safe_url(out[key])
    return out


def job_status(settings: Any, job_id: str) -> dict[str, Any]:
    """Return a job's state and counts.

    Keys: id, state (queued, running, done, failed, cancelled), total, tagged,
    failed, skipped (the last three add up to total when the job is done),
    model_versions, created, updated, chunks, chunks_done, chunks_failed,
    kind, source. Raises JobNotFoundError.
    """
    store, _ = _open(settings, job_id)
    return job_status_from(store, job_id)


def list_jobs(settings: Any) -> list[dict[str, Any]]:
    """Return the status of every job this machine or Redis knows of, newest first.

    A job whose store cannot be read right now is listed with state "unknown".
    """
    index: dict[str, str] = {}
    path = _index_path(settings)
    if path.exists():
        index.update(json.loads(path.read_text(encoding="utf-8")))
    try:
        from worker.registry import redis_client

        for k, v in redis_client(settings).hgetall(REDIS_INDEX).items():
            index.setdefault(k.decode(), v.decode())
    except Exception:  # noqa: BLE001 - without Redis, list what this machine knows
        pass
    out = []
    for job_id, locator in index.items():
        try:
            out.append(job_status_from(open_store(settings, locator), job_id))
        except JobNotFoundError:
            continue
        except Exception as exc:  # noqa: BLE001 - one unreachable store must not hide the others
            out.append({"id": job_id, "state": "unknown", "error": str(exc).splitlines()[0], "created": ""})
    out.sort(key=lambda s: str(s.get("created") or ""), reverse=True)
    return out


def job_results(settings: Any, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
    """Return the outcomes of records ``offset`` .. ``offset + limit`` of a job, in input order.

    A file job's outcome is the full prediction (labels, scores, evidence) or
    an error; a database job's comes from ``project_tags`` and
    ``project_tag_errors`` (labels and scores, or the reason). Records of
    chunks not finished yet are left out.
    """
    store, job = _open(settings, job_id)
    out: list[dict[str, Any]] = []
    if limit <= 0:
        return out
    size = job["chunk_size"]
    first = offset // size
    for k in range(first, job["chunks"]):
        if len(out) >= limit:
            break
        start = offset - k * size if k == first else 0
        if job["kind"] == "file":
            outputs = store.outputs(job_id, k) or []
        else:
            outputs = _db_outcomes(job, store.chunk_input(job_id, k) or [])
        out.extend(outputs[start : start + limit - len(out)])
    return out


def _db_outcomes(job: dict[str, Any], ids: list[Any]) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from worker.sql import engine, schema

    dest = job["source"]["dest"]
    t = schema(dest)
    keys = [str(i) for i in ids]
    tags: dict[str, list[Any]] = {}
    errors: dict[str, Any] = {}
    with engine(dest).connect() as conn:
        for row in conn.execute(select(t["tags"]).where(t["tags"].c.project_id.in_(keys))):
            tags.setdefault(row.project_id, []).append(row)
        for row in conn.execute(select(t["errors"]).where(t["errors"].c.project_id.in_(keys))):
            errors[row.project_id] = row
    out = []
    for key in keys:
        if key in tags:
            rows = sorted(tags[key], key=lambda r: -r.score)
            out.append(
                {
                    "id": key,
                    "status": "ok",
                    "domains": [{"id": r.label_id, "score": r.score} for r in rows if r.kind == "domain"],
                    "pillars": [{"id": r.label_id, "score": r.score} for r in rows if r.kind == "pillar"],
                    "model_version": rows[0].model_version,
                }
            )
        elif key in errors:
            out.append({"id": key, "status": "error", "error": errors[key].reason, "model_version": errors[key].model_version})
    return out


def cancel_job(settings: Any, job_id: str) -> bool:
    """Cancel a job: chunks not started yet are not tagged. Returns False if it had already finished."""
    store, _ = _open(settings, job_id)
    if job_status_from(store, job_id)["state"] in TERMINAL:
        return False
    store.set_state(job_id, "cancelled")
    return True


# --- running -------------------------------------------------------------------------


def start_job(
    settings: Any,
    source: dict[str, Any],
    *,
    retag: bool = False,
    local: bool = False,
    jobs: int = 1,
    chunk_size: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Start tagging ``source`` (see ``normalize_source``); return the job id.

    An unfinished job for the same source and destination is resumed instead
    of starting a new one. Without ``local`` the chunks are queued for the
    Celery workers and the call returns at once; with ``local`` they are
    tagged in this process (``jobs`` processes) and the call returns when the
    job is finished, calling ``progress`` with each chunk's result. Records
    already tagged by the same model version are skipped unless ``retag``.
    Raises InvalidInputError for a bad source, ServiceUnavailableError when
    Redis does not answer (without ``local``).
    """
    spec = normalize_source(source)
    if not local:
        from worker.registry import check_redis

        check_redis(settings)
    store: Any
    if spec["kind"] == "database":
        store = SqlJobStore(spec["dest"])
    elif local:
        store = _local_store(settings)
    else:
        store = RedisJobStore(settings)
    if isinstance(store, SqlJobStore):
        store.ensure()
    fingerprint = _fingerprint(spec)
    job_id = store.find(fingerprint)
    if job_id is None:
        job_id = _create(settings, store, spec, fingerprint, retag=retag, local=local, chunk_size=chunk_size or settings.chunk_size)
    _remember(settings, job_id, store.locator, redis=not local)
    return resume_job(settings, job_id, local=local, jobs=jobs, progress=progress)


def _create(settings: Any, store: Any, spec: dict[str, Any], fingerprint: str, *, retag: bool, local: bool, chunk_size: int) -> str:
    from worker.sql import now

    job_id = uuid.uuid4().hex[:16]
    job: dict[str, Any] = {
        "id": job_id,
        "kind": spec["kind"],
        "source": spec,
        "fingerprint": fingerprint,
        "retag": retag,
        "local": local,
        "chunk_size": chunk_size,
        "state": "queued",
        "created": now(),
        "pre_failed": 0,
    }
    inputs: list[Any] | None
    if spec["kind"] == "database":
        from worker.sql import SqlSource, schema

        source = SqlSource(spec["url"], spec["table"], spec["columns"])
        ids, rows, missing = source.ids()
        schema(spec["dest"], create=True)
        inputs = [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]
        job["total"] = rows
        job["pre_failed"] = missing
        if missing:
            job["pre_errors"] = [
                f"{spec['table']}: {missing} row(s) have no id (column {source._reflect()[1]['id']!r}); they cannot be tagged"
            ]
    else:
        records = _read_file(spec)
        inputs = [[_record_json(r) for r in records[i : i + chunk_size]] for i in range(0, len(records), chunk_size)]
        job["total"] = len(records)
        if local:
            inputs = None  # the local runner reads the file again; nothing to stage
    job["chunks"] = len(range(0, job["total"], chunk_size)) if spec["kind"] == "file" else len(inputs or [])
    store.create(job, inputs)
    return job_id


def resume_job(
    settings: Any,
    job_id: str,
    *,
    local: bool = False,
    jobs: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Continue a job: queue (or, ``local``, tag here) every chunk not done yet; return its id.

    Failed chunks are tried again; a cancelled job is taken up again.
    Raises JobNotFoundError, ServiceUnavailableError.
    """
    store, job = _open(settings, job_id)
    if job["kind"] == "file" and local != (store.locator != REDIS_LOCATOR):
        raise InvalidInputError(
            f"job {job_id} tags a file {'through Celery' if store.locator == REDIS_LOCATOR else 'locally'}; resume it "
            f"{'without' if store.locator == REDIS_LOCATOR else 'with'} --local"
        )
    store.reset_failed(job_id)
    if job["state"] == "cancelled":
        store.set_state(job_id, "queued")
    pending = [k for k in range(job["chunks"]) if store.chunk_results(job_id).get(k, {}).get("state") != "done"]
    if local:
        _run_local(settings, store, job, pending, jobs, progress)
        return job_id
    from worker.app import TAG_QUEUE, create_celery
    from worker.registry import check_redis, publish_active_model, published_version

    client = check_redis(settings)
    if published_version(settings, client) is None:
        # Nothing published yet: the workers take this machine's active model (built if there is none).
        from classifier.store import ensure_default_model
        from worker.registry import _root

        ensure_default_model(root=_root(settings))
        publish_active_model(settings, client)
    client.hset(REDIS_INDEX, job_id, store.locator)
    app = create_celery(settings)
    with app.producer_or_acquire() as producer:
        for k in pending:
            app.send_task("granttag.tag_chunk", args=[job_id, k, store.locator], queue=TAG_QUEUE, producer=producer)
    return job_id


def follow_job(
    settings: Any, job_id: str, on_status: Callable[[dict[str, Any]], None], *, poll: float = 0.5, timeout: float | None = None
) -> dict[str, Any]:
    """Wait for a Celery job to finish, calling ``on_status`` with each status; return the last one.

    A database job whose Redis lost its queue (Redis restarted without
    persistence) is queued again, so it completes once Redis is back; while
    Redis does not answer, this waits. Raises TimeoutError after ``timeout``
    seconds (default: wait as long as it takes).
    """
    import redis

    from worker.registry import redis_client

    store, _ = _open(settings, job_id)
    client = redis_client(settings)
    last_check = 0.0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = job_status_from(store, job_id)
        on_status(status)
        if status["state"] in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status['state']} after {timeout} s")
        if time.monotonic() - last_check > 3:
            last_check = time.monotonic()
            try:
                if not client.hexists(REDIS_INDEX, job_id):
                    if store.locator == REDIS_LOCATOR:
                        raise JobNotFoundError(
                            f"job {job_id}: Redis lost it (restarted without persistence?); run the same `granttag tag` command again"
                        )
                    resume_job(settings, job_id)
                    on_status({**status, "event": "requeued"})
            except (redis.RedisError, OSError):
                on_status({**status, "event": "redis-down"})
        time.sleep(poll)


# --- tagging one chunk ------------------------------------------------------------


def tag_chunk(settings: Any, locator: str, job_id: str, k: int, *, local: bool = False, records: list[Any] | None = None) -> dict[str, Any]:
    """Tag chunk ``k`` of a job with the active model and commit it; safe to run twice.

    Returns the chunk's result: n, tagged, failed, skipped, model_version (or
    ``{"state": "cancelled"}``). Bad records become error rows; only faults
    of the services (Redis, the database) raise.
    """
    from classifier.batch import classify_records
    from worker.registry import current_model

    started = time.monotonic()
    started_at = time.time()
    store = open_store(settings, locator)
    job = store.job(job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id!r} in {locator.split('@')[-1]}")
    if job["state"] == "cancelled":
        return {"state": "cancelled"}
    if store.chunk_results(job_id).get(k, {}).get("state") == "done":
        return store.chunk_results(job_id)[k]
    model = current_model(settings, local=local)
    version = model.version
    spec = job["source"]
    if job["kind"] == "database":
        from worker.sql import SqlSource, engine, tagged_ids, write_outcomes

        ids = store.chunk_input(job_id, k) or []
        rows = SqlSource(spec["url"], spec["table"], spec["columns"]).fetch(ids)
        skip: set[str] = set()
        if not job.get("retag"):
            with engine(spec["dest"]).connect() as conn:
                skip = tagged_ids(conn, spec["dest"], [str(i) for i in ids], version)
        todo = [r for r in rows if r.raw_id not in skip or r.error]
        outcomes = [o.as_dict() for o in classify_records(model, todo, explain=False)]
        result = _counts(outcomes, len(rows) - len(todo), version, started, started_at)

        def write(conn: Any) -> None:
            write_outcomes(conn, spec["dest"], outcomes, version, job_id)

        return store.commit(job_id, k, result, None, write)  # type: ignore[no-any-return]
    if records is None:
        records = [_record_from(obj) for obj in store.chunk_input(job_id, k) or []]
    outcomes = [o.as_dict() for o in classify_records(model, records)]
    return store.commit(job_id, k, _counts(outcomes, 0, version, started, started_at), outcomes, None)  # type: ignore[no-any-return]


def _counts(outcomes: list[dict[str, Any]], skipped: int, version: str, started: float, started_at: float) -> dict[str, Any]:
    from worker.sql import now

    ok = sum(1 for o in outcomes if o.get("status") == "ok")
    return {
        "n": len(outcomes) + skipped,
        "tagged": ok,
        "failed": len(outcomes) - ok,
        "skipped": skipped,
        "model_version": version,
        "seconds": round(time.monotonic() - started, 3),
        "started_at": started_at,
        "pid": os.getpid(),
        "finished": now(),
    }


def fail_chunk(settings: Any, locator: str, job_id: str, k: int, message: str) -> None:
    """Mark a chunk failed (its task gave up); ``granttag tag --resume`` tries it again."""
    open_store(settings, locator).fail_chunk(job_id, k, message)


_LOCAL: dict[str, Any] = {}


def _local_chunk(k: int) -> dict[str, Any]:
    records = _LOCAL.get("records")
    size = _LOCAL["job"]["chunk_size"]
    part = None if records is None else records[k * size : (k + 1) * size]
    return tag_chunk(_LOCAL["settings"], _LOCAL["locator"], _LOCAL["job"]["id"], k, local=True, records=part)


def _run_local(
    settings: Any, store: Any, job: dict[str, Any], pending: list[int], jobs: int, progress: Callable[[dict[str, Any]], None] | None
) -> None:
    """Tag the pending chunks in this process, or in ``jobs`` forked processes sharing the loaded model."""
    import multiprocessing as mp

    from worker.registry import current_model

    _LOCAL.update(settings=settings, locator=store.locator, job=job, records=_read_file(job["source"]) if job["kind"] == "file" else None)
    current_model(settings, local=True)  # loaded once here, shared with forked processes
    if progress:
        progress({**job_status_from(store, job["id"]), "event": "start"})
    jobs = max(1, min(jobs, len(pending) or 1))
    try:
        if jobs == 1:
            for k in pending:
                result = _local_chunk(k)
                if progress:
                    progress(result)
                if result.get("state") == "cancelled":
                    return
            return
        from worker.sql import dispose_engines

        dispose_engines()  # no connection may cross the fork
        with mp.get_context("fork").Pool(jobs) as pool:
            for result in pool.imap_unordered(_local_chunk, pending):
                if progress:
                    progress(result)
    finally:
        _LOCAL.clear()
