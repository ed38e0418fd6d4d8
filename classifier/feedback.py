"""Label corrections sent by users, kept durably for the next retraining (issue 5).

The store is one append-only JSONL file, ``<data dir>/feedback/feedback.jsonl``.
Each line is one correction: a feedback id, the document's id and text
fields, the corrected domains and pillars (label ids), when it was received and
the role of the API key that sent it. Writers take an exclusive ``flock`` on the
file, write one whole line, flush and fsync before releasing it, so API
processes writing at once never interleave lines and an answered correction
survives a crash. The file is in the training format (``domains`` and
``pillars`` columns), so ``granttag train FILE --with-corpus`` reads it as is;
:func:`load_feedback` gives the latest correction of each document as a
LabeledSet.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifier.corpus import LabeledSet
from classifier.documents import Document
from classifier.errors import InvalidInputError
from classifier.taxonomy import Taxonomy

FEEDBACK_DIR = "feedback"
FEEDBACK_FILE = "feedback.jsonl"


def feedback_path(data_dir: Path) -> Path:
    """Return the feedback file under ``data_dir`` (its folder is created if missing)."""
    folder = Path(data_dir) / FEEDBACK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / FEEDBACK_FILE


def check_labels(domains: list[str], pillars: list[str], taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    """Resolve corrected labels (ids or Japanese/English names) to ids in the plan's order.

    Raises InvalidInputError naming the field for an unknown label, a label of
    the other kind, or an empty pillar list (every project has at least one).
    """
    out: dict[str, list[str]] = {}
    for kind, names in (("domain", domains), ("pillar", pillars)):
        out[kind], problems = taxonomy.resolve_ids(names, kind)
        if problems:
            i, reason = problems[0]
            raise InvalidInputError(f"{kind}s[{i}]: {reason}")
    if not out["pillar"]:
        raise InvalidInputError("pillars: at least one pillar is needed; every project serves one")
    return out["domain"], out["pillar"]


def append_feedback(data_dir: Path, doc: Document, domains: list[str], pillars: list[str], role: str) -> dict[str, Any]:
    """Append one correction for ``doc`` and return the stored record.

    ``domains`` and ``pillars`` must already be label ids (see check_labels).
    The record is on disk (fsynced) when this returns.
    """
    record = {
        "feedback_id": uuid.uuid4().hex,
        **doc.as_dict(),
        "domains": list(domains),
        "pillars": list(pillars),
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "role": role,
        "source": "feedback",
    }
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    path = feedback_path(data_dir)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # One write of the whole line: with O_APPEND and the lock no other writer can split it.
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return record


def read_feedback(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Yield every stored correction, oldest first (nothing when there is none).

    A torn last line (a crash mid-write on a filesystem without atomic appends)
    is skipped; any other unreadable line raises InvalidInputError naming it.
    """
    path = Path(data_dir) / FEEDBACK_DIR / FEEDBACK_FILE
    if not path.exists():
        return
    with path.open("rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        lines = fh.read().split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if number == len(lines):
                continue
            raise InvalidInputError(f"{path} line {number}: unreadable feedback record ({exc})") from exc
        yield record


def load_feedback(data_dir: Path) -> LabeledSet:
    """Return the latest correction of each document id as a LabeledSet for retraining."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_feedback(data_dir):
        latest[str(record["id"])] = record
    out = LabeledSet()
    for record in latest.values():
        out.docs.append(Document(**{k: str(record.get(k) or "") for k in ("id", "title", "abstract", "keywords", "program", "field")}))
        out.domains.append(list(record["domains"]))
        out.pillars.append(list(record["pillars"]))
        out.sources.append("feedback")
        out.langs.append("")
    return out
