"""Batch tagging through real `celery worker` processes over the Redis on 127.0.0.1 (database 11).

Faults are caused for real: a worker killed with SIGKILL, Redis shut down and
started again, a model version activated mid-job, bad records, PostgreSQL as
source and destination.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import copy_active_model, redis_answers, redis_client
from tests.test_tag_data import make_projects_db

REDIS_DB = 11
BROKER = f"redis://127.0.0.1:6379/{REDIS_DB}"
#: The command the project's CI starts Redis with; used to start it again after a test stops it.
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "", "--appendonly", "no",
    "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip
PG_URL = "postgresql://root@127.0.0.1:5432/test"
#: Upper bound for a job in these tests, so a broken worker fails the test instead of hanging it (not a speed check).
JOB_TIMEOUT = 400


def _redis() -> Any:
    return redis_client(BROKER)


def _redis_answers() -> bool:
    return redis_answers(BROKER)


def _redis_up(seconds: float = 15) -> bool:
    """Whether Redis answers, waiting a little: another test run on the machine may be restarting it."""
    for _ in range(int(seconds * 10)):
        if _redis_answers():
            return True
        time.sleep(0.1)
    return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="needs Redis on 127.0.0.1:6379 (started by .ci/run)")


@pytest.fixture(scope="module")
def wenv(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for the test process and its workers: own model store (a copy), data dir and Redis database."""
    root = tmp_path_factory.mktemp("worker-models")
    copy_active_model(model_root, root)
    env = {
        "GRANTTAG_BROKER_URL": BROKER,
        "GRANTTAG_RESULT_BACKEND": BROKER,
        "GRANTTAG_MODELS_DIR": str(root),
        "GRANTTAG_DATA_DIR": str(tmp_path_factory.mktemp("worker-data")),
        # A killed worker's chunk comes back after this many seconds.
        "GRANTTAG_VISIBILITY_TIMEOUT": "12",
    }
    _redis().flushdb()
    yield env
    if _redis_answers():
        _redis().flushdb()


@pytest.fixture
def settings(wenv: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from granttag.settings import get_settings
    from worker.registry import forget_model

    for k, v in wenv.items():
        monkeypatch.setenv(k, v)
    forget_model()
    yield get_settings()
    forget_model()


class Workers:
    """Real `granttag worker` processes, each in its own process group so SIGKILL takes its pool too."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 1, **env: str) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(n):
            name = f"t{uuid.uuid4().hex[:6]}"
            log = self.logs / f"{name}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "granttag.cli", "worker", "-c", "1", "-n", f"{name}@%h", "-l", "INFO"],
                env={**os.environ, **self.env, **env},
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            proc.log = log  # type: ignore[attr-defined]
            self.procs.append(proc)
            started.append(proc)
        for proc in started:
            self._wait_ready(proc)
        return started

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        log: Path = proc.log  # type: ignore[attr-defined]
        for _ in range(1200):
            if " ready." in log.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"worker did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill(proc)
            try:  # the pool processes of a worker that was stopped
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def workers(wenv: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    w = Workers(wenv, tmp_path)
    yield w
    w.stop_all()


def db_source(db: Path, **extra: Any) -> dict[str, Any]:
    return {"kind": "database", "url": f"sqlite:///{db}", "table": "projects", **extra}


def tags_by_project(db: Path) -> dict[str, set[tuple[str, str, float, str]]]:
    con = sqlite3.connect(db)
    out: dict[str, set[tuple[str, str, float, str]]] = {}
    for pid, label, kind, score, version in con.execute("SELECT project_id, label_id, kind, score, model_version FROM project_tags"):
        out.setdefault(pid, set()).add((label, kind, score, version))
    con.close()
    return out


def chunk_rows(db: Path, job_id: str) -> list[tuple[int, str, str]]:
    con = sqlite3.connect(db)
    rows = con.execute("SELECT chunk, state, result FROM granttag_job_chunks WHERE job_id = ? ORDER BY chunk", (job_id,)).fetchall()
    con.close()
    return rows


def run_job(settings: Any, source: dict[str, Any], **kw: Any) -> tuple[str, dict[str, Any]]:
    from worker.jobs import follow_job, start_job

    job_id = start_job(settings, source, **kw)
    return job_id, follow_job(settings, job_id, lambda s: None, poll=0.3, timeout=JOB_TIMEOUT)


def assert_exactly_once(db: Path, job_id: str, n: int, bad: set[int] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """Every record tagged (or failed) once: counts add up, one tag set per project, every chunk committed once."""
    import json

    from worker.jobs import job_status_from, open_store

    status = job_status_from(open_store(None, f"sql:sqlite:///{db}"), job_id)
    assert (status["state"], status["total"], status["tagged"], status["failed"], status["skipped"]) == (
        "done",
        n,
        n - len(bad),
        len(bad),
        0,
    )
    tags = tags_by_project(db)
    assert set(tags) == {str(i) for i in range(1, n + 1)} - {str(i) for i in bad}
    chunks = chunk_rows(db, job_id)
    assert {state for _, state, _ in chunks} == {"done"}
    assert sum(json.loads(r)["n"] for _, _, r in chunks) == n
    # Each project's tags come from one model version, written by one chunk.
    assert all(len({t[3] for t in labels}) == 1 for labels in tags.values())
    return status


def test_worker_tags_10000_records_exactly_once(settings: Any, workers: Workers, tmp_path: Path) -> None:
    n = 10_000
    bad = {17: "", 4242: "   ", 9999: b"\xff\xfe"}
    db = make_projects_db(tmp_path / "projects.db", n, bad=bad)
    workers.start(2)
    job_id, status = run_job(settings, db_source(db), chunk_size=250)
    assert_exactly_once(db, job_id, n, set(bad))
    con = sqlite3.connect(db)
    errors = dict(con.execute("SELECT project_id, reason FROM project_tag_errors").fetchall())
    pids = {json_result["pid"] for json_result in (__import__("json").loads(r) for _, _, r in chunk_rows(db, job_id))}
    con.close()
    assert set(errors) == {"17", "4242", "9999"}
    assert "empty text" in errors["17"] and "bytes" in errors["9999"]
    assert len(pids) >= 2  # both workers took chunks


def test_worker_tags_equal_local_tags(settings: Any, workers: Workers, tmp_path: Path) -> None:
    from worker.jobs import start_job

    a = make_projects_db(tmp_path / "a.db", 1200, bad={3: ""})
    b = make_projects_db(tmp_path / "b.db", 1200, bad={3: ""})
    workers.start(1)
    run_job(settings, db_source(a), chunk_size=200)
    start_job(settings, db_source(b), local=True, jobs=2, chunk_size=300)
    assert tags_by_project(a) == tags_by_project(b)
    assert len(tags_by_project(a)) == 1199


def test_worker_sigkill_mid_job_every_record_once(settings: Any, workers: Workers, tmp_path: Path) -> None:
    from worker.jobs import follow_job, job_status, start_job

    n = 3000
    db = make_projects_db(tmp_path / "projects.db", n)
    victim, survivor = workers.start(2)
    job_id = start_job(settings, db_source(db), chunk_size=100)
    # Kill one worker (main process and pool, SIGKILL) once the job is under way.
    follow_until(settings, job_id, lambda s: s["chunks_done"] >= 5)
    workers.kill(victim)
    assert victim.returncode == -signal.SIGKILL
    status = follow_job(settings, job_id, lambda s: None, poll=0.3, timeout=JOB_TIMEOUT)
    assert status["state"] == "done"
    assert_exactly_once(db, job_id, n)
    assert job_status(settings, job_id)["tagged"] == n
    assert survivor.poll() is None


def follow_until(settings: Any, job_id: str, cond: Any) -> dict[str, Any]:
    from worker.jobs import job_status

    for _ in range(JOB_TIMEOUT * 10):
        status = job_status(settings, job_id)
        if cond(status) or status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.1)
    pytest.fail(f"job {job_id} did not get there: {status}")


def _stop_redis() -> None:
    import redis

    try:
        _redis().shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # shutdown closes the connection as it goes
    for _ in range(100):
        if not _redis_answers():
            return
        time.sleep(0.1)


def _start_redis() -> None:
    if not _redis_answers():
        subprocess.run(REDIS_START, check=False)
    for _ in range(300):
        if _redis_answers():
            return
        time.sleep(0.1)
    raise RuntimeError("Redis did not start again")


def test_worker_redis_restart_mid_job_resumes_without_loss(settings: Any, workers: Workers, tmp_path: Path) -> None:
    from worker.jobs import follow_job, job_status, resume_job, start_job

    # Long enough that the job is still running when Redis stops, however fast the classifier gets.
    n = 8000
    db = make_projects_db(tmp_path / "projects.db", n, bad={11: ""})
    workers.start(2)
    job_id = start_job(settings, db_source(db), chunk_size=100)
    follow_until(settings, job_id, lambda s: s["chunks_done"] >= 4)
    try:
        _stop_redis()
        assert not _redis_answers()
        # The job's state is in its database, readable while Redis is down.
        during = job_status(settings, job_id)
        assert during["state"] == "running"
    finally:
        _start_redis()
    # Redis came back empty (no persistence): the queue is gone; resume queues what is not done.
    assert _redis().hget("granttag:jobs", job_id) is None
    resume_job(settings, job_id)
    status = follow_job(settings, job_id, lambda s: None, poll=0.3, timeout=JOB_TIMEOUT)
    assert status["state"] == "done"
    assert_exactly_once(db, job_id, n, {11})


def test_worker_follow_requeues_after_redis_lost_queue(settings: Any, workers: Workers, tmp_path: Path) -> None:
    """`granttag tag` itself (following the job) queues the lost chunks again once Redis is back."""
    from worker.jobs import follow_job, start_job

    n = 4000  # long enough that chunks are still queued when Redis stops
    db = make_projects_db(tmp_path / "projects.db", n)
    workers.start(1)
    job_id = start_job(settings, db_source(db), chunk_size=100)
    follow_until(settings, job_id, lambda s: s["chunks_done"] >= 2)
    try:
        _stop_redis()
    finally:
        _start_redis()
    events: list[str] = []
    status = follow_job(settings, job_id, lambda s: events.append(s.get("event", "")), poll=0.3, timeout=JOB_TIMEOUT)
    assert "requeued" in events
    assert status["state"] == "done"
    assert_exactly_once(db, job_id, n)


def test_worker_model_switch_mid_job_no_chunk_mixes(settings: Any, workers: Workers, tmp_path: Path, wenv: dict[str, str]) -> None:
    """A new version activated mid-job reaches every worker, including one whose model store is empty (another machine)."""
    import json

    from classifier import store
    from worker.jobs import follow_job, start_job
    from worker.registry import publish_active_model

    root = Path(wenv["GRANTTAG_MODELS_DIR"])
    v1 = store.active_version(root)
    assert v1 is not None
    v2 = v1 + "-switch"
    shutil.copytree(root / v1, root / v2)
    publish_active_model(settings)
    workers.start(1)
    workers.start(1, GRANTTAG_MODELS_DIR=str(tmp_path / "other-machine"))
    # Long enough that chunks remain after publishing the new version (which compresses the model files
    # into Redis): with 4,000 records the faster classifier of 2026-11-27 sometimes finished first.
    n = 16000
    db = make_projects_db(tmp_path / "projects.db", n)
    try:
        job_id = start_job(settings, db_source(db), chunk_size=100)
        follow_until(settings, job_id, lambda s: s["chunks_done"] >= 6)
        store.activate(v2, root)
        publish_active_model(settings)
        switched = time.time()
        status = follow_job(settings, job_id, lambda s: None, poll=0.3, timeout=JOB_TIMEOUT)
    finally:
        store.activate(v1, root)
        publish_active_model(settings)
    assert status["state"] == "done"
    assert set(status["model_versions"]) == {v1, v2}
    results = {k: json.loads(r) for k, _, r in chunk_rows(db, job_id)}
    assert all(r["model_version"] == v2 for r in results.values() if r["started_at"] > switched)
    ids_by_chunk = {k: {str(i) for i in range(k * 100 + 1, k * 100 + 101)} for k in results}
    tags = tags_by_project(db)
    for k, ids in ids_by_chunk.items():  # no chunk mixes versions: all its records carry the chunk's version
        assert {t[3] for pid in ids for t in tags[pid]} == {results[k]["model_version"]}
    assert (tmp_path / "other-machine" / v2 / "model.joblib").exists()  # fetched through Redis, checked by SHA-256


def test_worker_file_job_through_celery(settings: Any, workers: Workers, tmp_path: Path) -> None:
    import csv

    from click.testing import CliRunner

    from granttag.cli import main
    from tests.test_tag_data import synthetic_records

    src = tmp_path / "projects.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "abstract", "keywords"])
        for r in synthetic_records(900):
            w.writerow([r["id"], r["title"], r["abstract"], r["keywords"]])
        w.writerow(["broken", "x"])
    workers.start(1)
    out, local = tmp_path / "celery.csv", tmp_path / "local.csv"
    res = CliRunner().invoke(main, ["tag", str(src), "-o", str(out), "--chunk-size", "200"], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert "900 tagged, 1 failed, 0 skipped" in res.output
    CliRunner().invoke(main, ["tag", str(src), "-o", str(local), "--local", "-j", "1", "--chunk-size", "200"], catch_exceptions=False)

    def tags(path: Path) -> list[tuple[str, ...]]:
        # Labels, scores, version and errors; evidence terms of equal weight may come in either order.
        with path.open(encoding="utf-8") as fh:
            return [
                tuple(r[c] for c in ("id", "status", "domains", "domain_scores", "pillars", "pillar_scores", "model_version", "error"))
                for r in csv.DictReader(fh)
            ]

    assert tags(out) == tags(local)
    assert len(tags(out)) == 901


def test_worker_cancel_stops_queued_chunks(settings: Any, tmp_path: Path) -> None:
    from worker.jobs import cancel_job, job_status, start_job

    db = make_projects_db(tmp_path / "projects.db", 500)
    job_id = start_job(settings, db_source(db), chunk_size=100)  # no worker yet: everything stays queued
    assert job_status(settings, job_id)["state"] == "queued"
    assert cancel_job(settings, job_id) is True
    assert job_status(settings, job_id)["state"] == "cancelled"
    assert cancel_job(settings, job_id) is False
    _redis().delete("tag")  # drop the queued chunks so later tests start from an empty queue


@pytest.fixture
def pg_schema() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        con = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"needs PostgreSQL at {PG_URL} ({exc})")
    name = f"granttag_t_{uuid.uuid4().hex[:8]}"
    con.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        from worker.sql import dispose_engines

        dispose_engines()
        con.execute(f"DROP SCHEMA {name} CASCADE")
        con.close()


def test_worker_postgres_source_and_destination(settings: Any, workers: Workers, pg_schema: str) -> None:
    import psycopg

    from tests.test_tag_data import synthetic_records
    from worker.jobs import job_status, start_job

    n = 1500
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f"CREATE TABLE {pg_schema}.grants (award TEXT PRIMARY KEY, name TEXT, summary TEXT, kw TEXT)")
        with con.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {pg_schema}.grants VALUES (%s, %s, %s, %s)",
                [(f"G{r['id']:05d}", r["title"], "" if r["id"] == 7 else r["abstract"], r["keywords"]) for r in synthetic_records(n)],
            )
    cols = {"id": "award", "title": "name", "text": "summary", "keywords": "kw"}
    url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"
    workers.start(1)
    job_id, status = run_job(settings, {"kind": "database", "url": url, "table": "grants", "columns": cols}, chunk_size=250)
    assert (status["state"], status["tagged"], status["failed"], status["skipped"]) == (
        "done",
        n,
        0,
        0,
    )  # id 7 still has title and keywords
    with psycopg.connect(PG_URL) as con:
        rows = con.execute(f"SELECT project_id, label_id, score, model_version FROM {pg_schema}.project_tags").fetchall()
    assert {r[0] for r in rows} == {f"G{i:05d}" for i in range(1, n + 1)}
    # The same command again: every record skipped; --local gives the same tags.
    again, status2 = run_job(settings, {"kind": "database", "url": url, "table": "grants", "columns": cols}, chunk_size=250)
    assert again != job_id and (status2["tagged"], status2["skipped"]) == (0, n)
    local = start_job(settings, {"kind": "database", "url": url, "table": "grants", "columns": cols}, local=True, retag=True, jobs=1)
    assert job_status(settings, local)["tagged"] == n
    with psycopg.connect(PG_URL) as con:
        after = con.execute(f"SELECT project_id, label_id, score, model_version FROM {pg_schema}.project_tags").fetchall()
    assert sorted(after) == sorted(rows)


def test_models_activate_publishes_and_fetch_checks_sha256(settings: Any, wenv: dict[str, str], tmp_path: Path) -> None:
    import zlib

    from click.testing import CliRunner

    from classifier import store
    from classifier.errors import ModelIntegrityError
    from granttag.cli import main
    from granttag.settings import get_settings
    from worker.registry import ACTIVE_KEY, fetch_version, publish_active_model

    root = Path(wenv["GRANTTAG_MODELS_DIR"])
    version = store.active_version(root)
    assert version is not None
    _redis().delete(ACTIVE_KEY, f"granttag:model:{version}")
    res = CliRunner().invoke(main, ["models", "activate", version], catch_exceptions=False)
    assert res.exit_code == 0
    assert f"published {version}" in res.output
    assert _redis().get(ACTIVE_KEY) == version.encode()
    # Another machine: an empty model store gets the files, and they load.
    other = get_settings(models_dir=tmp_path / "other")
    (tmp_path / "other").mkdir()
    path = fetch_version(other, version)
    assert store.load_model(version, tmp_path / "other").version == version
    for name in ("model.joblib", "scorer.npz", "scorer.json", "meta.json"):
        assert (path / name).read_bytes() == (root / version / name).read_bytes()
    # A damaged copy in Redis is refused, and nothing is written.
    try:
        _redis().hset(f"granttag:model:{version}", "file:scorer.npz", zlib.compress(b"not the model"))
        third = get_settings(models_dir=tmp_path / "third")
        (tmp_path / "third").mkdir()
        with pytest.raises(ModelIntegrityError, match="SHA-256"):
            fetch_version(third, version)
        assert not (tmp_path / "third" / version).exists()
    finally:
        _redis().delete(f"granttag:model:{version}")
        publish_active_model(settings)
