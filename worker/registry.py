"""The active model shared through Redis: published after activation, fetched and cached by each worker process.

Workers on another machine share only Redis with the rest (issue 4), so the
active version's files travel through it: ``publish_active_model`` stores the
version's ``meta.json`` and every file its manifest names, zlib-compressed,
in the hash ``granttag:model:<version>`` and then sets
``granttag:model:active``. A worker checks that key before every chunk (one
GET); on a new name it fetches the files into its own model store unless they
are already there with the SHA-256 the manifest names, and loads the version
through ``classifier.store.load_model``, which checks the hashes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

from classifier import store
from classifier.errors import ModelIntegrityError, ModelNotFoundError, ServiceUnavailableError

ACTIVE_KEY = "granttag:model:active"
PREFIX = "granttag:model:"


_CLIENTS: dict[tuple[int, str], Any] = {}


def redis_client(settings: Any) -> Any:
    """Return this process's Redis client for ``settings.broker_url`` (short timeouts, so a dead Redis is noticed at once)."""
    import redis

    key = (os.getpid(), settings.broker_url)
    if key not in _CLIENTS:
        _CLIENTS[key] = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3, socket_timeout=10, health_check_interval=30)
    return _CLIENTS[key]


def check_redis(settings: Any) -> Any:
    """Return a client that has answered PING; raises ServiceUnavailableError."""
    import redis

    client = redis_client(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailableError(
            f"cannot reach Redis at {settings.broker_url} ({exc}); start it, set GRANTTAG_BROKER_URL, or use --local"
        ) from exc
    return client


def _root(settings: Any) -> Path:
    if getattr(settings, "models_dir", None):
        path = Path(settings.models_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    from classifier.resources import models_dir

    return models_dir()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(meta_bytes: bytes, where: str) -> dict[str, str]:
    files = (json.loads(meta_bytes).get("files") or {}) if meta_bytes else {}
    if not files:
        raise ModelIntegrityError(f"{where}: meta.json names no files; retrain the model")
    return {str(k): str(v) for k, v in files.items()}


def _local_copy_ok(directory: Path) -> bool:
    """True when ``directory`` holds meta.json and every file it names, with matching SHA-256."""
    try:
        files = _manifest((directory / store.META_FILE).read_bytes(), str(directory))
    except (OSError, ValueError, ModelIntegrityError):
        return False
    return all((directory / name).exists() and store._sha256(directory / name) == digest for name, digest in files.items())


def publish_active_model(settings: Any, client: Any = None) -> str:
    """Push the locally active version's files and name to Redis; return the version.

    Call it after ``classifier.store.activate``. The files are written before
    the name, so a worker that sees the new name can always fetch them.
    Raises ModelNotFoundError when no version is active, ModelIntegrityError
    when a file does not match the manifest, ServiceUnavailableError when
    Redis does not answer.
    """
    root = _root(settings)
    version = store.active_version(root)
    if version is None:
        raise ModelNotFoundError(f"no active model in {root}; activate one with `granttag models activate VERSION`")
    meta_bytes = (root / version / store.META_FILE).read_bytes()
    files = _manifest(meta_bytes, str(root / version))
    client = client or check_redis(settings)
    key = f"{PREFIX}{version}"
    digest = _sha256(meta_bytes)
    if client.hget(key, "sha256") != digest.encode():
        mapping: dict[str, bytes | str] = {"meta": meta_bytes, "sha256": digest}
        for name, expected in files.items():
            data = (root / version / name).read_bytes()
            if _sha256(data) != expected:
                raise ModelIntegrityError(f"{root / version / name}: checksum does not match meta.json; not publishing it")
            mapping["file:" + name] = zlib.compress(data, 1)
        client.hset(key, mapping=mapping)
    client.set(ACTIVE_KEY, version)
    return version


def published_version(settings: Any, client: Any = None) -> str | None:
    """Return the version workers use (``granttag:model:active``), or None when nothing was published."""
    client = client or redis_client(settings)
    raw = client.get(ACTIVE_KEY)
    return raw.decode() if raw else None


def fetch_version(settings: Any, version: str, client: Any = None) -> Path:
    """Make sure ``version`` is in the local model store, fetching it from Redis if needed; return its directory.

    Raises ModelNotFoundError when Redis does not hold it, ModelIntegrityError
    when a fetched file does not match its SHA-256.
    """
    root = _root(settings)
    final = root / version
    client = client or redis_client(settings)
    key = f"{PREFIX}{version}"
    if _local_copy_ok(final):
        return final
    meta_bytes, sha = client.hmget(key, "meta", "sha256")
    if meta_bytes is None:
        raise ModelNotFoundError(
            f"model {version} is active in Redis but its files are not there; run `granttag models activate {version}` again"
        )
    if sha and sha.decode() != _sha256(meta_bytes):
        raise ModelIntegrityError(f"model {version} fetched from Redis does not match its SHA-256; publish it again")
    files = _manifest(meta_bytes, f"model {version} in Redis")
    names = list(files)
    packed = client.hmget(key, ["file:" + n for n in names])
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".fetch-"))
    try:
        for name, blob in zip(names, packed, strict=True):
            if blob is None:
                raise ModelNotFoundError(f"model {version}: {name} is not in Redis; run `granttag models activate {version}` again")
            data = zlib.decompress(blob)
            if _sha256(data) != files[name]:
                raise ModelIntegrityError(f"model {version}: {name} fetched from Redis does not match its SHA-256; publish it again")
            (tmp / name).write_bytes(data)
        (tmp / store.META_FILE).write_bytes(meta_bytes)
        if final.exists():
            shutil.rmtree(final)  # a damaged copy: its checksum did not match
        os.rename(tmp, final)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process of this machine fetched it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class _Cache:
    """The model loaded in this process (Celery's per-process "instantiation" pattern)."""

    model: Any = None
    version: str | None = None


_CACHE = _Cache()


def current_model(settings: Any, *, local: bool = False) -> Any:
    """Return this process's model, swapped to the active version first if it changed.

    Call it before each chunk: a chunk is tagged with one model only. Workers
    (``local=False``) follow ``granttag:model:active`` in Redis, fetching a
    version they do not have; with nothing published there they use the local
    store's active version. ``local=True`` follows the local store only.
    """
    root = _root(settings)
    version: str | None = None
    if not local:
        client = redis_client(settings)
        version = published_version(settings, client)
        if version is not None and version != _CACHE.version:
            fetch_version(settings, version, client)
    if version is None:
        version = store.active_version(root) or store.ensure_default_model(root=root)
    if version != _CACHE.version:
        model = store.load_model(version, root)
        _CACHE.model, _CACHE.version = model, version
    return _CACHE.model


def forget_model() -> None:
    """Drop this process's cached model (tests, and after a fork that should not share it)."""
    _CACHE.model = _CACHE.version = None
