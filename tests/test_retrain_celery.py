"""Retraining through real `celery worker` processes over Redis database 14 while a tagging job runs (issue 6).

One worker serves the ``tag`` queue and another the ``train`` queue. A retrain
queued while a database tagging job is running finishes with its candidate
activated and published; the tagging job finishes, and each record's tags
come from one model version. A rollback then reaches the workers: a job
tagged afterwards uses the restored version.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.helpers import redis_answers, redis_client
from tests.test_retrain import FAST, REDIS_TEST_URL, make_split, shuffled
from tests.test_tag_data import make_projects_db

#: Upper bound so a broken worker fails the test instead of hanging it (not a speed check).
TIMEOUT = 600


def _redis() -> Any:
    return redis_client(REDIS_TEST_URL)


def _redis_answers() -> bool:
    return redis_answers(REDIS_TEST_URL)


pytestmark = pytest.mark.skipif(not _redis_answers(), reason="needs Redis on 127.0.0.1:6379 (started by .ci/run)")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_split(tmp_path_factory.mktemp("split"))


@pytest.fixture
def env(split: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Own model store (a weak model active), data store (the training records), Redis database 14."""
    from classifier import store
    from classifier.datastore import DataStore
    from classifier.training import train_and_save

    models, data = tmp_path / "models", tmp_path / "data"
    models.mkdir()
    weak = train_and_save(shuffled(split["train"]), FAST, models)
    store.activate(weak, models)
    ds = DataStore(data)
    ds.set_active("corpus", False)
    ds.add(split["train"], "training records")
    values = {
        "GRANTTAG_BROKER_URL": REDIS_TEST_URL,
        "GRANTTAG_RESULT_BACKEND": REDIS_TEST_URL,
        "GRANTTAG_MODELS_DIR": str(models),
        "GRANTTAG_DATA_DIR": str(data),
        "GRANTTAG_RETRAIN_CALIBRATION_CV": "2",
        "GRANTTAG_CHUNK_SIZE": "100",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    _redis().flushdb()
    yield {**values, "weak": weak}
    if _redis_answers():
        _redis().flushdb()


class Workers:
    """Real `granttag worker` processes, each in its own process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, []  # type: ignore[var-annotated]

    def start(self, queues: str) -> None:
        name = f"r{uuid.uuid4().hex[:6]}"
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "granttag.cli", "worker", "-c", "1", "-Q", queues, "-n", f"{name}@%h", "-l", "INFO"],
            env={**os.environ, **{k: v for k, v in self.env.items() if k.startswith("GRANTTAG_")}},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        import time

        for _ in range(1200):
            if " ready." in log.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"worker did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    w = Workers(env, tmp_path)
    yield w
    w.stop()


def versions_by_project(db: Path) -> dict[str, set[str]]:
    con = sqlite3.connect(db)
    out: dict[str, set[str]] = {}
    for pid, version in con.execute("SELECT project_id, model_version FROM project_tags"):
        out.setdefault(str(pid), set()).add(version)
    con.close()
    return out


def test_retrain_celery_while_tagging_job_runs(env: dict[str, str], workers: Workers, split: dict[str, Any], tmp_path: Path) -> None:
    from classifier import store
    from granttag.cli import main
    from granttag.settings import get_settings
    from worker.jobs import follow_job, job_status, start_job
    from worker.registry import published_version
    from worker.retrain import wait_retrain

    settings = get_settings()
    workers.start("tag")
    workers.start("train")
    n = 1500
    db = make_projects_db(tmp_path / "projects.db", n)
    job_id = start_job(settings, {"kind": "database", "url": f"sqlite:///{db}", "table": "projects"}, chunk_size=100)
    res = CliRunner().invoke(main, ["retrain", "--holdout", str(split["holdout"]), "--cv-folds", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    retrain_id = res.stdout.strip().splitlines()[-1]
    assert retrain_id.startswith("retrain-")
    result = wait_retrain(settings, retrain_id, timeout=TIMEOUT, poll=0.5)
    status = follow_job(settings, job_id, lambda s: None, poll=0.5, timeout=TIMEOUT)
    # The tagging job finished, every record tagged once, each by one model version.
    assert (status["state"], status["total"], status["tagged"], status["failed"]) == ("done", n, n, 0)
    versions = versions_by_project(db)
    assert len(versions) == n
    assert all(len(v) == 1 for v in versions.values())
    assert set().union(*versions.values()) <= {env["weak"], result["version"]}
    # The candidate beat the weak model: active here and published to the workers.
    assert result["activated"] and result["gate"]["decision"] == "accepted"
    assert store.active_version(Path(env["GRANTTAG_MODELS_DIR"])) == result["version"]
    assert published_version(settings) == result["version"]
    # Its progress and result are visible as a job.
    shown = job_status(settings, retrain_id)
    assert (shown["state"], shown["kind"], shown["model_versions"]) == ("done", "retrain", [result["version"]])
    # Rollback reaches the workers without restart: a job tagged now uses the restored version.
    res = CliRunner().invoke(main, ["models", "rollback"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert published_version(settings) == env["weak"]
    db2 = make_projects_db(tmp_path / "again.db", 200, seed=5)
    job2 = start_job(settings, {"kind": "database", "url": f"sqlite:///{db2}", "table": "projects"}, chunk_size=100)
    follow_job(settings, job2, lambda s: None, poll=0.5, timeout=TIMEOUT)
    assert set().union(*versions_by_project(db2).values()) == {env["weak"]}
