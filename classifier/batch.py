"""Classifying many records: chunked, optionally over several processes, every record accounted for."""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from classifier.documents import Document, make_document
from classifier.errors import InvalidInputError
from classifier.records import RawRecord


@dataclass
class Outcome:
    """What happened to one input record: a prediction or an error."""

    id: str
    where: str
    prediction: dict[str, Any] | None = None
    error: str | None = None
    #: The outcome already written out by ``render`` in the process that classified it.
    rendered: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        if self.prediction is not None:
            return {**self.prediction, "id": self.id, "status": "ok"}
        return {"id": self.id, "status": "error", "error": self.error, "where": self.where}


def to_documents(records: Iterable[RawRecord]) -> Iterator[tuple[RawRecord, Document | None, str | None]]:
    """Turn raw records into documents, keeping the reason for each one that fails."""
    for rec in records:
        rec = rec.parsed()
        if rec.error or rec.fields is None:
            yield rec, None, rec.error or f"{rec.where}: unreadable record"
            continue
        try:
            yield rec, make_document(rec.fields, rec.where), None
        except InvalidInputError as exc:
            yield rec, None, str(exc)


#: Allocations between collections of the youngest generation in worker processes (Python: 700); a chunk
#: makes many short-lived objects that reference counting frees.
GC_THRESHOLD = 10_000

_WORKER_MODEL: Any = None
_WORKER_OPTS: dict[str, Any] = {}
_WORKER_RENDER: Callable[[dict[str, Any]], str] | None = None


def _classify_chunk(records: list[RawRecord]) -> list[Outcome]:
    """Turn a chunk of raw records into documents and classify them, in the process that runs it."""
    items = list(to_documents(records))
    docs = [d for _, d, _ in items if d is not None]
    preds = iter(_WORKER_MODEL.predict(docs, **_WORKER_OPTS) if docs else [])
    out = []
    for rec, doc, err in items:
        if doc is None:
            out.append(Outcome(str(rec.raw_id or ""), rec.where, error=err))
            continue
        pred = next(preds).as_dict()
        if _WORKER_RENDER is None:
            out.append(Outcome(doc.id, rec.where, prediction=pred))
        else:
            # Rendered where it was classified: the parent process only writes strings out.
            out.append(Outcome(doc.id, rec.where, rendered=_WORKER_RENDER({**pred, "status": "ok"})))
    return out


def chunk_sizes(total: int, chunk_size: int, jobs: int) -> list[int]:
    """Sizes of the chunks ``total`` records are cut into for ``jobs`` workers.

    Full chunks while plenty remain; then each is a quarter (for two
    workers) of what remains, down to a tenth of ``chunk_size``, so that the
    workers finish together instead of one waiting while another does a
    whole chunk.
    """
    sizes: list[int] = []
    left, floor = total, max(1, chunk_size // 10)
    while left > 0:
        size = min(left, max(min(chunk_size, math.ceil(left / (2 * jobs))), floor))
        sizes.append(size)
        left -= size
    return sizes


def classify_records(
    model: Any,
    records: Iterable[RawRecord],
    *,
    jobs: int = 1,
    chunk_size: int = 500,
    progress: Callable[[int], None] | None = None,
    render: Callable[[dict[str, Any]], str] | None = None,
    **predict_opts: Any,
) -> Iterator[Outcome]:
    """Yield one Outcome per input record, in input order.

    Records are classified in chunks; with ``jobs`` > 1 the chunks go to
    forked worker processes that share the loaded model. ``progress`` is
    called with the number of records finished after each chunk. With
    ``render``, each tagged record's dict (as :meth:`Outcome.as_dict` gives
    it) is turned into text by the process that classified it, and the
    Outcome carries that text in ``rendered`` instead of ``prediction``.
    """
    global _WORKER_MODEL, _WORKER_OPTS, _WORKER_RENDER
    _WORKER_MODEL, _WORKER_OPTS, _WORKER_RENDER = model, predict_opts, render

    def chunks() -> Iterator[list[RawRecord]]:
        if jobs > 1 and isinstance(records, Sequence):
            start = 0
            for size in chunk_sizes(len(records), chunk_size, jobs):
                yield list(records[start : start + size])
                start += size
            return
        buf: list[RawRecord] = []
        for rec in records:
            buf.append(rec)
            if len(buf) >= chunk_size:
                yield buf
                buf = []
        if buf:
            yield buf

    def emit(outcomes: list[Outcome]) -> Iterator[Outcome]:
        yield from outcomes
        if progress:
            progress(len(outcomes))

    jobs = max(1, min(jobs, os.cpu_count() or 1))
    if jobs == 1 or "fork" not in mp.get_all_start_methods():
        for chunk in chunks():
            yield from emit(_classify_chunk(chunk))
        return
    ctx = mp.get_context("fork")
    warm = getattr(model, "warm", None)
    if warm is not None:
        warm()  # built once here, shared by the forked workers
    # What the workers inherit (the model, the records read so far) lives as long as they do: frozen, the
    # cyclic garbage collector never walks it again in them, so its pages also stay shared (Python's gc docs).
    gc.freeze()
    try:
        with ctx.Pool(jobs, initializer=gc.set_threshold, initargs=(GC_THRESHOLD, 10, 10)) as pool:
            pending: list[Any] = []
            for chunk in chunks():
                # Raw records go to the workers, which build and check the documents too.
                pending.append(pool.apply_async(_classify_chunk, (chunk,)))
                # Keep a bounded number of chunks in flight so memory stays flat on big files.
                while len(pending) > jobs * 2:
                    yield from emit(pending.pop(0).get())
            for result in pending:
                yield from emit(result.get())
    finally:
        gc.unfreeze()
