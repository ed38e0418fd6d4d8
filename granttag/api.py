"""The HTTP API (issue 5): classify abstracts, run jobs, read the taxonomy and models, take corrections.

``create_app(settings)`` builds the FastAPI application; nothing is built at
import time. ``granttag serve`` runs it under uvicorn through the factory
``app_from_env``. Handlers are thin: they parse the request, call one core
function (``Model.predict``, ``classifier.store``, ``classifier.feedback``,
``worker.jobs``) and shape the answer; every error is answered as a JSON
problem (``{"type", "title", "status", "detail", "field"}``).
"""

# No `from __future__ import annotations` here: FastAPI resolves the annotations of
# the handlers, whose request models are built inside create_app from the limits.

import hmac
import json
import logging
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from classifier.errors import (
    ConfigurationError,
    GranttagError,
    InvalidInputError,
    JobNotFoundError,
    ModelIntegrityError,
    ModelNotFoundError,
    ServiceUnavailableError,
    TaxonomyError,
    TrainingDataError,
)
from granttag.settings import Settings

log = logging.getLogger("granttag.api")

ROLES = ("classify", "admin")
PROBLEM_TYPE = "application/problem+json"
#: Paths whose body may be a file upload (the larger upload limit applies).
UPLOAD_PATHS = ("/v1/jobs",)
UPLOAD_FORMATS = ("csv", "tsv", "jsonl", "xlsx")


# --- configuration ------------------------------------------------------


def parse_api_keys(settings: Settings) -> dict[str, str]:
    """Return {key: role} from GRANTTAG_API_KEYS ("KEY1:admin,KEY2:classify") and the key file.

    Raises ConfigurationError for an unknown role, an empty or short key, a
    malformed entry or an unreadable key file.
    """
    entries: list[tuple[str, str]] = []
    if settings.api_keys:
        for i, part in enumerate(settings.api_keys.split(","), 1):
            if part.strip():
                entries.append((part.strip(), f"GRANTTAG_API_KEYS entry {i}"))
    if settings.api_key_file is not None:
        path = Path(settings.api_key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read the API key file {path} (GRANTTAG_API_KEY_FILE): {exc.strerror or exc}") from exc
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                entries.append((line, f"{path} line {number}"))
    keys: dict[str, str] = {}
    for entry, where in entries:
        key, sep, role = entry.rpartition(":")
        key, role = key.strip(), role.strip()
        if not sep or not key:
            raise ConfigurationError(f"{where}: expected KEY:ROLE with ROLE one of {', '.join(ROLES)}")
        if role not in ROLES:
            raise ConfigurationError(f"{where}: unknown role {role!r}; use one of {', '.join(ROLES)}")
        if len(key) < 16:
            raise ConfigurationError(
                f"{where}: the key is {len(key)} characters; use at least 16 "
                "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if any(c.isspace() for c in key):
            raise ConfigurationError(f"{where}: the key contains white space")
        keys[key] = role
    return keys


def check_settings(settings: Settings) -> dict[str, str]:
    """Validate the API's settings at start-up and return the API keys.

    Raises ConfigurationError when no key is configured and auth is not
    explicitly disabled, or when the keys are malformed.
    """
    keys = parse_api_keys(settings)
    if not keys and not settings.api_no_auth:
        raise ConfigurationError(
            "no API keys configured: set GRANTTAG_API_KEYS='KEY1:admin,KEY2:classify' or GRANTTAG_API_KEY_FILE, "
            "or run `granttag serve --no-auth` for local use only"
        )
    return keys


# --- the model, loaded once per process ---------------------------------


class ModelHolder:
    """The loaded model of this API process, swapped when another version is activated.

    The first ``get()`` builds the default model if the store has none and
    loads the active version. Afterwards ``get()`` looks at the store's ACTIVE
    file at most every ``check_seconds``; a newly activated version is loaded
    in a background thread and swapped in when ready, so no request waits for
    it and requests in flight finish with the model they started with.
    """

    def __init__(self, root: Path, check_seconds: float) -> None:
        self.root = root
        self.check_seconds = check_seconds
        self._model: Any = None
        self._lock = threading.Lock()
        self._checked = 0.0
        self.error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def version(self) -> str | None:
        return None if self._model is None else str(self._model.version)

    def get(self) -> Any:
        """Return the current model; raises ModelNotFoundError when none can be loaded."""
        from classifier.store import active_version

        model = self._model
        if model is None:
            with self._lock:
                if self._model is None:
                    self._load_first()
                return self._model
        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            self._checked = now
            active = active_version(self.root)
            if active and active != model.version and self._lock.acquire(blocking=False):
                threading.Thread(target=self._switch, args=(active, True), name="granttag-model-switch", daemon=True).start()
        return model

    def switch(self, version: str) -> None:
        """Load ``version`` and serve it from now on (waits for the load); raises GranttagError."""
        with self._lock:
            self._switch(version, False)

    def _switch(self, version: str, release: bool) -> None:
        from classifier.store import load_model

        try:
            old = self.version
            self._model = load_model(version, self.root)
            log.info("switched from model %s to %s", old, version)
        except GranttagError as exc:
            log.error("cannot load the newly activated model %s, keeping %s: %s", version, self.version, exc)
            if not release:
                raise
        finally:
            if release:
                self._lock.release()

    def _load_first(self) -> None:
        from classifier.store import ensure_default_model, load_model

        try:
            ensure_default_model(echo=log.warning, root=self.root)
            self._model = load_model(root=self.root)
            self._checked = time.monotonic()
            self.error = None
            log.info("loaded model %s", self._model.version)
        except GranttagError as exc:
            self.error = str(exc)
            raise ModelNotFoundError(f"no model can be loaded: {exc}") from exc


class Batcher:
    """Classifies the documents of concurrent requests together: one Model.predict per batch.

    Requests hand their documents to one thread per process, which takes
    everything waiting (up to ``max_docs``) and classifies it in one call. A
    prediction does not depend on the other documents of its call, so answers
    are the same as one by one; but one call on ten documents costs little more
    than one on a single document (the per-call work of the feature pipeline
    dominates), and one thread per process stops concurrent requests from
    fighting over the GIL. Nothing waits for a batch to fill: a lone request is
    classified at once. Measured in bench/bench_api.py (issue 5).
    """

    def __init__(self, holder: ModelHolder, max_docs: int = 64) -> None:
        self.holder = holder
        self.max_docs = max_docs
        self._queue: queue.SimpleQueue[tuple[list[Any], tuple[Any, ...], Future[list[Any]]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, docs: list[Any], threshold: float | None, top_k: int | None, explain: bool) -> Future[list[Any]]:
        """Queue ``docs``; the future gives their Predictions in order (or the error)."""
        future: Future[list[Any]] = Future()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="granttag-batcher", daemon=True)
                    self._thread.start()
        self._queue.put((docs, (threshold, top_k, explain), future))
        return future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items, size = [first], len(first[0])
            while size < self.max_docs:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                items.append(item)
                size += len(item[0])
            self._classify(items)

    def _classify(self, items: list[tuple[list[Any], tuple[Any, ...], Future[list[Any]]]]) -> None:
        try:
            model = self.holder.get()
        except BaseException as exc:  # handed to every waiting request
            for _, _, future in items:
                future.set_exception(exc)
            return
        groups: dict[tuple[Any, ...], list[tuple[list[Any], tuple[Any, ...], Future[list[Any]]]]] = {}
        for item in items:
            groups.setdefault(item[1], []).append(item)
        for (threshold, top_k, explain), group in groups.items():
            try:
                predictions = model.predict([d for docs, _, _ in group for d in docs], threshold=threshold, top_k=top_k, explain=explain)
            except BaseException as exc:  # handed to the requests of this call
                for _, _, future in group:
                    future.set_exception(exc)
                continue
            start = 0
            for docs, _, future in group:
                future.set_result(predictions[start : start + len(docs)])
                start += len(docs)

    def close(self) -> None:
        """Stop the thread after the requests already queued."""
        if self._thread is not None:
            self._queue.put(None)


# --- problems -----------------------------------------------------------


class FieldProblem(BaseModel):
    """One field that was rejected."""

    field: str
    message: str
    type: str = ""


class Problem(BaseModel):
    """An error answer (RFC 9457 problem details); ``field`` names the offending field."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[FieldProblem] | None = None


class ApiProblem(Exception):
    """Raised by a handler to answer a problem."""

    def __init__(self, status: int, title: str, detail: str, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field, self.headers = status, title, detail, field, headers


class SafeJSONResponse(JSONResponse):
    """JSON as UTF-8; text that cannot be encoded (lone surrogates) is escaped rather than failing."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def problem(
    status: int,
    title: str,
    detail: str,
    field: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Return a problem response."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail, "field": field}
    if errors is not None:
        body["errors"] = errors
    return SafeJSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|dict|list|json-or-python)$|\[|^function-")


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and _UNION_TAG.search(part):
            continue  # pydantic names the union member it tried ("str", "list[...]"); the field is what matters
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _field_errors(errors: list[Any], prefix: str = "") -> list[dict[str, str]]:
    out = []
    for err in errors:
        loc = tuple(err.get("loc") or ())
        if err.get("type") == "json_invalid":
            loc = ("body",)
        name = _loc(loc)
        if prefix:
            name = prefix + ("." + name if name and not name.startswith("[") else name)
        out.append({"field": name or prefix or "body", "message": str(err.get("msg", "invalid")), "type": str(err.get("type", ""))})
    return out


_GRANTTAG_STATUS: list[tuple[type[Exception], int, str]] = [
    (InvalidInputError, 422, "Invalid input"),
    (TrainingDataError, 422, "Invalid training data"),
    (TaxonomyError, 422, "Unknown label"),
    (ModelNotFoundError, 404, "Model not found"),
    (ModelIntegrityError, 503, "Model unusable"),
    (ConfigurationError, 503, "Server misconfigured"),
    (ServiceUnavailableError, 503, "Service unavailable"),
    (JobNotFoundError, 404, "Job not found"),
]

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text, "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for code, text in [
        (401, "No or unknown API key"),
        (403, "The key's role may not do this"),
        (413, "Request body too large"),
        (422, "Malformed JSON, wrong types, unknown fields or values over a limit"),
        (503, "No model loaded, or the queue is unavailable"),
    ]
}


# --- request limits -----------------------------------------------------


class BodyLimitMiddleware:
    """Answer 413 for a body over the limit, before the application reads it.

    A declared Content-Length is checked at once; a chunked body is read up
    to the limit and replayed to the application.
    """

    def __init__(self, app: Any, max_body: int, max_upload: int) -> None:
        self.app, self.max_body, self.max_upload = app, max_body, max_upload

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_upload if scope["path"] in UPLOAD_PATHS else self.max_body
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                await self._reject(send, limit)
                return
            await self.app(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await self._reject(send, limit)
                return
            if not message.get("more_body"):
                break

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _reject(send: Any, limit: int) -> None:
        response = problem(413, "Request body too large", f"the request body is over the limit of {limit:,} bytes", field="body")
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


# --- metrics ------------------------------------------------------------


class Metrics:
    """Prometheus metrics of one app: requests, latency, documents tagged, queue depth."""

    def __init__(self, settings: Settings) -> None:
        import os

        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = Counter("granttag_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "granttag_http_request_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.tagged = Counter("granttag_documents_tagged", "Documents classified by the API", ["endpoint"], registry=self.registry)

    def queue_depth(self) -> dict[str, int]:
        """Return the length of each Celery queue in Redis ({} when not in queue mode or Redis is down)."""
        if not self.settings.api_queue_mode:
            return {}
        try:
            import redis

            client = redis.Redis.from_url(self.settings.broker_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                # kombu keeps each queue as a Redis list named after it.
                return {name: int(client.llen(name)) for name in _queue_names()}
            finally:
                client.close()
        except Exception as exc:  # a scrape must answer even when Redis is down
            log.warning("queue depth unavailable: %s", exc)
            return {}

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.core import GaugeMetricFamily

        outer = self

        class _Queue:
            def collect(self) -> Any:
                family = GaugeMetricFamily("granttag_queue_depth", "Tasks waiting in each Celery queue", labels=["queue"])
                for name, depth in outer.queue_depth().items():
                    family.add_metric([name], depth)
                yield family

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(_Queue())  # type: ignore[arg-type]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry) + generate_latest(_single(_Queue())), CONTENT_TYPE_LATEST


def _queue_names() -> list[str]:
    """The Celery queues the workers serve (worker/app.py), and Celery's default one."""
    try:
        from worker.app import QUEUES
    except ImportError:
        return ["celery"]
    return sorted(set(QUEUES) | {"celery"})


def _single(collector: Any) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(collector)
    return registry


class MetricsMiddleware:
    """Counts and times every request by its route template (not its raw path)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


# --- request and answer schemas -----------------------------------------


class Evidence(BaseModel):
    """A term of the text that raised a label's score; start/end index the original field text."""

    term: str
    field: str
    start: int
    end: int
    weight: float


class LabelOut(BaseModel):
    """One predicted domain or pillar."""

    id: str
    number: int
    mark: str
    ja: str
    en: str
    score: float = Field(description="Calibrated probability")
    evidence: list[Evidence] = Field(default_factory=list)


class Classification(BaseModel):
    """The labels of one document, highest score first."""

    id: str | None = None
    domains: list[LabelOut]
    pillars: list[LabelOut]
    no_domain: bool = Field(description="True when no domain applies (a valid answer: much basic science has none)")
    model_version: str


class BatchItem(BaseModel):
    """The answer for one document of a batch: its labels, or its own error."""

    index: int
    id: str | None = None
    status: Literal["ok", "error"]
    domains: list[LabelOut] | None = None
    pillars: list[LabelOut] | None = None
    no_domain: bool | None = None
    error: Problem | None = None


class BatchAnswer(BaseModel):
    """Answers in the order of the request's documents."""

    model_version: str
    results: list[BatchItem]
    ok: int
    failed: int


class LabelInfo(BaseModel):
    """A domain or pillar of the taxonomy, with its names in both languages."""

    id: str
    kind: str
    number: int
    mark: str
    ja: str
    en: str
    group: str
    definition: str
    definition_ja: str


class TaxonomyAnswer(BaseModel):
    version: str
    domains: list[LabelInfo]
    pillars: list[LabelInfo]


class ModelSummary(BaseModel):
    version: str
    active: bool
    created: str | None = None
    taxonomy_version: str | None = None
    training_records: int | None = None
    evaluation: dict[str, Any] | None = None


class ModelsAnswer(BaseModel):
    active: str | None
    loaded: str | None = Field(description="The version this API process is serving")
    versions: list[ModelSummary]


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class FeedbackAnswer(BaseModel):
    feedback_id: str
    id: str
    domains: list[str]
    pillars: list[str]
    received_at: str


class JobCreated(BaseModel):
    id: str
    state: str | None = None


class JobStatus(BaseModel):
    """A job's state, progress and counts, and a page of its results."""

    model_config = ConfigDict(extra="allow")
    id: str
    state: str
    total: int | None = None
    tagged: int | None = None
    failed: int | None = None
    skipped: int | None = None
    progress: float | None = None
    model_versions: list[str] | None = None
    created: str | None = None
    updated: str | None = None
    results: list[dict[str, Any]] = Field(default_factory=list)
    offset: int = 0
    limit: int = 0


class JobList(BaseModel):
    jobs: list[dict[str, Any]]


class Health(BaseModel):
    status: str
    model_version: str | None = None
    redis: str | None = None


_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


def _no_bad_chars(value: Any) -> Any:
    """Reject NUL and lone surrogates in any text (they cannot be stored or answered as UTF-8)."""
    texts = value if isinstance(value, list) else [value]
    for text in texts:
        if isinstance(text, str) and _BAD_CHARS.search(text):
            raise ValueError("holds a NUL character or an unpaired surrogate (not valid text)")
    return value


def build_schemas(max_text: int, max_batch: int) -> dict[str, type[BaseModel]]:
    """Return the request models with the configured limits in them (and so in /openapi.json)."""
    TextT = Annotated[str | None, Field(max_length=max_text)]
    KeywordsT = Annotated[
        str | list[Annotated[str, Field(max_length=1000)]] | None,
        Field(max_length=max_text, description="One string ('; '-separated) or a list"),
    ]

    class DocumentIn(BaseModel):
        """One document: title, abstract, keywords, program and field code; or plain text."""

        model_config = ConfigDict(extra="forbid")
        id: Annotated[str | None, Field(max_length=200)] = None
        title: TextT = None
        abstract: TextT = None
        text: Annotated[str | None, Field(max_length=max_text, description="Plain text; the same as abstract")] = None
        keywords: KeywordsT = None
        program: TextT = None
        field: Annotated[str | None, Field(max_length=max_text, description="Field code, e.g. a KAKEN review section")] = None

        _check = field_validator("*")(_no_bad_chars)

    class BatchDocumentIn(DocumentIn):
        """A document of a batch: its id is required and echoed back."""

        id: Annotated[str, Field(min_length=1, max_length=200)]  # type: ignore[assignment]

    item_schema = BatchDocumentIn.model_json_schema()
    item_schema.pop("title", None)

    class BatchIn(BaseModel):
        """Up to the configured number of documents; each is answered or gets its own error."""

        model_config = ConfigDict(extra="forbid")
        # Items are checked one by one (a bad one gets its own error entry), so the
        # list takes any JSON value while the OpenAPI document shows the document schema.
        documents: list[Annotated[Any, WithJsonSchema(item_schema)]] = Field(min_length=1, max_length=max_batch)

    class FeedbackIn(BaseModel):
        """The corrected labels of one document, by its id and text."""

        model_config = ConfigDict(extra="forbid")
        document: BatchDocumentIn
        domains: list[Annotated[str, Field(max_length=200)]] = Field(max_length=17, description="Domain ids or names; [] means no domain")
        pillars: list[Annotated[str, Field(max_length=200)]] = Field(
            min_length=1, max_length=6, description="Pillar ids or names; at least one"
        )

    class JobIn(BaseModel):
        """A job over a data source the server is configured for (GRANTTAG_API_JOB_SOURCES; admin keys only)."""

        model_config = ConfigDict(extra="forbid")
        source: str = Field(min_length=1, max_length=200, description="The name of a configured source")
        retag: bool = Field(False, description="Tag again records already tagged by the same model version")

    return {"DocumentIn": DocumentIn, "BatchDocumentIn": BatchDocumentIn, "BatchIn": BatchIn, "FeedbackIn": FeedbackIn, "JobIn": JobIn}


# --- the application ----------------------------------------------------


def _label_out(taxonomy: Any, label: dict[str, Any]) -> dict[str, Any]:
    info = taxonomy.get(label["id"])
    return {
        "id": info.id,
        "number": info.number,
        "mark": info.mark,
        "ja": info.ja,
        "en": info.en,
        "score": label["score"],
        "evidence": label.get("evidence", []),
    }


def _answer(taxonomy: Any, prediction: dict[str, Any]) -> dict[str, Any]:
    domains = [_label_out(taxonomy, d) for d in prediction["domains"]]
    return {
        "domains": domains,
        "pillars": [_label_out(taxonomy, p) for p in prediction["pillars"]],
        "no_domain": not domains,
        "model_version": prediction["model_version"],
    }


def _document(doc: BaseModel, where: str, default_id: str) -> Any:
    """Turn a validated request document into a core Document; raises ApiProblem (422)."""
    from classifier.documents import make_document

    data = doc.model_dump()
    if data.get("text") is not None and data.get("abstract") is not None:
        raise ApiProblem(422, "Invalid input", "give the text either as `text` or as `abstract`, not both", field="text")
    if data.get("abstract") is None:
        data["abstract"] = data.pop("text")
    if data.get("id") is None:
        data["id"] = default_id
    try:
        return make_document(data, where, default_id=default_id)
    except InvalidInputError as exc:
        raise ApiProblem(422, "Invalid input", str(exc), field="body") from exc


class _Jobs:
    """The worker's job functions (worker/jobs.py), looked up when first used."""

    def __init__(self, backend: Any = None) -> None:
        self._backend = backend

    def get(self) -> Any:
        if self._backend is None:
            try:
                from worker import jobs
            except ImportError as exc:
                raise ApiProblem(503, "Jobs unavailable", f"the job worker is not installed on this server ({exc})") from exc
            self._backend = jobs
        return self._backend


def create_app(settings: Settings, *, jobs: Any = None) -> FastAPI:
    """Build the API application for ``settings``.

    ``jobs`` replaces the worker's job functions (start_job, job_status,
    job_results, cancel_job, list_jobs), for tests. Raises ConfigurationError
    when the settings cannot be served (no keys without --no-auth, bad keys).
    """
    from contextlib import asynccontextmanager

    from classifier.resources import models_dir
    from classifier.taxonomy import load_taxonomy

    keys = check_settings(settings)
    if settings.api_no_auth:
        log.warning("serving WITHOUT authentication (--no-auth): every request has the admin role; for local use only")
    taxonomy = load_taxonomy()
    root = Path(settings.models_dir) if settings.models_dir else models_dir()
    root.mkdir(parents=True, exist_ok=True)
    holder = ModelHolder(root, settings.api_model_check_seconds)
    batcher = Batcher(holder)
    metrics = Metrics(settings)
    schemas = build_schemas(settings.api_max_text_chars, settings.api_max_batch)
    DocumentIn, BatchDocumentIn, BatchIn, FeedbackIn, JobIn = (
        schemas[k] for k in ("DocumentIn", "BatchDocumentIn", "BatchIn", "FeedbackIn", "JobIn")
    )
    job_backend = _Jobs(jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        # Load (or build) the model in the background: /healthz answers at once, /readyz once it is loaded.
        def preload() -> None:
            try:
                holder.get()
            except GranttagError as exc:
                log.error("%s", exc)

        threading.Thread(target=preload, name="granttag-model-load", daemon=True).start()
        yield
        batcher.close()

    app = FastAPI(
        title="granttag",
        version=_version(),
        summary="Tag research-project abstracts with the 17 technology domains and 6 policy pillars of Japan's 7th S&T Basic Plan",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
        responses={422: PROBLEM_RESPONSES[422]},
    )
    app.state.settings = settings
    app.state.holder = holder
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(BodyLimitMiddleware, max_body=settings.api_max_body_bytes, max_upload=settings.api_max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # --- error mapping (once, for every handler) ---
    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.field, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(list(exc.errors()))
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return problem(422, "Invalid request", f"{first['field']}: {first['message']}", first["field"], errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8): malformed JSON is a 422 here.
            return problem(422, "Invalid request", f"the body is not valid JSON in UTF-8 ({exc.detail})", field="body")
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(GranttagError)
    async def _granttag(request: Request, exc: GranttagError) -> JSONResponse:
        for kind, status, title in _GRANTTAG_STATUS:
            if isinstance(exc, kind):
                return problem(status, title, str(exc))
        if type(exc).__name__.endswith("NotFoundError"):  # e.g. the worker's unknown job
            return problem(404, "Not found", str(exc))
        return problem(422, "Cannot do this", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged")

    # --- auth ---
    bearer = HTTPBearer(auto_error=False, description="An API key with the classify or admin role")

    def role_of(credentials: HTTPAuthorizationCredentials | None) -> str:
        if settings.api_no_auth:
            return "admin"
        if credentials is None:
            raise ApiProblem(401, "Unauthorized", "send an API key as `Authorization: Bearer KEY`", headers={"WWW-Authenticate": "Bearer"})
        given = credentials.credentials.encode("utf-8", "surrogateescape")
        found = None
        for key, role in keys.items():
            # Compare with every key in constant time, so timing tells nothing about near misses.
            if hmac.compare_digest(key.encode("utf-8"), given):
                found = role
        if found is None:
            raise ApiProblem(401, "Unauthorized", "unknown API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return found

    # Async (they only compare strings), so they run on the event loop instead of costing a thread hop per request.
    async def classify_role(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> str:
        return role_of(credentials)

    async def admin_role(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> str:
        role = role_of(credentials)
        if role != "admin":
            raise ApiProblem(403, "Forbidden", "this needs a key with the admin role")
        return role

    ClassifyKey = Annotated[str, Security(classify_role)]
    AdminKey = Annotated[str, Security(admin_role)]
    auth_responses = {k: PROBLEM_RESPONSES[k] for k in (401, 403, 413, 422, 503)}

    Threshold = Annotated[float | None, Query(ge=0, le=1, description="One threshold for every label instead of the tuned ones")]
    TopK = Annotated[int | None, Query(ge=1, le=23, description="At most K labels of each kind")]
    Explain = Annotated[bool, Query(description="Add evidence terms")]

    def model_or_503() -> Any:
        try:
            return holder.get()
        except ModelNotFoundError as exc:
            raise ApiProblem(503, "No model", str(exc)) from exc

    # --- classification ---
    @app.post("/v1/classify", response_model=Classification, responses=auth_responses, tags=["classify"])
    async def classify(doc: DocumentIn, role: ClassifyKey, threshold: Threshold = None, top_k: TopK = None, explain: Explain = True) -> Any:  # type: ignore[valid-type]
        """Classify one document (title, abstract, keywords, program, field; or plain `text`)."""
        import asyncio

        document = _document(doc, "request body", default_id=doc.id or "document")  # type: ignore[attr-defined]
        try:
            prediction = (await asyncio.wrap_future(batcher.submit([document], threshold, top_k, explain)))[0].as_dict()
        except ModelNotFoundError as exc:
            raise ApiProblem(503, "No model", str(exc)) from exc
        metrics.tagged.labels("classify").inc()
        # Built to the Classification schema already (tests check it): answered directly, without
        # FastAPI validating and re-encoding it through the response model on every request.
        return SafeJSONResponse({"id": doc.id, **_answer(taxonomy, prediction)})  # type: ignore[attr-defined]

    @app.post(
        "/v1/classify/batch", response_model=BatchAnswer, response_model_exclude_none=True, responses=auth_responses, tags=["classify"]
    )
    def classify_batch(batch: BatchIn, role: ClassifyKey, threshold: Threshold = None, top_k: TopK = None, explain: Explain = True) -> Any:  # type: ignore[valid-type]
        """Classify up to the batch limit of documents; each answer echoes its document's id."""
        results: list[dict[str, Any]] = []
        docs: list[tuple[int, Any]] = []
        for i, raw in enumerate(batch.documents):  # type: ignore[attr-defined]
            rid = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
            try:
                item = BatchDocumentIn.model_validate(raw)
                docs.append((i, _document(item, f"documents[{i}]", default_id=str(i))))
                results.append({"index": i, "id": item.id, "status": "ok"})  # type: ignore[attr-defined]
            except ValidationError as exc:
                errs = _field_errors(list(exc.errors()), prefix=f"documents[{i}]")
                first = errs[0]
                err = {
                    "title": "Invalid document",
                    "status": 422,
                    "detail": f"{first['field']}: {first['message']}",
                    "field": first["field"],
                    "errors": errs,
                }
                results.append({"index": i, "id": rid, "status": "error", "error": err})
            except ApiProblem as exc:
                field = f"documents[{i}]" + (f".{exc.field}" if exc.field and exc.field != "body" else "")
                results.append(
                    {
                        "index": i,
                        "id": rid,
                        "status": "error",
                        "error": {"title": exc.title, "status": exc.status, "detail": exc.detail, "field": field},
                    }
                )
        if docs:
            try:
                predictions = batcher.submit([d for _, d in docs], threshold, top_k, explain).result()
            except ModelNotFoundError as exc:
                raise ApiProblem(503, "No model", str(exc)) from exc
            for (i, _), prediction in zip(docs, predictions, strict=True):
                results[i].update(_answer(taxonomy, prediction.as_dict()))
                results[i].pop("model_version", None)
            metrics.tagged.labels("batch").inc(len(docs))
        ok = sum(1 for r in results if r["status"] == "ok")
        version = predictions[0].model_version if docs else model_or_503().version
        return {"model_version": str(version), "results": results, "ok": ok, "failed": len(results) - ok}

    # --- taxonomy and models ---
    @app.get("/v1/taxonomy", response_model=TaxonomyAnswer, responses=auth_responses, tags=["taxonomy"])
    def get_taxonomy(role: ClassifyKey) -> Any:
        """The 17 domains and 6 pillars with their names in Japanese and English."""
        return {
            "version": taxonomy.version,
            "domains": [d.as_dict() for d in taxonomy.domains],
            "pillars": [p.as_dict() for p in taxonomy.pillars],
        }

    @app.get("/v1/models", response_model=ModelsAnswer, responses=auth_responses, tags=["models"])
    def get_models(role: ClassifyKey) -> Any:
        """Model versions, which is active, and their evaluation figures."""
        from classifier.store import active_version, list_versions

        versions = [
            {k: meta.get(k) for k in ("version", "active", "created", "taxonomy_version", "training_records", "evaluation")}
            for meta in list_versions(root)
        ]
        return {"active": active_version(root), "loaded": holder.version, "versions": versions}

    Version = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description="A model version name")]

    @app.get(
        "/v1/models/{version}",
        response_model=dict[str, Any],
        responses={**auth_responses, 404: PROBLEM_RESPONSES[422] | {"description": "No such version"}},
        tags=["models"],
    )
    def get_model(version: Version, role: ClassifyKey) -> Any:
        """One version's metadata (meta.json): training data, thresholds, evaluation figures."""
        from classifier.store import active_version, read_meta

        meta = read_meta(version, root)
        meta["active"] = version == active_version(root)
        return meta

    @app.put(
        "/v1/models/active",
        response_model=ModelsAnswer,
        responses={**auth_responses, 404: PROBLEM_RESPONSES[422] | {"description": "No such version"}},
        tags=["models"],
    )
    def activate_model(body: ActivateRequest, role: AdminKey) -> Any:
        """Make a version active (admin): checked by loading it, then announced to the workers."""
        from classifier.store import activate, load_model

        load_model(body.version, root)  # refuse a version that does not load before making it active
        activate(body.version, root)
        _publish_active(settings)
        holder.switch(body.version)
        return get_models(role)

    # --- feedback ---
    @app.post("/v1/feedback", status_code=201, response_model=FeedbackAnswer, responses=auth_responses, tags=["feedback"])
    def post_feedback(body: FeedbackIn, role: AdminKey) -> Any:  # type: ignore[valid-type]
        """Store a corrected label set for a document (admin), for the next retraining."""
        from classifier.feedback import append_feedback, check_labels
        from granttag.settings import data_dir

        document = _document(body.document, "document", default_id="document")  # type: ignore[attr-defined]
        try:
            domains, pillars = check_labels(body.domains, body.pillars, taxonomy)  # type: ignore[attr-defined]
        except InvalidInputError as exc:
            raise ApiProblem(422, "Invalid labels", str(exc), field=str(exc).split(":", 1)[0]) from exc
        record = append_feedback(data_dir(settings), document, domains, pillars, role)
        return {k: record[k] for k in ("feedback_id", "id", "domains", "pillars", "received_at")}

    # --- jobs ---
    job_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "CSV/TSV/JSONL/XLSX records"},
                        "format": {"type": "string", "enum": list(UPLOAD_FORMATS)},
                        "retag": {"type": "boolean"},
                        **{
                            f"{c}_col": {"type": "string", "maxLength": 200}
                            for c in ("id", "title", "text", "keywords", "program", "field")
                        },
                    },
                }
            },
            "application/json": {"schema": JobIn.model_json_schema()},
        },
    }

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobCreated,
        responses=auth_responses,
        openapi_extra={"requestBody": job_body},
        tags=["jobs"],
    )
    async def post_job(request: Request, role: ClassifyKey) -> Any:
        """Start a job tagged by the Celery workers: an uploaded file, or (admin) a server-side source."""
        import anyio

        if not settings.api_queue_mode:
            raise ApiProblem(503, "Jobs unavailable", "this server runs without a queue (--no-queue); jobs need the Celery workers")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            source, retag = await _upload_source(request, settings)
        elif ctype in ("application/json", ""):
            try:
                body = JobIn.model_validate_json(await request.body())
            except ValidationError as exc:
                errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False, include_context=False)]
                raise RequestValidationError(errors) from exc
            if role != "admin":
                raise ApiProblem(403, "Forbidden", "jobs on server-side sources need a key with the admin role")
            name = body.source  # type: ignore[attr-defined]
            if name not in settings.api_job_sources:
                known = ", ".join(sorted(settings.api_job_sources)) or "none are configured (GRANTTAG_API_JOB_SOURCES)"
                raise ApiProblem(422, "Unknown source", f"no job source named {name!r}; known: {known}", field="body.source")
            source, retag = dict(settings.api_job_sources[name]), body.retag  # type: ignore[attr-defined]
        else:
            raise ApiProblem(
                422, "Invalid request", f"send the file as multipart/form-data or a source as application/json, not {ctype}", field="body"
            )
        try:
            backend = job_backend.get()
            job_id = await anyio.to_thread.run_sync(lambda: backend.start_job(settings, source, retag=retag))
        except GranttagError:
            raise
        except (ConnectionError, OSError) as exc:
            raise ApiProblem(503, "Queue unavailable", f"cannot reach the job queue: {exc}") from exc
        finally:
            if ctype == "multipart/form-data":
                # start_job keeps a file job's records with the job (in Redis, for workers on any machine),
                # so the upload is not needed afterwards and does not pile up in the data dir.
                shutil.rmtree(Path(source["path"]).parent, ignore_errors=True)
        state = None
        try:
            state = (await anyio.to_thread.run_sync(lambda: backend.job_status(settings, str(job_id)))).get("state")
        except GranttagError:
            pass
        return {"id": str(job_id), "state": state}

    @app.get("/v1/jobs", response_model=JobList, responses=auth_responses, tags=["jobs"])
    def get_jobs(role: ClassifyKey) -> Any:
        """The known jobs, newest first."""
        backend = job_backend.get()
        return {"jobs": _jsonable(list(backend.list_jobs(settings)))}

    JobId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,100}$")]

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobStatus,
        responses={**auth_responses, 404: PROBLEM_RESPONSES[422] | {"description": "No such job"}},
        tags=["jobs"],
    )
    def get_job(
        job_id: JobId,
        role: ClassifyKey,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        limit: Annotated[int, Query(ge=0, le=1000, description="Results in this page (0: status only)")] = 100,
    ) -> Any:
        """A job's state, progress and counts, and a page of its results."""
        backend = job_backend.get()
        status = _jsonable(dict(backend.job_status(settings, job_id)))
        total, done = status.get("total"), sum(int(status.get(k) or 0) for k in ("tagged", "failed", "skipped"))
        status["progress"] = round(done / total, 4) if total else (1.0 if status.get("state") in ("done", "succeeded", "finished") else 0.0)
        status["results"] = _jsonable(list(backend.job_results(settings, job_id, offset, limit))) if limit else []
        status["offset"], status["limit"] = offset, limit
        status["id"] = str(status.get("id") or job_id)
        return status

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=JobStatus,
        responses={**auth_responses, 404: PROBLEM_RESPONSES[422] | {"description": "No such job"}},
        tags=["jobs"],
    )
    def delete_job(job_id: JobId, role: ClassifyKey) -> Any:
        """Cancel a job; answers its state afterwards."""
        backend = job_backend.get()
        backend.cancel_job(settings, job_id)
        status = _jsonable(dict(backend.job_status(settings, job_id)))
        status["id"] = str(status.get("id") or job_id)
        return status

    # --- operations ---
    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Any:
        """The process answers."""
        return {"status": "ok", "model_version": holder.version}

    @app.get("/readyz", response_model=Health, responses={503: PROBLEM_RESPONSES[503]}, tags=["operations"])
    def readyz() -> Any:
        """Ready when a model is loaded and, in queue mode, Redis answers."""
        if not holder.loaded:
            raise ApiProblem(503, "Not ready", holder.error or "the model is still loading")
        answer = {"status": "ready", "model_version": holder.version, "redis": None}
        if settings.api_queue_mode:
            try:
                import redis

                client = redis.Redis.from_url(settings.broker_url, socket_timeout=1, socket_connect_timeout=1)
                try:
                    client.ping()
                finally:
                    client.close()
            except Exception as exc:  # any failure to answer means not ready
                raise ApiProblem(503, "Not ready", f"Redis at the broker URL does not answer: {exc}") from exc
            answer["redis"] = "ok"
        return answer

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=_plain_response(),
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def get_metrics() -> Any:
        """Prometheus metrics: requests, latency, documents tagged, queue depth."""
        from starlette.responses import Response

        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    return app


def _plain_response() -> Any:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse


def _jsonable(value: Any) -> Any:
    """Return ``value`` with dates, sets and other objects turned into JSON types."""
    return json.loads(json.dumps(value, default=str))


async def _upload_source(request: Request, settings: Settings) -> tuple[dict[str, Any], bool]:
    """Save an uploaded file under the data dir; return the job source and the retag flag."""
    from starlette.datastructures import UploadFile

    from granttag.settings import data_dir

    form = await request.form(max_files=1, max_fields=20)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiProblem(422, "Invalid request", "send the records as a file in the `file` form field", field="file")
        allowed = {"file", "format", "retag"} | {f"{c}_col" for c in ("id", "title", "text", "keywords", "program", "field")}
        unknown = sorted(set(form.keys()) - allowed)
        if unknown:
            raise ApiProblem(422, "Invalid request", f"unknown form field {unknown[0]!r}", field=unknown[0])
        fmt = str(form.get("format") or "").strip().lower() or None
        name = Path(upload.filename or "upload").name or "upload"
        if fmt is None:
            suffix = Path(name).suffix.lower().lstrip(".")
            fmt = {"ndjson": "jsonl", "json": "jsonl", "txt": "tsv"}.get(suffix, suffix)
        if fmt not in UPLOAD_FORMATS:
            raise ApiProblem(
                422,
                "Invalid request",
                f"cannot tell the file's format; give `format` as one of {', '.join(UPLOAD_FORMATS)}",
                field="format",
            )
        retag_raw = str(form.get("retag") or "false").strip().lower()
        if retag_raw not in ("true", "false", "1", "0", "yes", "no"):
            raise ApiProblem(422, "Invalid request", "retag must be true or false", field="retag")
        columns = {}
        for c in ("id", "title", "text", "keywords", "program", "field"):
            value = form.get(f"{c}_col")
            if value is not None and not isinstance(value, str):
                raise ApiProblem(422, "Invalid request", f"{c}_col must be text", field=f"{c}_col")
            if value:
                columns[c] = value
        folder = data_dir(settings) / "uploads" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in Path(name).stem)[:80] or "upload"
        target = folder / f"{safe}.{fmt}"
        size = 0
        with target.open("wb") as fh:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                fh.write(chunk)
        if size == 0:
            raise ApiProblem(422, "Invalid request", "the uploaded file is empty", field="file")
        source: dict[str, Any] = {"kind": "file", "path": str(target), "format": fmt, "columns": columns, "name": name}
        return source, retag_raw in ("true", "1", "yes")
    finally:
        await form.close()


def _publish_active(settings: Settings) -> None:
    """Tell the Celery workers which model is active (worker/registry.py), when the worker is installed."""
    try:
        from worker.registry import publish_active_model
    except ImportError:
        return
    try:
        publish_active_model(settings)
    except Exception as exc:  # the model is active on disk; workers also find it there
        log.warning("could not announce the active model to the workers: %s", exc)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("granttag")
    except Exception:  # not installed (running from a checkout)
        return "0"


def app_from_env() -> FastAPI:
    """The uvicorn factory: settings from the environment (``granttag serve`` sets them)."""
    from granttag.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(get_settings())
