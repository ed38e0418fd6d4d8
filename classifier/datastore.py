"""The training data store: labeled sources kept with their origin and time, under one lock (issue 6).

Layout under the data directory (``granttag.settings.data_dir``)::

    training/index.json        the sources: id, kind, origin, time added, records, SHA-256, active
    training/files/<id>.jsonl  the records of an added file, already validated and normalised
    training/.lock             flock: `data add`/`remove` hold it exclusively, a retrain's snapshot shared

Two sources are built in: ``corpus`` (the project's own training text in
labels/corpus) and ``feedback`` (corrections sent through the API, read with
classifier.feedback's reader when that module is installed). Both can be
deactivated and activated again but not deleted. A record file is written
under a temporary name and renamed into place before the index names it, and
the index itself is replaced atomically, so a concurrent retrain sees either
the store before an addition or after it, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifier.corpus import LabeledSet, corpus_files
from classifier.documents import Document
from classifier.errors import InvalidInputError, TrainingDataError
from classifier.taxonomy import Taxonomy, load_taxonomy

BUILTIN = ("corpus", "feedback")
INDEX_FILE = "index.json"


class SourceNotFoundError(InvalidInputError):
    """No data source with that id."""


@dataclass
class Source:
    """One source of labeled records and where it came from."""

    id: str
    kind: str  # "corpus", "feedback", "file" or "bootstrap"
    origin: str
    added: str
    records: int = 0
    sha256: str = ""
    active: bool = True
    skipped: list[str] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the source as a JSON-ready dict."""
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def record_dict(doc: Document, domains: list[str], pillars: list[str], where: str = "") -> dict[str, Any]:
    """Return the stored JSON form of one labeled record."""
    out: dict[str, Any] = {**doc.as_dict(), "domains": list(domains), "pillars": list(pillars)}
    if where:
        out["where"] = where
    return out


def feedback_reader() -> Any:
    """Return classifier.feedback's reader of stored corrections, or None when that module is absent."""
    try:
        from classifier import feedback  # issue 5: append-only JSONL under the data directory
    except ImportError:
        return None
    fn = getattr(feedback, "load_feedback", None)  # the latest correction of each document, as a LabeledSet
    return fn if callable(fn) else None


class DataStore:
    """Labeled training sources under ``root`` (the data directory); every method takes the lock it needs."""

    def __init__(self, root: Path, taxonomy: Taxonomy | None = None) -> None:
        self.root = Path(root)
        self.dir = self.root / "training"
        self.files = self.dir / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self._taxonomy = taxonomy

    @property
    def taxonomy(self) -> Taxonomy:
        if self._taxonomy is None:
            self._taxonomy = load_taxonomy()
        return self._taxonomy

    # --- locking and the index ------------------------------------------
    @contextlib.contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        """Hold the store's lock: exclusive to change it, shared to read a consistent snapshot."""
        with (self.dir / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        path = self.dir / INDEX_FILE
        if path.exists():
            try:
                index: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{path}: the data store index is damaged ({exc}); restore it from a backup") from exc
        else:
            index = {"next": 1, "sources": []}
        have = {s["id"] for s in index["sources"]}
        # The built-in sources are always listed, first, active until the operator deactivates them.
        for i, name in enumerate(BUILTIN):
            if name not in have:
                origin = "labels/corpus" if name == "corpus" else "feedback sent through the API"
                index["sources"].insert(i, Source(name, name, origin, "", active=True).as_dict())
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        _atomic_write(self.dir / INDEX_FILE, json.dumps(index, ensure_ascii=False, indent=2).encode("utf-8"))

    # --- reading ----------------------------------------------------------
    def sources(self) -> list[Source]:
        """Return every source, built-in first then in the order added."""
        with self.lock(exclusive=False):
            return [Source(**s) for s in self._read_index()["sources"]]

    def get(self, source_id: str) -> Source:
        """Return one source; raises SourceNotFoundError."""
        for src in self.sources():
            if src.id == source_id:
                return src
        raise SourceNotFoundError(f"no data source {source_id!r} (see `granttag data list`)")

    def _load_source(self, src: Source) -> LabeledSet:
        if src.kind == "corpus":
            from classifier.validation import read_labeled

            report = read_labeled(corpus_files(), self.taxonomy)
            if report.problems:
                raise TrainingDataError("the project corpus has problems:\n  " + "\n  ".join(str(p) for p in report.problems[:20]))
            return report.data
        if src.kind == "feedback":
            reader = feedback_reader()
            if reader is None:
                return LabeledSet()
            data: LabeledSet = reader(self.root)
            return data
        path = self.files / f"{src.id}.jsonl"
        if not path.exists():
            raise TrainingDataError(
                f"{path}: the records of data source {src.id} are missing; `granttag data remove {src.id}` and add the file again"
            )
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return _from_dicts(rows, src.id, self.taxonomy)

    def load(self, source_id: str) -> LabeledSet:
        """Return the records of one source."""
        src = self.get(source_id)
        with self.lock(exclusive=False):
            return self._load_source(src)

    def snapshot(self) -> tuple[LabeledSet, list[Source]]:
        """Return all records of the active sources, and those sources, as one consistent view.

        The shared lock is held while reading, so an addition or removal
        running at the same time is seen whole or not at all.
        """
        with self.lock(exclusive=False):
            sources = [Source(**s) for s in self._read_index()["sources"] if s.get("active", True)]
            data = LabeledSet()
            for src in sources:
                part = self._load_source(src)
                src.records = len(part)
                data.extend(part)
        return data, sources

    # --- changing -----------------------------------------------------------
    def add(self, data: LabeledSet, origin: str, kind: str = "file", skipped: list[str] | None = None, note: str = "") -> Source:
        """Store ``data`` (already validated) as a new active source; return it.

        The record file is complete on disk before the index names it.
        """
        if not len(data):
            raise TrainingDataError(f"{origin}: no records to add")
        lines = [
            json.dumps(record_dict(d, dm, pl, w), ensure_ascii=False, sort_keys=True)
            for d, dm, pl, w in zip(data.docs, data.domains, data.pillars, data.sources, strict=False)
        ]
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        with self.lock(exclusive=True):
            index = self._read_index()
            source_id = f"s{index['next']}"
            _atomic_write(self.files / f"{source_id}.jsonl", payload)
            src = Source(source_id, kind, origin, _now(), len(lines), hashlib.sha256(payload).hexdigest(), True, list(skipped or []), note)
            index["next"] += 1
            index["sources"].append(src.as_dict())
            self._write_index(index)
        return src

    def set_active(self, source_id: str, active: bool) -> Source:
        """Activate or deactivate a source; return it."""
        with self.lock(exclusive=True):
            index = self._read_index()
            for entry in index["sources"]:
                if entry["id"] == source_id:
                    entry["active"] = active
                    self._write_index(index)
                    return Source(**entry)
        raise SourceNotFoundError(f"no data source {source_id!r} (see `granttag data list`)")

    def remove(self, source_id: str) -> Source:
        """Delete an added source and its records; a built-in one is deactivated instead. Returns it."""
        if source_id in BUILTIN:
            return self.set_active(source_id, False)
        with self.lock(exclusive=True):
            index = self._read_index()
            for i, entry in enumerate(index["sources"]):
                if entry["id"] == source_id:
                    del index["sources"][i]
                    self._write_index(index)
                    with contextlib.suppress(FileNotFoundError):
                        (self.files / f"{source_id}.jsonl").unlink()
                    return Source(**entry)
        raise SourceNotFoundError(f"no data source {source_id!r} (see `granttag data list`)")


def _from_dicts(rows: list[dict[str, Any]], source: str, taxonomy: Taxonomy) -> LabeledSet:
    """Build a LabeledSet from stored record dicts (labels already ids)."""
    from classifier.documents import make_document

    out = LabeledSet()
    known = set(taxonomy.domain_ids) | set(taxonomy.pillar_ids)
    for n, row in enumerate(rows, 1):
        where = str(row.get("where") or f"{source} record {n}")
        doc = make_document(row, where)
        dom = [str(x) for x in row.get("domains") or []]
        pil = [str(x) for x in row.get("pillars") or []]
        bad = [x for x in dom + pil if x not in known]
        if bad:
            raise TrainingDataError(f"{where}: unknown label(s) {', '.join(bad)} in data source {source}")
        out.docs.append(doc)
        out.domains.append(dom)
        out.pillars.append(pil)
        out.sources.append(where)
        out.langs.append(str(row.get("lang") or ""))
    return out
