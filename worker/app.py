"""The Celery app, built from settings: JSON only, explicit task names, late acks, time limits.

Queue layout (issue 4):

- ``tag``: chunks of batch-tagging jobs (``granttag.tag_chunk``), the default.
- ``train``: reserved for retraining (``worker/retrain.py``, added to
  ``INCLUDE`` with one line); a worker serves it when started with
  ``granttag worker -Q train`` (or ``-Q tag,train``).
"""

from __future__ import annotations

from typing import Any

#: Modules whose tasks the worker registers; a retrain module is added here.
INCLUDE = ["worker.tasks", "worker.retrain"]
TAG_QUEUE = "tag"
TRAIN_QUEUE = "train"
QUEUES = (TAG_QUEUE, TRAIN_QUEUE)


def create_celery(settings: Any) -> Any:
    """Return a Celery app configured from ``settings`` (a granttag.settings.Settings).

    The settings object is kept as ``app.granttag_settings`` for the tasks.
    """
    from celery import Celery
    from kombu import Queue

    app = Celery("granttag", broker=settings.broker_url, backend=settings.result_backend, include=list(INCLUDE))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue=TAG_QUEUE,
        task_routes={"granttag.tag_chunk": {"queue": TAG_QUEUE}},
        # A chunk is acknowledged only when done; a worker that dies hands it back (issue 4).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        # Tasks write their results to the job's destination; the backend only keeps small summaries.
        task_ignore_result=True,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Look for chunks of dead workers every few seconds, not every 100 s (kombu's default sweep).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 3)),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    app.granttag_settings = settings
    return app
