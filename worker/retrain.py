"""The `granttag.retrain` Celery task, on its own queue ("train") so tagging traffic is never blocked by training (issue 6).

A retrain job is noted in the job store of issue 4 (Redis) as a job of kind
"retrain" with one chunk, so `granttag jobs show ID`, `jobs list` and the API's
job endpoints show its state, its stage (in ``source.path``) and, when done,
the model version it made. Its full result (the gate's decision, holdout and
cross-validation figures) is kept under ``granttag:retrain:<id>``.

The holdout file travels with the task (it is small), so a worker on another
machine needs only Redis and the data store. The message is acknowledged when
the worker takes it (not late): a retrain runs longer than Redis's visibility
timeout, and a late-acknowledged message would be handed to a second worker
while the first is still training. A task run twice for one job returns the
first run's result.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Task, shared_task

from classifier.errors import GranttagError, JobNotFoundError

TASK = "granttag.retrain"
QUEUE = "train"
KIND = "retrain"


def _key(job_id: str) -> str:
    return f"granttag:retrain:{job_id}"


def _now() -> str:
    from worker.sql import now

    return now()


def _settings(task: Task) -> Any:
    settings = getattr(task.app, "granttag_settings", None)
    if settings is None:
        from granttag.settings import get_settings

        settings = get_settings()
    return settings


def _job_store(settings: Any) -> Any:
    from worker.jobs import RedisJobStore

    return RedisJobStore(settings)


def _describe(options: dict[str, Any], stage: str, fraction: float) -> dict[str, Any]:
    # `granttag jobs show` prints a non-database source's "path": it carries the stage.
    return {
        "kind": KIND,
        "path": f"retrain on holdout {options.get('holdout_name', '')}: {stage} ({fraction:.0%})",
        "stage": stage,
        "progress": round(fraction, 3),
    }


def submit_retrain(settings: Any, options: dict[str, Any]) -> str:
    """Queue a retrain with ``options`` (those of classifier.retraining.retrain_from_store); return the job id.

    ``options["holdout"]`` is a local path; its text is sent with the task.
    Raises ServiceUnavailableError when Redis does not answer.
    """
    from worker.app import create_celery
    from worker.jobs import _remember
    from worker.registry import check_redis

    client = check_redis(settings)
    holdout = Path(options["holdout"])
    text = holdout.read_text(encoding="utf-8")
    opts = {k: v for k, v in options.items() if k != "holdout"}
    opts.update(holdout_name=holdout.name, holdout_text=text)
    job_id = f"retrain-{uuid.uuid4().hex[:12]}"
    created = _now()
    job = {
        "id": job_id,
        "kind": KIND,
        "state": "queued",
        "created": created,
        "fingerprint": f"{KIND}-{job_id}",
        "total": 1,
        "chunks": 1,
        "local": False,
        "retag": False,
        "source": _describe(opts, "queued", 0.0),
    }
    _job_store(settings).create(job, None)
    _remember(settings, job_id, "redis", redis=True)
    client.hset(_key(job_id), mapping={"state": "queued", "created": created, "stage": "queued", "progress": 0})
    client.expire(_key(job_id), int(settings.job_ttl_days) * 86400)
    app = create_celery(settings)
    app.send_task(
        TASK,
        args=[job_id, opts],
        queue=QUEUE,
        time_limit=settings.retrain_time_limit,
        soft_time_limit=max(30, settings.retrain_time_limit - 30),
    )
    return job_id


def retrain_status(settings: Any, job_id: str) -> dict[str, Any]:
    """Return a retrain job's state, stage, progress and (when done) result; raises JobNotFoundError."""
    from worker.registry import redis_client

    raw = redis_client(settings).hgetall(_key(job_id))
    if not raw:
        raise JobNotFoundError(f"no retrain job {job_id!r} (see `granttag jobs list`)")
    out: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    out["id"] = job_id
    out["progress"] = float(out.get("progress", 0))
    if "result" in out:
        out["result"] = json.loads(out["result"])
    return out


def wait_retrain(
    settings: Any, job_id: str, progress: Callable[[str, float], None] | None = None, poll: float = 1.0, timeout: float | None = None
) -> dict[str, Any]:
    """Wait for a retrain job; return its result (``{"version", "activated", "gate", "meta"}``).

    Raises GranttagError with the task's message when it failed, TimeoutError after ``timeout`` seconds.
    """
    start = time.monotonic()
    seen = None
    while True:
        status = retrain_status(settings, job_id)
        if progress and (status.get("stage"), status["progress"]) != seen:
            seen = (status.get("stage"), status["progress"])
            progress(str(status.get("stage")), status["progress"])
        if status["state"] == "done":
            result: dict[str, Any] = status["result"]
            return result
        if status["state"] == "failed":
            raise GranttagError(f"retrain job {job_id} failed: {status.get('error')}")
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"retrain job {job_id} still {status['state']} after {timeout:.0f} s")
        time.sleep(poll)


def run_retrain(settings: Any, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run one retrain job here (the body of the task); return its summary. Safe to call twice for one job."""
    from classifier.datastore import DataStore
    from classifier.retraining import retrain_from_store
    from granttag.settings import data_dir
    from worker.registry import _root, publish_active_model, redis_client

    client = redis_client(settings)
    key = _key(job_id)
    state = client.hget(key, "state")
    if state in (b"running", b"done"):
        return {"state": state.decode(), "job": job_id, "note": "already run"}
    jobs = _job_store(settings)
    client.hset(key, mapping={"state": "running", "started": _now()})
    jobs.set_state(job_id, "running")
    spec = jobs.job(job_id) or {}

    def progress(stage: str, fraction: float) -> None:
        client.hset(key, mapping={"stage": stage, "progress": round(fraction, 3)})
        if spec:
            spec["source"] = _describe(options, stage, fraction)
            jobs.r.hset(
                jobs.key(job_id), "spec", json.dumps({k: v for k, v in spec.items() if k not in ("state", "updated")}, ensure_ascii=False)
            )

    def publish(version: str) -> None:
        publish_active_model(settings)  # every worker switches to the new version before its next chunk

    text = options["holdout_text"]
    folder = data_dir(settings) / "holdouts"
    folder.mkdir(parents=True, exist_ok=True)
    holdout = folder / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}-{options.get('holdout_name', 'holdout.jsonl')}"
    if not holdout.exists():
        tmp = holdout.with_name("." + holdout.name + f".{uuid.uuid4().hex[:6]}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(holdout)
    opts = {k: v for k, v in options.items() if k not in ("holdout_text", "holdout_name")}
    try:
        result = retrain_from_store(
            DataStore(data_dir(settings)),
            holdout=holdout,
            root=_root(settings),
            progress=progress,
            on_activate=publish,
            **opts,
        )
    except GranttagError as exc:
        client.hset(key, mapping={"state": "failed", "error": str(exc), "finished": _now()})
        jobs.fail_chunk(job_id, 0, str(exc))
        return {"state": "failed", "job": job_id, "error": str(exc)}
    summary = result.as_dict()
    client.hset(
        key, mapping={"state": "done", "result": json.dumps(summary, ensure_ascii=False), "finished": _now(), "version": result.version}
    )
    jobs.commit(
        job_id,
        0,
        {
            "n": 1,
            "tagged": 0,
            "failed": 0,
            "skipped": 0,
            "model_version": result.version,
            "finished": _now(),
            "gate": result.gate.as_dict()["decision"],
        },
        None,
        None,
    )
    return {
        "state": "done",
        "job": job_id,
        "version": result.version,
        "activated": result.activated,
        "decision": summary["gate"]["decision"],
    }


@shared_task(bind=True, name=TASK, acks_late=False, ignore_result=True)
def retrain(self: Task, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """Train a candidate on the data store, gate it on the holdout, activate it if it passes; JSON in and out."""
    return run_retrain(_settings(self), job_id, options)
