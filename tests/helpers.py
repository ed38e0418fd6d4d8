"""Helpers shared by the tests that use the real Redis and copies of the session's model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def redis_client(url: str) -> Any:
    """A Redis client for ``url`` with short timeouts, so a dead Redis fails a test at once."""
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def redis_answers(url: str) -> bool:
    """Whether the Redis of ``url`` answers PING."""
    try:
        return bool(redis_client(url).ping())
    except Exception:  # noqa: BLE001 - any failure means no Redis here
        return False


def copy_active_model(source: Path, target: Path) -> str:
    """Copy the active version of model store ``source`` into ``target``, activate it there; return its name."""
    from classifier import store

    version = store.active_version(source)
    assert version is not None
    shutil.copytree(source / version, target / version)
    store.activate(version, target)
    return version
