"""Celery tasks: thin, named, idempotent, JSON in and out; the work is in worker.jobs."""

from __future__ import annotations

from typing import Any

import redis.exceptions
import sqlalchemy.exc
from celery import Task, shared_task

from classifier.errors import GranttagError

#: Faults of the services, worth trying again with backoff; a bad record is an error row, never a retry.
TRANSIENT = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
    TimeoutError,
)


def _settings(task: Task) -> Any:
    settings = getattr(task.app, "granttag_settings", None)
    if settings is None:
        from granttag.settings import get_settings

        settings = get_settings()
    return settings


class ChunkTask(Task):
    """Marks the chunk failed in its job when the task gives up, so the job does not wait for it forever."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        from worker.jobs import fail_chunk

        try:
            job_id, chunk, locator = args[:3]
            fail_chunk(_settings(self), locator, job_id, int(chunk), f"chunk {chunk}: {type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - the store may be what failed; resume finds the chunk pending
            pass


@shared_task(
    bind=True,
    base=ChunkTask,
    name="granttag.tag_chunk",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=12,
)
def tag_chunk(self: Task, job_id: str, chunk: int, locator: str) -> dict[str, Any]:
    """Tag chunk ``chunk`` of job ``job_id`` (stored where ``locator`` says) and commit it; safe to run twice."""
    from worker import jobs

    try:
        result = jobs.tag_chunk(_settings(self), locator, job_id, int(chunk))
    except GranttagError as exc:
        # Not transient (no model, a source that is gone): record it on the job and stop.
        jobs.fail_chunk(_settings(self), locator, job_id, int(chunk), str(exc))
        return {"state": "failed", "error": str(exc)}
    return {k: result[k] for k in ("state", "n", "tagged", "failed", "skipped", "model_version") if k in result}
