"""Jobs through the HTTP API and real `celery worker` processes over Redis (database 13) (issues 4 and 5)."""

from __future__ import annotations

import os
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

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from tests.helpers import copy_active_model, redis_answers, redis_client  # noqa: E402
from tests.test_api import ADMIN, BROKER, CLASSIFY, bearer, make_settings  # noqa: E402

#: Upper bound for a job here, so a broken worker fails the test instead of hanging it (not a speed check).
JOB_TIMEOUT = 300


def _redis() -> Any:
    return redis_client(BROKER)


def _redis_answers() -> bool:
    return redis_answers(BROKER)


pytestmark = pytest.mark.skipif(not _redis_answers(), reason="needs Redis on 127.0.0.1:6379 (started by .ci/run)")


@pytest.fixture(scope="module")
def stack(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """A real `granttag worker` on Redis database 13 and an API app using the real worker.jobs."""
    from granttag.api import create_app

    models = tmp_path_factory.mktemp("api-jobs-models")
    copy_active_model(model_root, models)
    data = tmp_path_factory.mktemp("api-jobs-data")
    env = {
        **os.environ,
        "GRANTTAG_BROKER_URL": BROKER,
        "GRANTTAG_RESULT_BACKEND": BROKER,
        "GRANTTAG_MODELS_DIR": str(models),
        "GRANTTAG_DATA_DIR": str(data),
    }
    _redis().flushdb()
    log = data / "worker.log"
    name = f"api{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "granttag.cli", "worker", "-c", "1", "-n", f"{name}@%h", "-l", "INFO"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(1200):
            if " ready." in log.read_text(errors="replace") or proc.poll() is not None:
                break
            time.sleep(0.1)
        if " ready." not in log.read_text(errors="replace"):
            pytest.fail(f"worker did not start:\n{log.read_text(errors='replace')[-3000:]}")
        db = data / "projects.db"
        make_db(db, 25)
        settings = make_settings(models, data, chunk_size=10, api_job_sources={"projects": {"url": f"sqlite:///{db}", "table": "projects"}})
        with TestClient(create_app(settings)) as client:
            yield client, db
    finally:
        stop(proc)
        _redis().flushdb()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the worker and its pool (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue


def make_db(path: Path, n: int) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE projects (id TEXT PRIMARY KEY, title TEXT, abstract TEXT)")
    rows = [(str(i), f"課題{i}", "超伝導量子ビットを用いた量子誤り訂正" if i % 2 else "水田の収量予測") for i in range(1, n + 1)]
    con.executemany("INSERT INTO projects VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()


def wait_done(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}?limit=0", headers=bearer(CLASSIFY)).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.3)
    pytest.fail(f"job {job_id} not finished in {JOB_TIMEOUT} s: {status}")


def test_jobs_uploaded_file_tagged_by_worker(stack: tuple[TestClient, Path]) -> None:
    client, _ = stack
    lines = ["id,title,abstract"] + [f"p{i},題目{i},{'深層学習による画像認識' if i % 3 else '量子暗号通信の安全性'}" for i in range(1, 24)]
    lines.insert(5, "bad,,")  # empty text: an error row, the others are tagged
    data = ("\n".join(lines) + "\n").encode()
    r = client.post("/v1/jobs", files={"file": ("projects.csv", data, "text/csv")}, headers=bearer(CLASSIFY))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    status = wait_done(client, job_id)
    assert (status["state"], status["total"], status["tagged"], status["failed"]) == ("done", 24, 23, 1)
    assert status["progress"] == 1.0
    page = client.get(f"/v1/jobs/{job_id}?offset=3&limit=3", headers=bearer(CLASSIFY)).json()["results"]
    assert [row["id"] for row in page] == ["p4", "bad", "p5"]
    assert page[1]["status"] == "error" and page[0]["status"] == "ok"
    assert job_id in [j["id"] for j in client.get("/v1/jobs", headers=bearer(CLASSIFY)).json()["jobs"]]


def test_jobs_configured_database_source_tagged_by_worker(stack: tuple[TestClient, Path]) -> None:
    client, db = stack
    r = client.post("/v1/jobs", json={"source": "projects"}, headers=bearer(ADMIN))
    assert r.status_code == 202, r.text
    status = wait_done(client, r.json()["id"])
    assert (status["state"], status["total"], status["tagged"] + status["skipped"]) == ("done", 25, 25)
    con = sqlite3.connect(db)
    tagged = {row[0] for row in con.execute("SELECT DISTINCT project_id FROM project_tags")}
    con.close()
    assert tagged == {str(i) for i in range(1, 26)}


def test_jobs_cancel_and_unknown_job(stack: tuple[TestClient, Path]) -> None:
    client, _ = stack
    data = ("id,abstract\n" + "".join(f"c{i},材料の強度試験{i}\n" for i in range(200))).encode()
    job_id = client.post("/v1/jobs", files={"file": ("many.csv", data, "text/csv")}, headers=bearer(CLASSIFY)).json()["id"]
    r = client.delete(f"/v1/jobs/{job_id}", headers=bearer(CLASSIFY))
    assert r.status_code == 200, r.text
    assert r.json()["state"] in ("cancelled", "done")  # a fast worker may finish first
    r = client.get("/v1/jobs/0123456789abcdef", headers=bearer(CLASSIFY))
    assert r.status_code == 404 and r.json()["title"] == "Job not found"
